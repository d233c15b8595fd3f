//! `engine serve` driven over loopback as the RL trainers drive it: Flow-GRPO's exact chat
//! body (PNG, `data:image;base64,`), a Pref-GRPO-style pair body (JPEG, `max_tokens`,
//! `do_sample`), answers equal to `engine score` on the same inputs, `/v1/rank` equal to the
//! round-robin ranking `engine pairs` computes, and the operational rules: 401, 429, 413,
//! refused remote URLs and files, a graceful stop that answers every accepted request.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use unireward_models::judge::{user_turn, Family, Media, Mode, Task};
use unireward_tests::golden_model_dir;
use unireward_tests::http::{http, metric, Reply, ServerProcess};

fn engine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engine"))
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unireward-serve-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A 512x512 picture (the size Flow-GRPO's generators make), different per `seed`.
fn picture(seed: u32, format: image::ImageFormat, path: &Path) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(512, 512, |x, y| {
        image::Rgb([
            ((x * (seed + 1)) % 256) as u8,
            ((y * 3 + seed * 40) % 256) as u8,
            (((x + y) / 4 + seed * 90) % 256) as u8,
        ])
    });
    img.save_with_format(path, format)?;
    Ok(std::fs::read(path)?)
}

fn data_uri(kind: &str, bytes: &[u8]) -> String {
    format!(
        "data:{kind};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// `engine serve` on the golden checkpoint, on a free loopback port.
struct Server(ServerProcess);

impl std::ops::Deref for Server {
    type Target = ServerProcess;

    fn deref(&self) -> &ServerProcess {
        &self.0
    }
}

impl Server {
    fn start(extra: &[&str]) -> Result<Self> {
        Self::start_on(&golden_model_dir()?, extra)
    }

    fn start_on(model: &Path, extra: &[&str]) -> Result<Self> {
        let mut command = engine();
        command
            .args(["serve", "--model"])
            .arg(model)
            .args(["--port", "0"])
            .args(extra)
            .stderr(Stdio::inherit());
        Ok(Self(ServerProcess::spawn(command)?))
    }

    fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill failed");
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(s) = self.0.child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("the server did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn chat_body(content: Value) -> Value {
    json!({"model": "UnifiedReward-7b-v1.5",
        "messages": [{"role": "user", "content": content}], "temperature": 0})
}

fn content_of(reply: &Reply) -> Result<String> {
    if reply.status != 200 {
        bail!("status {}: {}", reply.status, reply.body);
    }
    let v = reply.json()?;
    v["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("no content in {v}"))
}

/// `engine score` on `records` (written as JSONL beside the images), its output lines.
fn engine_score(dir: &Path, records: &[Value], extra: &[&str]) -> Result<Vec<Value>> {
    engine_score_on(&golden_model_dir()?, dir, records, extra)
}

fn engine_score_on(
    model: &Path,
    dir: &Path,
    records: &[Value],
    extra: &[&str],
) -> Result<Vec<Value>> {
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let _ = std::fs::remove_file(&out);
    let lines: Vec<String> = records.iter().map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n") + "\n")?;
    let status = engine()
        .args(["score", "--model"])
        .arg(model)
        .arg("--batch")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .stderr(Stdio::null())
        .status()?;
    // Exit 1: some records are errors (the tiny model writes no verdict when it generates).
    if status.code() == Some(2) {
        bail!("engine score failed");
    }
    std::fs::read_to_string(&out)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Two JSON values equal, numbers within `tol` (batching changes the order of float sums).
fn assert_close(a: &Value, b: &Value, tol: f64, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (
                x.as_f64().unwrap_or(f64::NAN),
                y.as_f64().unwrap_or(f64::NAN),
            );
            assert!((x - y).abs() <= tol, "{at}: {x} vs {y}");
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(
                x.keys().collect::<Vec<_>>(),
                y.keys().collect::<Vec<_>>(),
                "{at}: keys"
            );
            for (k, v) in x {
                assert_close(v, &y[k], tol, &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: length");
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert_close(u, v, tol, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

const NEW_TOKENS: &str = "24";

#[test]
fn flow_grpo_and_pref_grpo_bodies_answer_as_engine_score_does() -> Result<()> {
    let dir = scratch("flow")?;
    let png = picture(1, image::ImageFormat::Png, &dir.join("gen.png"))?;
    let caption = "a red bicycle leaning on a blue wall";
    // The user turn `engine score` writes for an image-generation point request.
    let text = user_turn(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Point,
        caption,
        &[] as &[String],
        Media::Images(1),
    )?;
    assert!(text.starts_with("<image>\n"));
    let server = Server::start(&["--max-new-tokens", NEW_TOKENS])?;

    // Flow-GRPO's request: the image first, the text holding its <image> marker.
    let flow = chat_body(json!([
        {"type": "image_url", "image_url": {"url": data_uri("image", &png)}},
        {"type": "text", "text": text},
    ]));
    let reply = server.post("/v1/chat/completions", &flow)?;
    let answer = content_of(&reply)?;
    let v = reply.json()?;
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], "model",
        "the served name defaults to the model folder's"
    );
    assert!(v["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
    assert!(v["created"].as_u64().is_some());
    let usage = &v["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) > 100);
    let completion = usage["completion_tokens"].as_u64().unwrap_or(0);
    assert!(completion > 0 && completion <= 24);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + completion)
    );
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap_or("");
    assert!(finish == "length" || finish == "stop", "{finish}");
    assert_eq!(reply.header("x-unireward-decoding"), Some("greedy"));

    // engine score --judge generate on the same image and caption: the tiny random model
    // writes no verdict, so its record is the parse error, which quotes the answer.
    let record = json!({"id": "flow", "task": "image_generation", "mode": "point",
        "prompt": caption, "images": ["gen.png"]});
    let cli = engine_score(
        &dir,
        std::slice::from_ref(&record),
        &["--judge", "generate", "--max-new-tokens", NEW_TOKENS],
    )?;
    let error = cli[0]["error"].as_str().unwrap_or("");
    assert!(
        error.ends_with(&format!("{answer:?}")),
        "engine score wrote {error:?}; the server answered {answer:?}"
    );
    // /v1/score in generate mode writes that very record.
    let mut inline = record.clone();
    inline["images"] = json!([data_uri("image/png", &png)]);
    let batch = server.post("/v1/score?judge=generate", &json!([inline.clone()]))?;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.json()?, json!(cli));

    // Fast /v1/score equals engine score's fast record.
    let cli_fast = engine_score(&dir, &[record], &[])?;
    let fast = server.post("/v1/score", &inline)?;
    assert_eq!(fast.status, 200, "{}", fast.body);
    assert_close(&fast.json()?, &cli_fast[0], 1e-5, "fast");

    // The image was sent four times: encoded once.
    let hits = server.metric("unireward_feature_cache_hits_total")?;
    assert!(hits >= 2.0, "{hits} hits: {}", server.get("/metrics")?.body);

    // Pref-GRPO / MixGRPO: JPEG data URIs, no markers, max_tokens and do_sample.
    let a = picture(2, image::ImageFormat::Jpeg, &dir.join("a.jpg"))?;
    let b = picture(3, image::ImageFormat::Jpeg, &dir.join("b.jpg"))?;
    let pair_text = user_turn(
        Family::Llava,
        Task::ImageGeneration,
        Mode::Pair,
        caption,
        &[] as &[String],
        Media::Images(2),
    )?;
    let question = pair_text.replace("<image>", "");
    let question = question.trim_start();
    let pref = json!({"model": "UnifiedReward-7b-v1.5", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri("image/jpeg", &a)}},
        {"type": "image_url", "image_url": {"url": data_uri("image/jpeg", &b)}},
        {"type": "text", "text": pair_text},
    ]}], "max_tokens": 4096, "do_sample": false, "temperature": 0.0});
    let pref_answer = content_of(&server.post("/v1/chat/completions", &pref)?)?;
    let cli = engine_score(
        &dir,
        &[
            json!({"id": "pair", "task": "image_generation", "mode": "pair", "prompt": caption,
            "images": ["a.jpg", "b.jpg"]}),
        ],
        &["--judge", "generate", "--max-new-tokens", NEW_TOKENS],
    )?;
    let error = cli[0]["error"].as_str().unwrap_or("");
    assert!(
        error.ends_with(&format!("{pref_answer:?}")),
        "{error:?} vs {pref_answer:?}"
    );
    // Without markers the images go first, one line each: the LLaVA scripts' layout.
    if pair_text == format!("<image>\n<image>\n{question}") {
        let unmarked = json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri("image/jpeg", &a)}},
            {"type": "image_url", "image_url": {"url": data_uri("image/jpeg", &b)}},
            {"type": "text", "text": question},
        ]}], "do_sample": false});
        assert_eq!(
            content_of(&server.post("/v1/chat/completions", &unmarked)?)?,
            pref_answer
        );
    }
    // Sampling asked: answered greedily, and said so.
    let mut sampled = flow.clone();
    sampled["temperature"] = json!(0.7);
    let reply = server.post("/v1/chat/completions", &sampled)?;
    assert_eq!(content_of(&reply)?, answer);
    assert!(reply
        .header("x-unireward-decoding")
        .is_some_and(|h| h.contains("sampling was asked")));
    Ok(())
}

