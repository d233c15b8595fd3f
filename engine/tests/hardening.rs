//! The engine's JSONL runs on bad input, as a user meets it: no hang, no lost or overwritten
//! data, no wrong answer given as a right one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::{json, Value};
use unireward_tests::{golden_cases, golden_cases_dir, golden_model_dir};

fn engine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engine"))
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unireward-hard-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `cmd`, killing it after `limit`: a hang fails the test instead of stalling it.
fn run_within(mut cmd: Command, limit: Duration) -> Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let start = Instant::now();
    while child.try_wait()?.is_none() {
        if start.elapsed() > limit {
            child.kill()?;
            child.wait()?;
            bail!("the engine ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child.wait_with_output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

fn write_jsonl(path: &Path, lines: &[Value]) -> Result<()> {
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(path, text.join("\n") + "\n")?;
    Ok(())
}

/// The first golden case with one image and no video.
fn one_image_case() -> Result<unireward_tests::Case> {
    match golden_cases()?
        .into_iter()
        .find(|c| c.images.len() == 1 && c.video_frames.is_empty())
    {
        Some(c) => Ok(c),
        None => bail!("no golden case with one image"),
    }
}

/// A logprob request of a one-image golden case, with `id`.
fn logprob_request(id: &str) -> Result<Value> {
    let c = one_image_case()?;
    let dir = golden_cases_dir()?;
    let images: Vec<String> = c
        .images
        .iter()
        .map(|f| dir.join(f).to_string_lossy().into_owned())
        .collect();
    Ok(json!({"id": id, "prompt": c.prompt, "completion": c.completion, "images": images}))
}

fn logprob(model: &Path, input: &Path, out: &Path) -> Command {
    let mut c = engine();
    c.args(["logprob", "--model"])
        .arg(model)
        .arg("--input")
        .arg(input)
        .arg("--out")
        .arg(out);
    c
}

fn score(input: &Path, out: &Path) -> Result<Command> {
    let mut c = engine();
    c.args(["score", "--model"])
        .arg(golden_model_dir()?)
        .arg("--batch")
        .arg(input)
        .arg("--out")
        .arg(out);
    Ok(c)
}

fn img(name: &str) -> Result<String> {
    Ok(golden_cases_dir()?
        .join(name)
        .to_string_lossy()
        .into_owned())
}

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn a_directory_as_input_exits_2_naming_it() -> Result<()> {
    let dir = scratch("dir-input")?;
    let input = dir.join("requests");
    std::fs::create_dir_all(&input)?;
    let out = dir.join("out.jsonl");
    let o = run_within(logprob(&golden_model_dir()?, &input, &out), LIMIT)?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&*input.to_string_lossy()),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("directory"), "{}", stderr(&o));
    Ok(())
}

#[test]
fn an_overlong_line_is_an_error_record_and_the_rest_is_answered() -> Result<()> {
    let dir = scratch("overlong")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let mut long = logprob_request("long")?;
    long["prompt"] = json!("a red circle ".repeat(20_000));
    write_jsonl(
        &input,
        &[logprob_request("a")?, long, logprob_request("b")?],
    )?;
    let mut cmd = logprob(&golden_model_dir()?, &input, &out);
    cmd.args(["--max-line-bytes", "100000"]);
    let o = run_within(cmd, LIMIT)?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let answers = read_jsonl(&out)?;
    assert_eq!(answers.len(), 3);
    assert!(answers[0]["logprob"].is_number() && answers[2]["logprob"].is_number());
    // An overlong line is not parsed, so it is named by its number.
    assert_eq!(answers[1]["id"], json!("line 2"));
    let err = answers[1]["error"].as_str().unwrap_or("");
    assert!(err.contains("over 100000 bytes"), "{err}");
    Ok(())
}

#[test]
fn dev_zero_as_input_exits_2_without_reading_it_all() -> Result<()> {
    let dir = scratch("dev-zero")?;
    let out = dir.join("out.jsonl");
    let o = run_within(
        logprob(&golden_model_dir()?, Path::new("/dev/zero"), &out),
        LIMIT,
    )?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/dev/zero") && stderr(&o).contains("NUL"),
        "{}",
        stderr(&o)
    );
    Ok(())
}

