//! An export directory never holds a loadable mix of two exports: a re-export that fails
//! half-way leaves the earlier export byte for byte, the engine refuses files whose sizes are
//! not those the manifest records, and a config that does not fit the weights stops
//! `unireward-export onnx` before it writes anything (or allocates for the config's sizes).
//!
//! The ORT-backed checks need the ONNX Runtime library (ORT_DYLIB_PATH, or `.ort/` from
//! scripts/fetch-onnxruntime.sh).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use candle_core::Device;
use serde_json::{json, Value};
use unireward_engine::backend::{OrtBackend, SessionConfig};
use unireward_export::model::staging::STAGING_DIR;
use unireward_export::{export_onnx, ExportOptions};
use unireward_tests::golden_model_dir;

/// Every file of `dir` (not directories) with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

/// The golden checkpoint with the tensors `drop` removed and `edit` applied to its config.
fn golden_variant(dir: &Path, drop: &[&str], edit: impl FnOnce(&mut Value)) {
    let src = golden_model_dir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for key in drop {
        tensors.remove(*key).unwrap();
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
}

fn open_error(dir: &Path) -> String {
    match OrtBackend::open(dir, &SessionConfig::default()) {
        Ok(_) => panic!("{} opened", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn failed_reexport_leaves_the_earlier_export_as_it_was() {
    let out = tempfile::tempdir().unwrap();
    export_onnx(
        &golden_model_dir().unwrap(),
        out.path(),
        &ExportOptions::default(),
    )
    .unwrap();
    let before = snapshot(out.path());
    assert!(before.contains_key("manifest.json") && before.contains_key("decoder.onnx.data"));

    // A checkpoint whose second decoder layer lacks a weight: the re-export fails while
    // writing the decoder's data, after the vision graph and part of the decoder are out.
    let broken = tempfile::tempdir().unwrap();
    let gone = "language_model.model.layers.1.mlp.up_proj.weight";
    golden_variant(broken.path(), &[gone], |_| {});
    let err = export_onnx(broken.path(), out.path(), &ExportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(gone), "{err}");

    let after = snapshot(out.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files of the export directory"
    );
    for (name, bytes) in &before {
        assert!(after[name] == *bytes, "{name} changed by the failed export");
    }
    assert!(!out.path().join(STAGING_DIR).exists());
    // The earlier export is still whole and opens.
    OrtBackend::open(out.path(), &SessionConfig::default()).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn files_that_do_not_match_the_manifest_are_refused() {
    let out = tempfile::tempdir().unwrap();
    export_onnx(
        &golden_model_dir().unwrap(),
        out.path(),
        &ExportOptions::default(),
    )
    .unwrap();
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("manifest.json")).unwrap())
            .unwrap();
    let sizes = manifest["file_sizes"].as_object().unwrap();
    for f in [
        "vision.onnx",
        "decoder.onnx",
        "decoder.onnx.data",
        "embeddings.safetensors",
        "config.json",
        "tokenizer.json",
    ] {
        let len = std::fs::metadata(out.path().join(f)).unwrap().len();
        assert_eq!(sizes[f], json!(len), "{f}");
    }

    // A data file that is not the one the decoder graph was written with (the tail of a
    // half-written newer one, say).
    let data = out.path().join("decoder.onnx.data");
    let bytes = std::fs::read(&data).unwrap();
    std::fs::write(&data, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_error(out.path());
    println!("{err}");
    assert!(
        err.contains("decoder.onnx.data") && err.contains("manifest.json records"),
        "{err}"
    );
    std::fs::write(&data, &bytes).unwrap();
    OrtBackend::open(out.path(), &SessionConfig::default()).unwrap_or_else(|e| panic!("{e}"));

    // A manifest that does not account for a graph it names.
    let mut edited = manifest.clone();
    edited["file_sizes"]
        .as_object_mut()
        .unwrap()
        .remove("vision.onnx");
    std::fs::write(out.path().join("manifest.json"), edited.to_string()).unwrap();
    let err = open_error(out.path());
    assert!(err.contains("vision.onnx"), "{err}");
}

fn export_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unireward-export"))
}

#[test]
fn absurd_config_sizes_stop_the_export_before_it_writes() {
    for (section, key, value) in [
        ("text_config", "hidden_size", json!(1_000_000_000u64)),
        ("text_config", "vocab_size", json!(1_000_000_000_000u64)),
    ] {
        let src = tempfile::tempdir().unwrap();
        golden_variant(src.path(), &[], |c| c[section][key] = value.clone());
        let out = tempfile::tempdir().unwrap();
        let target = out.path().join("export");
        // 4 GiB of address space: zeros for the config's sizes cannot even be reserved.
        let start = Instant::now();
        let run = Command::new("sh")
            .arg("-c")
            .arg("ulimit -v 4194304 && exec \"$0\" onnx --model \"$1\" --out \"$2\"")
            .arg(export_bin())
            .arg(src.path())
            .arg(&target)
            .output()
            .unwrap();
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&run.stderr);
        println!("{section}.{key} = {value}: {took:.2?}: {stderr}");
        assert!(!run.status.success(), "{stderr}");
        assert_eq!(
            run.status.code(),
            Some(1),
            "an error, not an abort: {stderr}"
        );
        assert!(
            stderr.contains("config.json does not match") && stderr.contains("embed_tokens"),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(!target.exists(), "the export wrote {}", target.display());
    }
}
