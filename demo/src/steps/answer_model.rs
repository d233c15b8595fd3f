//! `demo answer-model` and `demo dpo`: the model that answers questions about images.
//!
//! It is first fine-tuned (`trainer reward`, LLaVA format) on answers written by a sloppy
//! annotator, who often leaves attributes out; then aligned with `trainer dpo --kind vlm` on
//! the preference pairs `engine pairs` built with the judge. Its accuracy is measured the
//! same way before and after: for each held-out question, `engine logprob` scores every
//! candidate answer, and the model's answer is the most probable one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use unireward_models::formats::logprob_record::LogprobRecord;
use unireward_models::formats::pair_record::PairsRecord;
use unireward_models::judge::ChatTemplate;

use crate::error::{Error, Result};
use crate::jsonl::{self, write_json};
use crate::rng::Rng;
use crate::run_dir::RunDir;
use crate::settings::{Settings, TrainSettings};
use crate::tools::{arg, run as run_tool, Tool};
use crate::world::caption::answer_stating;
use crate::world::store::{load, Split};
use crate::world::{said_variant, Medium, SLOTS};

/// The answer model's accuracy on the held-out questions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnswerFigures {
    pub questions: usize,
    /// Share of questions whose most probable answer is the right one.
    pub accuracy: f64,
    /// Mean number of attributes (of 5) the most probable answer gets right.
    pub mean_quality: f64,
    pub failed: usize,
}

fn user_text(question: &str) -> String {
    format!("<image>\n{question}")
}

/// The sloppy annotator's answers: right, except for a share of questions where one to
/// three attributes are left out ("There are some red shapes."). What is stated is right:
/// the annotator is lazy, not blind.
fn annotated(dir: &RunDir, settings: &Settings) -> Result<Vec<Value>> {
    let world = load(&dir.root, Split::AnswerTrain)?;
    let mut rng = Rng::stream(settings.world.seed, "annotator");
    Ok(world
        .understanding
        .iter()
        .filter(|p| p.medium == Medium::Image)
        .map(|p| {
            let quality = if rng.chance(settings.annotator_error) {
                SLOTS - 1 - rng.below(3)
            } else {
                SLOTS
            };
            let said = said_variant(&p.truth, quality, 1.0, &mut rng);
            json!({
                "id": p.id,
                "image": [dir.root.join(&p.media).display().to_string()],
                "conversations": [
                    {"from": "human", "value": user_text(&p.question)},
                    {"from": "gpt", "value": answer_stating(&said.says, &said.stated)},
                ],
            })
        })
        .collect())
}

pub fn trainer_args(
    command: &[&str],
    model: &std::path::Path,
    data: &std::path::Path,
    out: &std::path::Path,
    t: &TrainSettings,
    seed: u64,
) -> Vec<String> {
    let mut args: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    args.extend([
        "--model".into(),
        arg(model),
        "--data".into(),
        arg(data),
        "--out".into(),
        arg(out),
        "--max-steps".into(),
        t.steps.to_string(),
        "--batch-size".into(),
        t.batch_size.to_string(),
        "--lr".into(),
        t.lr.to_string(),
        "--warmup-ratio".into(),
        t.warmup_ratio.to_string(),
        "--schedule".into(),
        t.schedule.clone(),
        "--seed".into(),
        seed.to_string(),
        "--no-progress".into(),
    ]);
    args
}

