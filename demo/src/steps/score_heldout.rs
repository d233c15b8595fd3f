//! `demo judge-eval`: the exported judge scores the held-out requests with
//! `engine score --batch` on ONNX Runtime; pair accuracy and point-score correlation per
//! task against the ground truth.

use serde_json::json;
use unireward_models::formats::score_record::ScoreRecord;

use crate::error::Result;
use crate::jsonl::{self, write_json};
use crate::judge_data::Truth;
use crate::metrics::{control_figures, judge_figures};
use crate::run_dir::RunDir;
use crate::tools::{arg, run as run_tool, Tool};

pub fn run(dir: &RunDir) -> Result<()> {
    let out = dir.heldout_scores();
    crate::tools::ensure_parent(&out)?;
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| crate::Error::io(&out, e))?;
    }
    let args = vec![
        "score".to_string(),
        "--model".into(),
        arg(&dir.judge_onnx()),
        "--backend".into(),
        "ort".into(),
        // The judge learnt videos through the trainer's pooled `<video>` path.
        "--video-mode".into(),
        "pooled".into(),
        "--batch".into(),
        arg(&dir.heldout_requests()),
        "--out".into(),
        arg(&out),
    ];
    // Exit status 1: some records failed (each has its error); the figures say how many.
    let done = run_tool(
        Tool::Engine,
        &args,
        &dir.root.join("logs/engine-score.log"),
        &[1],
    )?;
    let answers: Vec<ScoreRecord> = jsonl::read(&out)?;
    let truth: Vec<Truth> = jsonl::read(&dir.heldout_truth())?;
    let figures = judge_figures(&answers, &truth);
    let controls = control_figures(&answers, &truth);
    for (name, c) in &controls {
        tracing::info!(
            "demo judge-eval: control {name:<40} pair accuracy {} ({} pairs)",
            c.accuracy.map_or("-".to_string(), |v| format!("{v:.3}")),
            c.pairs
        );
    }
    for (task, f) in &figures {
        let show = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        tracing::info!(
            "demo judge-eval: {task:<20} pair accuracy {} ({} pairs), point pearson {} ({} points){}",
            show(f.pair_accuracy),
            f.pairs,
            show(f.point_pearson),
            f.points,
            if f.pair_errors + f.point_errors > 0 {
                format!(", {} failed", f.pair_errors + f.point_errors)
            } else {
                String::new()
            }
        );
    }
    write_json(
        &dir.step_metrics("judge_eval"),
        &json!({
            "seconds": done.elapsed.as_secs_f64(),
            "requests": truth.len(),
            "tasks": figures,
            "controls": controls,
        }),
    )
}
