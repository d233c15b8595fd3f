//! `demo`: the end-to-end run on a synthetic world, step by step or all at once.

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{Map, Value};
use unireward_demo::jsonl::write_json;
use unireward_demo::report;
use unireward_demo::run_dir::RunDir;
use unireward_demo::settings::Settings;
use unireward_demo::steps;
use unireward_engine::backend::LibrarySearch;

#[derive(Parser)]
#[command(
    name = "demo",
    version,
    about = "UnifiedReward end to end on a synthetic world of coloured shapes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Out {
    /// Run directory: every artefact of every step is kept here.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args)]
struct Start {
    /// Seed of the world, the initial weights and the training order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// full (the README's run) or small (the end-to-end test's).
    #[arg(long, default_value = "full")]
    preset: String,
}

#[derive(Subcommand)]
enum Command {
    /// Everything below in order, then the report.
    Run {
        #[command(flatten)]
        out: Out,
        #[command(flatten)]
        start: Start,
    },
    /// 1. Draw the synthetic world (OUT/settings.json, OUT/world/).
    World {
        #[command(flatten)]
        out: Out,
        #[command(flatten)]
        start: Start,
    },
    /// 2a. Judge data from the world's ground truth (OUT/data/).
    JudgeData {
        #[command(flatten)]
        out: Out,
    },
    /// 2b. Tokenizer and randomly initialised checkpoints (OUT/models/*-init).
    InitModels {
        #[command(flatten)]
        out: Out,
    },
    /// 2c. Train the reward model with `trainer reward` (OUT/models/judge).
    TrainJudge {
        #[command(flatten)]
        out: Out,
    },
    /// 3a. Export it with `unireward-export onnx` (OUT/models/judge-onnx).
    Export {
        #[command(flatten)]
        out: Out,
    },
    /// 3b. Judge the held-out data with `engine score --batch` on ONNX Runtime.
    JudgeEval {
        #[command(flatten)]
        out: Out,
    },
    /// 4. `engine pairs` on fresh prompts with 10 candidates each.
    Pairs {
        #[command(flatten)]
        out: Out,
    },
    /// 5a. Fine-tune the answer model on a sloppy annotator's answers; its accuracy.
    AnswerModel {
        #[command(flatten)]
        out: Out,
    },
    /// 5b. `trainer dpo --kind vlm` on the pairs of step 4; the accuracy after.
    Dpo {
        #[command(flatten)]
        out: Out,
    },
    /// 5c. From the shipped pretrained image generator, sample (`trainer sample`), judge into
    /// pairs (`engine pairs`), Diffusion-DPO, sample again with the same seeds.
    Generator {
        #[command(flatten)]
        out: Out,
        /// Pretrain the generator's UNet from random weights (`trainer denoise`, the run's
        /// settings.json `generator.pretrain`: 2500 steps of 16 at the full preset, 21 min on 2
        /// cores) instead of starting from the one shipped in demo/assets/generator, which was
        /// made so.
        #[arg(long)]
        pretrain: bool,
    },
    /// 6. Metrics table (stdout, OUT/report/metrics.json), curves (PNG), HTML page.
    Report {
        #[command(flatten)]
        out: Out,
    },
}

/// Fails early, before minutes of training, when the engine would not find ONNX Runtime.
fn check_onnx_runtime() -> Result<()> {
    LibrarySearch::from_environment()
        .locate()
        .map(|_| ())
        .context("the engine judges on ONNX Runtime (run scripts/fetch-onnxruntime.sh once)")
}

fn open(out: &Out) -> Result<(RunDir, Settings)> {
    let dir = RunDir::open(&out.out)?;
    let settings = Settings::load(&dir.root)?;
    Ok((dir, settings))
}

fn run_all(out: &Out, start: &Start) -> Result<()> {
    check_onnx_runtime()?;
    let dir = RunDir::open(&out.out)?;
    let settings = Settings::preset(&start.preset, start.seed)?;
    let begin = Instant::now();
    let mut seconds = Map::new();
    let mut timed = |name: &str, f: &mut dyn FnMut() -> unireward_demo::Result<()>| -> Result<()> {
        let t = Instant::now();
        eprintln!("demo run: {name}");
        f().with_context(|| format!("step {name}"))?;
        seconds.insert(name.to_string(), Value::from(t.elapsed().as_secs_f64()));
        Ok(())
    };
    timed("world", &mut || steps::world::run(&dir, &settings))?;
    timed("judge-data", &mut || {
        steps::judge_data::run(&dir, &settings)
    })?;
    timed("init-models", &mut || {
        steps::init_models::run(&dir, &settings)
    })?;
    timed("train-judge", &mut || {
        steps::train_judge::run(&dir, &settings)
    })?;
    timed("export", &mut || steps::export_judge::run(&dir))?;
    timed("judge-eval", &mut || steps::score_heldout::run(&dir))?;
    timed("pairs", &mut || steps::pairs::run(&dir))?;
    timed("answer-model", &mut || {
        steps::answer_model::run_sft(&dir, &settings)
    })?;
    timed("dpo", &mut || steps::answer_model::run_dpo(&dir, &settings))?;
    timed("generator", &mut || {
        steps::generator::run(&dir, &settings, false)
    })?;
    seconds.insert("total".into(), Value::from(begin.elapsed().as_secs_f64()));
    write_json(&dir.step_metrics("run"), &Value::Object(seconds))?;
    let text = report::run(&dir, &settings)?;
    print!("{text}");
    eprintln!(
        "demo run: report in {}",
        dir.report().join("index.html").display()
    );
    Ok(())
}

fn main() -> Result<()> {
    unireward_models::logging::init_logging();
    match Cli::parse().command {
        Command::Run { out, start } => run_all(&out, &start)?,
        Command::World { out, start } => {
            let dir = RunDir::open(&out.out)?;
            steps::world::run(&dir, &Settings::preset(&start.preset, start.seed)?)?;
        }
        Command::JudgeData { out } => {
            let (dir, settings) = open(&out)?;
            steps::judge_data::run(&dir, &settings)?;
        }
        Command::InitModels { out } => {
            let (dir, settings) = open(&out)?;
            steps::init_models::run(&dir, &settings)?;
        }
        Command::TrainJudge { out } => {
            let (dir, settings) = open(&out)?;
            steps::train_judge::run(&dir, &settings)?;
        }
        Command::Export { out } => {
            let (dir, _) = open(&out)?;
            steps::export_judge::run(&dir)?;
        }
        Command::JudgeEval { out } => {
            check_onnx_runtime()?;
            let (dir, _) = open(&out)?;
            steps::score_heldout::run(&dir)?;
        }
        Command::Pairs { out } => {
            check_onnx_runtime()?;
            let (dir, _) = open(&out)?;
            steps::pairs::run(&dir)?;
        }
        Command::AnswerModel { out } => {
            let (dir, settings) = open(&out)?;
            steps::answer_model::run_sft(&dir, &settings)?;
        }
        Command::Dpo { out } => {
            let (dir, settings) = open(&out)?;
            steps::answer_model::run_dpo(&dir, &settings)?;
        }
        Command::Generator { out, pretrain } => {
            let (dir, settings) = open(&out)?;
            steps::generator::run(&dir, &settings, pretrain)?;
        }
        Command::Report { out } => {
            let (dir, settings) = open(&out)?;
            print!("{}", report::run(&dir, &settings)?);
        }
    }
    Ok(())
}
