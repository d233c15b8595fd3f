//! LoRA adapters shared with PEFT, against fixtures that peft and transformers made
//! (`fixtures/peft`, see scripts/golden/make_peft_fixtures.py): a PEFT adapter merges into
//! every key layout and reproduces PEFT's log-probs; our adapters name the modules as
//! transformers does; adapters written by older unireward (checkpoint keys) still merge;
//! adapters with NaN, and merges that overflow, are refused naming the tensor.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use common::*;
use serde_json::Value;
use unireward_models::family::JudgeModel;
use unireward_models::tokenize::PromptTokenizer;
use unireward_models::{LlavaOnevision, MediaFeatures};
use unireward_tests::{golden_cases, golden_tensors};
use unireward_trainer::checkpoint_keys::TrainParts;
use unireward_trainer::logprob::{sequence_logprobs, to_f64_vec, ScoredSequence};
use unireward_trainer::lora::{merge, LoraConfig};
use unireward_trainer::varmap_model::VarMapModel;

/// The golden tests' tolerance on completion log-probs.
const LOGPROB_TOL: f64 = 1e-3;

fn peft_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/peft")
}

fn peft_adapter() -> PathBuf {
    peft_fixtures().join("llava_ov_tiny_lora")
}

fn expected() -> Result<Value> {
    let path = peft_fixtures().join("expected.json");
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
    )?)
}

fn safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load(path, &Device::Cpu)?)
}

/// The golden cases' completion log-probs under `model`, from the golden pixel values.
fn completion_logprobs(model: &dyn JudgeModel, dir: &Path) -> Result<BTreeMap<String, f64>> {
    let tok = PromptTokenizer::load(dir, model.llava_config().context("a LLaVA model")?)?;
    let expected = golden_tensors()?;
    let mut out = BTreeMap::new();
    for case in golden_cases()? {
        let mut media = MediaFeatures::default();
        if let Some(pix) = expected.get(&format!("{}.pixel_values", case.name)) {
            let sizes = expected[&format!("{}.image_sizes", case.name)].to_vec2::<i64>()?;
            for (i, n) in case.num_patches_per_image.iter().enumerate() {
                let tiles = pix.get(i)?.narrow(0, 0, *n)?;
                let size = (sizes[i][0] as u32, sizes[i][1] as u32);
                media.images.push(model.image_features(&tiles, size)?);
            }
        }
        if let Some(frames) = expected.get(&format!("{}.pixel_values_videos", case.name)) {
            media.videos.push(model.video_features(frames)?);
        }
        let lens = |ts: &[Tensor]| ts.iter().map(|t| t.dim(0)).collect::<Result<Vec<_>, _>>();
        let tokens = tok.encode(&case.text, &lens(&media.images)?, &lens(&media.videos)?)?;
        let seq = ScoredSequence::from_prompt_len(tokens, case.prompt_len);
        let lp = to_f64_vec(&sequence_logprobs(model, &[(&seq, &media)])?)?[0];
        out.insert(case.name.clone(), lp);
    }
    Ok(out)
}

/// Every case within the tolerance of PEFT's numbers; returns the worst difference.
fn check_against_peft(got: &BTreeMap<String, f64>, what: &str) -> Result<f64> {
    let want = &expected()?["completion_logprob"];
    let mut worst: f64 = 0.0;
    for (case, lp) in got {
        let w = want[case].as_f64().context("expected.json lacks a case")?;
        let d = (lp - w).abs();
        println!("{what} {case}: {lp:.6} vs transformers+peft {w:.6} (diff {d:.2e})");
        assert!(d < LOGPROB_TOL, "{what} {case}: {lp} vs {w}");
        worst = worst.max(d);
    }
    assert_eq!(got.len(), 5);
    Ok(worst)
}

