//! CLIP text encoders and tokenizers of SD 1.5 / SDXL pipelines against Hugging Face
//! transformers and diffusers (`fixtures/diffusion/clip_text`, made by
//! `scripts/golden/make_clip_text.py`): token ids equal on prompts with punctuation, unicode,
//! numbers, typed specials, the empty and an over-long prompt; every hidden state, the pooled
//! state and `text_embeds` within 1e-5 (absolute + relative); both pooling rules; the
//! pipelines' `encode_prompt` conditioning; fp16 and unprefixed checkpoints; gradients against
//! finite differences.
//!
//! The fixture keeps each encoder's weights compact (the token embedding's used rows only); the
//! tests densify them into the checkpoint transformers ran on (its SHA-256 recorded) under
//! `CARGO_TARGET_TMPDIR`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde_json::Value;
use sha2::{Digest, Sha256};
use unireward_models::diffusion::clip_text::{
    sd15_prompt_embeds, sdxl_prompt_embeds, ClipTextConfig, ClipTextModel, ClipTextOutput,
    ClipTextVariant,
};
use unireward_models::diffusion::clip_tokenizer::ClipTokenizer;
use unireward_models::Error;

/// allclose(atol, rtol) with the goldens: |ours − theirs| <= TOL + TOL·|theirs|.
const TOL: f64 = 1e-5;
const VOCAB: usize = 49408;
const EOS: i64 = 49407;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/diffusion/clip_text")
}

fn cases() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("cases.json")).unwrap()).unwrap()
}

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(root().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn t<'a>(e: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    e.get(name)
        .unwrap_or_else(|| panic!("no {name} in expected.safetensors"))
}

/// Asserts allclose(TOL, TOL) and returns the largest |difference|.
fn assert_close(what: &str, ours: &Tensor, theirs: &Tensor) -> f64 {
    assert_eq!(ours.dims(), theirs.dims(), "{what}: shapes");
    let a = ours.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = theirs.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let a = a.to_vec1::<f64>().unwrap();
    let b = b.to_vec1::<f64>().unwrap();
    let mut max_diff = 0f64;
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let d = (x - y).abs();
        assert!(
            d <= TOL + TOL * y.abs(),
            "{what}: element {i}: ours {x}, transformers {y} (|diff| {d:e})"
        );
        max_diff = max_diff.max(d);
    }
    max_diff
}

