//! `engine serve` under load on bench-small: N concurrent clients (1, 4, 16, 64) sending
//! Flow-GRPO point requests (a 512x512 PNG as a `data:image;base64,` URI and the LLaVA point
//! prompt), each a distinct image. Two workloads:
//!
//! - fast `/v1/score`, against `engine score --batch` on the same records (the library's
//!   score job in this process, so that model loading is not timed);
//! - chat completions (greedy, `--new-tokens` new tokens), against the same requests sent
//!   one at a time.
//!
//! Per level: requests/s, p50 / p99 latency, and the mean sequences per decoder call (from
//! the server's /metrics). The server is the `engine` binary next to this one:
//!
//! `cargo build --release -p unireward-engine --bin engine && cargo run --release -p unireward-benches --bin bench-serve`

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench_model;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use candle_core::{DType, Device};
use clap::Parser;
use serde_json::{json, Value};
use unireward_engine::backend::{Backend, CandleBackend};
use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
use unireward_engine::pipeline::RunOptions;
use unireward_engine::score::ScoreJob;
use unireward_models::judge::{user_turn, Family, Media, Mode, Task};
use unireward_models::preprocess::MediaLoader;
use unireward_models::tokenize::PromptTokenizer;
use unireward_tests::http::{http, metric, ServerProcess};

#[derive(Parser)]
struct Args {
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    clients: Vec<usize>,
    /// Fast score requests per level.
    #[arg(long, default_value_t = 64)]
    score_requests: usize,
    /// Chat requests per level (at least one per client).
    #[arg(long, default_value_t = 16)]
    chat_requests: usize,
    /// Tokens each chat answer generates.
    #[arg(long, default_value_t = 100)]
    new_tokens: usize,
    /// The `engine` binary (default: beside this one).
    #[arg(long)]
    engine: Option<PathBuf>,
}

/// A 512x512 picture, different per `k`.
fn picture(k: usize, path: &Path) -> Result<Vec<u8>> {
    let k = k as u32;
    image::RgbImage::from_fn(512, 512, |x, y| {
        image::Rgb([
            ((x * (k % 7 + 1) + k * 13) % 256) as u8,
            ((y * 3 + k * 41) % 256) as u8,
            (((x + y) / 4 + k * 89) % 256) as u8,
        ])
    })
    .save_with_format(path, image::ImageFormat::Png)?;
    Ok(std::fs::read(path)?)
}

fn start_server(engine: &Path, model: &Path, new_tokens: usize) -> Result<ServerProcess> {
    let mut command = Command::new(engine);
    command
        .args(["serve", "--model"])
        .arg(model)
        .args([
            "--port",
            "0",
            "--max-queue",
            "4096",
            "--feature-cache-mb",
            "0",
        ])
        .args(["--max-new-tokens", &new_tokens.to_string()])
        .stderr(Stdio::null());
    ServerProcess::spawn(command).with_context(|| format!("starting {}", engine.display()))
}

struct Level {
    clients: usize,
    requests: usize,
    seconds: f64,
    p50: f64,
    p99: f64,
    mean_batch: f64,
}

impl Level {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

fn batch_totals(addr: &str) -> Result<(f64, f64)> {
    let page = http(addr, "GET", "/metrics", &[], b"")?.body;
    let sum = metric(&page, "unireward_batch_size_sum").unwrap_or(0.0);
    let count = metric(&page, "unireward_batch_size_count").unwrap_or(0.0);
    Ok((sum, count))
}

/// `bodies` sent by `clients` threads, each taking the next unsent body until none is left.
fn drive(
    addr: &str,
    path: &str,
    bodies: &[String],
    clients: usize,
    check: fn(&Value) -> bool,
) -> Result<Level> {
    let (sum0, count0) = batch_totals(addr)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let mut latencies: Vec<f64> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> Result<Vec<f64>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(body) = bodies.get(i) else {
                            return Ok(mine);
                        };
                        let t0 = Instant::now();
                        let reply = http(addr, "POST", path, &[], body.as_bytes())?;
                        if reply.status != 200 || !check(&reply.json()?) {
                            bail!("{path}: {} {}", reply.status, reply.body);
                        }
                        mine.push(t0.elapsed().as_secs_f64());
                    }
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow!("a client panicked"))??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let (sum1, count1) = batch_totals(addr)?;
    latencies.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Level {
        clients,
        requests: bodies.len(),
        seconds,
        p50: at(0.5),
        p99: at(0.99),
        mean_batch: (sum1 - sum0) / (count1 - count0).max(1.0),
    })
}

