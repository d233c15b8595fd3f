//! `demo pairs`: `engine pairs` on the fresh prompts (10 candidates each) with the trained
//! judge; how often the chosen candidate is truly the better one. The understanding pairs
//! become the answer model's DPO data.
//!
//! This step runs the engine's candle backend on the same weights the ONNX export holds.
//! Both backends score continuations from a KV cache and build the same pairs from the full
//! preset's 80 prompts, but on a model this small ONNX Runtime's per-call overhead shows:
//! 29 s against candle's 20 s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use unireward_models::formats::pair_record::{PairsAnswer, PairsRecord, Turns};
use unireward_models::formats::record::Record;
use unireward_models::judge::Task;

use crate::error::Result;
use crate::jsonl::{self, write_json};
use crate::run_dir::RunDir;
use crate::tools::{arg, run as run_tool, Tool};
use crate::world::store::{load, Split};
use crate::world::Medium;

/// One built pair, looked up in the world: what the judge chose and how good each side is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgedPair {
    pub id: String,
    pub task: Task,
    pub prompt: String,
    /// Run-relative media of the question (understanding) or of the candidates (generation).
    pub chosen: String,
    pub rejected: String,
    pub question_media: Option<String>,
    pub chosen_quality: usize,
    pub rejected_quality: usize,
    pub best_quality: usize,
}

/// Per-task figures of pair construction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairFigures {
    pub prompts: usize,
    pub pairs: usize,
    pub dropped: usize,
    pub failed: usize,
    /// Share of built pairs whose chosen candidate is truly better than the rejected one.
    pub chosen_truly_better: Option<f64>,
    /// Share of built pairs whose chosen candidate is the prompt's best.
    pub chosen_is_best: Option<f64>,
    pub mean_chosen_quality: Option<f64>,
    pub mean_rejected_quality: Option<f64>,
}

fn task_of(medium: Medium, generation: bool) -> Task {
    match (medium, generation) {
        (Medium::Image, true) => Task::ImageGeneration,
        (Medium::Video, true) => Task::VideoGeneration,
        (Medium::Image, false) => Task::ImageUnderstanding,
        (Medium::Video, false) => Task::VideoUnderstanding,
    }
}

/// What a request's candidates are and how good each is.
struct Known {
    task: Task,
    prompt: String,
    question_media: Option<String>,
    /// Candidate as written in the request → (run-relative form, quality).
    candidates: BTreeMap<String, (String, usize)>,
}

