//! LoRA training: adapters that start as a no-op, gradients that reach only the adapters'
//! factors (and match finite differences), a DPO run that learns and writes a PEFT adapter,
//! a merged checkpoint that computes what the adapted model computed, and an exact resume.
//! All on the golden checkpoint (a tiny random LLaVA-OneVision).

mod common;

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use common::*;
use serde_json::{json, Value};
use unireward_models::family::JudgeModel;
use unireward_models::LlavaOnevision;
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::data::dpo::DpoData;
use unireward_trainer::data::reward::{RewardData, RewardExample};
use unireward_trainer::data::Preparer;
use unireward_trainer::logprob::{media_features, sequence_logprobs};
use unireward_trainer::lora::LoraConfig;
use unireward_trainer::objectives::dpo::compute_reference;
use unireward_trainer::varmap_model::VarMapModel;

/// Targets in all three parts: decoder attention and MLP, the SigLIP MLP and attention
/// output, the projector.
fn all_part_targets() -> Vec<String> {
    [
        "q_proj",
        "v_proj",
        "o_proj",
        "down_proj",
        "fc1",
        "out_proj",
        "linear_1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// One judge example over a golden image (anyres tiles, so the tower and projector run).
fn image_example(model_dir: &Path, tmp: &Path) -> Result<RewardExample> {
    let images = golden_images()?;
    let data = tmp.join("judge.json");
    let rec = json!([{
        "id": "x",
        "image": path_str(&images[1]),
        "conversations": [
            {"from": "human", "value": "<image>\nRate the image."},
            {"from": "gpt", "value": "Final Score: 4"}
        ]
    }]);
    std::fs::write(&data, rec.to_string())?;
    let cfg = unireward_models::config::LlavaConfig::from_file(&model_dir.join("config.json"))?;
    let prep = Preparer::new(model_dir, &cfg, tmp.into(), 8, None)?;
    Ok(RewardData::read(&data, prep)?.prepare(0)?)
}

fn logits(model: &dyn JudgeModel, ex: &RewardExample) -> Result<Tensor> {
    let feats = media_features(model, &ex.media)?;
    let embeds = model.embed(&ex.seq.tokens, &feats)?.unsqueeze(0)?;
    Ok(model.logits(&model.hidden_states(&embeds, None)?)?)
}

/// −(the answer's summed log-probability).
fn loss(model: &dyn JudgeModel, ex: &RewardExample) -> Result<Tensor> {
    let feats = media_features(model, &ex.media)?;
    let lp = sequence_logprobs(model, &[(&ex.seq, &feats)])?;
    Ok(lp.to_dtype(DType::F64)?.sum_all()?.neg()?)
}

#[test]
fn fresh_adapters_leave_the_logits_exactly_unchanged() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = golden_model()?;
    let ex = image_example(&dir, tmp.path())?;
    let base = VarMapModel::load(&dir, DType::F32, &Device::Cpu, TrainParts::all())?;
    let mut adapted = VarMapModel::load(&dir, DType::F32, &Device::Cpu, TrainParts::all())?;
    adapted.add_lora(&LoraConfig::new(4, Some(8.0), 0.0, all_part_targets()), 1)?;
    let n = adapted
        .lora()
        .map(|a| a.module_paths().count())
        .unwrap_or(0);
    // q_proj and v_proj in 2 decoder and 2 vision layers, o_proj and down_proj in the
    // decoder's 2, fc1 and out_proj in the tower's 2, the projector's first layer.
    assert_eq!(n, 17);
    let (x, y) = (logits(base.model(), &ex)?, logits(adapted.model(), &ex)?);
    let diff = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    println!("{n} adapted weights; logits max abs diff {diff:e}");
    assert_eq!(diff, 0.0);
    Ok(())
}

/// Adapters applied as PEFT applies them (base(x) + s·B(A(x)), the model's LoRA branch)
/// compute what the merged weights W + s·B·A compute: the logits and the answer's
/// log-probability of the adapted model equal those of its merged copy (the DPO reference).
#[test]
fn unmerged_adapters_compute_what_the_merged_weights_compute() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = golden_model()?;
    let ex = image_example(&dir, tmp.path())?;
    let mut adapted = VarMapModel::load(&dir, DType::F64, &Device::Cpu, TrainParts::all())?;
    adapted.add_lora(&LoraConfig::new(4, Some(8.0), 0.0, all_part_targets()), 1)?;
    // B starts at zero: give every factor values, so the branch matters.
    let mut rng = Lcg(11);
    let values: HashMap<String, Tensor> = adapted
        .lora()
        .map(|a| a.tensors())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, t)| {
            let n = t.elem_count();
            let v: Vec<f64> = (0..n).map(|_| 0.05 * rng.next()).collect();
            Ok((k, Tensor::from_vec(v, t.shape(), &Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    adapted.set_lora_tensors(&values)?;
    let merged = adapted.frozen_copy()?;
    let base = VarMapModel::load(&dir, DType::F64, &Device::Cpu, TrainParts::all())?;
    // The decoder's last hidden states (f64; the logits are rounded to f32 by the head).
    let hidden = |model: &dyn JudgeModel| -> Result<Tensor> {
        let feats = media_features(model, &ex.media)?;
        let embeds = model.embed(&ex.seq.tokens, &feats)?.unsqueeze(0)?;
        Ok(model.hidden_states(&embeds, None)?)
    };
    let max_abs = |a: &Tensor, b: &Tensor| -> Result<f64> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
    };
    let (x, y) = (hidden(adapted.model())?, hidden(merged.as_ref())?);
    let diff = max_abs(&x, &y)?;
    let moved = max_abs(&x, &hidden(base.model())?)?;
    let (lx, ly) = (
        loss(adapted.model(), &ex)?.to_scalar::<f64>()?,
        loss(merged.as_ref(), &ex)?.to_scalar::<f64>()?,
    );
    println!(
        "hidden states max abs diff {diff:e} (the adapters moved them by {moved:e}); \
         answer log-prob {lx} vs {ly}"
    );
    assert!(moved > 1e-3, "the adapters change nothing: {moved}");
    assert!(diff < 1e-10, "{diff}");
    // Through f32 logits.
    assert!((lx - ly).abs() < 1e-4 * lx.abs().max(1.0), "{lx} vs {ly}");
    Ok(())
}

/// A fixed pseudo-random stream in [-1, 1) (an LCG: no seed source involved).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

#[test]
fn gradients_reach_only_the_factors_and_match_finite_differences() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = golden_model()?;
    let ex = image_example(&dir, tmp.path())?;
    let mut model = VarMapModel::load(&dir, DType::F64, &Device::Cpu, TrainParts::all())?;
    model.add_lora(&LoraConfig::new(2, Some(3.0), 0.0, all_part_targets()), 5)?;
    // B = 0 would zero every gradient of A: give both factors random values.
    let mut rng = Lcg(0x10ba);
    let values: HashMap<String, Tensor> = model
        .trained_vars()?
        .into_iter()
        .map(|(name, var)| {
            let v: Vec<f64> = (0..var.elem_count()).map(|_| 0.3 * rng.next()).collect();
            Ok((name, Tensor::from_vec(v, var.shape(), &Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    model.set_lora_tensors(&values)?;

    let l0 = loss(model.model(), &ex)?;
    let grads = l0.backward()?;
    let factors = model.trained_vars()?;
    assert_eq!(factors.len(), 34);
    for (name, var) in &factors {
        assert!(
            grads.get(var.as_tensor()).is_some(),
            "{name} has no gradient"
        );
    }
    let base = model.varmap().data().lock().unwrap().clone();
    for (name, var) in &base {
        assert!(
            grads.get(var.as_tensor()).is_none(),
            "the frozen weight {name} got a gradient"
        );
    }

    let probes: &[(&str, &[usize])] = &[
        (
            "model.language_model.layers.0.self_attn.q_proj.lora_A.weight",
            &[3, 70],
        ),
        (
            "model.language_model.layers.1.self_attn.v_proj.lora_B.weight",
            &[5, 40],
        ),
        (
            "model.language_model.layers.1.mlp.down_proj.lora_A.weight",
            &[17],
        ),
        (
            "model.language_model.layers.0.self_attn.o_proj.lora_B.weight",
            &[9],
        ),
        (
            "model.vision_tower.encoder.layers.0.mlp.fc1.lora_A.weight",
            &[11],
        ),
        (
            "model.vision_tower.encoder.layers.1.self_attn.out_proj.lora_B.weight",
            &[6],
        ),
        (
            "model.multi_modal_projector.linear_1.lora_A.weight",
            &[2, 50],
        ),
        ("model.multi_modal_projector.linear_1.lora_B.weight", &[33]),
    ];
    let by_name: HashMap<String, candle_core::Var> = factors.into_iter().collect();
    // The decoder's softmax and logits are f32 whatever the weights' dtype: a step of 1e-2
    // keeps that rounding out of the difference quotient.
    let h = 1e-2;
    let mut worst: f64 = 0.0;
    for (short, coords) in probes {
        let name = format!("base_model.model.{short}");
        let var = &by_name[&name];
        let start = var.as_detached_tensor().flatten_all()?.to_vec1::<f64>()?;
        let analytic = grads
            .get(var.as_tensor())
            .map(|g| g.flatten_all()?.to_vec1::<f64>())
            .transpose()?
            .unwrap_or_default();
        for &i in *coords {
            let at = |delta: f64| -> Result<f64> {
                let mut v = start.clone();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu)?)?;
                Ok(loss(model.model(), &ex)?.to_scalar::<f64>()?)
            };
            let fd = (at(h)? - at(-h)?) / (2.0 * h);
            var.set(&Tensor::from_vec(start.clone(), var.shape(), &Device::Cpu)?)?;
            let a = analytic[i];
            let err = (a - fd).abs() / (1e-2 + fd.abs());
            println!("{short}[{i}]: analytic {a:+.6e} finite diff {fd:+.6e} (rel err {err:.1e})");
            worst = worst.max(err);
            assert!(
                err < 1e-2,
                "{short}[{i}]: analytic {a} vs finite difference {fd}"
            );
        }
    }
    println!("worst relative error {worst:.2e}");
    Ok(())
}

fn lora_dpo_args<'a>(model: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "dpo",
        "--kind",
        "vlm",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--batch-size",
        "4",
        "--lr",
        "1e-2",
        "--warmup-ratio",
        "0.1",
        "--beta",
        "0.1",
        "--lora-rank",
        "8",
        "--lora-alpha",
        "16",
        "--no-progress",
    ]
}

fn safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

#[test]
fn lora_dpo_learns_writes_a_peft_adapter_and_merges() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &letter_pairs(16))?;
    let out = tmp.path().join("run");
    let model = golden_model()?;
    let mut args = lora_dpo_args(path_str(&model), path_str(&data), path_str(&out));
    args.extend(["--max-steps", "30"]);
    trainer(&args)?;

    let lines = metrics(&out)?;
    assert_eq!(lines.len(), 30);
    let first = num(&lines[0], "loss");
    // B = 0: the policy starts as the reference.
    assert!((first - std::f64::consts::LN_2).abs() < 1e-6, "{first}");
    let tail = &lines[lines.len() - 5..];
    let mean = |key: &str| tail.iter().map(|l| num(l, key)).sum::<f64>() / 5.0;
    let (acc, loss) = (mean("rewards/accuracies"), mean("loss"));
    println!("LoRA DPO: loss {first:.4} → {loss:.4} (last 5), accuracy {acc:.3}");
    assert!(
        acc > 0.9 && loss < 0.5 * first,
        "accuracy {acc}, loss {loss}"
    );

    // The adapter, in PEFT's layout; no full weights.
    assert!(!out.join("model.safetensors").exists());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json"))?)?;
    println!("{cfg}");
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["task_type"], "CAUSAL_LM");
    assert_eq!(cfg["bias"], "none");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16);
    assert_eq!(cfg["lora_dropout"], 0.0);
    assert_eq!(cfg["base_model_name_or_path"], path_str(&model));
    // The tower's q_proj… are not adapted (it is frozen), so the config names exact paths,
    // as transformers names the modules (so that PEFT attaches them).
    let targets = cfg["target_modules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(targets.len(), 8);
    assert!(targets.contains(&json!("model.language_model.layers.1.self_attn.k_proj")));
    let weights = safetensors(&out.join("adapter_model.safetensors"))?;
    assert_eq!(weights.len(), 16);
    for (key, t) in &weights {
        let module = key
            .strip_prefix("base_model.model.")
            .and_then(|k| {
                k.strip_suffix(".lora_A.weight")
                    .or_else(|| k.strip_suffix(".lora_B.weight"))
            })
            .unwrap_or_else(|| panic!("not a PEFT LoRA key: {key}"));
        assert!(targets.contains(&json!(module)), "{key}");
        let r_dim = if key.ends_with("lora_A.weight") { 0 } else { 1 };
        assert_eq!(t.dim(r_dim)?, 8, "{key}");
    }
    let b =
        &weights["base_model.model.model.language_model.layers.0.self_attn.v_proj.lora_B.weight"];
    assert_eq!(b.dims(), &[32, 8]);
    assert!(
        b.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0,
        "B was trained"
    );

    // Merged into a full checkpoint, in the base's key layout and dtype.
    let merged = tmp.path().join("merged");
    trainer(&[
        "merge-lora",
        "--model",
        path_str(&model),
        "--adapter",
        path_str(&out),
        "--out",
        path_str(&merged),
    ])?;
    let (mw, bw) = (
        safetensors(&merged.join("model.safetensors"))?,
        safetensors(&model.join("model.safetensors"))?,
    );
    let mut keys: Vec<&String> = mw.keys().collect();
    let mut base_keys: Vec<&String> = bw.keys().collect();
    keys.sort();
    base_keys.sort();
    assert_eq!(keys, base_keys);
    assert!(mw.iter().all(|(k, t)| t.dtype() == bw[k].dtype()));
    assert!(merged.join("tokenizer.json").is_file() && merged.join("config.json").is_file());
    assert!(!merged.join("adapter_config.json").exists());

    let merged_model = LlavaOnevision::load(&merged, DType::F32, &Device::Cpu)?;
    let mut adapted = VarMapModel::load(&model, DType::F32, &Device::Cpu, TrainParts::all())?;
    adapted.load_lora(&out)?;
    let prep = Preparer::new(&model, adapted.config()?, tmp.path().into(), 8, None)?;
    let pairs = DpoData::read(&data, prep)?;
    let via_adapter = compute_reference(adapted.model(), &pairs, 4, false)?;
    let via_merged = compute_reference(&merged_model, &pairs, 4, false)?;
    let base_model = LlavaOnevision::load(&model, DType::F32, &Device::Cpu)?;
    let via_base = compute_reference(&base_model, &pairs, 4, false)?;
    let (mut worst, mut moved): (f64, f64) = (0.0, 0.0);
    for ((a, m), b) in via_adapter.iter().zip(&via_merged).zip(&via_base) {
        for k in 0..2 {
            worst = worst.max((a[k] - m[k]).abs());
            moved = moved.max((a[k] - b[k]).abs());
        }
    }
    println!(
        "log-probs: adapter vs merged max diff {worst:.2e}; adapter vs base max diff {moved:.3}"
    );
    assert!(worst <= 1e-5);
    assert!(moved > 0.1, "the adapter changes the model");
    Ok(())
}