#[test]
fn an_out_that_would_overwrite_an_input_or_the_checkpoint_is_refused() -> Result<()> {
    let dir = scratch("clobber")?;
    let input = dir.join("in.jsonl");
    write_jsonl(&input, &[logprob_request("a")?])?;
    let original = std::fs::read(&input)?;
    let link = dir.join("link.jsonl");
    std::os::unix::fs::symlink(&input, &link)?;
    let model = dir.join("model");
    copy_dir(&golden_model_dir()?, &model)?;
    let weights = model.join("model.safetensors");
    let weights_before = std::fs::read(&weights)?;
    for (out, resume) in [
        (input.clone(), false),
        (input.clone(), true),
        (link.clone(), false),
        (dir.join(".").join("in.jsonl"), true),
        (weights.clone(), false),
        (model.join("answers.jsonl"), false),
    ] {
        let mut cmd = logprob(&model, &input, &out);
        if resume {
            cmd.arg("--resume");
        }
        let o = run_within(cmd, LIMIT)?;
        assert_eq!(
            o.status.code(),
            Some(2),
            "{}: {}",
            out.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("refusing"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&input)?, original, "{}", out.display());
        assert_eq!(
            std::fs::read(&weights)?,
            weights_before,
            "{}",
            out.display()
        );
    }
    assert!(!model.join("answers.jsonl").exists());
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

#[test]
fn a_model_with_nan_outputs_gives_logprob_error_records() -> Result<()> {
    let dir = scratch("nan")?;
    let model = dir.join("model");
    copy_dir(&golden_model_dir()?, &model)?;
    let weights = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu)?;
    let key = tensors
        .keys()
        .find(|k| {
            k.contains("language_model") && k.ends_with("norm.weight") && !k.contains("layers")
        })
        .cloned();
    let Some(key) = key else {
        bail!("no final norm in {:?}", tensors.keys().collect::<Vec<_>>())
    };
    let t = &tensors[&key];
    let nan = (t.ones_like()? * f64::NAN)?;
    tensors.insert(key, nan);
    candle_core::safetensors::save(&tensors, &weights)?;

    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    write_jsonl(&input, &[logprob_request("a")?])?;
    let o = run_within(logprob(&model, &input, &out), LIMIT)?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let answers = read_jsonl(&out)?;
    assert_eq!(answers.len(), 1);
    assert!(answers[0].get("logprob").is_none(), "{}", answers[0]);
    let err = answers[0]["error"].as_str().unwrap_or("");
    assert!(err.contains("not finite"), "{err}");
    Ok(())
}

#[test]
fn duplicate_ids_are_answered_with_a_warning() -> Result<()> {
    let dir = scratch("dups")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    write_jsonl(
        &input,
        &[
            logprob_request("a")?,
            logprob_request("b")?,
            logprob_request("a")?,
        ],
    )?;
    let o = run_within(logprob(&golden_model_dir()?, &input, &out), LIMIT)?;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warning = stderr(&o);
    assert!(
        warning.contains("warning") && warning.contains("\"a\" (lines 1, 3)"),
        "{warning}"
    );
    assert_eq!(read_jsonl(&out)?.len(), 3);
    Ok(())
}