pub fn run(dir: &RunDir) -> Result<()> {
    let world = load(&dir.root, Split::Fresh)?;
    let mut requests: Vec<Value> = Vec::new();
    let mut known: BTreeMap<String, Known> = BTreeMap::new();
    for p in &world.generation {
        let task = task_of(p.medium, true);
        let paths: Vec<String> = p
            .candidates
            .iter()
            .map(|c| dir.root.join(&c.media).display().to_string())
            .collect();
        requests.push(json!({"id": p.id, "task": task, "prompt": p.caption, "candidates": paths}));
        known.insert(
            p.id.clone(),
            Known {
                task,
                prompt: p.caption.clone(),
                question_media: None,
                candidates: paths
                    .iter()
                    .zip(&p.candidates)
                    .map(|(abs, c)| (abs.clone(), (c.media.clone(), c.quality)))
                    .collect(),
            },
        );
    }
    for p in &world.understanding {
        let task = task_of(p.medium, false);
        let media = dir.root.join(&p.media).display().to_string();
        let texts: Vec<String> = p.answers.iter().map(|a| a.text.clone()).collect();
        let mut req = json!({"id": p.id, "task": task, "prompt": p.question, "candidates": texts});
        match p.medium {
            Medium::Image => req["images"] = json!([media]),
            Medium::Video => req["videos"] = json!(media),
        }
        requests.push(req);
        known.insert(
            p.id.clone(),
            Known {
                task,
                prompt: p.question.clone(),
                question_media: Some(p.media.clone()),
                candidates: p
                    .answers
                    .iter()
                    .map(|a| (a.text.clone(), (a.text.clone(), a.quality)))
                    .collect(),
            },
        );
    }
    jsonl::write(&dir.pairs_requests(), &requests)?;
    let out = dir.pairs_out();
    crate::tools::ensure_parent(&out)?;
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| crate::Error::io(&out, e))?;
    }
    let args = vec![
        "pairs".to_string(),
        arg(&dir.pairs_requests()),
        "--model".into(),
        arg(&dir.judge()),
        "--backend".into(),
        "candle".into(),
        // The demo's judge learnt the inference scripts' prompts on 32 px renderings
        // (`demo judge-data`); the DPO-data scripts' 512 px resize and 1-10 prompt are for
        // the real checkpoints, which were trained on them.
        "--recipe".into(),
        "inference".into(),
        // ... and its videos through the trainer's pooled `<video>` path.
        "--video-mode".into(),
        "pooled".into(),
        "--out".into(),
        arg(&out),
    ];
    let done = run_tool(
        Tool::Engine,
        &args,
        &dir.root.join("logs/engine-pairs.log"),
        &[1],
    )?;
    let lines: Vec<PairsRecord> = jsonl::read(&out)?;

    let mut figures: BTreeMap<String, PairFigures> = BTreeMap::new();
    let mut judged: Vec<JudgedPair> = Vec::new();
    let mut dpo: Vec<PairsRecord> = Vec::new();
    for line in &lines {
        let Some(k) = line
            .id()
            .as_str()
            .and_then(|id| known.get(id).map(|k| (id, k)))
        else {
            continue;
        };
        let (id, k) = k;
        let fig = figures.entry(k.task.to_string()).or_default();
        fig.prompts += 1;
        let pair = match line {
            Record::Error { .. } => {
                fig.failed += 1;
                continue;
            }
            Record::Answer {
                answer: PairsAnswer::Dropped(_),
                ..
            } => {
                fig.dropped += 1;
                continue;
            }
            Record::Answer {
                answer: PairsAnswer::Pair(pair),
                ..
            } => pair,
        };
        // Plain pairs name their candidates as the request gave them.
        let side = |turns: &Turns| match turns {
            Turns::Text(c) => k.candidates.get(c).cloned(),
            Turns::Messages(_) => None,
        };
        let (Some((chosen, cq)), Some((rejected, rq))) = (side(&pair.chosen), side(&pair.rejected))
        else {
            fig.failed += 1;
            continue;
        };
        fig.pairs += 1;
        let best = k.candidates.values().map(|(_, q)| *q).max().unwrap_or(0);
        judged.push(JudgedPair {
            id: id.to_string(),
            task: k.task,
            prompt: k.prompt.clone(),
            chosen,
            rejected,
            question_media: k.question_media.clone(),
            chosen_quality: cq,
            rejected_quality: rq,
            best_quality: best,
        });
        if !k.task.is_generation() {
            dpo.push(line.clone());
        }
    }
    for (task, fig) in figures.iter_mut() {
        let mine: Vec<&JudgedPair> = judged.iter().filter(|j| j.task.as_str() == task).collect();
        if mine.is_empty() {
            continue;
        }
        let n = mine.len() as f64;
        let share =
            |f: &dyn Fn(&JudgedPair) -> bool| mine.iter().filter(|j| f(j)).count() as f64 / n;
        fig.chosen_truly_better = Some(share(&|j| j.chosen_quality > j.rejected_quality));
        fig.chosen_is_best = Some(share(&|j| j.chosen_quality == j.best_quality));
        fig.mean_chosen_quality =
            Some(mine.iter().map(|j| j.chosen_quality as f64).sum::<f64>() / n);
        fig.mean_rejected_quality =
            Some(mine.iter().map(|j| j.rejected_quality as f64).sum::<f64>() / n);
    }
    for (task, f) in &figures {
        tracing::info!(
            "demo pairs: {task:<20} {} pairs from {} prompts ({} dropped, {} failed); chosen truly better {}",
            f.pairs,
            f.prompts,
            f.dropped,
            f.failed,
            f.chosen_truly_better
                .map_or("-".to_string(), |v| format!("{v:.3}"))
        );
    }
    jsonl::write(&dir.dpo_pairs(), &dpo)?;
    jsonl::write(&dir.root.join("pairs/judged.jsonl"), &judged)?;
    write_json(
        &dir.step_metrics("pairs"),
        &json!({"seconds": done.elapsed.as_secs_f64(), "tasks": figures}),
    )
}