fn fresh(path: &std::path::Path) -> Result<()> {
    if path.exists() {
        std::fs::remove_dir_all(path).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Scores every candidate answer of the held-out questions under `model`; `which` names
/// the output file.
pub fn evaluate(dir: &RunDir, model: &std::path::Path, which: &str) -> Result<AnswerFigures> {
    let world = load(&dir.root, Split::AnswerEval)?;
    let prompts: Vec<_> = world
        .understanding
        .iter()
        .filter(|p| p.medium == Medium::Image)
        .collect();
    let mut requests = Vec::new();
    for p in &prompts {
        let prompt = ChatTemplate::ChatMl.render(&user_text(&p.question))?;
        for (k, a) in p.answers.iter().enumerate() {
            requests.push(json!({
                "id": format!("{}#{k}", p.id),
                "prompt": prompt,
                "completion": format!("{}<|im_end|>", a.text),
                "images": [dir.root.join(&p.media).display().to_string()],
            }));
        }
    }
    jsonl::write(&dir.answer_eval_requests(), &requests)?;
    let out = dir.answer_logprobs(which);
    crate::tools::ensure_parent(&out)?;
    if out.exists() {
        std::fs::remove_file(&out).map_err(|e| Error::io(&out, e))?;
    }
    let args = vec![
        "logprob".to_string(),
        "--model".into(),
        arg(model),
        "--backend".into(),
        "candle".into(),
        "--input".into(),
        arg(&dir.answer_eval_requests()),
        "--out".into(),
        arg(&out),
    ];
    run_tool(
        Tool::Engine,
        &args,
        &dir.root.join(format!("logs/engine-logprob-{which}.log")),
        &[1],
    )?;
    let lines: Vec<LogprobRecord> = jsonl::read(&out)?;
    let lp: BTreeMap<&str, f64> = lines
        .iter()
        .filter_map(|l| Some((l.id().as_str()?, l.answer()?.logprob)))
        .collect();
    let mut fig = AnswerFigures::default();
    let (mut right, mut quality) = (0usize, 0usize);
    for p in &prompts {
        let scored: Option<Vec<f64>> = (0..p.answers.len())
            .map(|k| lp.get(format!("{}#{k}", p.id).as_str()).copied())
            .collect();
        let Some(scored) = scored else {
            fig.failed += 1;
            continue;
        };
        let best = scored
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(k, _)| k)
            .unwrap_or(0);
        fig.questions += 1;
        right += usize::from(p.answers[best].quality == SLOTS);
        quality += p.answers[best].quality;
    }
    if fig.questions > 0 {
        fig.accuracy = right as f64 / fig.questions as f64;
        fig.mean_quality = quality as f64 / fig.questions as f64;
    }
    Ok(fig)
}

/// `demo answer-model`: the sloppy fine-tune and its accuracy.
pub fn run_sft(dir: &RunDir, settings: &Settings) -> Result<()> {
    let data = annotated(dir, settings)?;
    jsonl::write(&dir.answer_train(), &data)?;
    fresh(&dir.answer_sft())?;
    let args = trainer_args(
        &["reward", "--train-vision"],
        &dir.answer_init(),
        &dir.answer_train(),
        &dir.answer_sft(),
        &settings.answer_training,
        settings.world.seed,
    );
    let done = run_tool(
        Tool::Trainer,
        &args,
        &dir.root.join("logs/trainer-answer.log"),
        &[],
    )?;
    let fig = evaluate(dir, &dir.answer_sft(), "sft")?;
    tracing::info!(
        "demo answer-model: fine-tuned on {} sloppy answers in {:.1}s; accuracy {:.3} ({} questions)",
        data.len(),
        done.elapsed.as_secs_f64(),
        fig.accuracy,
        fig.questions
    );
    write_json(
        &dir.step_metrics("answer_sft"),
        &json!({"seconds": done.elapsed.as_secs_f64(), "examples": data.len(), "eval": fig}),
    )
}

/// `demo dpo`: DPO on the judge's pairs and the accuracy after.
pub fn run_dpo(dir: &RunDir, settings: &Settings) -> Result<()> {
    let pairs: Vec<PairsRecord> = jsonl::read(&dir.dpo_pairs())?;
    if pairs.is_empty() {
        return Err(Error::Missing(format!(
            "{} holds no preference pair (engine pairs dropped every prompt)",
            dir.dpo_pairs().display()
        )));
    }
    fresh(&dir.answer_dpo())?;
    let mut args = trainer_args(
        &["dpo", "--kind", "vlm", "--train-vision"],
        &dir.answer_sft(),
        &dir.dpo_pairs(),
        &dir.answer_dpo(),
        &settings.dpo.train,
        settings.world.seed,
    );
    args.extend([
        "--beta".into(),
        settings.dpo.beta.to_string(),
        "--sft-weight".into(),
        settings.dpo.sft_weight.to_string(),
    ]);
    let done = run_tool(
        Tool::Trainer,
        &args,
        &dir.root.join("logs/trainer-dpo.log"),
        &[],
    )?;
    let after = evaluate(dir, &dir.answer_dpo(), "dpo")?;
    let before: Value = crate::jsonl::read_json(&dir.step_metrics("answer_sft"))?;
    tracing::info!(
        "demo dpo: {} pairs, {:.1}s; accuracy {} -> {:.3}",
        pairs.len(),
        done.elapsed.as_secs_f64(),
        before["eval"]["accuracy"]
            .as_f64()
            .map_or("-".to_string(), |v| format!("{v:.3}")),
        after.accuracy
    );
    write_json(
        &dir.step_metrics("dpo"),
        &json!({"seconds": done.elapsed.as_secs_f64(), "pairs": pairs.len(), "eval": after}),
    )
}
