//! Training Qwen3-VL against transformers (fixtures/qwen3_vl/dpo, made by
//! scripts/golden/make_qwen3_vl_dpo.py in float64 from the 4b-shaped fixture): a preference pair
//! on a 300x200 image tokenizes to transformers' ids, both answers' log-probs (M-RoPE positions,
//! image features, deep-stack features added after the first decoder layers) and the DPO loss
//! equal transformers', and the full-fine-tuning gradient of weights in the decoder (q/k norms
//! included), the merger, a deep-stack merger and the vision tower equals torch autograd's; a
//! LoRA adapter our trainer wrote gives, loaded by `PeftModel`, the log-probs, loss and factor
//! gradients we compute with it, on the modules PEFT attaches.

mod common;
#[path = "common/dpo_golden.rs"]
mod dpo_golden;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::*;
use dpo_golden::*;
use serde_json::{json, Value};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::Preparer;
use unireward_trainer::objectives::dpo::compute_reference;
use unireward_trainer::varmap_model::{Architecture, VarMapModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen3_vl")
}

fn model_dir() -> PathBuf {
    fixtures().join("qwen3_vl_4b/model")
}

fn cases() -> Result<Value> {
    let path = fixtures().join("dpo/cases.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).context("dpo/cases.json")?,
    )?)
}

fn expected() -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(
        fixtures().join("dpo/expected.safetensors"),
        &Device::Cpu,
    )?)
}

/// The golden pair as a data file the trainer reads, through the Qwen-VL preparer.
fn golden_data(dir: &Path, model: &VarMapModel) -> Result<DpoData> {
    let c = cases()?;
    let image = fixtures().join("../qwen2_5_vl/media/300x200.png");
    let path = dir.join("pairs.jsonl");
    write_jsonl(
        &path,
        &[json!({
            "id": "golden",
            "prompt": format!("<image>\n{}", c["question"].as_str().unwrap_or_default()),
            "chosen": c["chosen"], "rejected": c["rejected"],
            "image": path_str(&image),
        })],
    )?;
    let Architecture::Qwen3Vl(cfg, _) = model.architecture() else {
        anyhow::bail!("the fixture is not Qwen3-VL");
    };
    let preparer = Preparer::qwen_vl(&model_dir(), cfg, dir.to_path_buf(), None)?;
    Ok(DpoData::read(&path, preparer)?)
}

#[test]
fn qwen3_dpo_logprobs_loss_and_gradients_match_transformers() -> Result<()> {
    let c = cases()?;
    let want = expected()?;
    let tmp = tempfile::tempdir()?;
    let model = VarMapModel::load(&model_dir(), DType::F64, &Device::Cpu, TrainParts::all())?;
    let data = golden_data(tmp.path(), &model)?;

    // Tokens: the processor's expansion of the image item, answers tokenized apart.
    let ex = data.prepare(0)?;
    let plen = c["prompt_len"].as_u64().unwrap_or(0) as usize;
    for (seq, key) in [(&ex.chosen, "chosen"), (&ex.rejected, "rejected")] {
        let ids: Vec<u32> = want[&format!("{key}.input_ids")]
            .to_dtype(DType::U32)?
            .to_vec1()?;
        assert_eq!(seq.tokens.ids, ids, "{key} ids");
        let first = seq.targets.iter().position(|&t| t);
        assert_eq!(first, Some(plen), "{key}: scored from the answer on");
    }

    let base = compute_reference(model.model(), &data, 1, false)?;
    check_logps("base", base[0], pair(&c["base_logps"]));

    // Full fine-tuning at the start (policy = reference): ln 2, with a gradient everywhere.
    let obj = objective(data, base[0], c["beta"].as_f64().unwrap_or(0.1));
    let (loss, grads) = loss_and_grads(&model, &obj)?;
    let want_loss = c["full_loss"].as_f64().unwrap_or(f64::NAN);
    println!("full fine-tuning loss: ours {loss:.12}, transformers {want_loss:.12}");
    assert!((loss - want_loss).abs() <= 1e-12);
    let worst = check_grads(&model.trained_vars()?, &grads, &want, "grad.")?;
    println!("full fine-tuning gradients: worst relative difference {worst:.2e}");
    Ok(())
}

#[test]
fn our_qwen3_lora_adapter_reproduces_peft_and_names_its_modules() -> Result<()> {
    let c = cases()?;
    let want = expected()?;
    let tmp = tempfile::tempdir()?;
    let mut model = VarMapModel::load(&model_dir(), DType::F64, &Device::Cpu, TrainParts::all())?;
    model.load_lora(&fixtures().join("dpo/adapter"))?;
    let data = golden_data(tmp.path(), &model)?;

    check_logps("LoRA", policy_logps(&model, &data)?, pair(&c["lora_logps"]));
    let obj = objective(
        data,
        pair(&c["base_logps"]),
        c["beta"].as_f64().unwrap_or(0.1),
    );
    let (loss, grads) = loss_and_grads(&model, &obj)?;
    let want_loss = c["lora_loss"].as_f64().unwrap_or(f64::NAN);
    println!("LoRA DPO loss: ours {loss:.12}, peft {want_loss:.12}");
    assert!((loss - want_loss).abs() <= 1e-6);
    let worst = check_grads(&model.trained_vars()?, &grads, &want, "lora_grad.")?;
    println!("LoRA factor gradients: worst relative difference {worst:.2e}");

    let peft_modules: Vec<String> = c["lora_modules"]
        .as_array()
        .context("lora_modules")?
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    let mut ours: Vec<String> = model
        .trained_vars()?
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix(".lora_A.weight").map(String::from))
        .collect();
    ours.sort();
    assert_eq!(ours, peft_modules);
    Ok(())
}
