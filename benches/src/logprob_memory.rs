//! Peak memory and time of sequence log-probs at Qwen2's vocabulary (152064) over 2048
//! tokens: `log_softmax` + `gather` + `sum` as candle-nn composes them ("plain") against the
//! fused `ops::log_softmax_gather` ("fused"), forward and forward + backward.
//!
//! The input is the logits themselves, `[2048, 152064]` f32 (1.2 GB), as a variable: the
//! lm_head that would produce them (2 GB at hidden 3584) is the same for both variants and
//! is left out. Each measurement runs in a child process of its own (this binary started
//! again with `--child`), so that one variant's freed memory cannot hide the next one's:
//! the child resets its peak resident size (VmHWM) once the inputs exist, and reports the
//! peak minus the resident size at that point.
//!
//! `cargo run --release -p unireward-benches --bin bench-logprob-memory`

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var, D};
use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use unireward_models::ops::log_softmax_gather;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    #[arg(long, default_value_t = 152064)]
    vocab: usize,
    /// Leave out the plain variant's backward (its memory is several times the logits').
    #[arg(long)]
    skip_plain_backward: bool,
    /// Run one measurement in this process and print it as JSON (how the parent starts
    /// its children).
    #[arg(long, value_enum)]
    child: Option<Variant>,
    /// With --child: also run the backward pass.
    #[arg(long)]
    backward: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    Plain,
    Fused,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Fused => "fused",
        }
    }
}

/// Steele, Lea and Flood's SplitMix64: a seeded stream, enough for benchmark inputs.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), from the top 24 bits.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A field of /proc/self/status in MiB (the kernel writes them in kB).
fn proc_status_mib(field: &str) -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{field} missing from /proc/self/status"))?;
    let kb: f64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unreadable {line:?}"))?;
    Ok(kb / 1024.0)
}

/// Sets VmHWM back to the current resident size (Linux ≥ 4.0), so that the peak counts
/// only what comes after; false where the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn run_child(args: &Args, variant: Variant) -> Result<Value> {
    let dev = Device::Cpu;
    // The same inputs in every child, so that the variants' sums and gradients can be
    // compared (candle's CPU generator cannot be seeded).
    let mut rng = SplitMix64(0x5eed);
    let values: Vec<f32> = (0..args.tokens * args.vocab)
        .map(|_| rng.uniform() * 8.0 - 4.0)
        .collect();
    let logits = Var::from_tensor(&Tensor::from_vec(values, (args.tokens, args.vocab), &dev)?)?;
    let labels: Vec<u32> = (0..args.tokens)
        .map(|_| (rng.next() % args.vocab as u64) as u32)
        .collect();
    let labels = Tensor::from_vec(labels, args.tokens, &dev)?;
    let peak_reset = reset_peak();
    let baseline = if peak_reset {
        proc_status_mib("VmRSS")?
    } else {
        proc_status_mib("VmHWM")?
    };

    let t0 = Instant::now();
    let loss = match variant {
        Variant::Plain => candle_nn::ops::log_softmax(logits.as_tensor(), D::Minus1)?
            .gather(&labels.unsqueeze(1)?, 1)?
            .sum_all()?,
        Variant::Fused => log_softmax_gather(logits.as_tensor(), &labels)?.sum_all()?,
    };
    let log_prob_sum = loss.to_scalar::<f32>()?;
    let forward_s = t0.elapsed().as_secs_f64();
    let forward_peak = proc_status_mib("VmHWM")? - baseline;

    let mut out = json!({
        "variant": variant.name(),
        "backward": args.backward,
        "peak_reset": peak_reset,
        "baseline_mib": baseline,
        "forward_s": forward_s,
        "forward_peak_mib": forward_peak,
        "log_prob_sum": log_prob_sum,
    });
    if args.backward {
        let t1 = Instant::now();
        let grads = loss.backward()?;
        let backward_s = t1.elapsed().as_secs_f64();
        let peak = proc_status_mib("VmHWM")? - baseline;
        let grad = grads
            .get(logits.as_tensor())
            .context("no gradient reached the logits")?;
        // Read after the peak: the squares are one more logits-sized tensor.
        let grad_norm = grad.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        out["backward_s"] = json!(backward_s);
        out["peak_mib"] = json!(peak);
        out["grad_norm"] = json!(grad_norm);
    }
    Ok(out)
}

fn spawn_child(args: &Args, variant: Variant, backward: bool) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--child",
        variant.name(),
        "--tokens",
        &args.tokens.to_string(),
        "--vocab",
        &args.vocab.to_string(),
    ]);
    if backward {
        cmd.arg("--backward");
    }
    let output = cmd.output()?;
    if !output.status.success() {
        bail!(
            "{} child ({}) failed: {}\n{}",
            variant.name(),
            if backward { "backward" } else { "forward" },
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().context("the child printed nothing")?;
    Ok(serde_json::from_str(last)?)
}

fn field(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(variant) = args.child {
        println!("{}", run_child(&args, variant)?);
        return Ok(());
    }
    let logits_mib = (args.tokens * args.vocab * 4) as f64 / (1024.0 * 1024.0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "sequence log-probs: logits [{}, {}] f32 = {logits_mib:.0} MiB (a variable); \
         memory above the inputs, one child process per row; load average {}",
        args.tokens,
        args.vocab,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut runs = vec![
        (Variant::Fused, false),
        (Variant::Fused, true),
        (Variant::Plain, false),
    ];
    if !args.skip_plain_backward {
        runs.push((Variant::Plain, true));
    }
    println!(
        "{:<6} {:<9} {:>10} {:>10} {:>10} {:>9} {:>10} {:>14} {:>10}",
        "impl", "pass", "peak MiB", "x logits", "fwd MiB", "fwd s", "bwd s", "sum log p", "|grad|"
    );
    for (variant, backward) in runs {
        let r = spawn_child(&args, variant, backward)?;
        if r.get("peak_reset").and_then(Value::as_bool) == Some(false) {
            println!("(the kernel refused to reset VmHWM: the peak below includes allocating the inputs)");
        }
        let peak = if backward {
            field(&r, "peak_mib")
        } else {
            field(&r, "forward_peak_mib")
        };
        println!(
            "{:<6} {:<9} {:>10.0} {:>10.2} {:>10.0} {:>9.3} {:>10} {:>14.1} {:>10}",
            variant.name(),
            if backward { "fwd+bwd" } else { "fwd" },
            peak,
            peak / logits_mib,
            field(&r, "forward_peak_mib"),
            field(&r, "forward_s"),
            if backward {
                format!("{:.3}", field(&r, "backward_s"))
            } else {
                "-".into()
            },
            field(&r, "log_prob_sum"),
            if backward {
                format!("{:.4}", field(&r, "grad_norm"))
            } else {
                "-".into()
            },
        );
    }
    Ok(())
}
