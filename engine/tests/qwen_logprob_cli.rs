//! `engine logprob` on the tiny Qwen2.5-VL checkpoints (`fixtures/qwen2_5_vl`) as a user runs
//! it: raw prompts with `<|vision_start|><|image_pad|><|vision_end|>` per image and
//! `<|vision_start|><|video_pad|><|vision_end|>` per video, image files and videos as frame
//! lists, a video file through a stand-in ffmpeg, against transformers' completion log-probs; a
//! missing video file is answered with an error while the other records go on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::{json, Value};
use unireward_tests::fake_ffmpeg::fake_ffmpeg;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("unireward-qwen-{}-{name}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[test]
fn logprob_on_qwen2_5_vl_matches_transformers() -> Result<()> {
    for name in ["qwen2_5_vl_3b", "qwen2_5_vl_7b"] {
        let dir = scratch(name)?;
        let cases: Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures().join(name).join("cases.json"),
        )?)?;
        let cases = cases["cases"].as_array().unwrap().clone();
        let media = fixtures().join("media");
        let mut lines: Vec<String> = cases
            .iter()
            .map(|c| {
                let images: Vec<String> = c["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| {
                        media
                            .join(f.as_str().unwrap())
                            .to_string_lossy()
                            .into_owned()
                    })
                    .collect();
                json!({"id": c["name"], "prompt": c["prompt"], "completion": c["completion"],
                       "images": images})
                .to_string()
            })
            .collect();
        // Videos as their frames (`video_cases.json`): one clip, another, both in one prompt.
        let vcases: Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures().join(name).join("video_cases.json"),
        )?)?;
        let vcases = vcases["cases"].as_array().unwrap().clone();
        for c in &vcases {
            let videos: Vec<Vec<String>> = c["videos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|frames| {
                    frames
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|f| {
                            media
                                .join(f.as_str().unwrap())
                                .to_string_lossy()
                                .into_owned()
                        })
                        .collect()
                })
                .collect();
            lines.push(
                json!({"id": c["name"], "prompt": c["prompt"], "completion": c["completion"],
                       "video": videos})
                .to_string(),
            );
        }
        // A video file (`video_file_cases.json`), decoded by a stand-in ffmpeg on PATH.
        let fcases: Value = serde_json::from_str(&std::fs::read_to_string(
            fixtures().join(name).join("video_file_cases.json"),
        )?)?;
        let frames = media.join(fcases["file_video"]["frames"].as_str().unwrap());
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin)?;
        let fps = fcases["file_video"]["fps"].as_f64().unwrap().to_string();
        fake_ffmpeg(&bin, &frames, &fps)?;
        let clip = dir.join("clip.mp4");
        std::fs::write(&clip, b"decoded by the stand-in ffmpeg")?;
        let fcases = fcases["cases"].as_array().unwrap().clone();
        for c in &fcases {
            lines.push(
                json!({"id": c["name"], "prompt": c["prompt"], "completion": c["completion"],
                       "video": [&clip]})
                .to_string(),
            );
        }
        // A video file that is not there: refused, the others go on.
        lines.push(
            json!({"id": "with_video", "prompt": "<|vision_start|><|video_pad|><|vision_end|>Q",
                   "completion": "A", "video": [dir.join("missing.mp4")]})
            .to_string(),
        );
        let input = dir.join("in.jsonl");
        let out = dir.join("out.jsonl");
        std::fs::write(&input, lines.join("\n") + "\n")?;
        let status = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["logprob", "--model"])
            .arg(fixtures().join(name).join("model"))
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .env("PATH", &bin)
            .status()?;
        // One record failed: the run says so in its exit status and goes on.
        assert_eq!(status.code(), Some(1));
        let answers: Vec<Value> = std::fs::read_to_string(&out)?
            .lines()
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()?;
        assert_eq!(answers.len(), cases.len() + vcases.len() + fcases.len() + 1);
        for (a, c) in answers
            .iter()
            .zip(cases.iter().chain(&vcases).chain(&fcases))
        {
            assert_eq!(a["id"], c["name"]);
            let lp = a["logprob"].as_f64().unwrap();
            let want = c["completion_logprob"].as_f64().unwrap();
            println!("{name} {}: {lp:.6} vs {want:.6}", c["name"]);
            assert!(
                (lp - want).abs() < 1e-3,
                "{name} {}: {lp} vs {want}",
                c["name"]
            );
            assert_eq!(a["prompt_tokens"], c["prompt_len"]);
            let completion = c["seq_len"].as_u64().unwrap() - c["prompt_len"].as_u64().unwrap();
            assert_eq!(a["completion_tokens"], json!(completion));
        }
        let last = &answers[cases.len() + vcases.len() + fcases.len()];
        assert_eq!(last["id"], json!("with_video"));
        assert!(
            last["error"]
                .as_str()
                .unwrap_or("")
                .contains("missing.mp4: cannot open: no such file"),
            "{last}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
    Ok(())
}