#[test]
fn a_peft_adapter_merges_and_reproduces_peft_logprobs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let model = golden_model()?;
    let merged = tmp.path().join("merged");
    let out = trainer(&[
        "merge-lora",
        "--model",
        path_str(&model),
        "--adapter",
        path_str(&peft_adapter()),
        "--out",
        path_str(&merged),
    ])?;
    println!("{}", String::from_utf8_lossy(&out.stdout));
    let merged_model = LlavaOnevision::load(&merged, DType::F32, &Device::Cpu)?;
    let via_merge = check_against_peft(&completion_logprobs(&merged_model, &merged)?, "merged")?;

    // Attached unmerged, as training and evaluation use it.
    let mut adapted = VarMapModel::load(&model, DType::F32, &Device::Cpu, TrainParts::all())?;
    adapted.load_lora(&peft_adapter())?;
    let n = adapted
        .lora()
        .map(|a| a.module_paths().count())
        .unwrap_or(0);
    assert_eq!(Some(n as u64), expected()?["adapted_modules"].as_u64());
    let via_adapter =
        check_against_peft(&completion_logprobs(adapted.model(), &model)?, "attached")?;

    // The vision tower's adapters count: the image cases move more than the tolerance.
    let base = &expected()?["base_completion_logprob"];
    let peft = &expected()?["completion_logprob"];
    let moved = (base["one_wide_image"].as_f64().unwrap_or(0.0)
        - peft["one_wide_image"].as_f64().unwrap_or(0.0))
    .abs();
    println!("max diff to peft: merged {via_merge:.2e}, attached {via_adapter:.2e}; the adapter moves one_wide_image by {moved:.3}");
    assert!(moved > 100.0 * LOGPROB_TOL);
    Ok(())
}

/// The golden checkpoint's keys (`vision_tower.`, `multi_modal_projector.linear_{1,2}`,
/// `image_newline`, `language_model.model.`, `language_model.lm_head`) in another layout.
struct Layout {
    name: &'static str,
    vision: &'static str,
    projector: [&'static str; 2],
    newline: &'static str,
    decoder: &'static str,
    head: &'static str,
}

const LAYOUTS: [Layout; 4] = [
    Layout {
        name: "HF hub",
        vision: "vision_tower.vision_model.",
        projector: [
            "multi_modal_projector.linear_1",
            "multi_modal_projector.linear_2",
        ],
        newline: "image_newline",
        decoder: "language_model.model.",
        head: "language_model.lm_head",
    },
    Layout {
        name: "transformers 5 save",
        vision: "model.vision_tower.",
        projector: [
            "model.multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
        ],
        newline: "model.image_newline",
        decoder: "model.language_model.",
        head: "lm_head",
    },
    Layout {
        name: "model-prefixed with vision_model",
        vision: "model.vision_tower.vision_model.",
        projector: [
            "model.multi_modal_projector.linear_1",
            "model.multi_modal_projector.linear_2",
        ],
        newline: "model.image_newline",
        decoder: "model.language_model.",
        head: "lm_head",
    },
    Layout {
        name: "LLaVA-NeXT original",
        vision: "model.vision_tower.vision_tower.vision_model.",
        projector: ["model.mm_projector.0", "model.mm_projector.2"],
        newline: "model.image_newline",
        decoder: "model.",
        head: "lm_head",
    },
];

fn rename(key: &str, to: &Layout) -> String {
    let swaps = [
        ("vision_tower.", to.vision),
        ("multi_modal_projector.linear_1", to.projector[0]),
        ("multi_modal_projector.linear_2", to.projector[1]),
        ("image_newline", to.newline),
        ("language_model.model.", to.decoder),
        ("language_model.lm_head", to.head),
    ];
    for (from, into) in swaps {
        if let Some(rest) = key.strip_prefix(from) {
            return format!("{into}{rest}");
        }
    }
    key.to_string()
}

/// The golden checkpoint with its keys in `layout`, beside its config and tokenizer.
fn golden_in(layout: &Layout, dir: &Path) -> Result<()> {
    let golden = golden_model()?;
    std::fs::create_dir_all(dir)?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(golden.join(f), dir.join(f))?;
    }
    let renamed: HashMap<String, Tensor> = safetensors(&golden.join("model.safetensors"))?
        .into_iter()
        .map(|(k, t)| (rename(&k, layout), t))
        .collect();
    candle_core::safetensors::save(&renamed, dir.join("model.safetensors"))?;
    Ok(())
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn peft_and_older_unireward_adapters_merge_into_every_key_layout() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let golden = golden_model()?;
    let reference = tmp.path().join("reference");
    let summary = merge(&golden, &peft_adapter(), &reference)?;
    assert_eq!(summary.modules, 10);
    let want = safetensors(&reference.join("model.safetensors"))?;
    let base = safetensors(&golden.join("model.safetensors"))?;
    let changed: BTreeSet<&String> = want
        .iter()
        .filter(|(k, t)| max_diff(t, &base[*k]).map(|d| d > 0.0).unwrap_or(true))
        .map(|(k, _)| k)
        .collect();
    // q_proj and v_proj in both layers of the tower and the decoder, gate_proj in both.
    assert_eq!(changed.len(), 10, "{changed:?}");
    assert!(changed.contains(&"vision_tower.encoder.layers.1.self_attn.v_proj.weight".to_string()));

