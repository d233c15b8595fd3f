//! Training Qwen2.5-VL against transformers and peft (fixtures/qwen2_5_vl/dpo, made by
//! scripts/golden/make_qwen2_5_vl_dpo.py in float64 from the 7b-shaped fixture): a preference
//! pair on a 300x200 image tokenizes to transformers' ids, both answers' log-probs (M-RoPE
//! positions, image features) and the DPO loss equal transformers', the full-fine-tuning
//! gradient of weights in the decoder, the merger and the vision tower equals torch autograd's,
//! and a LoRA adapter our trainer wrote gives, loaded by `PeftModel`, the log-probs, loss and
//! factor gradients we compute with it.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use common::*;
use serde_json::{json, Value};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::Preparer;
use unireward_trainer::logprob::{media_features, sequence_logprobs, to_f64_vec};
use unireward_trainer::loss::dpo::{DpoLossKind, DpoParams};
use unireward_trainer::objectives::dpo::compute_reference;
use unireward_trainer::objectives::{DpoObjective, Reference};
use unireward_trainer::train_loop::Objective;
use unireward_trainer::trainee::Trainee;
use unireward_trainer::varmap_model::{Architecture, VarMapModel};

/// The task's bound on log-probs; the measured differences are printed.
const LOGPROB_TOL: f64 = 1e-3;
/// Gradients, relative to the tensor's largest entry. Both sides run in float64 but for the
/// head: our decoder computes logits and their log-softmax in f32 at every dtype, which puts
/// the log-probs ~1e-5 from transformers' float64 ones and the gradients ~2e-6 (measured).
const GRAD_REL_TOL: f64 = 1e-5;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/qwen2_5_vl")
}

fn model_dir() -> PathBuf {
    fixtures().join("qwen2_5_vl_7b/model")
}

fn adapter_dir() -> PathBuf {
    fixtures().join("dpo/adapter")
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

fn pair(cases: &Value) -> [f64; 2] {
    [0, 1].map(|i| cases[i].as_f64().unwrap_or(f64::NAN))
}

/// The golden pair as a data file the trainer reads, through the Qwen-VL preparer.
fn golden_data(dir: &Path, model: &VarMapModel) -> Result<DpoData> {
    let c = cases()?;
    let image = fixtures().join("media/300x200.png");
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
    let Architecture::QwenVl(cfg, _) = model.architecture() else {
        anyhow::bail!("the fixture is not Qwen2.5-VL");
    };
    let preparer = Preparer::qwen_vl(&model_dir(), cfg, dir.to_path_buf(), None)?;
    Ok(DpoData::read(&path, preparer)?)
}

fn objective(data: DpoData, reference: [f64; 2], beta: f64) -> DpoObjective {
    DpoObjective {
        data,
        params: DpoParams {
            beta,
            loss: DpoLossKind::Sigmoid,
            label_smoothing: 0.0,
        },
        sft_weight: 0.0,
        reference: Reference::Precomputed(vec![reference]),
    }
}

/// The policy's (chosen, rejected) log-probs of the pair.
fn policy_logps(model: &VarMapModel, data: &DpoData) -> Result<[f64; 2]> {
    let ex = data.prepare(0)?;
    let feats = media_features(model.model(), &ex.media)?;
    let lp = sequence_logprobs(
        model.model(),
        &[(&ex.chosen, &feats), (&ex.rejected, &feats)],
    )?;
    let v = to_f64_vec(&lp)?;
    Ok([v[0], v[1]])
}

/// The DPO loss of the pair and its gradients.
fn loss_and_grads(model: &VarMapModel, obj: &DpoObjective) -> Result<(f64, GradStore)> {
    let batch = obj.prepare(&[0], 0)?.batch;
    let fwd = obj.forward(Trainee::model(model), &batch)?;
    let loss = fwd.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, fwd.loss_sum.backward()?))
}

fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar()?)
}

/// Each golden gradient `prefix.<name>` against ours for the variable of that name; returns
/// the worst relative difference.
fn check_grads(
    vars: &[(String, Var)],
    grads: &GradStore,
    want: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<f64> {
    let mut worst: f64 = 0.0;
    let mut n = 0;
    for (key, expected) in want.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let name = &key[prefix.len()..];
        let (_, var) = vars
            .iter()
            .find(|(k, _)| k == name)
            .with_context(|| format!("no trained variable {name}"))?;
        let got = grads
            .get(var.as_tensor())
            .with_context(|| format!("no gradient for {name}"))?;
        let scale = max_abs(expected)?;
        let rel = max_abs(&(got.to_dtype(DType::F64)? - expected.to_dtype(DType::F64)?)?)? / scale;
        println!("{name}: max |grad| {scale:.3e}, relative difference {rel:.2e}");
        assert!(scale > 0.0, "{name}: the golden gradient is zero");
        worst = worst.max(rel);
        n += 1;
    }
    assert!(n >= 2, "the golden holds {n} gradient(s) under {prefix}");
    assert!(
        worst <= GRAD_REL_TOL,
        "{prefix}: relative difference {worst:.3e}"
    );
    Ok(worst)
}

fn check_logps(what: &str, got: [f64; 2], want: [f64; 2]) {
    for (k, (g, w)) in ["chosen", "rejected"].iter().zip(got.iter().zip(want)) {
        println!(
            "{what} {k}: ours {g:.10}, transformers {w:.10}, diff {:.2e}",
            (g - w).abs()
        );
        assert!((g - w).abs() <= LOGPROB_TOL, "{what} {k}: {g} vs {w}");
    }
}

#[test]
fn dpo_logprobs_loss_and_gradients_match_transformers() -> Result<()> {
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

    // Full fine-tuning at the start (policy = reference, ours as transformers' was its own):
    // ln 2, with a gradient everywhere.
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
fn our_lora_adapter_reproduces_peft_and_names_its_modules() -> Result<()> {
    let c = cases()?;
    let want = expected()?;
    let tmp = tempfile::tempdir()?;
    let mut model = VarMapModel::load(&model_dir(), DType::F64, &Device::Cpu, TrainParts::all())?;
    model.load_lora(&adapter_dir())?;
    let data = golden_data(tmp.path(), &model)?;

    // PeftModel's log-probs with the adapter our trainer wrote.
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

    // The adapter names what PeftModel attached (transformers 5's module paths), and a fresh
    // adapter of the same settings names the same modules today.
    let peft_modules: Vec<String> = c["lora_modules"]
        .as_array()
        .context("lora_modules")?
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    let config = model.lora().context("adapter")?.config().clone();
    let mut fresh = VarMapModel::load(&model_dir(), DType::F64, &Device::Cpu, TrainParts::all())?;
    fresh.add_lora(&config, 1)?;
    let mut ours: Vec<String> = fresh
        .trained_vars()?
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix(".lora_A.weight").map(String::from))
        .collect();
    ours.sort();
    assert_eq!(ours, peft_modules);
    assert!(ours.iter().any(|m| m.contains("model.visual.")), "{ours:?}");
    assert!(
        ours.iter().any(|m| m.contains("model.language_model.")),
        "{ours:?}"
    );
    Ok(())
}
