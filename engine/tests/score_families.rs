//! `engine score` with the newer template families on the tiny golden LLaVA checkpoint: the
//! 2.0 and ACS answers' per-dimension `scores` in fast mode (one prompt pass), the parse error
//! a random model's generated text gets in generate mode, Think refused in fast mode unless
//! asked for, and Edit / Flex checkpoints refused by name.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Result;
use serde_json::{json, Value};
use unireward_tests::{golden_cases_dir, golden_model_dir};

fn engine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_engine"))
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("unireward-families-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn img(name: &str) -> Result<String> {
    Ok(golden_cases_dir()?
        .join(name)
        .to_string_lossy()
        .into_owned())
}

fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// Runs `engine score` over `lines` with `args`; the output records and the process output.
fn score(dir: &Path, model: &Path, lines: &[Value], args: &[&str]) -> Result<(Vec<Value>, Output)> {
    let input = dir.join("in.jsonl");
    let out = dir.join("out.jsonl");
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&input, text.join("\n") + "\n")?;
    if out.exists() {
        std::fs::remove_file(&out)?;
    }
    let output = engine()
        .args(["score", "--model"])
        .arg(model)
        .arg("--batch")
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()?;
    let records = if out.exists() {
        read_jsonl(&out)?
    } else {
        Vec::new()
    };
    Ok((records, output))
}

fn generation_requests() -> Result<Vec<Value>> {
    Ok(vec![
        json!({"id": "point", "task": "image_generation", "mode": "point",
               "prompt": "a red circle", "images": [img("img0.png")?]}),
        json!({"id": "pair", "task": "image_generation", "mode": "pair",
               "prompt": "a red circle", "images": [img("img0.png")?, img("img1.png")?]}),
        json!({"id": "video-point", "task": "video_generation", "mode": "point",
               "prompt": "a ball rolls",
               "videos": [[img("frame0.png")?, img("frame1.png")?, img("frame2.png")?, img("frame3.png")?]]}),
    ])
}

#[test]
fn v2_fast_records_carry_per_dimension_scores() -> Result<()> {
    let dir = scratch("v2-fast")?;
    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &generation_requests()?,
        &["--template-family", "2.0"],
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(records.len(), 3);

    // Image point (ACS): alignment, coherence, style, each an expectation on 1..=5 read to
    // the first decimal; the overall score is their mean.
    let point = &records[0];
    let scores = point["scores"].as_object().expect("scores");
    let keys: Vec<&str> = scores.keys().map(String::as_str).collect();
    assert_eq!(keys, ["alignment", "coherence", "style"]);
    let values: Vec<f64> = scores.values().map(|v| v.as_f64().unwrap()).collect();
    for v in &values {
        assert!((1.0..=5.9).contains(v), "{point}");
    }
    let mean = values.iter().sum::<f64>() / 3.0;
    assert!(
        (point["score"].as_f64().unwrap() - mean).abs() < 1e-9,
        "{point}"
    );
    assert!(point["score_argmax"].is_number());

    // Pair: each dimension's shares sum to 1; the probabilities are their mean.
    let pair = &records[1];
    let shares = pair["scores"].as_object().expect("pair scores");
    assert_eq!(shares.len(), 3);
    let mut first_mean = 0.0;
    for (key, s) in shares {
        let (f, g) = (s["first"].as_f64().unwrap(), s["second"].as_f64().unwrap());
        assert!(
            (0.0..=1.0).contains(&f) && (f + g - 1.0).abs() < 1e-9,
            "{key}: {s}"
        );
        first_mean += f / 3.0;
    }
    let probs = &pair["probs"];
    assert!(
        (probs["first"].as_f64().unwrap() - first_mean).abs() < 1e-9,
        "{pair}"
    );
    assert_eq!(probs["tie"].as_f64(), Some(0.0));
    assert!(pair["verdict"].is_string());

    // Video point (APS): physics instead of coherence.
    let video = records[2]["scores"].as_object().expect("video scores");
    let keys: Vec<&str> = video.keys().map(String::as_str).collect();
    assert_eq!(keys, ["alignment", "physics", "style"]);
    Ok(())
}

#[test]
fn acs_fast_point_scores_whole_numbers_per_dimension() -> Result<()> {
    let dir = scratch("acs-fast")?;
    let requests = generation_requests()?;
    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &requests[..2],
        &["--template-family", "llava-acs"],
    )?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let scores = records[0]["scores"].as_object().expect("scores");
    assert_eq!(scores.len(), 3);
    for v in scores.values() {
        assert!((1.0..=5.0).contains(&v.as_f64().unwrap()));
    }
    // The pair keeps the LLaVA verdict sentences: no dimensions.
    assert!(records[1].get("scores").is_none() && records[1]["verdict"].is_string());
    Ok(())
}

