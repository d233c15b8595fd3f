//! `unireward-export`: the reward model to ONNX.
//!
//!     unireward-export onnx --model DIR --out DIR [--dtype fp32|fp16] [--opset N]

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use unireward_export::graph::DEFAULT_OPSET;
use unireward_export::{export_onnx, ExportOptions, Precision};

#[derive(Parser)]
#[command(
    name = "unireward-export",
    version,
    about = "Export the UnifiedReward judge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Two ONNX graphs (vision.onnx, decoder.onnx) with external weights, the embedding
    /// table, tokenizer and configuration files, and a manifest the engine reads.
    Onnx {
        /// Checkpoint directory (config.json, safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// Directory to write (created if missing; files of an earlier export are replaced).
        #[arg(long)]
        out: PathBuf,
        /// fp16 stores weights and runs matmuls in fp16; normalisations, softmax and the
        /// final log-softmax stay fp32.
        #[arg(long, value_enum, default_value = "fp32")]
        dtype: Precision,
        /// ONNX opset (17 to 20).
        #[arg(long, default_value_t = DEFAULT_OPSET)]
        opset: i64,
    },
}

fn main() -> ExitCode {
    unireward_models::logging::init_logging();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unireward-export: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Onnx {
            model,
            out,
            dtype,
            opset,
        } => {
            let opts = ExportOptions {
                precision: dtype,
                opset,
            };
            let start = Instant::now();
            let report = export_onnx(&model, &out, &opts)
                .with_context(|| format!("exporting {}", model.display()))?;
            let elapsed = start.elapsed();
            let files = report.files()?;
            for (path, len) in &files {
                println!("{:>12}  {}", human_bytes(*len), path.display());
            }
            let total: u64 = files.iter().map(|(_, n)| n).sum();
            println!("{:>12}  total", human_bytes(total));
            for (stage, t) in &report.timings {
                println!("{stage}: {:.2}s", t.as_secs_f64());
            }
            println!(
                "exported {} as {} (opset {}) in {:.2}s",
                model.display(),
                report.manifest.dtype,
                opts.opset,
                elapsed.as_secs_f64()
            );
            Ok(())
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