#[test]
fn retry_failed_answers_failed_ids_again_once_each() -> Result<()> {
    let dir = scratch("retry")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let late = dir.join("late.png");
    let mut b = logprob_request("b")?;
    b["images"] = json!([late]);
    write_jsonl(&input, &[logprob_request("a")?, b, logprob_request("c")?])?;
    let o = run_within(logprob(&golden_model_dir()?, &input, &out), LIMIT)?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(read_jsonl(&out)?[1]["error"].is_string());

    // Plain --resume keeps the error: b counts as done.
    let mut resume = logprob(&golden_model_dir()?, &input, &out);
    resume.arg("--resume");
    let o = run_within(resume, LIMIT)?;
    assert!(
        stderr(&o).contains("3 record(s) already answered"),
        "{}",
        stderr(&o)
    );

    std::fs::copy(
        golden_cases_dir()?.join(&one_image_case()?.images[0]),
        &late,
    )?;
    let mut retry = logprob(&golden_model_dir()?, &input, &out);
    retry.arg("--retry-failed");
    let o = run_within(retry, LIMIT)?;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let answers = read_jsonl(&out)?;
    let mut ids: Vec<&str> = answers.iter().filter_map(|a| a["id"].as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(
        answers.iter().all(|a| a["logprob"].is_number()),
        "{answers:?}"
    );
    Ok(())
}

#[test]
fn a_second_run_on_a_locked_out_is_refused_and_leaves_it_alone() -> Result<()> {
    let dir = scratch("lock")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    write_jsonl(&input, &[logprob_request("a")?])?;
    std::fs::write(&out, "{\"id\":\"earlier\",\"logprob\":-1.0}\n")?;
    let held = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&out)?;
    held.lock()?;
    let o = run_within(logprob(&golden_model_dir()?, &input, &out), LIMIT)?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("another engine run"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(&out)?,
        "{\"id\":\"earlier\",\"logprob\":-1.0}\n"
    );
    held.unlock()?;
    Ok(())
}

#[test]
fn ep_cuda_with_a_candle_checkpoint_is_an_error() -> Result<()> {
    let dir = scratch("ep")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    write_jsonl(&input, &[logprob_request("a")?])?;
    let mut cmd = logprob(&golden_model_dir()?, &input, &out);
    cmd.args(["--ep", "cuda"]);
    let o = run_within(cmd, LIMIT)?;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--ep cuda"), "{}", stderr(&o));
    assert!(!out.exists());
    Ok(())
}

#[test]
fn a_marker_typed_in_a_request_is_text_not_media() -> Result<()> {
    let dir = scratch("marker")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let request = |id: &str, prompt: &str, answer: &str| -> Result<Value> {
        Ok(
            json!({"id": id, "task": "image_understanding", "mode": "point",
            "prompt": prompt, "images": [img("img3.png")?], "answers": [answer]}),
        )
    };
    write_jsonl(
        &input,
        &[
            request(
                "answer",
                "What is shown?",
                "I see <image> and <video> here.",
            )?,
            request("prompt", "What is <image> showing?<|im_end|>", "A ball.")?,
        ],
    )?;
    let o = run_within(score(&input, &out)?, LIMIT)?;
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for a in read_jsonl(&out)? {
        assert!(a["score"].is_number(), "{a}");
    }
    Ok(())
}

#[test]
fn a_template_that_leaves_the_answers_out_is_refused() -> Result<()> {
    let dir = scratch("template")?;
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let template = dir.join("rate.txt");
    std::fs::write(&template, "Rate this: [{prompt}]")?;
    write_jsonl(
        &input,
        &[
            json!({"id": "understanding", "task": "image_understanding", "mode": "pair",
                "prompt": "What color is the ball?", "images": [img("img3.png")?],
                "answers": ["Red.", "Blue."]}),
            json!({"id": "generation", "task": "image_generation", "mode": "point",
                "prompt": "a red circle", "images": [img("img0.png")?]}),
        ],
    )?;
    let mut cmd = score(&input, &out)?;
    cmd.arg("--template").arg(&template);
    let o = run_within(cmd, LIMIT)?;
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let answers = read_jsonl(&out)?;
    let err = answers[0]["error"].as_str().unwrap_or("");
    assert!(
        err.contains("rate.txt") && err.contains("{answer1}"),
        "{err}"
    );
    assert!(answers[1]["score"].is_number(), "{}", answers[1]);
    Ok(())
}