#[test]
fn bad_requests_are_refused_with_clear_json_errors() -> Result<()> {
    let dir = scratch("refusals")?;
    let png = picture(4, image::ImageFormat::Png, &dir.join("x.png"))?;
    let server = Server::start(&["--api-key", "sekrit", "--max-body-mb", "1"])?;
    let auth = [("Authorization", "Bearer sekrit")];
    let post = |body: &Value| {
        http(
            &server.addr,
            "POST",
            "/v1/chat/completions",
            &auth,
            body.to_string().as_bytes(),
        )
    };
    let body = chat_body(json!([
        {"type": "image_url", "image_url": {"url": data_uri("image", &png)}},
        {"type": "text", "text": "<image>\nRate it."},
    ]));
    // 401 without the key or with another; /health needs none.
    let none = server.post("/v1/chat/completions", &body)?;
    assert_eq!(none.status, 401);
    assert_eq!(none.json()?["error"]["type"], "authentication_error");
    let wrong = http(
        &server.addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer nope")],
        b"{}",
    )?;
    assert_eq!(wrong.status, 401);
    assert_eq!(server.get("/health")?.status, 200);
    let models = http(&server.addr, "GET", "/v1/models", &auth, b"")?;
    assert_eq!(models.json()?["data"][0]["id"], "model");
    assert_eq!(post(&body)?.status, 200);

    let refused = |url: &str| -> Result<String> {
        let b = chat_body(json!([
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": "Rate it."},
        ]));
        let r = post(&b)?;
        assert_eq!(r.status, 400, "{url}: {}", r.body);
        Ok(r.json()?["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_string())
    };
    assert!(refused("https://example.com/cat.png")?.contains("remote media"));
    let secret = dir.join("x.png");
    assert!(refused(&format!("file://{}", secret.display()))?.contains("--allowed-media-dir"));
    assert!(refused(&secret.display().to_string())?.contains("--allowed-media-dir"));
    assert!(refused("data:image;base64,bm90IGFuIGltYWdl")?.contains("not PNG"));
    // Markers that do not match the images.
    let mismatch = chat_body(json!([
        {"type": "image_url", "image_url": {"url": data_uri("image", &png)}},
        {"type": "text", "text": "<image> versus <image>"},
    ]));
    let r = post(&mismatch)?;
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("2 <image>") && r.body.contains("1 image(s)"),
        "{}",
        r.body
    );
    // 413 over the body limit, as JSON.
    let big = vec![b' '; 2 << 20];
    let r = http(&server.addr, "POST", "/v1/chat/completions", &auth, &big)?;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()?["error"]["code"], 413);
    // Requests by route and status are counted.
    let metrics = server.get("/metrics")?.body;
    assert!(
        metrics
            .contains("unireward_requests_total{route=\"/v1/chat/completions\",status=\"401\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("unireward_requests_total{route=\"/v1/chat/completions\",status=\"400\"}")
    );
    Ok(())
}

#[test]
fn concurrent_requests_share_steps_a_full_queue_gets_429_and_a_stop_loses_nothing() -> Result<()> {
    let dir = scratch("load")?;
    let png = picture(5, image::ImageFormat::Png, &dir.join("y.png"))?;
    let mut server = Server::start(&["--max-new-tokens", "400", "--max-queue", "3"])?;
    let body = |n: usize| {
        chat_body(json!([
            {"type": "image_url", "image_url": {"url": data_uri("image", &png)}},
            {"type": "text", "text": format!("<image>\nDescribe picture {n} at length.")},
        ]))
    };
    // Alone first: the answers concurrent requests must equal.
    let alone: Vec<String> = (0..3)
        .map(|n| content_of(&server.post("/v1/chat/completions", &body(n))?))
        .collect::<Result<_>>()?;
    let addr = server.addr.clone();
    let clients: Vec<_> = (0..3)
        .map(|n| {
            let addr = addr.clone();
            let b = body(n).to_string();
            std::thread::spawn(move || {
                http(&addr, "POST", "/v1/chat/completions", &[], b.as_bytes())
            })
        })
        .collect();
    // All three accepted: the queue is full, the next one is turned away.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("unireward_queue_depth")? < 3.0 {
        if Instant::now() > deadline {
            bail!("three requests never were in flight together");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let busy = server.post("/v1/chat/completions", &body(9))?;
    // Wait for the three to share a step before stopping the server.
    let single = |page: &str| metric(page, "unireward_batch_size_bucket{le=\"1\"}").unwrap_or(0.0);
    let calls = |page: &str| metric(page, "unireward_batch_size_count").unwrap_or(0.0);
    let mut batched_steps = 0.0;
    while batched_steps == 0.0 && Instant::now() < deadline {
        let page = server.get("/metrics")?.body;
        batched_steps = calls(&page) - single(&page);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(busy.status, 429, "{}", busy.body);
    assert_eq!(busy.header("retry-after"), Some("1"));
    // SIGTERM now: every accepted request is still answered, then the server exits 0.
    let status = server.terminate()?;
    for (n, c) in clients.into_iter().enumerate() {
        let reply = c.join().map_err(|_| anyhow!("client panicked"))??;
        assert_eq!(
            content_of(&reply)?,
            alone[n],
            "request {n} alone and in company"
        );
    }
    assert!(status.success(), "{status}");
    // The three generated together: some decoder call held more than one sequence.
    assert!(batched_steps > 0.0, "no decoder call held two sequences");
    assert!(
        TcpStream::connect(&addr).is_err(),
        "the server no longer listens"
    );
    Ok(())
}

#[test]
fn rank_answers_every_pair_as_engine_pairs_round_robin_ranks() -> Result<()> {
    use unireward_engine::backend::{Backend, CandleBackend};
    use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
    use unireward_engine::pairs::job::{PairsJob, PairsMedia, PairsRequest};
    use unireward_engine::pairs::{PairOptions, RankingMode, Recipe};
    use unireward_models::judge::sift_templates::sift_resize;
    use unireward_models::preprocess::MediaLoader;
    use unireward_models::tokenize::PromptTokenizer;

    let dir = scratch("rank")?;
    let mut uris = Vec::new();
    let mut paths = Vec::new();
    for seed in 0..4 {
        let path = dir.join(format!("c{seed}.png"));
        uris.push(data_uri(
            "image/png",
            &picture(10 + seed, image::ImageFormat::Png, &path)?,
        ));
        paths.push(path.display().to_string());
    }
    let server = Server::start(&[])?;
    let reply = server.post(
        "/v1/rank",
        &json!({"id": "g1", "task": "image_generation", "prompt": "a lighthouse at dusk", "candidates": uris}),
    )?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json()?;
    assert_eq!(v["id"], "g1");
    assert_eq!(
        v["comparisons"].as_array().map(Vec::len),
        Some(6),
        "C(4, 2) pairs"
    );

    // The library path `engine pairs --ranking round-robin` takes (sift recipe, 512x512).
    let model = golden_model_dir()?;
    let backend = CandleBackend::load(&model, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let tokenizer = PromptTokenizer::load(&model, backend.config())?;
    let judge = Judge::new(
        &backend,
        &tokenizer,
        PromptStyle::default(),
        JudgeMode::Fast,
        64,
    )?;
    let loader = MediaLoader::from_model_dir(&model, backend.config(), 8)?;
    let job = PairsJob {
        judge: &judge,
        media: PairsMedia::Llava(&loader),
        options: PairOptions {
            ranking: RankingMode::RoundRobin,
            recipe: Recipe::Sift,
            ..Default::default()
        },
    };
    let req = PairsRequest::parse(&json!({"task": "image_generation",
        "prompt": "a lighthouse at dusk", "candidates": paths}))
    .map_err(|e| anyhow!(e))?;
    let media = loader.load_resized(&req.media_to_load(), &dir, sift_resize(req.task))?;
    let features = unireward_engine::encode_media::encode_request(&backend, &media)?;
    let ranking = job.round_robin_encoded(&req, features)?;
    let fit = ranking.strengths.ok_or_else(|| anyhow!("no fit"))?;
    for (i, s) in fit.strengths.iter().enumerate() {
        let served = v["candidates"][i]["strength"].as_f64().unwrap_or(f64::NAN);
        assert!((served - s).abs() < 1e-6, "candidate {i}: {served} vs {s}");
        let rate = v["candidates"][i]["win_rate"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=1.0).contains(&rate));
    }
    assert_eq!(v["order"], json!(fit.order()));
    Ok(())
}

#[test]
fn a_request_whose_client_leaves_is_dropped_from_the_batch() -> Result<()> {
    use std::io::Write;
    let dir = scratch("leave")?;
    let png = picture(6, image::ImageFormat::Png, &dir.join("z.png"))?;
    let server = Server::start(&["--max-new-tokens", "4000"])?;
    let body = chat_body(json!([
        {"type": "image_url", "image_url": {"url": data_uri("image", &png)}},
        {"type": "text", "text": "<image>\nDescribe it, at great length."},
    ]))
    .to_string();
    let mut stream = TcpStream::connect(&server.addr)?;
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Dropped while it generates.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("unireward_generated_tokens_total")? < 1.0 {
        if Instant::now() > deadline {
            bail!("the request never started generating");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(stream);
    while server.metric("unireward_cancelled_total")? < 1.0
        || server.metric("unireward_queue_depth")? > 0.0
    {
        if Instant::now() > deadline {
            bail!(
                "the request of a client that left was never dropped: {}",
                server.get("/metrics")?.body
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // It left the running batch: no more tokens are generated for nobody.
    std::thread::sleep(Duration::from_millis(200));
    let settled = server.metric("unireward_generated_tokens_total")?;
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.metric("unireward_generated_tokens_total")?, settled);
    assert!(settled < 4000.0);
    Ok(())
}

#[test]
fn a_video_as_frame_images_answers_as_engine_score_does() -> Result<()> {
    let dir = scratch("video")?;
    let frames: Vec<Vec<u8>> = (0..4)
        .map(|k| {
            picture(
                20 + k,
                image::ImageFormat::Png,
                &dir.join(format!("f{k}.png")),
            )
        })
        .collect::<Result<_>>()?;
    let caption = "a ball rolling across a table";
    // The user turn `engine score` writes for a video-generation point request in frames mode
    // (one <image> line per sampled frame) is the chat text with its <video> marker expanded.
    let sampled = 4;
    let text = user_turn(
        Family::Llava,
        Task::VideoGeneration,
        Mode::Point,
        caption,
        &[] as &[String],
        Media::Images(sampled),
    )?;
    let after_markers = text.replace("<image>\n", "");
    let server = Server::start(&["--max-new-tokens", NEW_TOKENS, "--frames", "4"])?;
    let uris: Vec<String> = frames.iter().map(|f| data_uri("image/png", f)).collect();
    let body = chat_body(json!([
        {"type": "video_url", "video_url": {"url": uris}},
        {"type": "text", "text": format!("<video>\n{after_markers}")},
    ]));
    let answer = content_of(&server.post("/v1/chat/completions", &body)?)?;
    let cli = engine_score(
        &dir,
        &[
            json!({"id": "v", "task": "video_generation", "mode": "point", "prompt": caption,
            "videos": [["f0.png", "f1.png", "f2.png", "f3.png"]]}),
        ],
        &[
            "--judge",
            "generate",
            "--max-new-tokens",
            NEW_TOKENS,
            "--frames",
            "4",
        ],
    )?;
    let error = cli[0]["error"].as_str().unwrap_or("");
    assert!(
        error.ends_with(&format!("{answer:?}")),
        "{error:?} vs {answer:?}"
    );
    Ok(())
}

/// The tiny Qwen2.5-VL-3B checkpoint (real geometry) and the pictures its goldens use.
fn qwen_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl/qwen2_5_vl_3b/model")
}

/// The Qwen3-VL (4b-shaped) checkpoint of `fixtures/qwen3_vl`.
fn qwen3_model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl/qwen3_vl_4b/model")
}

fn qwen_picture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/qwen2_5_vl/media")
        .join(name)
}

/// The user turn `engine score` writes for a Qwen judge of `family`'s prompts, without its
/// leading image markers: the question MixGRPO's UnifiedReward-qwen client sends after its
/// image parts.
fn qwen_question(family: Family, mode: Mode, caption: &str, images: usize) -> Result<String> {
    let text = user_turn(
        family,
        Task::ImageGeneration,
        mode,
        caption,
        &[] as &[String],
        Media::Images(images),
    )?;
    let markers = "<image>\n".repeat(images);
    text.strip_prefix(&markers)
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the Qwen user turn does not start with its markers: {text:?}"))
}

/// A chat answer is what `engine score --judge generate` generated for the same record: its
/// answer's text, or (the tiny model writes no verdict) its parse error, which quotes it.
fn assert_generated(record: &Value, answer: &str) {
    match record["error"].as_str() {
        Some(error) => assert!(
            error.ends_with(&format!("{answer:?}")),
            "engine score wrote {error:?}; the server answered {answer:?}"
        ),
        None => assert_eq!(record["text"].as_str(), Some(answer), "{record}"),
    }
}

/// A Qwen2.5-VL judge behind `engine serve`: MixGRPO's UnifiedReward-qwen body (a JPEG data
/// URI, then the question, `temperature: 0`, `max_tokens: 4096`) and a two-image pair body
/// generate what `engine score --judge generate` generates; `/v1/score` in fast and generate
/// mode writes `engine score`'s records, on pictures of 300x200 and 40x30.
#[test]
fn qwen_requests_answer_as_engine_score_does() -> Result<()> {
    qwen_requests_on("qwen", &qwen_model(), Family::Qwen, &[])
}

/// The same through a Qwen3-VL judge on the 2.0 prompts: its deep-stack features go through the
/// feature cache with the merged ones.
#[test]
fn qwen3_vl_requests_answer_as_engine_score_does() -> Result<()> {
    qwen_requests_on(
        "qwen3",
        &qwen3_model(),
        Family::V2,
        &["--template-family", "2.0"],
    )
}

fn qwen_requests_on(name: &str, model: &Path, family: Family, extra: &[&str]) -> Result<()> {
    let dir = scratch(name)?;
    let model = model.to_path_buf();
    let small = image::open(qwen_picture("300x200.png"))?;
    small
        .to_rgb8()
        .save_with_format(dir.join("small.jpg"), image::ImageFormat::Jpeg)?;
    let jpeg = std::fs::read(dir.join("small.jpg"))?;
    let other = std::fs::read(qwen_picture("40x30.png"))?;
    std::fs::write(dir.join("other.png"), &other)?;
    let caption = "a yellow square on a grey floor";
    let server = Server::start_on(&model, &[&["--max-new-tokens", NEW_TOKENS], extra].concat())?;

    let mix = json!({"model": "UnifiedReward", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri("image/jpeg", &jpeg)}},
        {"type": "text", "text": qwen_question(family, Mode::Point, caption, 1)?},
    ]}], "temperature": 0, "max_tokens": 4096});
    let reply = server.post("/v1/chat/completions", &mix)?;
    let answer = content_of(&reply)?;
    let usage = &reply.json()?["usage"];
    // 300x200 is 10x7 merged patches of 28 px after smart_resize (Qwen3-VL: 10x7 of 32 px),
    // plus the question.
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) > 70, "{usage}");
    let point = json!({"id": "point", "task": "image_generation", "mode": "point",
        "prompt": caption, "images": ["small.jpg"]});
    let generate = [
        &["--judge", "generate", "--max-new-tokens", NEW_TOKENS],
        extra,
    ]
    .concat();
    let cli = engine_score_on(&model, &dir, std::slice::from_ref(&point), &generate)?;
    assert_generated(&cli[0], &answer);

    // Two images (40x30 grows to the processor's smallest grid), the second a Qwen-VL `image`
    // part.
    let pair_body = json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_uri("image/png", &other)}},
        {"type": "image", "image": data_uri("image/jpeg", &jpeg)},
        {"type": "text", "text": qwen_question(family, Mode::Pair, caption, 2)?},
    ]}], "max_tokens": 4096, "do_sample": false});
    let pair_answer = content_of(&server.post("/v1/chat/completions", &pair_body)?)?;
    let pair = json!({"id": "pair", "task": "image_generation", "mode": "pair",
        "prompt": caption, "images": ["other.png", "small.jpg"]});
    let cli_pair = engine_score_on(&model, &dir, std::slice::from_ref(&pair), &generate)?;
    assert_generated(&cli_pair[0], &pair_answer);

    // /v1/score in generate mode writes those very records; in fast mode the fast ones.
    let inline = |record: &Value| {
        let mut r = record.clone();
        r["images"] = match record["mode"].as_str() {
            Some("pair") => json!([data_uri("image/png", &other), data_uri("image/jpeg", &jpeg)]),
            _ => json!([data_uri("image/jpeg", &jpeg)]),
        };
        r
    };
    let records = [point.clone(), pair.clone()];
    let inlined: Vec<Value> = records.iter().map(inline).collect();
    let batch = server.post("/v1/score?judge=generate", &json!(inlined))?;
    assert_eq!(batch.status, 200, "{}", batch.body);
    assert_eq!(batch.json()?, json!([cli[0].clone(), cli_pair[0].clone()]));
    let cli_fast = engine_score_on(&model, &dir, &records, extra)?;
    assert!(
        cli_fast.iter().all(|r| r.get("error").is_none()),
        "{cli_fast:?}"
    );
    let fast = server.post("/v1/score", &json!(inlined))?;
    assert_eq!(fast.status, 200, "{}", fast.body);
    assert_close(&fast.json()?, &json!(cli_fast), 1e-5, "fast");
    // Each picture was sent again and again: encoded once.
    let hits = server.metric("unireward_feature_cache_hits_total")?;
    assert!(hits >= 4.0, "{hits} hits: {}", server.get("/metrics")?.body);
    Ok(())
}

