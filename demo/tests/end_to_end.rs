//! The demo end to end on the `small` preset: the real `trainer`, `unireward-export` and `engine`
//! binaries, a judge trained from random weights, judging on ONNX Runtime, pairs, DPO and the
//! report. Asserts that the judge learnt (its image-generation scores correlate with the
//! truth and the pairs it builds prefer the better candidate far above chance) and that DPO
//! on its pairs does not lower the answer model's accuracy.
//!
//! Needs the ONNX Runtime library (`scripts/fetch-onnxruntime.sh`, or `ORT_DYLIB_PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// The profile directory the test binary was built into (target/PROFILE/deps/test-bin).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds the tools the demo runs, in this test's profile, beside the demo binary.
fn build_tools() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--bins",
        "-p",
        "unireward-trainer",
        "-p",
        "unireward-export",
        "-p",
        "unireward-engine",
    ]);
    if profile_dir().ends_with("release") {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "building trainer, export and engine failed"
    );
}

fn num(v: &Value, path: &[&str]) -> f64 {
    let mut at = v;
    for p in path {
        at = &at[*p];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {v:#}", path.join(".")))
}

// The small preset trains the judge mostly on image-generation points (the full preset's
// pair accuracy needs its 790 steps), so the learning asserted here is the point scores'
// correlation with the truth and the pairs built from them. Last run (seed 3): r 0.50 over 40
// held-out points, chosen truly better 7 of 8, answer accuracy 0.175 -> 0.300; 62 s on
// 2026-11-24, 305 s on 2026-11-30 (the same figures; the trainer binaries of both days took
// the same time on that day's machine, so the VM was slower); 1390 s on 2026-12-01 with SVG
// curves (the same figures, on two cores shared by six builds).
#[test]
fn demo_runs_end_to_end_and_learns() {
    build_tools();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let demo = env!("CARGO_BIN_EXE_demo");
    // The demo binary sits in target/PROFILE/; the tools were built there too.
    let output = Command::new(demo)
        .args(["run", "--preset", "small", "--seed", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo run failed:\n{stderr}\n{stdout}"
    );
    println!("{stdout}");

    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report/metrics.json")).unwrap())
            .unwrap();
    // The judge learnt: its point scores follow the truth, and the pairs it builds from ten
    // candidates put a truly better candidate first far more often than a coin would.
    let r = num(
        &metrics,
        &["judge", "tasks", "image_generation", "point_pearson"],
    );
    assert!(r > 0.3, "image-generation point correlation {r}");
    let better = num(
        &metrics,
        &["pairs", "tasks", "image_generation", "chosen_truly_better"],
    );
    assert!(better > 0.7, "chosen truly better {better}");
    // Every held-out request is judged: none fails to render, tokenize or score.
    for task in [
        "image_generation",
        "image_understanding",
        "video_generation",
        "video_understanding",
    ] {
        let f = &metrics["judge"]["tasks"][task];
        assert_eq!(f["pair_errors"], 0, "{task}: {f}");
        assert_eq!(f["point_errors"], 0, "{task}: {f}");
    }
    // DPO on the judge's pairs does not lower the answer model's accuracy.
    let before = num(&metrics, &["answers", "before", "accuracy"]);
    let after = num(&metrics, &["answers", "after", "accuracy"]);
    assert!(after >= before, "answer accuracy {before} -> {after}");
    // `demo generator` (step 5c of the run): every caption's candidates drawn before and
    // after Diffusion-DPO (the small preset's 4 captions x 10, same seeds), measured under the
    // world's pixel truth, and a pair judged from each caption's candidates. (What it learns
    // at the full preset's sizes: README.)
    let gen = &metrics["generator"];
    for which in ["before", "after"] {
        assert_eq!(gen[which]["images"], 40, "{which}: {gen}");
        let grain = num(gen, &[which, "grain"]);
        assert!(grain.is_finite() && grain >= 0.0, "{which}: {gen}");
    }
    assert_eq!(gen["pairs"], 4, "{gen}");
    // Shares of the judge's pairs, each over the 4 pairs.
    for share in ["chosen_less_grainy", "chosen_cleaner"] {
        let x = num(gen, &[share]) * 4.0;
        assert!((0.0..=4.0).contains(&x) && x == x.round(), "{share}: {gen}");
    }
    // The judge's chosen and rejected samples, one of each per pair, measured alike.
    for which in ["chosen", "rejected"] {
        assert_eq!(gen[which]["images"], 4, "{which}: {gen}");
    }
    let (right, shown) = (
        num(gen, &["before", "colour_right"]),
        num(gen, &["before", "colour_shown"]),
    );
    assert!(
        (0.0..=right).contains(&shown),
        "colour shown {shown}, right {right}"
    );

    // The report's files open and show what they claim: each curve is an SVG document with
    // its title and a legend entry per series.
    for (svg, texts) in [
        (
            "judge_training.svg",
            &[
                "reward model: trainer reward",
                "train (moving avg)",
                "held-out",
            ][..],
        ),
        (
            "answer_training.svg",
            &["answer model: fine-tuning", "train (moving avg)"][..],
        ),
        (
            "dpo_training.svg",
            &[
                "answer model: trainer dpo",
                "loss",
                "rewards/accuracies",
                "rewards/margins",
            ][..],
        ),
        (
            "generator_training.svg",
            &[
                "image generator: trainer dpo --kind diffusion",
                "dpo: loss (moving avg)",
                "dpo: implicit_acc (moving avg)",
            ][..],
        ),
    ] {
        let doc = std::fs::read_to_string(out.join("report").join(svg)).unwrap();
        assert!(
            doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"),
            "{svg}"
        );
        assert!(doc.contains("width=\"720\" height=\"360\""), "{svg}");
        for text in texts {
            // plotters writes a `<text>` element's content on a line of its own.
            assert!(
                doc.contains(&format!(">\n{text}\n</text>")),
                "{svg}: no {text:?}"
            );
        }
        let curves = doc.matches("<polyline").count();
        assert!(curves >= 2 * (texts.len() - 1), "{svg}: {curves} lines");
    }
    let html = std::fs::read_to_string(out.join("report/index.html")).unwrap();
    let report_dir = out.join("report");
    let mut images = 0;
    for src in html.split("src=\"").skip(1) {
        let rel = &src[..src.find('"').unwrap()];
        assert!(!rel.starts_with('/'), "{rel} is not relative");
        assert!(report_dir.join(rel).is_file(), "{rel} does not exist");
        images += 1;
    }
    assert!(images > 20, "{images} images in the report");
}