    // An adapter as unireward wrote them before: modules named by checkpoint keys.
    let legacy = tmp.path().join("legacy");
    std::fs::create_dir_all(&legacy)?;
    std::fs::copy(
        peft_adapter().join("adapter_config.json"),
        legacy.join("adapter_config.json"),
    )?;
    let renamed: HashMap<String, Tensor> =
        safetensors(&peft_adapter().join("adapter_model.safetensors"))?
            .into_iter()
            .map(|(k, t)| {
                let k = k
                    .replace(
                        "base_model.model.model.vision_tower.",
                        "base_model.model.vision_tower.",
                    )
                    .replace(
                        "base_model.model.model.language_model.",
                        "base_model.model.language_model.model.",
                    );
                (k, t)
            })
            .collect();
    assert!(renamed
        .keys()
        .any(|k| k.starts_with("base_model.model.language_model.model.layers.")));
    candle_core::safetensors::save(&renamed, legacy.join("adapter_model.safetensors"))?;

    for layout in &LAYOUTS {
        let base_dir = tmp.path().join(layout.name.replace(' ', "_"));
        golden_in(layout, &base_dir)?;
        for (adapter, what) in [
            (peft_adapter(), "peft"),
            (legacy.clone(), "older unireward"),
        ] {
            let out = tmp
                .path()
                .join(format!("merged-{}-{what}", layout.name.replace(' ', "_")));
            let s = merge(&base_dir, &adapter, &out)
                .with_context(|| format!("{what} adapter onto the {} layout", layout.name))?;
            assert_eq!(s.modules, 10);
            let got = safetensors(&out.join("model.safetensors"))?;
            assert_eq!(got.len(), want.len());
            for (k, w) in &want {
                let g = got
                    .get(&rename(k, layout))
                    .with_context(|| format!("{}: no {k}", layout.name))?;
                assert_eq!(max_diff(g, w)?, 0.0, "{what} on {}: {k}", layout.name);
            }
            println!(
                "{what} adapter merged into the {} layout: 10 weights, equal to the reference",
                layout.name
            );
        }
    }
    Ok(())
}

fn linear_module_names() -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(peft_fixtures().join("transformers_linear_modules.txt"))?;
    Ok(text.lines().map(String::from).collect())
}

/// PEFT's rule: a module is targeted when its name is a target or ends with `.target`.
fn peft_targets(targets: &Value, module: &str) -> bool {
    targets
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|t| module == t || module.strip_suffix(t).is_some_and(|h| h.ends_with('.')))
}

