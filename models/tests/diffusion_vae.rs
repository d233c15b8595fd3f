//! diffusers' AutoencoderKL against diffusers (`fixtures/diffusion/vae`, made by
//! `scripts/golden/make_vae.py`): posterior mean / logvar, the sample for a stored noise,
//! the decoded images and the scaled latents, on images of real aspect ratios and a 3-frame
//! video encoded frame by frame (1e-4 of the reference's magnitude); the fp16 variant against
//! the same weights as float32; legacy attention key names; refusals; and the backward pass
//! against finite differences in f64.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use unireward_models::diffusion::vae::{
    upsample_nearest_2x, AttentionNames, AutoencoderKL, DiagonalGaussian, VaeConfig,
};

const TOL: f32 = 1e-4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/diffusion/vae")
}

fn expected(name: &str) -> HashMap<String, Tensor> {
    let t = candle_core::safetensors::load(
        root().join(name).join("expected.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    t.into_iter()
        .map(|(k, v)| (k, v.to_dtype(DType::F32).unwrap()))
        .collect()
}

fn get<'a>(t: &'a HashMap<String, Tensor>, case: &str, key: &str) -> &'a Tensor {
    t.get(&format!("{case}.{key}"))
        .unwrap_or_else(|| panic!("no {case}.{key}"))
}

fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |got − want| / max(1, max |want|): 1e-4 absolute for values within ±1, relative to
/// the largest value otherwise.
fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.dims(), want.dims());
    let diff = max_abs(&(got.to_dtype(DType::F32).unwrap() - want).unwrap());
    diff / max_abs(want).max(1.0)
}

fn check(what: &str, got: &Tensor, want: &Tensor) {
    let e = rel_err(got, want);
    println!("{what}: max err {e:.2e} (|ref| max {:.3})", max_abs(want));
    assert!(e <= TOL, "{what}: error {e:.3e} > {TOL:e}");
}

/// Every case of a fixture: encode, sample, decode and the latent scaling.
fn check_fixture(name: &str, vae: &AutoencoderKL) {
    let exp = expected(name);
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join(name).join("cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        let c = case["name"].as_str().unwrap();
        let video = case["video"].as_bool().unwrap();
        let x = get(&exp, c, "input");
        let post = if video {
            // 3 frames in passes of 2: a pass boundary inside the clip.
            vae.encode_frames(x, 2).unwrap()
        } else {
            vae.encode(x).unwrap()
        };
        check(
            &format!("{name}/{c} mean"),
            &post.mean,
            get(&exp, c, "mean"),
        );
        check(
            &format!("{name}/{c} logvar"),
            &post.logvar,
            get(&exp, c, "logvar"),
        );
        let sample = post.sample(get(&exp, c, "noise")).unwrap();
        check(
            &format!("{name}/{c} sample"),
            &sample,
            get(&exp, c, "sample"),
        );
        let latents = vae.to_latents(get(&exp, c, "sample")).unwrap();
        check(
            &format!("{name}/{c} latents"),
            &latents,
            get(&exp, c, "latents"),
        );
        let back = vae.from_latents(get(&exp, c, "latents")).unwrap();
        check(
            &format!("{name}/{c} from_latents"),
            &back,
            get(&exp, c, "sample"),
        );
        // Decoded from the reference sample, so that the decoder is checked on its own.
        let decoded = if video {
            vae.decode_frames(get(&exp, c, "sample"), 2).unwrap()
        } else {
            vae.decode(get(&exp, c, "sample")).unwrap()
        };
        check(
            &format!("{name}/{c} decoded"),
            &decoded,
            get(&exp, c, "decoded"),
        );
    }
}

#[test]
fn sdxl_geometry_matches_diffusers() {
    let dir = root().join("sdxl_tiny/model");
    // Only the fp16 variant is stored: this is also the variant's load test.
    assert!(!dir.join("diffusion_pytorch_model.safetensors").exists());
    let vae = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let cfg = vae.config();
    assert_eq!(vae.downsampling_factor(), 8);
    assert_eq!(cfg.scaling_factor, 0.13025);
    assert_eq!(cfg.shift_factor, None);
    assert!(cfg.force_upcast);
    assert_eq!(vae.latent_channels(), 4);
    check_fixture("sdxl_tiny", &vae);
}