fn print_level(l: &Level, versus: f64, versus_name: &str) {
    println!(
        "  {:>3} clients: {:>3} requests in {:6.2} s = {:6.2} req/s  p50 {:6.3} s  p99 {:6.3} s  mean batch {:5.2}  = {:.2}x {versus_name}",
        l.clients, l.requests, l.seconds, l.rate(), l.p50, l.p99, l.mean_batch, l.rate() / versus
    );
}

fn main() -> Result<()> {
    let args = Args::parse();
    let engine = match &args.engine {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no folder for this binary"))?
            .join("engine"),
    };
    if !engine.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p unireward-engine --bin engine)",
            engine.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("unireward-bench-serve-{}", std::process::id()));
    let model_dir = dir.join("model");
    bench_model::write_bench_small(&model_dir)?;
    let caption = |k: usize| format!("a striped pattern number {k}");
    let most = args
        .score_requests
        .max(args.chat_requests)
        .max(args.clients.iter().copied().max().unwrap_or(1));
    let mut uris = Vec::new();
    let mut records = Vec::new();
    for k in 0..most {
        let path = dir.join(format!("img{k}.png"));
        let png = picture(k, &path)?;
        uris.push(format!(
            "data:image;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(&png)
        ));
        records.push(json!({"id": k, "task": "image_generation", "mode": "point",
            "prompt": caption(k), "images": [path.to_string_lossy()]}));
    }

    // engine score --batch on the score records: the reference for fast /v1/score.
    let backend = CandleBackend::load(&model_dir, DType::F32, &Device::Cpu)?;
    let tokenizer = PromptTokenizer::load(&model_dir, backend.config())?;
    let loader = MediaLoader::from_model_dir(&model_dir, backend.config(), 8)?;
    let judge = Judge::new(
        &backend,
        &tokenizer,
        PromptStyle::default(),
        JudgeMode::Fast,
        64,
    )?;
    let job = ScoreJob {
        judge: &judge,
        media: &loader,
        token_budget: 4096,
    };
    let input = dir.join("score.jsonl");
    let lines: Vec<String> = records[..args.score_requests]
        .iter()
        .map(Value::to_string)
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n")?;
    let t0 = Instant::now();
    let summary = job.run(&input, &dir.join("score_out.jsonl"), &RunOptions::default())?;
    let batch_rate = args.score_requests as f64 / t0.elapsed().as_secs_f64();
    if summary.failed > 0 {
        bail!("engine score failed {} records", summary.failed);
    }
    // The in-process model is no longer needed: free its memory before the server loads its own.
    drop(judge);
    drop(backend);

    let server = start_server(&engine, &model_dir, args.new_tokens)?;
    println!(
        "bench-serve on bench-small, {} ({} new tokens per chat answer)",
        engine.display(),
        args.new_tokens
    );
    println!(
        "fast /v1/score, {} Flow-GRPO point records (512x512 PNG data URIs), one per request",
        args.score_requests
    );
    println!("  engine score --batch (in process): {batch_rate:.2} records/s");
    let score_bodies: Vec<String> = records[..args.score_requests]
        .iter()
        .zip(&uris)
        .map(|(r, uri)| {
            let mut r = r.clone();
            r["images"] = json!([uri]);
            r.to_string()
        })
        .collect();
    for &c in &args.clients {
        let level = drive(&server.addr, "/v1/score", &score_bodies, c, |v| {
            v["score"].is_number()
        })?;
        print_level(&level, batch_rate, "engine score --batch");
    }

    println!(
        "chat completions, Flow-GRPO bodies, greedy {} new tokens",
        args.new_tokens
    );
    let chat_body = |k: usize| -> Result<String> {
        let text = user_turn(
            Family::Llava,
            Task::ImageGeneration,
            Mode::Point,
            &caption(k),
            &[] as &[String],
            Media::Images(1),
        )?;
        Ok(
            json!({"model": "UnifiedReward-7b-v1.5", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uris[k]}},
            {"type": "text", "text": text}]}], "temperature": 0, "max_tokens": args.new_tokens})
            .to_string(),
        )
    };
    let one_at_a_time = {
        let bodies: Vec<String> = (0..args.chat_requests.min(8))
            .map(chat_body)
            .collect::<Result<_>>()?;
        drive(&server.addr, "/v1/chat/completions", &bodies, 1, |v| {
            v["choices"][0]["message"]["content"].is_string()
        })?
    };
    let serial = one_at_a_time.rate();
    print_level(&one_at_a_time, serial, "one at a time");
    for &c in args.clients.iter().filter(|&&c| c > 1) {
        let n = args.chat_requests.max(c);
        let bodies: Vec<String> = (0..n).map(|k| chat_body(k % most)).collect::<Result<_>>()?;
        let level = drive(&server.addr, "/v1/chat/completions", &bodies, c, |v| {
            v["choices"][0]["message"]["content"].is_string()
        })?;
        print_level(&level, serial, "one at a time");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