fn ids_tensor(rows: &[Vec<i64>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

fn json_ids(v: &Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

fn prompts(c: &Value) -> Vec<String> {
    c["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn full_rows(c: &Value) -> Vec<usize> {
    c["full_hidden_states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}

fn select_rows(x: &Tensor, rows: &[usize]) -> Tensor {
    let idx = Tensor::from_vec(
        rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        rows.len(),
        x.device(),
    )
    .unwrap();
    x.index_select(&idx, 0).unwrap()
}

/// How a test wants an encoder's checkpoint written.
#[derive(Clone, Copy, PartialEq)]
enum Form {
    /// `model.safetensors`, float32, hub names.
    F32,
    /// `model.fp16.safetensors` only, float16, hub names.
    F16,
    /// `model.safetensors`, float32, without `text_model.` (transformers >= 5's own save).
    Unprefixed,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Densifies `component`'s compact weights into a fresh component directory (config.json as
/// stored, then `edit`ed) and checks the dense token embedding against the recorded SHA-256.
fn materialise(
    component: &str,
    form: Form,
    edit: impl Fn(&mut Value),
    drop_key: Option<&str>,
) -> PathBuf {
    let src = root().join(component);
    let compact =
        candle_core::safetensors::load(src.join("weights.compact.safetensors"), &Device::Cpu)
            .unwrap();
    let mut dense: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in &compact {
        if name.ends_with(".rows") {
            continue;
        }
        if let Some(base) = name.strip_suffix(".values") {
            let rows = compact[&format!("{base}.rows")].to_vec1::<i64>().unwrap();
            let values = tensor
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let d = values[0].len();
            let mut data = vec![0f32; VOCAB * d];
            for (r, row) in rows.iter().zip(values) {
                data[*r as usize * d..(*r as usize + 1) * d].copy_from_slice(&row);
            }
            let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
            let sha = format!("{:x}", Sha256::digest(&bytes));
            assert_eq!(
                sha,
                cases()["token_embedding_sha256"][component]
                    .as_str()
                    .unwrap(),
                "{component}: the densified token embedding is not the one transformers ran"
            );
            dense.insert(
                base.to_string(),
                Tensor::from_vec(data, (VOCAB, d), &Device::Cpu).unwrap(),
            );
        } else {
            dense.insert(name.clone(), tensor.to_dtype(DType::F32).unwrap());
        }
    }
    let dtype = if form == Form::F16 {
        DType::F16
    } else {
        DType::F32
    };
    let dense: HashMap<String, Tensor> = dense
        .into_iter()
        .filter(|(k, _)| Some(k.as_str()) != drop_key)
        .map(|(k, v)| {
            let k = match form {
                Form::Unprefixed => k.strip_prefix("text_model.").unwrap_or(&k).to_string(),
                _ => k,
            };
            (k, v.to_dtype(dtype).unwrap())
        })
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("diffusion_clip_text")
        .join(format!("{component}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let file = if form == Form::F16 {
        "model.fp16.safetensors"
    } else {
        "model.safetensors"
    };
    candle_core::safetensors::save(&dense, dir.join(file)).unwrap();
    dir
}

fn load(component: &str, form: Form, edit: impl Fn(&mut Value)) -> ClipTextModel {
    let dir = materialise(component, form, edit, None);
    let model = ClipTextModel::load(&dir, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    model
}

fn tokenizer(name: &str) -> ClipTokenizer {
    ClipTokenizer::from_dir(&root().join(name)).unwrap()
}

#[test]
fn tokenizers_give_transformers_ids() {
    let c = cases();
    let ps = prompts(&c);
    let refs: Vec<&str> = ps.iter().map(String::as_str).collect();
    for (dir, key, pad) in [
        ("tokenizer", "tokenizer", 49407u32),
        ("tokenizer_2", "tokenizer_2", 0),
        ("tokenizer_2_saved_by_transformers5", "tokenizer_2", 0),
    ] {
        let tok = tokenizer(dir);
        assert_eq!(tok.model_max_length(), 77, "{dir}");
        assert_eq!(
            (tok.bos_id(), tok.eos_id(), tok.pad_id()),
            (49406, 49407, pad),
            "{dir}"
        );
        let want = json_ids(&c["input_ids"][key]);
        let got = tok.encode_batch(&refs).unwrap();
        for ((p, g), w) in ps.iter().zip(&got).zip(&want) {
            let g: Vec<i64> = g.iter().map(|&i| i as i64).collect();
            assert_eq!(&g, w, "{dir}: ids of {p:?}");
        }
        let ids = tok.input_ids(&refs, &Device::Cpu).unwrap();
        assert_eq!(ids.dims(), &[ps.len(), 77]);
        assert_eq!(ids.dtype(), DType::U32);
    }
    // Untruncated lengths (the pipelines' truncation warning), with the specials.
    let tok = tokenizer("tokenizer");
    let lens: Vec<u64> = c["untruncated_lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    for (p, want) in ps.iter().zip(&lens) {
        assert_eq!(
            tok.encode_untruncated(p).unwrap().len() as u64,
            *want,
            "{p:?}"
        );
    }
    // The empty prompt is <|startoftext|> <|endoftext|> then padding; the long one keeps
    // its first 75 tokens and ends in <|endoftext|>.
    let empty = tok.encode("").unwrap();
    assert_eq!(&empty[..3], &[49406, 49407, 49407]);
    let long = ps.iter().max_by_key(|p| p.len()).unwrap();
    let ids = tok.encode(long).unwrap();
    assert_eq!((ids.len(), ids[76]), (77, 49407));
    assert_eq!(&ids[..76], &tok.encode_untruncated(long).unwrap()[..76]);
}

fn check_encoder(
    name: &str,
    model: &ClipTextModel,
    e: &HashMap<String, Tensor>,
    c: &Value,
) -> ClipTextOutput {
    let ids = t(e, &format!("{name}.input_ids"));
    let out = model.forward(ids).unwrap();
    let full = full_rows(c);
    assert_eq!(
        out.hidden_states.len(),
        model.config().num_hidden_layers + 1
    );
    let mut worst = 0f64;
    for (i, h) in out.hidden_states.iter().enumerate() {
        let want = t(e, &format!("{name}.hidden_states.{i}"));
        worst = worst.max(assert_close(
            &format!("{name} hidden_states[{i}]"),
            &select_rows(h, &full),
            want,
        ));
    }
    let want_last = t(e, &format!("{name}.last_hidden_state"));
    let last = if want_last.dim(0).unwrap() == full.len() {
        select_rows(&out.last_hidden_state, &full)
    } else {
        out.last_hidden_state.clone()
    };
    worst = worst.max(assert_close(
        &format!("{name} last_hidden_state"),
        &last,
        want_last,
    ));
    worst = worst.max(assert_close(
        &format!("{name} pooler_output"),
        &out.pooler_output,
        t(e, &format!("{name}.pooler_output")),
    ));
    if let Some(te) = &out.text_embeds {
        worst = worst.max(assert_close(
            &format!("{name} text_embeds"),
            te,
            t(e, &format!("{name}.text_embeds")),
        ));
    }
    eprintln!("{name}: largest |ours - transformers| {worst:.2e}");
    out
}

/// The hand-made id rows of both pooling rules (legacy eos_token_id 2: argmax; else the first
/// eos, 0 when there is none).
fn check_raw_pooling(name: &str, e: &HashMap<String, Tensor>, c: &Value) {
    for (rule, eos) in [("legacy", 2i64), ("eos", EOS)] {
        let model = load(name, Form::F32, |cfg| cfg["eos_token_id"] = eos.into());
        assert_eq!(model.config().pools_at_argmax(), rule == "legacy");
        for (r, row) in json_ids(&c["raw_ids"]).iter().enumerate() {
            let out = model
                .forward(&ids_tensor(std::slice::from_ref(row)))
                .unwrap();
            let key = format!("{name}.raw{r}.{rule}");
            assert_close(
                &key,
                &out.pooler_output,
                t(e, &format!("{key}.pooler_output")),
            );
            if let Some(te) = &out.text_embeds {
                assert_close(&key, te, t(e, &format!("{key}.text_embeds")));
            }
        }
    }
    // Row 1 holds no eos: the rules differ there (argmax at 1, first eos defaults to 0).
    let row = &json_ids(&c["raw_ids"])[1];
    let legacy = load(name, Form::F32, |_| {});
    assert_eq!(legacy.pool_positions(std::slice::from_ref(row)), vec![1]);
}

#[test]
fn text_encoder_matches_transformers() {
    let (c, e) = (cases(), expected());
    let model = load("text_encoder", Form::F32, |_| {});
    assert_eq!(model.variant(), ClipTextVariant::Plain);
    let out = check_encoder("text_encoder", &model, &e, &c);
    assert!(out.text_embeds.is_none());
    check_raw_pooling("text_encoder", &e, &c);
}

#[test]
fn text_encoder_2_matches_transformers() {
    let (c, e) = (cases(), expected());
    let model = load("text_encoder_2", Form::F32, |_| {});
    assert_eq!(model.variant(), ClipTextVariant::WithProjection);
    let out = check_encoder("text_encoder_2", &model, &e, &c);
    assert_eq!(out.text_embeds.unwrap().dims(), &[prompts(&c).len(), 48]);
    check_raw_pooling("text_encoder_2", &e, &c);
}

/// The fp16 variant file (every weight fp16-representable, so loading it as f32 is exact) and
/// transformers >= 5's unprefixed names load the same encoder.
#[test]
fn fp16_file_and_unprefixed_layout_load_the_same_encoder() {
    let (c, e) = (cases(), expected());
    for form in [Form::F16, Form::Unprefixed] {
        let model = load("text_encoder", form, |_| {});
        check_encoder("text_encoder", &model, &e, &c);
    }
    let model = load("text_encoder_2", Form::F16, |_| {});
    check_encoder("text_encoder_2", &model, &e, &c);
}

/// Text to conditioning as diffusers' `encode_prompt` does it, checked against its outputs on
/// these encoders: SD 1.5's `last_hidden_state`; SDXL's concatenated penultimate states and
/// `text_encoder_2`'s `text_embeds` (also with `clip_skip=1`).
#[test]
fn pipeline_conditioning_matches_diffusers_encode_prompt() {
    let (c, e) = (cases(), expected());
    let ps = prompts(&c);
    let sel: Vec<&str> = c["pipeline_prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| ps[i.as_u64().unwrap() as usize].as_str())
        .collect();
    let te1 = load("text_encoder", Form::F32, |_| {});
    let te2 = load("text_encoder_2", Form::F32, |_| {});
    let out1 = te1.encode_prompts(&tokenizer("tokenizer"), &sel).unwrap();
    let out2 = te2.encode_prompts(&tokenizer("tokenizer_2"), &sel).unwrap();

    let sd15 = sd15_prompt_embeds(&te1, &out1, None).unwrap();
    assert_close("sd15 prompt_embeds", &sd15, t(&e, "sd15.prompt_embeds"));

    let (pe, pooled) = sdxl_prompt_embeds(&[&out1, &out2], None).unwrap();
    assert_eq!(pe.dims(), &[sel.len(), 77, 32 + 48]);
    assert_close("sdxl prompt_embeds", &pe, t(&e, "sdxl.prompt_embeds"));
    assert_close("sdxl pooled", &pooled, t(&e, "sdxl.pooled_prompt_embeds"));

    let (pe, pooled) = sdxl_prompt_embeds(&[&out1, &out2], Some(1)).unwrap();
    assert_close(
        "sdxl clip_skip 1",
        &pe,
        t(&e, "sdxl.clip_skip1.prompt_embeds"),
    );
    assert_close(
        "sdxl clip_skip 1 pooled",
        &pooled,
        t(&e, "sdxl.clip_skip1.pooled_prompt_embeds"),
    );

    // SD 1.5's clip_skip 0 is no skip; SDXL without the projection head has no pooled embedding.
    let skip0 = sd15_prompt_embeds(&te1, &out1, Some(0)).unwrap();
    assert_close("sd15 clip_skip 0", &skip0, &sd15);
    assert!(sdxl_prompt_embeds(&[&out1], None).is_err());
    assert!(sdxl_prompt_embeds(&[&out1, &out2], Some(3)).is_err());
}

#[test]
fn bad_configs_and_checkpoints_are_refused_by_name() {
    // An activation the encoder does not implement.
    let dir = materialise(
        "text_encoder",
        Form::F32,
        |c| c["hidden_act"] = "relu".into(),
        None,
    );
    let err = ClipTextModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Config(_)) && err.to_string().contains("\"relu\""),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // A missing weight and a misshapen one are named.
    let dir = materialise(
        "text_encoder_2",
        Form::F32,
        |c| c["intermediate_size"] = 100.into(),
        Some("text_projection.weight"),
    );
    let err = ClipTextModel::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(msg.contains("text_projection.weight"), "{msg}");
    assert!(
        msg.contains("text_model.encoder.layers.0.mlp.fc1.weight"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();

    // Token ids outside the vocabulary, and more positions than the model has.
    let model = load("text_encoder", Form::F32, |_| {});
    let err = model
        .forward(&ids_tensor(&[vec![49406, 49408]]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("49408"), "{err}");
    assert!(model.forward(&ids_tensor(&[vec![0; 78]])).is_err());
}

/// A tiny deterministic generator (the test must not depend on candle's RNG).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| self.next() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }
}

/// d(Σ wᵢ·outputᵢ)/dθ from candle's backward against central differences, in f64, on every
/// parameter of tiny encoders (both activations, both heads, both pooling rules).
#[test]
fn gradients_match_finite_differences() {
    for (act, arch, eos) in [
        ("quick_gelu", "CLIPTextModel", 2i64),
        ("gelu", "CLIPTextModelWithProjection", 29),
    ] {
        let cfg: ClipTextConfig = serde_json::from_value(serde_json::json!({
            "vocab_size": 30, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 7, "hidden_act": act,
            "layer_norm_eps": 1e-5, "projection_dim": 6, "eos_token_id": eos,
            "architectures": [arch],
        }))
        .unwrap();
        let vm = VarMap::new();
        let model = ClipTextModel::new(cfg, VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu))
            .unwrap();
        let mut rng = Lcg(17);
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let vars: Vec<(String, Var)> = names
            .iter()
            .map(|n| (n.clone(), vm.data().lock().unwrap()[n].clone()))
            .collect();
        for (name, var) in &vars {
            let dims = var.as_tensor().dims().to_vec();
            let value = if name.contains("layer_norm") && name.ends_with("weight") {
                (rng.tensor(&dims, 0.3) + 1.0).unwrap()
            } else {
                rng.tensor(&dims, 0.6)
            };
            var.set(&value).unwrap();
        }
        // Row 0 padded with eos (29 / the largest id), row 1 with another id after its eos.
        let ids = ids_tensor(&[vec![28, 3, 17, 29, 29, 29, 29], vec![28, 5, 29, 0, 4, 0, 0]]);
        let probe = model.forward(&ids).unwrap();
        let mut outs: Vec<Tensor> = probe.hidden_states.clone();
        outs.push(probe.last_hidden_state.clone());
        outs.push(probe.pooler_output.clone());
        outs.extend(probe.text_embeds.clone());
        let weights: Vec<Tensor> = outs.iter().map(|o| rng.tensor(o.dims(), 1.0)).collect();
        let loss = |m: &ClipTextModel| -> Tensor {
            let o = m.forward(&ids).unwrap();
            let mut all = o.hidden_states;
            all.push(o.last_hidden_state);
            all.push(o.pooler_output);
            all.extend(o.text_embeds);
            all.iter()
                .zip(&weights)
                .map(|(a, w)| (a * w).unwrap().sum_all().unwrap())
                .reduce(|a, b| (a + b).unwrap())
                .unwrap()
        };
        let grads = loss(&model).backward().unwrap();
        let h = 1e-5;
        let mut checked = 0;
        let mut worst = 0f64;
        for (name, var) in &vars {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{act}: no gradient reaches {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let n = base.len();
            // Token rows 3 and 29 are looked up (the others get no gradient: checked too).
            let picks: Vec<usize> = if name.contains("token_embedding") {
                vec![3 * 8 + 1, 29 * 8 + 5, 10 * 8]
            } else {
                vec![0, n / 2, n - 1]
            };
            for &i in &picks {
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&model).to_scalar::<f64>().unwrap()
                };
                let numeric = (eval(h) - eval(-h)) / (2.0 * h);
                var.set(
                    &Tensor::from_vec(base.clone(), var.as_tensor().dims(), &Device::Cpu).unwrap(),
                )
                .unwrap();
                let err = (numeric - g[i]).abs() / numeric.abs().max(1.0);
                assert!(
                    err < 1e-6,
                    "{act}: d loss / d {name}[{i}]: backward {} vs finite differences {numeric}",
                    g[i]
                );
                worst = worst.max(err);
                checked += 1;
            }
        }
        eprintln!("{act}: {checked} partial derivatives, worst relative error {worst:.1e}");
    }
}

/// Computing in f16 (as pipelines often run `text_encoder_2`) works and stays near the float32
/// references; the bound is f16 arithmetic's (10-bit mantissa through 3 layers), not the 1e-5
/// of the float32 checks.
#[test]
fn f16_compute_stays_near_the_references() {
    let e = expected();
    for (name, key) in [
        ("text_encoder", "text_encoder.pooler_output"),
        ("text_encoder_2", "text_encoder_2.text_embeds"),
    ] {
        let dir = materialise(name, Form::F16, |_| {}, None);
        let model = ClipTextModel::load(&dir, DType::F16, &Device::Cpu).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(model.dtype(), DType::F16);
        let out = model.forward(t(&e, &format!("{name}.input_ids"))).unwrap();
        let got = match &out.text_embeds {
            Some(te) => te.clone(),
            None => out.pooler_output.clone(),
        };
        let want = t(&e, key);
        let diff = (got.to_dtype(DType::F32).unwrap() - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        eprintln!("{name} f16: largest |diff| {diff:.2e} (values up to {scale:.2})");
        assert!(diff < 1e-2 * scale.max(1.0), "{name} f16: {diff}");
    }
}