#[test]
fn lora_settings_are_checked_up_front() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &letter_pairs(2))?;
    let model = golden_model()?;
    let out = tmp.path().join("run");
    let base = lora_dpo_args(path_str(&model), path_str(&data), path_str(&out));
    let run = |extra: &[&str]| -> Result<String> {
        let res = trainer_unchecked(&[&base[..], extra].concat())?;
        assert!(!res.status.success(), "{extra:?} was accepted");
        Ok(String::from_utf8_lossy(&res.stderr).into_owned())
    };
    let msg = run(&["--lora-dropout", "0.05"])?;
    assert!(
        msg.contains("--lora-dropout 0.05") && msg.contains("only 0"),
        "{msg}"
    );
    let msg = run(&["--lora-targets", "q_proj,fc2"])?;
    assert!(
        msg.contains("fc2") && msg.contains("vision frozen"),
        "{msg}"
    );
    // The adapter options need --lora-rank.
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
        "--lora-alpha",
        "16",
    ])?;
    let msg = String::from_utf8_lossy(&res.stderr);
    assert!(
        !res.status.success() && msg.contains("--lora-rank"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn resumed_lora_run_repeats_the_uninterrupted_one() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("pairs.jsonl");
    write_jsonl(&data, &image_pairs(7)?)?;
    let model = golden_model()?;
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let args = |out: &Path, lora: bool| -> Vec<String> {
        let mut v: Vec<&str> = vec![
            "dpo",
            "--kind",
            "vlm",
            "--model",
            path_str(&model),
            "--data",
            path_str(&data),
            "--out",
            path_str(out),
            "--max-steps",
            "6",
            "--batch-size",
            "2",
            "--grad-accum",
            "2",
            "--lr",
            "1e-2",
            "--save-every",
            "2",
            "--keep-checkpoints",
            "0",
            "--train-vision",
            "--ref",
            "frozen",
            "--sft-weight",
            "0.5",
            "--no-progress",
        ];
        if lora {
            v.extend([
                "--lora-rank",
                "4",
                "--lora-targets",
                "q_proj,o_proj,fc1,linear_2",
            ]);
        }
        v.iter().map(|s| s.to_string()).collect()
    };
    let run = |out: &Path, lora: bool, extra: &[&str]| -> Result<std::process::Output> {
        let mut all = args(out, lora);
        all.extend(extra.iter().map(|s| s.to_string()));
        trainer_unchecked(&all.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert!(run(&a, true, &[])?.status.success());
    assert!(run(&b, true, &["--stop-after", "3"])?.status.success());
    assert_eq!(metrics(&b)?.len(), 3);
    let ckpt = b.join("checkpoint-2");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ckpt.join(f).is_file(), "{f}");
    }
    assert!(!ckpt.join("model.safetensors").exists());
    // As if the run had died after logging step 3 but before checkpointing it.
    std::fs::remove_dir_all(b.join("checkpoint-3"))?;
    let without = run(&b, false, &["--resume"])?;
    let msg = String::from_utf8_lossy(&without.stderr);
    assert!(!without.status.success() && msg.contains("lora"), "{msg}");
    assert!(run(&b, true, &["--resume"])?.status.success());

    let (ma, mb) = (metrics(&a)?, metrics(&b)?);
    assert_eq!(ma.len(), 6);
    assert_eq!(mb.len(), 6);
    let mut worst: f64 = 0.0;
    for (la, lb) in ma.iter().zip(&mb) {
        let (Some(oa), Some(ob)) = (la.as_object(), lb.as_object()) else {
            panic!("metrics lines must be objects");
        };
        assert_eq!(oa.keys().collect::<Vec<_>>(), ob.keys().collect::<Vec<_>>());
        for (k, va) in oa {
            let d = (va.as_f64().unwrap_or(f64::NAN) - ob[k].as_f64().unwrap_or(f64::NAN)).abs();
            worst = worst.max(d);
            assert!(d <= 1e-6, "step {}: {k} {va} vs {}", la["step"], ob[k]);
        }
    }
    let (wa, wb) = (
        safetensors(&a.join("adapter_model.safetensors"))?,
        safetensors(&b.join("adapter_model.safetensors"))?,
    );
    assert_eq!(wa.len(), wb.len());
    // q_proj and o_proj in both decoder layers; q_proj and fc1 in both vision layers; linear_2.
    assert_eq!(wa.len(), 2 * 9);
    let mut wworst: f32 = 0.0;
    for (k, ta) in &wa {
        let d = (ta - &wb[k])?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        wworst = wworst.max(d);
    }
    println!("resumed LoRA run: metrics max diff {worst:.2e}, adapter max diff {wworst:.2e}");
    assert!(wworst <= 1e-6);
    Ok(())
}

#[test]
fn merging_keeps_the_base_sharding_and_dtype() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let golden = golden_model()?;
    // The golden checkpoint as two bf16 shards with an index, as large checkpoints come.
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base)?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(golden.join(f), base.join(f))?;
    }
    let all = safetensors(&golden.join("model.safetensors"))?;
    let mut shards: [HashMap<String, Tensor>; 2] = Default::default();
    let mut weight_map = serde_json::Map::new();
    for (k, t) in &all {
        let i = usize::from(k.starts_with("language_model."));
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        weight_map.insert(k.clone(), json!(name));
        shards[i].insert(k.clone(), t.to_dtype(DType::BF16)?);
    }
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        candle_core::safetensors::save(shard, base.join(name))?;
    }
    std::fs::write(
        base.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )?;

    // An adapter on modules in both shards, with nonzero factors.
    let mut model = VarMapModel::load(&base, DType::F32, &Device::Cpu, TrainParts::all())?;
    model.add_lora(&LoraConfig::new(2, Some(6.0), 0.0, all_part_targets()), 3)?;
    let mut rng = Lcg(0xbf16);
    let values: HashMap<String, Tensor> = model
        .trained_vars()?
        .into_iter()
        .map(|(name, var)| {
            let v: Vec<f32> = (0..var.elem_count())
                .map(|_| 0.5 * rng.next() as f32)
                .collect();
            Ok((name, Tensor::from_vec(v, var.shape(), &Device::Cpu)?))
        })
        .collect::<Result<_>>()?;
    model.set_lora_tensors(&values)?;
    let adapter_dir = tmp.path().join("adapter");
    let adapter = model.lora().expect("attached above");
    adapter.save(&adapter_dir, path_str(&base))?;
    let module_names: HashMap<&str, &str> = adapter
        .module_paths()
        .filter_map(|p| Some((p, adapter.module_name(p)?)))
        .collect();

    let out = tmp.path().join("merged");
    let summary = unireward_trainer::lora::merge(&base, &adapter_dir, &out)?;
    assert_eq!(summary.modules, 17);
    assert_eq!(summary.files.len(), 2);
    assert!(out.join("model.safetensors.index.json").is_file());
    assert!(out.join("tokenizer.json").is_file());
    let mut changed = 0;
    for (i, shard) in shards.iter().enumerate() {
        let name = format!("model-0000{}-of-00002.safetensors", i + 1);
        let merged = safetensors(&out.join(name))?;
        assert_eq!(merged.len(), shard.len());
        for (k, w) in shard {
            let m = &merged[k];
            assert_eq!(m.dtype(), DType::BF16, "{k}");
            let path = k.strip_suffix(".weight").unwrap_or(k);
            let module = module_names.get(path).copied().unwrap_or(path);
            let a = values.get(&format!("base_model.model.{module}.lora_A.weight"));
            let b = values.get(&format!("base_model.model.{module}.lora_B.weight"));
            // W + (alpha/r)·B·A added in f32, rounded once to bf16.
            let want = match (a, b) {
                (Some(a), Some(b)) => {
                    changed += 1;
                    (w.to_dtype(DType::F32)? + (b.matmul(a)? * 3.0)?)?.to_dtype(DType::BF16)?
                }
                _ => w.clone(),
            };
            let d = (m.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            assert_eq!(d, 0.0, "{k}");
        }
    }
    assert_eq!(changed, 17);
    // It loads, and a merge into the adapter's own directory is refused.
    LlavaOnevision::load(&out, DType::F32, &Device::Cpu)?;
    assert!(unireward_trainer::lora::merge(&base, &adapter_dir, &adapter_dir).is_err());
    Ok(())
}