/// A video file through a real `ffmpeg` (the one on `PATH`; the tests above use a stand-in):
/// the fixture's 20 frames at 10 fps written losslessly (FFV1), so the decoded frames are the
/// goldens' and `engine logprob` on both Qwen-VL families must give transformers' numbers
/// (qwen_vl_utils' 2 fps sampling of a 10 fps file: frames 0, 6, 13, 19). Skips, saying so,
/// where no ffmpeg is installed (`scripts/test.sh` installs Debian's when it can).
#[test]
fn video_file_through_a_real_ffmpeg_matches_transformers() -> Result<()> {
    let Some(ffmpeg) = unireward_models::preprocess::video::find_program(
        "ffmpeg",
        std::env::var_os("PATH").as_deref(),
    ) else {
        println!("SKIPPED: no ffmpeg on PATH");
        return Ok(());
    };
    let dir = scratch("real-ffmpeg")?;
    let clip = dir.join("clip.mkv");
    let frames = fixtures().join("media/file_20f_300x200/frame_%02d.png");
    let status = Command::new(&ffmpeg)
        .args(["-y", "-loglevel", "error", "-framerate", "10", "-i"])
        .arg(&frames)
        .args(["-c:v", "ffv1", "-pix_fmt", "bgr0"])
        .arg(&clip)
        .status()?;
    assert!(status.success(), "ffmpeg could not write the clip");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    for (model, cases) in [
        (
            "qwen2_5_vl/qwen2_5_vl_3b",
            "qwen2_5_vl/qwen2_5_vl_3b/video_file_cases.json",
        ),
        (
            "qwen3_vl/qwen3_vl_4b",
            "qwen3_vl/qwen3_vl_4b/video_item_cases.json",
        ),
    ] {
        let listed: Value = serde_json::from_str(&std::fs::read_to_string(root.join(cases))?)?;
        let case = listed["cases"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "file_20f_10fps"))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{cases}: no file_20f_10fps case"))?;
        let input = dir.join("in.jsonl");
        let out = dir.join("out.jsonl");
        std::fs::write(
            &input,
            json!({"id": case["name"], "prompt": case["prompt"],
                   "completion": case["completion"], "video": [clip]})
            .to_string()
                + "\n",
        )?;
        let status = Command::new(env!("CARGO_BIN_EXE_engine"))
            .args(["logprob", "--model"])
            .arg(root.join(model).join("model"))
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(&out)
            .status()?;
        let answer: Value = serde_json::from_str(std::fs::read_to_string(&out)?.trim())?;
        assert!(status.success(), "{model}: {answer}");
        let lp = answer["logprob"].as_f64().unwrap_or(f64::NAN);
        let want = case["completion_logprob"].as_f64().unwrap_or(f64::NAN);
        println!("{model} through {}: {lp:.6} vs {want:.6}", ffmpeg.display());
        assert!((lp - want).abs() < 1e-3, "{model}: {lp} vs {want}");
        assert_eq!(answer["prompt_tokens"], case["prompt_len"]);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