#[test]
fn v2_generate_mode_names_the_missing_dimension_in_the_record() -> Result<()> {
    let dir = scratch("v2-generate")?;
    let requests = generation_requests()?;
    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &requests[..2],
        &[
            "--template-family",
            "2.0",
            "--judge",
            "generate",
            "--max-new-tokens",
            "6",
        ],
    )?;
    // The random model writes no "Alignment Score (1-5): X": both records are errors that say
    // what was looked for, the rest of the run goes on.
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["id"], json!("point"));
    let point_err = records[0]["error"].as_str().expect("point error");
    assert!(point_err.contains("Alignment Score (1-5):"), "{point_err}");
    let pair_err = records[1]["error"].as_str().expect("pair error");
    assert!(
        pair_err.contains("\"Alignment Score:\" section"),
        "{pair_err}"
    );
    Ok(())
}

#[test]
fn think_is_refused_in_fast_mode_unless_asked_for() -> Result<()> {
    let dir = scratch("think")?;
    let requests = generation_requests()?;
    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &requests[1..2],
        &["--template-family", "think"],
    )?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("generate mode") && stderr.contains("--allow-fast-think"),
        "{stderr}"
    );
    assert!(records.is_empty());

    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &requests[..2],
        &["--template-family", "think", "--allow-fast-think"],
    )?;
    assert_eq!(output.status.code(), Some(1));
    // Think has no point prompt: that record says so; the pair is judged.
    let point_err = records[0]["error"].as_str().expect("point error");
    assert!(point_err.contains("pairs only"), "{point_err}");
    let probs = &records[1]["probs"];
    let (f, s) = (
        probs["first"].as_f64().unwrap(),
        probs["second"].as_f64().unwrap(),
    );
    assert!((f + s - 1.0).abs() < 1e-9 && probs["tie"].as_f64() == Some(0.0));

    // Generate mode: the random model's few tokens hold no <answer>, and the record says so.
    let (records, output) = score(
        &dir,
        &golden_model_dir()?,
        &requests[1..2],
        &[
            "--template-family",
            "think",
            "--judge",
            "generate",
            "--max-new-tokens",
            "6",
        ],
    )?;
    assert_eq!(output.status.code(), Some(1));
    let err = records[0]["error"].as_str().expect("think error");
    assert!(
        err.contains("<answer> tag") && err.contains("Image 1 is better"),
        "{err}"
    );
    Ok(())
}

#[test]
fn pairs_with_the_2_0_inference_prompts() -> Result<()> {
    let dir = scratch("pairs-v2")?;
    let cands: Vec<String> = ["img0.png", "img1.png", "img2.png", "img3.png"]
        .iter()
        .map(|f| img(f))
        .collect::<Result<_>>()?;
    let input = dir.join("in.jsonl");
    let out = dir.join("pairs.jsonl");
    std::fs::write(
        &input,
        json!({"id": "p0", "task": "image_generation", "prompt": "a red circle", "candidates": cands})
            .to_string(),
    )?;
    // The DPO-data scripts' prompts are LLaVA 1.0 ones: refused with another family.
    let refused = engine()
        .arg("pairs")
        .arg(&input)
        .arg("--model")
        .arg(golden_model_dir()?)
        .arg("--out")
        .arg(&out)
        .args(["--template-family", "2.0"])
        .output()?;
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--recipe inference"));
    for ranking in ["disjoint", "round-robin"] {
        let status = engine()
            .arg("pairs")
            .arg(&input)
            .arg("--model")
            .arg(golden_model_dir()?)
            .arg("--out")
            .arg(&out)
            .args(["--template-family", "2.0", "--recipe", "inference"])
            .args(["--ranking", ranking])
            .status()?;
        assert!(status.success(), "{ranking}");
        let lines = read_jsonl(&out)?;
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        if line.get("dropped").is_none() {
            assert!(
                line["chosen_score"].as_f64() > line["rejected_score"].as_f64(),
                "{line}"
            );
        }
    }
    Ok(())
}

#[test]
fn edit_and_flex_checkpoints_are_refused_naming_the_checkpoint() -> Result<()> {
    let dir = scratch("edit")?;
    for name in [
        "UnifiedReward-Edit-qwen-7b",
        "UnifiedReward-Flex-qwen3vl-8b",
    ] {
        let ckpt = dir.join(name);
        std::fs::create_dir_all(&ckpt)?;
        std::fs::write(
            ckpt.join("config.json"),
            r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}"#,
        )?;
        for extra in [&[][..], &["--template-family", "qwen"][..]] {
            let (_, output) = score(&dir, &ckpt, &generation_requests()?, extra)?;
            assert_eq!(output.status.code(), Some(2));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(name) && stderr.contains("not supported yet"),
                "{stderr}"
            );
        }
    }
    Ok(())
}
