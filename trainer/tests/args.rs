//! Flags no run can use are refused at once, naming the flag: before the model is loaded and
//! before reference log-probs are precomputed (nothing is written to --out).

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::*;

#[test]
fn unusable_flags_are_refused_before_any_work() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &letter_pairs(4))?;
    let model = golden_model()?;
    let cases: [(&str, &str); 14] = [
        ("--lr", "nan"),
        ("--lr", "-1"),
        ("--batch-size", "0"),
        ("--grad-accum", "0"),
        ("--max-steps", "0"),
        ("--epochs", "0"),
        ("--save-every", "0"),
        ("--stop-after", "0"),
        ("--warmup-ratio", "nan"),
        ("--warmup-ratio", "2"),
        ("--max-grad-norm", "nan"),
        ("--max-grad-norm", "-1"),
        ("--weight-decay", "nan"),
        ("--frames", "0"),
    ];
    for (i, (flag, value)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("run-{i}"));
        // `--flag=value`: clap would read a separate `-1` as a flag.
        let arg = format!("{flag}={value}");
        let start = Instant::now();
        let res = trainer_unchecked(&[
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(&out),
            "--ref",
            "precompute",
            "--no-progress",
            &arg,
        ])?;
        let took = start.elapsed();
        let msg = String::from_utf8_lossy(&res.stderr);
        println!("{flag} {value}: {took:.2?}: {}", msg.trim());
        assert!(!res.status.success(), "{flag} {value} was accepted: {msg}");
        assert!(msg.contains(flag), "{flag} {value}: {msg}");
        assert!(
            !out.join("ref_logps.jsonl").exists() && !out.join("metrics.jsonl").exists(),
            "{flag} {value}: work was done before the refusal"
        );
        assert!(took < Duration::from_secs(10), "{flag} {value}: {took:?}");
    }
    // The reward command checks the same flags, and its own.
    for (flag, value) in [("--warmup-ratio", "-0.5"), ("--eval-every", "0")] {
        let out = tmp.path().join("reward");
        let res = trainer_unchecked(&[
            "reward",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(&out),
            &format!("{flag}={value}"),
        ])?;
        let msg = String::from_utf8_lossy(&res.stderr);
        assert!(
            !res.status.success() && msg.contains(flag),
            "{flag} {value}: {msg}"
        );
    }
    let res = trainer_unchecked(&[
        "dpo",
        "--kind",
        "vlm",
        "--model",
        path_str(&model),
        "--data",
        path_str(&data),
        "--out",
        path_str(&tmp.path().join("sft")),
        "--sft-weight",
        "nan",
    ])?;
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && msg.contains("--sft-weight"),
        "{msg}"
    );
    Ok(())
}
