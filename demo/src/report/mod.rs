//! `demo report`: the run's figures (`report/metrics.json` and a table on stdout), its
//! training curves (SVG), and an HTML page of the preference pairs the judge built.

pub mod chart;
pub mod html;
pub mod table;

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::jsonl::{self, read_json, write_json};
use crate::run_dir::RunDir;
use crate::settings::Settings;
use crate::steps::pairs::JudgedPair;
use chart::{Chart, Series, PALETTE};

/// (step, value) of `key` in a trainer's `metrics.jsonl`.
fn curve(metrics: &[Value], key: &str) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter_map(|m| Some((m.get("step")?.as_f64()?, m.get(key)?.as_f64()?)))
        .collect()
}

/// A moving average over `window` points, to show a noisy per-step curve's trend.
fn smoothed(points: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let w = window.max(1);
    (0..points.len())
        .map(|i| {
            let lo = i.saturating_sub(w - 1);
            let slice = &points[lo..=i];
            let mean = slice.iter().map(|p| p.1).sum::<f64>() / slice.len() as f64;
            (points[i].0, mean)
        })
        .collect()
}

fn trainer_metrics(dir: &Path) -> Result<Vec<Value>> {
    jsonl::read(&dir.join("metrics.jsonl"))
}

fn save_chart(chart: &Chart, path: &Path) -> Result<()> {
    chart::save(chart, 720, 360, path)
}

fn series(label: &str, points: Vec<(f64, f64)>, colour: usize) -> Series {
    Series {
        label: label.into(),
        points,
        colour: PALETTE[colour % PALETTE.len()],
    }
}

/// Draws the charts; returns (file, caption) of each.
fn charts(dir: &RunDir, out: &Path) -> Result<Vec<(&'static str, &'static str)>> {
    let judge = trainer_metrics(&dir.judge())?;
    let sft = trainer_metrics(&dir.answer_sft())?;
    let dpo = trainer_metrics(&dir.answer_dpo())?;
    let window = (judge.len() / 20).max(1);
    save_chart(
        &Chart {
            title: "reward model: trainer reward".into(),
            x_label: "step".into(),
            y_label: "loss per answer token".into(),
            series: vec![
                series(
                    "train (moving avg)",
                    smoothed(&curve(&judge, "loss"), window),
                    0,
                ),
                series("held-out", curve(&judge, "eval_loss"), 1),
            ],
            y_log: true,
        },
        &out.join("judge_training.svg"),
    )?;
    save_chart(
        &Chart {
            title: "answer model: fine-tuning".into(),
            x_label: "step".into(),
            y_label: "loss per answer token".into(),
            series: vec![series(
                "train (moving avg)",
                smoothed(&curve(&sft, "loss"), (sft.len() / 20).max(1)),
                0,
            )],
            y_log: true,
        },
        &out.join("answer_training.svg"),
    )?;
    let dw = (dpo.len() / 15).max(1);
    save_chart(
        &Chart {
            title: "answer model: trainer dpo".into(),
            x_label: "step".into(),
            y_label: "value".into(),
            series: vec![
                series("loss", smoothed(&curve(&dpo, "loss"), dw), 0),
                series(
                    "rewards/accuracies",
                    smoothed(&curve(&dpo, "rewards/accuracies"), dw),
                    2,
                ),
                series(
                    "rewards/margins",
                    smoothed(&curve(&dpo, "rewards/margins"), dw),
                    3,
                ),
            ],
            y_log: false,
        },
        &out.join("dpo_training.svg"),
    )?;
    let mut charts = vec![
        (
            "judge_training.svg",
            "Reward model trained from random weights on judge data (four tasks, pair and point): loss on the answer tokens, training (moving average) and held-out.",
        ),
        (
            "answer_training.svg",
            "Answer model fine-tuned on a sloppy annotator's answers.",
        ),
        (
            "dpo_training.svg",
            "Answer model DPO on the judge's preference pairs: loss, share of pairs ranked right, reward margin (moving averages).",
        ),
    ];
    let gen = dir.root.join("generator/runs");
    if !dir.step_metrics("generator").is_file() {
        return Ok(charts);
    }
    // Absent when the generator started from the shipped UNet (no pretraining in this run).
    let denoise = if gen.join("denoise/metrics.jsonl").is_file() {
        trainer_metrics(&gen.join("denoise"))?
    } else {
        Vec::new()
    };
    let gen_dpo = trainer_metrics(&gen.join("dpo"))?;
    let offset = denoise.len() as f64;
    let mut lines = Vec::new();
    if !denoise.is_empty() {
        lines.push(series(
            "pretraining (trainer denoise): loss (moving avg)",
            smoothed(&curve(&denoise, "loss"), (denoise.len() / 20).max(1)),
            0,
        ));
    }
    for (name, colour) in [("loss", 2), ("implicit_acc", 3)] {
        lines.push(series(
            &format!("dpo: {name} (moving avg)"),
            smoothed(&curve(&gen_dpo, name), (gen_dpo.len() / 10).max(1))
                .into_iter()
                .map(|(x, y)| (x + offset, y))
                .collect(),
            colour,
        ));
    }
    save_chart(
        &Chart {
            title: "image generator: trainer dpo --kind diffusion".into(),
            x_label: "step".into(),
            y_label: "value".into(),
            series: lines,
            y_log: false,
        },
        &out.join("generator_training.svg"),
    )?;
    charts.push((
        "generator_training.svg",
        "Image generator: Diffusion-DPO on the judge's pairs, from the shipped pretrained UNet (or, after `demo generator --pretrain`, from this run's denoising pretraining, whose steps come first).",
    ));
    Ok(charts)
}