#[test]
fn attention_in_query_runs_gives_the_same_result() {
    let dir = root().join("sdxl_tiny/model");
    // 64 x 96 → 8 x 12 = 96 latent positions: 1000 scores a pass is 10 query rows, 10 runs.
    let vae = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu)
        .unwrap()
        .with_attention_scores_per_pass(1000);
    let exp = expected("sdxl_tiny");
    let post = vae.encode(get(&exp, "image_64x96", "input")).unwrap();
    check(
        "runs of 10 queries: mean",
        &post.mean,
        get(&exp, "image_64x96", "mean"),
    );
    let decoded = vae.decode(get(&exp, "image_64x96", "sample")).unwrap();
    check(
        "runs of 10 queries: decoded",
        &decoded,
        get(&exp, "image_64x96", "decoded"),
    );
}

#[test]
fn legacy_attention_names_and_multi_channel_groups_match_diffusers() {
    let dir = root().join("legacy_attention/model");
    let vae = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let cfg = vae.config();
    assert!(!cfg.use_quant_conv && !cfg.use_post_quant_conv);
    assert_eq!(cfg.shift_factor, Some(0.0609));
    check_fixture("legacy_attention", &vae);
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unireward-vae-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `tensors` and a copy of `from`'s config.json into a fresh directory.
fn component_with(
    tag: &str,
    from: &Path,
    tensors: &HashMap<String, Tensor>,
    stem: &str,
) -> PathBuf {
    let dir = scratch_dir(tag);
    std::fs::copy(from.join("config.json"), dir.join("config.json")).unwrap();
    candle_core::safetensors::save(tensors, dir.join(format!("{stem}.safetensors"))).unwrap();
    dir
}

#[test]
fn fp16_variant_and_f32_file_give_the_same_model() {
    let src = root().join("sdxl_tiny/model");
    let half = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.fp16.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(half.values().all(|t| t.dtype() == DType::F16));
    let full: HashMap<String, Tensor> = half
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
        .collect();
    let dir = component_with("f32", &src, &full, "diffusion_pytorch_model");
    let a = AutoencoderKL::load(&src, DType::F32, &Device::Cpu).unwrap();
    let b = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu).unwrap();
    let exp = expected("sdxl_tiny");
    let z = get(&exp, "image_72x40", "sample");
    let (da, db) = (a.decode(z).unwrap(), b.decode(z).unwrap());
    assert_eq!(max_abs(&(da - db).unwrap()), 0.0);
    // Half-precision compute: float16 weights and activations (GroupNorm statistics and
    // attention softmax in f32), within float16's resolution of the float32 reference.
    let h = AutoencoderKL::load(&src, DType::F16, &Device::Cpu).unwrap();
    assert_eq!(h.dtype(), DType::F16);
    let dh = h.decode(z).unwrap();
    assert_eq!(dh.dtype(), DType::F16);
    let e = rel_err(&dh, get(&exp, "image_72x40", "decoded"));
    println!("fp16 compute decode: max err {e:.2e}");
    assert!(e < 2e-2, "fp16 decode error {e}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn missing_keys_are_named_with_the_expected_layout() {
    let src = root().join("legacy_attention/model");
    let all = candle_core::safetensors::load(
        src.join("diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    // Legacy names with one projection dropped: the legacy layout is detected and named.
    let mut legacy = all.clone();
    legacy.remove("decoder.mid_block.attentions.0.value.weight");
    let dir = component_with("legacy-missing", &src, &legacy, "diffusion_pytorch_model");
    let err = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .expect("a missing key must fail")
        .to_string();
    assert!(err.contains("legacy attention keys"), "{err}");
    assert!(
        err.contains("decoder.mid_block.attentions.0.value.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();

    // No attention stored at all: the current names are expected, all eight named.
    let bare: HashMap<String, Tensor> = all
        .into_iter()
        .filter(|(k, _)| !k.contains(".attentions.0.") || k.contains("group_norm"))
        .collect();
    let dir = component_with("bare", &src, &bare, "diffusion_pytorch_model");
    let err = AutoencoderKL::load(&dir, DType::F32, &Device::Cpu)
        .err()
        .expect("missing attention must fail")
        .to_string();
    assert!(err.contains("to_q / to_k / to_v / to_out.0"), "{err}");
    assert!(err.contains("16 key(s)"), "{err}");
    assert!(
        err.contains("encoder.mid_block.attentions.0.to_out.0.weight"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn sd_config() -> serde_json::Value {
    serde_json::json!({
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 512,
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
    })
}

fn parse(v: serde_json::Value) -> Result<VaeConfig, String> {
    let cfg: VaeConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
}

#[test]
fn config_defaults_and_refusals() {
    // SD 1.5's vae/config.json predates these fields: diffusers' defaults apply.
    let cfg = parse(sd_config()).unwrap();
    assert_eq!(cfg.scaling_factor, 0.18215);
    assert!(cfg.force_upcast && cfg.use_quant_conv && cfg.use_post_quant_conv);
    assert!(cfg.mid_block_add_attention);
    assert_eq!(cfg.downsampling_factor(), 8);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = sd_config();
        c[k] = v;
        parse(c)
    };
    let sizes = with("sample_size", serde_json::json!([768, 1024])).unwrap();
    assert_eq!(
        sizes.sample_size,
        unireward_models::diffusion::vae::SampleSize::HeightWidth([768, 1024])
    );
    for (k, v, says) in [
        ("act_fn", serde_json::json!("gelu"), "act_fn"),
        (
            "_class_name",
            serde_json::json!("AutoencoderKLTemporalDecoder"),
            "_class_name",
        ),
        (
            "down_block_types",
            serde_json::json!([
                "DownEncoderBlock2D",
                "AttnDownEncoderBlock2D",
                "DownEncoderBlock2D",
                "DownEncoderBlock2D"
            ]),
            "AttnDownEncoderBlock2D",
        ),
        (
            "up_block_types",
            serde_json::json!(["UpDecoderBlock2D"]),
            "up_block_types has 1",
        ),
        (
            "norm_num_groups",
            serde_json::json!(24),
            "norm_num_groups 24",
        ),
        (
            "latents_mean",
            serde_json::json!([0.0, 0.0, 0.0, 0.0]),
            "together",
        ),
        ("scaling_factor", serde_json::json!(0.0), "scaling_factor"),
    ] {
        let err = with(k, v).expect_err(k);
        assert!(err.contains(says), "{k}: {err}");
    }
}

#[test]
fn posterior_clamps_logvar_and_samples() {
    let dev = Device::Cpu;
    // [1, 2 + 2, 1, 3]: means 0.5, -1, 2 / 0, 0, 0; logvars -40, 25, 1 / 0, -2, 2.
    let moments = Tensor::new(
        &[[
            [[0.5f32, -1.0, 2.0]],
            [[0.0, 0.0, 0.0]],
            [[-40.0, 25.0, 1.0]],
            [[0.0, -2.0, 2.0]],
        ]],
        &dev,
    )
    .unwrap();
    let g = DiagonalGaussian::from_moments(&moments).unwrap();
    assert_eq!(g.mean.dims(), &[1, 2, 1, 3]);
    let lv = g.logvar.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(lv, vec![-30.0, 20.0, 1.0, 0.0, -2.0, 2.0]);
    let noise = Tensor::ones((1, 2, 1, 3), DType::F32, &dev).unwrap();
    let s = g
        .sample(&noise)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = [
        0.5 + (-15f32).exp(),
        -1.0 + 10f32.exp(),
        2.0 + 0.5f32.exp(),
        1.0,
        (-1f32).exp(),
        1f32.exp(),
    ];
    for (a, b) in s.iter().zip(want) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert_eq!(g.mode().dims(), &[1, 2, 1, 3]);
    assert!(g
        .sample(&Tensor::ones((1, 2, 3), DType::F32, &dev).unwrap())
        .is_err());
}

#[test]
fn refuses_sizes_that_are_not_multiples_of_the_downsampling() {
    let vae = AutoencoderKL::load(
        &root().join("legacy_attention/model"),
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(vae.downsampling_factor(), 2);
    let x = Tensor::zeros((1, 3, 24, 41), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&x).err().unwrap().to_string();
    assert!(err.contains("multiples of 2"), "{err}");
    let x = Tensor::zeros((1, 4, 24, 40), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.encode(&x).is_err());
    let z = Tensor::zeros((1, 3, 12, 20), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode(&z).is_err());
    let v = Tensor::zeros((1, 4, 2, 12, 20), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode_frames(&v, 0).is_err());
}

/// splitmix64 → uniform in [-1, 1): deterministic values without a seeded tensor RNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    fn tensor(&mut self, dims: &[usize], scale: f64, offset: f64) -> Tensor {
        let n: usize = dims.iter().product();
        let v: Vec<f64> = (0..n).map(|_| offset + scale * self.next()).collect();
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    }
}

fn tiny_config() -> VaeConfig {
    serde_json::from_value(serde_json::json!({
        "block_out_channels": [4, 6],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "norm_num_groups": 2,
        "latent_channels": 2,
    }))
    .unwrap()
}

/// Sets every variable of `map` to deterministic values of a useful size.
fn fill(map: &VarMap, seed: u64) {
    let data = map.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = Rng(seed);
    for name in names {
        let var = &data[name];
        let dims = var.dims().to_vec();
        let t = if name.contains("norm") && name.ends_with("weight") {
            rng.tensor(&dims, 0.3, 1.0)
        } else if name.ends_with("bias") {
            rng.tensor(&dims, 0.2, 0.0)
        } else {
            let fan_in: usize = dims[1..].iter().product();
            rng.tensor(&dims, 1.7 / (fan_in as f64).sqrt(), 0.0)
        };
        var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
    }
}

fn var_entry(v: &Var, i: usize) -> f64 {
    v.as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()[i]
}

fn set_entry(v: &Var, i: usize, value: f64) {
    let mut vals = v
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    vals[i] = value;
    v.set(&Tensor::from_vec(vals, v.dims(), &Device::Cpu).unwrap())
        .unwrap();
}

#[test]
fn backward_matches_finite_differences() {
    backward_check(None);
}

#[test]
fn backward_matches_finite_differences_with_attention_in_query_runs() {
    // 2 images x 15 latent positions: 60 scores a pass is 2 query rows, 8 runs.
    backward_check(Some(60));
}

fn backward_check(scores_per_pass: Option<usize>) {
    let dev = Device::Cpu;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
    let mut vae = AutoencoderKL::new(tiny_config(), vb, AttentionNames::Diffusers).unwrap();
    if let Some(n) = scores_per_pass {
        vae = vae.with_attention_scores_per_pass(n);
    }
    fill(&map, 11);
    let mut rng = Rng(99);
    // 6 x 10: the downsample pads to 7 x 11 (its last row and column are the zero pad).
    let x = Var::from_tensor(&rng.tensor(&[2, 3, 6, 10], 1.0, 0.0)).unwrap();
    let noise = rng.tensor(&[2, 2, 3, 5], 1.0, 0.0);
    let w_out = rng.tensor(&[2, 3, 6, 10], 1.0, 0.0);
    let w_lat = rng.tensor(&[2, 2, 3, 5], 1.0, 0.0);
    // Through encoder (mean and logvar), sampling, scaling, decoder.
    let loss = || -> Tensor {
        let post = vae.encode(x.as_tensor()).unwrap();
        let z = post.sample(&noise).unwrap();
        let lat = vae.to_latents(&z).unwrap();
        let img = vae.decode(&vae.from_latents(&lat).unwrap()).unwrap();
        ((img * &w_out).unwrap().sum_all().unwrap() + (lat * &w_lat).unwrap().sum_all().unwrap())
            .unwrap()
    };
    let l0 = loss();
    let grads = l0.backward().unwrap();
    let value = |t: &Tensor| t.to_scalar::<f64>().unwrap();
    let data = map.data().lock().unwrap().clone();
    let mut probes: Vec<(String, Var, usize)> = Vec::new();
    for (name, idx) in [
        ("encoder.conv_in.weight", vec![0, 37]),
        ("encoder.down_blocks.0.resnets.0.norm1.weight", vec![1]),
        // Kernel taps [.., 2, 2] read the zero pad on the last row / column.
        (
            "encoder.down_blocks.0.downsamplers.0.conv.weight",
            vec![8, 4 * 9 + 8, 13],
        ),
        ("encoder.down_blocks.0.downsamplers.0.conv.bias", vec![2]),
        ("encoder.mid_block.attentions.0.to_q.weight", vec![7]),
        ("encoder.mid_block.attentions.0.to_k.weight", vec![20]),
        ("encoder.mid_block.attentions.0.group_norm.weight", vec![3]),
        ("encoder.conv_out.weight", vec![5]),
        ("quant_conv.weight", vec![2, 12]),
        ("post_quant_conv.bias", vec![1]),
        ("decoder.mid_block.attentions.0.to_v.weight", vec![11]),
        // The resnet right before the upsample, and the upsample's conv.
        ("decoder.up_blocks.0.resnets.1.conv2.weight", vec![30]),
        ("decoder.up_blocks.0.upsamplers.0.conv.weight", vec![0, 100]),
        (
            "decoder.up_blocks.1.resnets.0.conv_shortcut.weight",
            vec![3],
        ),
        ("decoder.conv_norm_out.bias", vec![2]),
        ("decoder.conv_out.weight", vec![17]),
    ] {
        let v = data
            .get(name)
            .unwrap_or_else(|| panic!("no var {name}"))
            .clone();
        for i in idx {
            probes.push((name.to_string(), v.clone(), i));
        }
    }
    // Input pixels: a corner, the last row and column (next to the pad), the middle.
    for i in [0, 9, 50, 59, 2 * 60 + 33, 5 * 60 + 59] {
        probes.push(("input".into(), x.clone(), i));
    }
    let eps = 1e-5;
    let mut worst = 0f64;
    for (name, var, i) in &probes {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let analytic = g.flatten_all().unwrap().to_vec1::<f64>().unwrap()[*i];
        let before = var_entry(var, *i);
        set_entry(var, *i, before + eps);
        let up = value(&loss());
        set_entry(var, *i, before - eps);
        let down = value(&loss());
        set_entry(var, *i, before);
        let numeric = (up - down) / (2.0 * eps);
        let err = (numeric - analytic).abs() / analytic.abs().max(1.0);
        worst = worst.max(err);
        println!("{name}[{i}]: backward {analytic:.9} finite difference {numeric:.9}");
        assert!(
            err < 1e-6,
            "{name}[{i}]: backward {analytic} vs finite difference {numeric}"
        );
        assert!(
            analytic.abs() > 1e-6,
            "{name}[{i}]: gradient is zero, probe says nothing"
        );
    }
    println!("{} probes, worst relative error {worst:.2e}", probes.len());
}

#[test]
fn upsample_gradient_adds_to_other_uses() {
    // x feeds the upsampling and is used directly: both gradients must add up (candle's own
    // upsample_nearest2d backward overwrites the other one).
    let dev = Device::Cpu;
    let x = Var::new(&[[[[1f64, 2.0], [3.0, 4.0]]]], &dev).unwrap();
    let y = upsample_nearest_2x(x.as_tensor()).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
    );
    let w = Tensor::arange(0f64, 16.0, &dev)
        .unwrap()
        .reshape((1, 1, 4, 4))
        .unwrap();
    let loss = ((y * &w).unwrap().sum_all().unwrap()
        + (x.as_tensor() * 10.0).unwrap().sum_all().unwrap())
    .unwrap();
    let g = loss.backward().unwrap();
    let gx = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    // Cell sums of w: (0+1+4+5), (2+3+6+7), (8+9+12+13), (10+11+14+15), plus 10 each.
    assert_eq!(gx, [20.0, 28.0, 52.0, 60.0]);
}

#[test]
fn mid_block_without_attention_asks_for_no_attention_weights() {
    let mut cfg = tiny_config();
    cfg.mid_block_add_attention = false;
    let map = VarMap::new();
    let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
    let vae = AutoencoderKL::new(cfg, vb, AttentionNames::Diffusers).unwrap();
    let names: Vec<String> = map.data().lock().unwrap().keys().cloned().collect();
    assert!(names
        .iter()
        .any(|n| n.starts_with("decoder.mid_block.resnets.1.")));
    assert!(!names.iter().any(|n| n.contains("attentions")), "{names:?}");
    fill(&map, 3);
    let x = Tensor::zeros((1, 3, 4, 6), DType::F32, &Device::Cpu).unwrap();
    let z = vae.encode(&x).unwrap().mode();
    assert_eq!(z.dims(), &[1, 2, 2, 3]);
    assert_eq!(vae.decode(&z).unwrap().dims(), &[1, 3, 4, 6]);
}