/// `/v1/rank` with a Qwen2.5-VL judge (the inference recipe, images at their own sizes) fits
/// the strengths the library's round robin fits from the same candidates read as `engine
/// pairs` reads them.
#[test]
fn qwen_rank_answers_as_the_round_robin_of_engine_pairs() -> Result<()> {
    use candle_core::{DType, Device};
    use unireward_engine::backend::QwenVlBackend;
    use unireward_engine::judge::{Judge, JudgeMode, PromptStyle};
    use unireward_engine::pairs::job::{PairsJob, PairsMedia, PairsRequest};
    use unireward_engine::pairs::{PairOptions, RankingMode, Recipe};
    use unireward_models::judge::{ChatTemplate, MediaMarkers};
    use unireward_models::preprocess::QwenVlProcessor;
    use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};
    use unireward_models::tokenize::PromptTokenizer;

    let files = [
        "300x200.png",
        "40x30.png",
        "clip_300x200/frame_00.png",
        "clip_300x200/frame_07.png",
    ];
    let mut uris = Vec::new();
    let mut paths = Vec::new();
    for f in files {
        let path = qwen_picture(f);
        uris.push(data_uri("image/png", &std::fs::read(&path)?));
        paths.push(path.display().to_string());
    }
    let prompt = "a yellow square on a grey floor";
    let model = qwen_model();
    let server = Server::start_on(&model, &[])?;
    let reply = server.post(
        "/v1/rank",
        &json!({"id": "q", "task": "image_generation", "prompt": prompt, "candidates": uris}),
    )?;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = reply.json()?;
    assert_eq!(v["comparisons"].as_array().map(Vec::len), Some(6));

    let backend = QwenVlBackend::load(&model, DType::F32, &Device::Cpu)?;
    let (image_pad, video_pad) = backend.model().media_token_ids();
    let tokenizer = PromptTokenizer::load_qwen_vl(&model, image_pad, video_pad)?;
    let style = PromptStyle {
        family: Family::Qwen,
        chat: ChatTemplate::ChatMl,
        markers: MediaMarkers::QwenVl,
        ..Default::default()
    };
    let judge = Judge::with_decoder(&backend, &tokenizer, style, JudgeMode::Fast, 64)?;
    let processor = QwenVlProcessor::from_model_dir(&model)?;
    let job = PairsJob {
        judge: &judge,
        media: PairsMedia::Qwen {
            backend: &backend,
            processor: &processor,
            videos: QwenVideos::Items,
        },
        options: PairOptions {
            ranking: RankingMode::RoundRobin,
            recipe: Recipe::Inference,
            ..Default::default()
        },
    };
    let req = PairsRequest::parse(&json!({"task": "image_generation", "prompt": prompt,
        "candidates": paths}))
    .map_err(|e| anyhow!(e))?;
    let media = QwenMedia::read(
        &processor,
        &req.media_to_load(),
        Path::new("/"),
        QwenVideos::Items,
    )
    .map_err(|e| anyhow!(e))?;
    let features = media.encoded(backend.model().vision())?;
    let ranking = job.round_robin_encoded(&req, features)?;
    let fit = ranking.strengths.ok_or_else(|| anyhow!("no fit"))?;
    println!("Qwen /v1/rank strengths {:?}", fit.strengths);
    for (i, s) in fit.strengths.iter().enumerate() {
        let served = v["candidates"][i]["strength"].as_f64().unwrap_or(f64::NAN);
        assert!((served - s).abs() < 1e-6, "candidate {i}: {served} vs {s}");
    }
    // The candidates are told apart (the comparison above is not of equal numbers).
    let spread = fit.strengths.iter().cloned().fold(f64::MIN, f64::max)
        - fit.strengths.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 1e-3, "strengths {:?}", fit.strengths);
    assert_eq!(v["order"], json!(fit.order()));
    Ok(())
}

