//! `demo train-judge`: `trainer reward` trains the randomly initialised judge on the judge
//! data, vision tower included, in the data file's order (batches of one template each).

use serde_json::json;

use crate::error::{Error, Result};
use crate::jsonl::write_json;
use crate::run_dir::RunDir;
use crate::settings::Settings;
use crate::steps::answer_model::trainer_args;
use crate::tools::{arg, run as run_tool, Tool};

pub fn run(dir: &RunDir, settings: &Settings) -> Result<()> {
    let out = dir.judge();
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    }
    let t = &settings.judge_training;
    let mut args = trainer_args(
        &["reward", "--train-vision", "--no-shuffle"],
        &dir.judge_init(),
        &dir.judge_train(),
        &out,
        t,
        settings.world.seed,
    );
    args.extend([
        "--eval-data".into(),
        arg(&dir.judge_eval_loss()),
        "--eval-every".into(),
        (t.steps / 6).max(1).to_string(),
    ]);
    let done = run_tool(
        Tool::Trainer,
        &args,
        &dir.root.join("logs/trainer-judge.log"),
        &[],
    )?;
    tracing::info!(
        "demo train-judge: {} steps of {} in {:.1}s; weights in {}",
        t.steps,
        t.batch_size,
        done.elapsed.as_secs_f64(),
        out.display()
    );
    write_json(
        &dir.step_metrics("train_judge"),
        &json!({"seconds": done.elapsed.as_secs_f64(), "steps": t.steps, "batch_size": t.batch_size}),
    )
}
