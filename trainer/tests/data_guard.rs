//! The data a run trains on is guarded: a resumed run refuses a data file that changed since
//! its checkpoint (before recomputing the DPO reference) unless --allow-data-change, and
//! pairs whose chosen answer is the rejected one are counted in a warning.

mod common;

use std::path::Path;

use anyhow::Result;
use common::*;
use serde_json::json;

fn dpo_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "dpo",
        "--kind",
        "vlm",
        "--model",
        path_str(model),
        "--data",
        path_str(data),
        "--out",
        path_str(out),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "1e-3",
        "--no-progress",
    ]
}

#[test]
fn resume_refuses_changed_data_unless_allowed() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    let mut pairs = letter_pairs(4);
    write_jsonl(&data, &pairs)?;
    let model = golden_model()?;
    let out = tmp.path().join("run");
    let args = dpo_args(&model, &data, &out);
    trainer(&[&args[..], &["--stop-after", "1"]].concat())?;
    let cache = std::fs::read(out.join("ref_logps.jsonl"))?;

    // Same number of records, one answer edited.
    pairs[2]["chosen"] = json!("The answer is C");
    write_jsonl(&data, &pairs)?;
    let res = trainer_unchecked(&[&args[..], &["--resume"]].concat())?;
    let msg = String::from_utf8_lossy(&res.stderr);
    println!("{msg}");
    assert!(!res.status.success(), "{msg}");
    assert!(
        msg.contains("changed since") && msg.contains("--allow-data-change"),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(out.join("ref_logps.jsonl"))?,
        cache,
        "the reference was recomputed before the refusal"
    );
    assert_eq!(metrics(&out)?.len(), 1);

    let res = trainer(&[&args[..], &["--resume", "--allow-data-change"]].concat())?;
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(msg.contains("--allow-data-change"), "{msg}");
    assert_eq!(metrics(&out)?.len(), 3);
    Ok(())
}

#[test]
fn resume_with_unchanged_data_goes_on() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &letter_pairs(4))?;
    let model = golden_model()?;
    let out = tmp.path().join("run");
    let args = dpo_args(&model, &data, &out);
    trainer(&[&args[..], &["--stop-after", "1"]].concat())?;
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        out.join("checkpoint-1/trainer_state.json"),
    )?)?;
    assert!(
        state["data_digest"].as_str().is_some_and(|d| d.len() == 16),
        "{state}"
    );
    trainer(&[&args[..], &["--resume"]].concat())?;
    assert_eq!(metrics(&out)?.len(), 3);
    Ok(())
}

#[test]
fn identical_pairs_are_counted_in_a_warning() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    let mut pairs = letter_pairs(3);
    for p in &mut pairs[..2] {
        p["rejected"] = p["chosen"].clone();
    }
    write_jsonl(&data, &pairs)?;
    let model = golden_model()?;
    let out = tmp.path().join("run");
    let mut args = dpo_args(&model, &data, &out);
    args[10] = "1"; // --max-steps 1
    let res = trainer(&args)?;
    let msg = String::from_utf8_lossy(&res.stderr);
    println!("{msg}");
    assert!(
        msg.contains("2 of 3 pair(s) have the same chosen and rejected answer")
            && msg.contains("pair-0, pair-1"),
        "{msg}"
    );
    // Without such pairs, no warning.
    let clean = tmp.path().join("clean.jsonl");
    write_jsonl(&clean, &letter_pairs(3))?;
    let out = tmp.path().join("clean-run");
    let mut args = dpo_args(&model, &clean, &out);
    args[10] = "1";
    let res = trainer(&args)?;
    assert!(!String::from_utf8_lossy(&res.stderr).contains("same chosen and rejected"));
    Ok(())
}
