//! A config.json whose sizes do not fit the stored weights (hidden_size 1e9, vocab_size
//! 1e12, ...) is refused by the model loaders at once, naming the field and the tensor,
//! before any tensor of those sizes is made; a config value of the wrong type is refused by
//! name with the file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::{DType, Device};
use serde_json::{json, Value};
use unireward_engine::backend::CandleBackend;
use unireward_models::LlavaOnevision;
use unireward_tests::golden_model_dir;

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("unireward-cfgval-{}-{name}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of the golden model (its weights linked, not copied) with `edit` applied to its
/// config.json.
fn edited_model(name: &str, edit: impl FnOnce(&mut Value)) -> Result<(Scratch, PathBuf)> {
    let tmp = Scratch::new(name)?;
    let dir = tmp.0.join("model");
    std::fs::create_dir_all(&dir)?;
    let src = golden_model_dir()?;
    for entry in std::fs::read_dir(&src)? {
        let entry = entry?;
        let to = dir.join(entry.file_name());
        if entry.file_name() == "model.safetensors" {
            std::os::unix::fs::symlink(entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    edit(&mut cfg);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg)?)?;
    Ok((tmp, dir))
}

/// Each loader's error on `dir`, with how long it took.
fn load_errors(dir: &Path) -> Vec<(&'static str, String, Duration)> {
    let mut out = Vec::new();
    let start = Instant::now();
    let err = match LlavaOnevision::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };
    out.push(("LlavaOnevision::load", err, start.elapsed()));
    let start = Instant::now();
    let err = match CandleBackend::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded in the engine", dir.display()),
        Err(e) => e.to_string(),
    };
    out.push(("CandleBackend::load", err, start.elapsed()));
    out
}

#[test]
fn absurd_sizes_are_refused_before_any_allocation() -> Result<()> {
    let cases: [(&str, &str, Value, &str); 6] = [
        (
            "text_config",
            "hidden_size",
            json!(1_000_000_000u64),
            "embed_tokens.weight",
        ),
        (
            "text_config",
            "vocab_size",
            json!(1_000_000_000_000u64),
            "embed_tokens.weight",
        ),
        (
            "text_config",
            "intermediate_size",
            json!(1_000_000_000_000u64),
            "gate_proj.weight",
        ),
        (
            "text_config",
            "num_hidden_layers",
            json!(1_000_000_000u64),
            "num_hidden_layers",
        ),
        (
            "vision_config",
            "hidden_size",
            json!(1_000_000_000u64),
            "patch_embedding.weight",
        ),
        (
            "vision_config",
            "num_hidden_layers",
            json!(1_000_000_000u64),
            "vision feature layer",
        ),
    ];
    for (section, key, value, named) in cases {
        let (_tmp, dir) = edited_model("absurd", |c| c[section][key] = value.clone())?;
        for (loader, err, took) in load_errors(&dir) {
            println!("{section}.{key} = {value}: {loader}: {took:.2?}: {err}");
            assert!(
                err.contains("config.json does not match"),
                "{loader}: {err}"
            );
            assert!(err.contains(named), "{loader}: {err}");
            // Allocating (or failing to allocate) gigabytes of zeros takes longer, or aborts.
            assert!(took < Duration::from_secs(5), "{loader}: {took:?}");
        }
    }
    Ok(())
}

#[test]
fn missing_key_with_absurd_size_is_refused_without_allocating() -> Result<()> {
    // The tensor that would witness the vision intermediate_size is gone: the key audit must
    // refuse the stand-in zeros of [1e12, 48] instead of allocating them.
    let tmp = Scratch::new("audit")?;
    let dir = &tmp.0;
    let src = golden_model_dir()?;
    let gone = "vision_tower.encoder.layers.0.mlp.fc1.weight";
    let mut tensors = candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu)?;
    tensors.remove(gone);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(src.join("config.json"))?)?;
    cfg["vision_config"]["intermediate_size"] = json!(1_000_000_000_000u64);
    std::fs::write(dir.join("config.json"), cfg.to_string())?;
    std::fs::copy(src.join("tokenizer.json"), dir.join("tokenizer.json"))?;
    let start = Instant::now();
    let err = match LlavaOnevision::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loaded"),
        Err(e) => e.to_string(),
    };
    println!("{:.2?}: {err}", start.elapsed());
    assert!(
        err.contains(gone) && err.contains("larger than the whole checkpoint"),
        "{err}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    Ok(())
}

#[test]
fn wrong_types_are_named_with_the_file() -> Result<()> {
    for (key, value) in [
        ("hidden_size", json!(64.5)),
        ("hidden_size", json!(-64)),
        ("rope_theta", json!(-1.0)),
    ] {
        let (_tmp, dir) = edited_model("types", |c| c["text_config"][key] = value.clone())?;
        for (loader, err, _) in load_errors(&dir) {
            assert!(
                err.contains(&format!("text_config.{key}"))
                    && err.contains(&dir.join("config.json").display().to_string()),
                "{loader}: {err}"
            );
        }
    }
    let (_tmp, dir) = edited_model("vocab", |c| c["image_token_index"] = json!(600))?;
    for (loader, err, _) in load_errors(&dir) {
        assert!(err.contains("image_token_index 600"), "{loader}: {err}");
    }
    Ok(())
}