/// Concurrent Qwen requests share their decoder calls (prompt passes at their own M-RoPE
/// positions, then steps over a cache with holes) and answer what each answers alone; a bad
/// image among them is a clean error of its own request or record.
#[test]
fn qwen_requests_batched_together_answer_as_alone_and_a_bad_image_fails_alone() -> Result<()> {
    let small = std::fs::read(qwen_picture("300x200.png"))?;
    let tiny = std::fs::read(qwen_picture("40x30.png"))?;
    let server = Server::start_on(&qwen_model(), &["--max-new-tokens", "120"])?;
    // Prompts of different lengths, so that the shorter ones leave holes in a shared cache.
    let body = |n: usize| {
        let picture = [&small, &tiny][n % 2];
        json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri("image/png", picture)}},
            {"type": "text", "text": format!("Describe picture {n} at length.")},
        ]}], "temperature": 0})
    };
    let alone: Vec<String> = (0..3)
        .map(|n| content_of(&server.post("/v1/chat/completions", &body(n))?))
        .collect::<Result<_>>()?;
    let single = |page: &str| metric(page, "unireward_batch_size_bucket{le=\"1\"}").unwrap_or(0.0);
    let calls = |page: &str| metric(page, "unireward_batch_size_count").unwrap_or(0.0);
    let before = server.get("/metrics")?.body;
    let batched_before = calls(&before) - single(&before);

    // A PNG whose header is whole (its size passes the checks) and whose pixels are cut off.
    let mut cut = small.clone();
    cut.truncate(small.len() / 2);
    let addr = server.addr.clone();
    let go = std::sync::Arc::new(std::sync::Barrier::new(4));
    let clients: Vec<_> = (0..4)
        .map(|n| {
            let (addr, go) = (addr.clone(), go.clone());
            let b = match n {
                3 => json!({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": data_uri("image/png", &cut)}},
                    {"type": "text", "text": "Describe it."}]}]}),
                n => body(n),
            }
            .to_string();
            std::thread::spawn(move || {
                go.wait();
                http(&addr, "POST", "/v1/chat/completions", &[], b.as_bytes())
            })
        })
        .collect();
    let mut replies = Vec::new();
    for c in clients {
        replies.push(c.join().map_err(|_| anyhow!("a client panicked"))??);
    }
    for (n, want) in alone.iter().enumerate() {
        assert_eq!(&content_of(&replies[n])?, want, "request {n}");
    }
    let bad = &replies[3];
    assert_eq!(bad.status, 400, "{}", bad.body);
    let message = bad.json()?["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(message.contains(".png"), "{message}");
    let after = server.get("/metrics")?.body;
    assert!(
        calls(&after) - single(&after) > batched_before,
        "no decoder call held more than one sequence: {after}"
    );

    // /v1/score: the bad record is an error record, the others are judged.
    let record = |image: &[u8]| {
        json!({"task": "image_generation", "mode": "point", "prompt": "a yellow square",
               "images": [data_uri("image/png", image)]})
    };
    let scored = server.post(
        "/v1/score",
        &json!([record(&small), record(&cut), record(&tiny)]),
    )?;
    assert_eq!(scored.status, 200, "{}", scored.body);
    let scored = scored.json()?;
    assert!(scored[0]["score"].as_f64().is_some(), "{scored}");
    assert!(
        scored[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains(".png")),
        "{scored}"
    );
    assert!(scored[2]["score"].as_f64().is_some(), "{scored}");
    // The server still answers.
    assert_eq!(
        content_of(&server.post("/v1/chat/completions", &body(0))?)?,
        alone[0]
    );
    Ok(())
}
