//! What the Qwen-VL DPO goldens (`qwen_dpo_golden.rs`, `qwen3_dpo_golden.rs`) share: the
//! golden pair read as the trainer reads it, the objective over it, its loss and gradients, the
//! comparisons with their tolerances, and the two checks each family runs ([`QwenGolden`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
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
use unireward_trainer::varmap_model::Architecture;
use unireward_trainer::varmap_model::VarMapModel;

/// The task's bound on log-probs; the measured differences are printed.
pub const LOGPROB_TOL: f64 = 1e-3;
/// Gradients, relative to the tensor's largest entry. Both sides run in float64 but for the
/// head: our decoder computes logits and their log-softmax in f32 at every dtype, which puts
/// the log-probs ~1e-5 from transformers' float64 ones and the gradients ~2e-6 (measured).
pub const GRAD_REL_TOL: f64 = 1e-5;

pub fn pair(cases: &Value) -> [f64; 2] {
    [0, 1].map(|i| cases[i].as_f64().unwrap_or(f64::NAN))
}

pub fn objective(data: DpoData, reference: [f64; 2], beta: f64) -> DpoObjective {
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

/// The DPO loss of the pair and its gradients.
pub fn loss_and_grads(model: &VarMapModel, obj: &DpoObjective) -> Result<(f64, GradStore)> {
    let batch = obj.prepare(&[0], 0)?.batch;
    let fwd = obj.forward(Trainee::model(model), &batch)?;
    let loss = fwd.loss_sum.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((loss, fwd.loss_sum.backward()?))
}

pub fn max_abs(t: &Tensor) -> Result<f64> {
    Ok(t.abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar()?)
}

/// Each golden gradient `prefix.<name>` against ours for the variable of that name; returns
/// the worst relative difference.
pub fn check_grads(
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

pub fn check_logps(what: &str, got: [f64; 2], want: [f64; 2]) {
    for (k, (g, w)) in ["chosen", "rejected"].iter().zip(got.iter().zip(want)) {
        println!(
            "{what} {k}: ours {g:.10}, transformers {w:.10}, diff {:.2e}",
            (g - w).abs()
        );
        assert!((g - w).abs() <= LOGPROB_TOL, "{what} {k}: {g} vs {w}");
    }
}

/// The policy's (chosen, rejected) log-probs of the pair.
pub fn policy_logps(model: &VarMapModel, data: &DpoData) -> Result<[f64; 2]> {
    let ex = data.prepare(0)?;
    let feats = media_features(model.model(), &ex.media)?;
    let lp = sequence_logprobs(
        model.model(),
        &[(&ex.chosen, &feats), (&ex.rejected, &feats)],
    )?;
    let v = to_f64_vec(&lp)?;
    Ok([v[0], v[1]])
}

/// A Qwen-VL DPO golden: its directory (`cases.json`, `expected.safetensors`, `adapter/`), the
/// checkpoint it was made from, and the image of its pair.
pub struct QwenGolden {
    pub dir: PathBuf,
    pub model: PathBuf,
    pub image: PathBuf,
}

impl QwenGolden {
    pub fn cases(&self) -> Result<Value> {
        let path = self.dir.join("cases.json");
        Ok(serde_json::from_str(
            &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
        )?)
    }

    pub fn expected(&self) -> Result<HashMap<String, Tensor>> {
        Ok(candle_core::safetensors::load(
            self.dir.join("expected.safetensors"),
            &Device::Cpu,
        )?)
    }

    /// The checkpoint in float64, every part trained.
    pub fn model(&self) -> Result<VarMapModel> {
        Ok(VarMapModel::load(
            &self.model,
            DType::F64,
            &Device::Cpu,
            TrainParts::all(),
        )?)
    }

    /// The golden pair as a data file the trainer reads, through the Qwen-VL preparer.
    pub fn data(&self, dir: &Path, model: &VarMapModel) -> Result<DpoData> {
        let c = self.cases()?;
        let path = dir.join("pairs.jsonl");
        super::common::write_jsonl(
            &path,
            &[json!({
                "id": "golden",
                "prompt": format!("<image>\n{}", c["question"].as_str().unwrap_or_default()),
                "chosen": c["chosen"], "rejected": c["rejected"],
                "image": super::common::path_str(&self.image),
            })],
        )?;
        let root = dir.to_path_buf();
        let preparer = match model.architecture() {
            Architecture::QwenVl(cfg, _) => Preparer::qwen_vl(&self.model, cfg, root, None)?,
            Architecture::Qwen3Vl(cfg, _) => Preparer::qwen_vl(&self.model, cfg, root, None)?,
            Architecture::Llava(_) => anyhow::bail!("the fixture is not a Qwen-VL checkpoint"),
        };
        Ok(DpoData::read(&path, preparer)?)
    }

    /// The pair's tokens (the processor's expansion of the image item, answers tokenized
    /// apart), both answers' log-probs, and full fine-tuning at the start (policy = reference:
    /// ln 2) with its gradient, against transformers.
    pub fn check_full_fine_tuning(&self) -> Result<()> {
        let (c, want) = (self.cases()?, self.expected()?);
        let tmp = tempfile::tempdir()?;
        let model = self.model()?;
        let data = self.data(tmp.path(), &model)?;
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
        let obj = objective(data, base[0], c["beta"].as_f64().unwrap_or(0.1));
        let (loss, grads) = loss_and_grads(&model, &obj)?;
        let want_loss = c["full_loss"].as_f64().unwrap_or(f64::NAN);
        println!("full fine-tuning loss: ours {loss:.12}, transformers {want_loss:.12}");
        assert!((loss - want_loss).abs() <= 1e-12);
        let worst = check_grads(&model.trained_vars()?, &grads, &want, "grad.")?;
        println!("full fine-tuning gradients: worst relative difference {worst:.2e}");
        Ok(())
    }

    /// The adapter our trainer wrote (`adapter/`), as `PeftModel` ran it: the policy's
    /// log-probs, the DPO loss against the base and the factors' gradients. Returns the model
    /// with the adapter and the modules PEFT attached, for the family's own checks of names.
    pub fn check_lora(&self) -> Result<(VarMapModel, Vec<String>)> {
        let (c, want) = (self.cases()?, self.expected()?);
        let tmp = tempfile::tempdir()?;
        let mut model = self.model()?;
        model.load_lora(&self.dir.join("adapter"))?;
        let data = self.data(tmp.path(), &model)?;
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
        let peft_modules = c["lora_modules"]
            .as_array()
            .context("lora_modules")?
            .iter()
            .filter_map(|m| m.as_str().map(String::from))
            .collect();
        Ok((model, peft_modules))
    }
}

/// The modules `model`'s LoRA adapts, sorted.
pub fn adapted_modules(model: &VarMapModel) -> Result<Vec<String>> {
    let mut ours: Vec<String> = model
        .trained_vars()?
        .into_iter()
        .filter_map(|(k, _)| k.strip_suffix(".lora_A.weight").map(String::from))
        .collect();
    ours.sort();
    Ok(ours)
}