#[test]
fn our_adapters_name_the_modules_of_transformers_model() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let golden = golden_model()?;
    let modules = linear_module_names()?;
    let peft_keys: BTreeSet<String> =
        safetensors(&peft_adapter().join("adapter_model.safetensors"))?
            .into_keys()
            .collect();
    for (targets, parts, same_as_peft) in [
        // The fixture's targets over all parts: the very keys PEFT wrote.
        (
            vec!["q_proj", "v_proj", "gate_proj"],
            TrainParts::all(),
            true,
        ),
        // The tower frozen: full names, each of a module of transformers' model.
        (
            vec!["q_proj", "v_proj", "gate_proj"],
            TrainParts {
                vision: false,
                projector: true,
                decoder: true,
            },
            false,
        ),
        // Every part, the projector and the head.
        (
            vec![
                "fc1",
                "out_proj",
                "linear_1",
                "linear_2",
                "down_proj",
                "lm_head",
            ],
            TrainParts::all(),
            false,
        ),
    ] {
        let mut model = VarMapModel::load(&golden, DType::F32, &Device::Cpu, parts)?;
        let targets: Vec<String> = targets.iter().map(|s| s.to_string()).collect();
        model.add_lora(&LoraConfig::new(4, Some(8.0), 0.0, targets.clone()), 1)?;
        let dir = tmp.path().join(format!("adapter-{}", targets.join("-")));
        let adapter = model.lora().context("attached above")?;
        adapter.save(&dir, path_str(&golden))?;
        let keys: BTreeSet<String> = safetensors(&dir.join("adapter_model.safetensors"))?
            .into_keys()
            .collect();
        let cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("adapter_config.json"))?)?;
        let named: BTreeSet<&str> = keys
            .iter()
            .filter_map(|k| {
                k.strip_prefix("base_model.model.")?
                    .strip_suffix(".lora_A.weight")
                    .or_else(|| {
                        k.strip_prefix("base_model.model.")?
                            .strip_suffix(".lora_B.weight")
                    })
            })
            .collect();
        assert_eq!(named.len() * 2, keys.len(), "{keys:?}");
        // PEFT attaches a factor to a module of transformers' model that target_modules
        // selects: every one of ours, and no other module.
        let selected: BTreeSet<&str> = modules
            .iter()
            .map(String::as_str)
            .filter(|m| peft_targets(&cfg["target_modules"], m))
            .collect();
        println!(
            "{targets:?}: {} modules, target_modules {}",
            named.len(),
            cfg["target_modules"]
        );
        assert_eq!(named, selected, "{targets:?}");
        if same_as_peft {
            assert_eq!(keys, peft_keys);
            assert_eq!(
                cfg["target_modules"],
                serde_json::json!(["gate_proj", "q_proj", "v_proj"])
            );
        }
    }
    Ok(())
}

/// The fixture adapter with one factor replaced.
fn poisoned_adapter(dir: &Path, key: &str, value: f32) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::copy(
        peft_adapter().join("adapter_config.json"),
        dir.join("adapter_config.json"),
    )?;
    let mut tensors = safetensors(&peft_adapter().join("adapter_model.safetensors"))?;
    let t = tensors.get(key).context("no such factor")?;
    let mut v = t.flatten_all()?.to_vec1::<f32>()?;
    v[3] = value;
    let shape = t.shape().clone();
    tensors.insert(key.to_string(), Tensor::from_vec(v, shape, &Device::Cpu)?);
    candle_core::safetensors::save(&tensors, dir.join("adapter_model.safetensors"))?;
    Ok(())
}

#[test]
fn non_finite_adapters_and_overflowing_merges_are_refused() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let golden = golden_model()?;
    let key = "base_model.model.model.language_model.layers.1.mlp.gate_proj.lora_B.weight";
    for (i, bad) in [f32::NAN, f32::INFINITY].into_iter().enumerate() {
        let dir = tmp.path().join(format!("bad{i}"));
        poisoned_adapter(&dir, key, bad)?;
        let out = tmp.path().join(format!("out{i}"));
        let res = trainer_unchecked(&[
            "merge-lora",
            "--model",
            path_str(&golden),
            "--adapter",
            path_str(&dir),
            "--out",
            path_str(&out),
        ])?;
        let msg = String::from_utf8_lossy(&res.stderr);
        println!("{msg}");
        assert!(!res.status.success(), "a {bad} factor was merged");
        assert!(msg.contains(key) && msg.contains("element 3"), "{msg}");
        assert!(!out.join("model.safetensors").exists());
        let mut model = VarMapModel::load(&golden, DType::F32, &Device::Cpu, TrainParts::all())?;
        let err = model
            .load_lora(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(key), "{err}");
    }

    // Finite factors whose update overflows an f16 weight.
    let f16_base = tmp.path().join("f16");
    std::fs::create_dir_all(&f16_base)?;
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(golden.join(f), f16_base.join(f))?;
    }
    let halves: HashMap<String, Tensor> = safetensors(&golden.join("model.safetensors"))?
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F16)?)))
        .collect::<Result<_>>()?;
    candle_core::safetensors::save(&halves, f16_base.join("model.safetensors"))?;
    let huge = tmp.path().join("huge");
    poisoned_adapter(&huge, key, 1.0e30)?;
    let err = merge(&f16_base, &huge, &tmp.path().join("out-f16"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    println!("{err}");
    assert!(
        err.contains("language_model.model.layers.1.mlp.gate_proj.weight") && err.contains("F16"),
        "{err}"
    );
    Ok(())
}