/// Everything the steps measured, in one document.
pub fn summary(dir: &RunDir, settings: &Settings) -> Result<Value> {
    let judge: Value = read_json(&dir.step_metrics("judge_eval"))?;
    let pairs: Value = read_json(&dir.step_metrics("pairs"))?;
    let sft: Value = read_json(&dir.step_metrics("answer_sft"))?;
    let dpo: Value = read_json(&dir.step_metrics("dpo"))?;
    // Absent when the run stopped before `demo generator`.
    let generator: Value = read_json(&dir.step_metrics("generator")).unwrap_or(Value::Null);
    let seconds: Value = read_json(&dir.step_metrics("run")).unwrap_or_else(|_| json!({}));
    Ok(json!({
        "seed": settings.world.seed,
        "preset": settings.preset,
        "judge": judge,
        "pairs": pairs,
        "answers": {
            "before": sft["eval"],
            "after": dpo["eval"],
            "dpo_pairs": dpo["pairs"],
        },
        "generator": generator,
        "seconds": seconds,
    }))
}

/// The first `prompts` captions the generator drew for, each with its candidates before and
/// after Diffusion-DPO (run-relative paths; the same seeds, in order).
fn generator_samples(
    dir: &RunDir,
    settings: &Settings,
    prompts: usize,
) -> Result<Vec<html::SampleRow>> {
    let path = dir.root.join("generator/prompts.jsonl");
    if !dir.step_metrics("generator").is_file() || !path.is_file() {
        return Ok(Vec::new());
    }
    let lines: Vec<Value> = jsonl::read(&path)?;
    Ok(lines
        .iter()
        .take(prompts)
        .filter_map(|l| Some((l["id"].as_str()?, l["prompt"].as_str()?)))
        .map(|(id, prompt)| {
            let images = |which: &str| {
                (0..settings.generator.candidates)
                    .map(|j| format!("generator/samples-{which}/images/{id}_{j}.png"))
                    .filter(|rel| dir.root.join(rel).is_file())
                    .collect()
            };
            html::SampleRow {
                caption: prompt.to_string(),
                before: images("before"),
                after: images("after"),
            }
        })
        .collect())
}

/// Writes `OUT/report/` and returns the table printed.
pub fn run(dir: &RunDir, settings: &Settings) -> Result<String> {
    let out = dir.report();
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let summary = summary(dir, settings)?;
    write_json(&out.join("metrics.json"), &summary)?;
    let text = table::text(&summary);
    let charts = charts(dir, &out)?;
    let judged: Vec<JudgedPair> = jsonl::read(&dir.root.join("pairs/judged.jsonl"))?;
    let samples = generator_samples(dir, settings, 8)?;
    let page = html::render(&html::Page {
        table: &text,
        charts: &charts,
        pairs: &judged,
        per_task: 12,
        summary: &summary,
        samples: &samples,
    });
    let index = out.join("index.html");
    std::fs::write(&index, page).map_err(|e| Error::io(&index, e))?;
    Ok(text)
}
