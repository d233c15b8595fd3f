//! diffusers' noise schedules and samplers against diffusers itself
//! (`fixtures/diffusion/scheduler`, made by `scripts/golden/make_scheduler.py`): betas and
//! `alphas_cumprod` bit for bit, inference timesteps exactly, sigmas, `add_noise` and
//! velocities (4-D, 5-D, bf16), whole sampling runs of every sampler with a synthetic model
//! (1e-5 of the run's scale), and the Gaussian source against its Python port bit for bit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use serde_json::Value;
use unireward_models::diffusion::scheduler::{
    gaussian, gaussian_vec, torch_linspace_f32, turbo_timesteps, NoiseSchedule, PredictionType,
    Sampler, SchedulerClass, SchedulerConfig, TimestepSpacing, TURBO_TIMESTEPS,
};

const TRAJ_TOL: f32 = 1e-5;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/diffusion/scheduler")
}

struct Golden {
    meta: Value,
    tensors: HashMap<String, Tensor>,
}

fn golden() -> Golden {
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("cases.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(root().join("expected.safetensors"), &Device::Cpu).unwrap();
    Golden { meta, tensors }
}

impl Golden {
    fn t(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    fn v32(&self, name: &str) -> Vec<f32> {
        self.t(name)
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn latent(&self) -> Vec<usize> {
        self.meta["latent"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    }
}

fn config(name: &str) -> SchedulerConfig {
    SchedulerConfig::from_file(root().join("configs").join(format!("{name}.json"))).unwrap()
}

fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

fn max_ulps(a: &[f32], b: &[f32]) -> (u32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(i, (x, y))| (ulps(*x, *y), i))
        .max()
        .unwrap_or((0, 0))
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0f32, |m, v| m.max(v.abs()))
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// max |a - b| / max(max |b|, 1)
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    max_diff(a, b) / max_abs(b).max(1.0)
}

#[test]
fn linspace_matches_torch_on_known_values() {
    // torch.linspace(0, 1, 5) and a non-trivial one whose middle is not symmetric.
    assert_eq!(
        torch_linspace_f32(0.0, 1.0, 5),
        vec![0.0, 0.25, 0.5, 0.75, 1.0]
    );
    assert_eq!(torch_linspace_f32(0.3, 0.7, 1), vec![0.3f32]);
    assert!(torch_linspace_f32(0.3, 0.7, 0).is_empty());
}

#[test]
fn betas_and_alphas_cumprod_are_bit_exact() {
    let g = golden();
    let schedules = g.meta["schedules"].as_object().unwrap();
    let mut checked = 0;
    for (cfg, key) in schedules {
        let c = config(cfg);
        let s = NoiseSchedule::new(&c).unwrap();
        let key = key.as_str().unwrap();
        let betas = g.v32(&format!("schedule.{key}.betas"));
        let ac = g.v32(&format!("schedule.{key}.alphas_cumprod"));
        assert_eq!(s.num_train_timesteps(), 1000);
        checked += 1;
        if c.rescale_betas_zero_snr {
            check_zero_snr(cfg, s.betas(), s.alphas_cumprod(), &betas, &ac);
            continue;
        }
        for (what, ours, theirs) in [
            ("betas", s.betas(), &betas),
            ("alphas_cumprod", s.alphas_cumprod(), &ac),
        ] {
            let (u, i) = max_ulps(ours, theirs);
            assert_eq!(
                u, 0,
                "{cfg} {what}[{i}]: ours {} diffusers {} ({u} ulp)",
                ours[i], theirs[i]
            );
        }
    }
    assert_eq!(checked, 9);
}

/// The zero-terminal-SNR rescale goes through float32 square roots, which torch takes with
/// MKL on the CPU (faithful, within 0.75 ulp, not correctly rounded: one in six differs from
/// IEEE `sqrtf`); the ratio of neighbouring ᾱ then amplifies that last bit. So: ᾱ within
/// 1e-5 relative (3.8e-6 measured), the last exactly 0, and 1 - β (the per-step α) within
/// 1e-5.
fn check_zero_snr(what: &str, betas: &[f32], ac: &[f32], g_betas: &[f32], g_ac: &[f32]) {
    let last = ac.len() - 1;
    assert_eq!(g_ac[last], 0.0);
    assert_eq!(ac[last], 0.0, "{what}: terminal SNR");
    for i in 0..last {
        let rel = ((ac[i] - g_ac[i]) / g_ac[i]).abs();
        assert!(
            rel <= 1e-5,
            "{what} alphas_cumprod[{i}]: {} vs {} ({rel:e})",
            ac[i],
            g_ac[i]
        );
    }
    for i in 0..betas.len() {
        let d = (betas[i] - g_betas[i]).abs();
        assert!(
            d <= 1e-5,
            "{what} betas[{i}]: {} vs {}",
            betas[i],
            g_betas[i]
        );
    }
}

#[test]
fn euler_zero_snr_alphas_cumprod() {
    let g = golden();
    let mut checked = 0;
    for case in g.meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let key = format!("sampler_ac.{name}");
        if !g.tensors.contains_key(&key) {
            continue;
        }
        let cfg = config(case["config"].as_str().unwrap());
        let class = SchedulerClass::from_name(case["class_name"].as_str().unwrap()).unwrap();
        let s = Sampler::new(&cfg.as_class(class)).unwrap();
        let theirs = g.v32(&key);
        let n = theirs.len();
        // Euler sets the terminal ᾱ (0 after the rescale) to 2^-24.
        assert_eq!(theirs[n - 1], 2f32.powi(-24));
        assert_eq!(s.alphas_cumprod()[n - 1], 2f32.powi(-24));
        for (i, (&a, &b)) in s
            .alphas_cumprod()
            .iter()
            .zip(&theirs)
            .enumerate()
            .take(n - 1)
        {
            assert!(
                ((a - b) / b).abs() <= 1e-5,
                "{name} alphas_cumprod[{i}]: {a} vs {b}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 1, "zero_snr_v_euler");
}

#[test]
fn timestep_spacing_tables_match() {
    let g = golden();
    let ns: Vec<usize> = g.meta["spacing_ns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let sd = config("sd15");
    for (family, class) in [
        ("ddim", SchedulerClass::Ddim),
        ("euler", SchedulerClass::EulerDiscrete),
    ] {
        for (sp_name, sp) in [
            ("leading", TimestepSpacing::Leading),
            ("trailing", TimestepSpacing::Trailing),
            ("linspace", TimestepSpacing::Linspace),
        ] {
            let key = format!("spacing.{family}.{sp_name}");
            if !g.tensors.contains_key(&key) {
                continue;
            }
            let mut cfg = sd.as_class(class);
            cfg.timestep_spacing = Some(sp);
            cfg.steps_offset = g.meta["spacing"][format!("{family}.{sp_name}")]["steps_offset"]
                .as_u64()
                .unwrap() as usize;
            let mut s = Sampler::new(&cfg).unwrap();
            let mut ours = Vec::new();
            for &n in &ns {
                s.set_timesteps(n).unwrap();
                ours.extend_from_slice(s.timesteps());
            }
            let theirs = g.v32(&key);
            assert_eq!(ours.len(), theirs.len(), "{key}: lengths");
            assert_eq!(ours, theirs, "{key}");
        }
    }
}

/// The synthetic model of make_scheduler.py: 0.1 · x_in + c · (t / 1000 + 0.5).
fn model(x_in: &Tensor, t: f32, c: &Tensor) -> Tensor {
    let k = (t as f64 / 1000.0 + 0.5) as f32;
    (x_in.affine(0.1f32 as f64, 0.0).unwrap() + c.affine(k as f64, 0.0).unwrap()).unwrap()
}

#[test]
fn samplers_match_diffusers() {
    let g = golden();
    let shape = g.latent();
    let c = g.t("model_c").clone();
    let init_seed = g.meta["init_seed"].as_u64().unwrap();
    let noise_seed = g.meta["noise_seed"].as_u64().unwrap();
    let mut runs = 0;
    let mut worst = (0f32, String::new());
    for case in g.meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let class = SchedulerClass::from_name(case["class_name"].as_str().unwrap()).unwrap();
        let cfg = config(case["config"].as_str().unwrap()).as_class(class);
        for run in case["runs"].as_array().unwrap() {
            let n = run["n"].as_u64().unwrap() as usize;
            let tag = format!("{name}.n{n}");
            let mut s = Sampler::new(&cfg).unwrap();
            s.set_timesteps(n).unwrap();

            // grid
            let ts = g.v32(&format!("{tag}.timesteps"));
            assert_eq!(s.timesteps(), ts.as_slice(), "{tag} timesteps");
            assert_eq!(
                s.timesteps().len(),
                run["steps"].as_u64().unwrap() as usize,
                "{tag} steps"
            );
            let sig_key = format!("{tag}.sigmas");
            if g.tensors.contains_key(&sig_key) {
                let theirs = g.v32(&sig_key);
                if cfg.rescale_betas_zero_snr || name == "euler_loglinear" {
                    // sigmas of a rescaled ᾱ (see check_zero_snr); log_linear goes through
                    // float32 log and exp (numpy's, torch's vs libm's)
                    let e = s
                        .sigmas()
                        .iter()
                        .zip(&theirs)
                        .map(|(a, b)| {
                            if *b == 0.0 {
                                a.abs()
                            } else {
                                ((a - b) / b).abs()
                            }
                        })
                        .fold(0f32, f32::max);
                    assert!(e <= 1e-5, "{tag} sigmas: relative error {e:e}");
                } else {
                    // sqrt((1 - ᾱ) / ᾱ): torch's float32 sqrt is within 0.75 ulp (MKL)
                    let (u, i) = max_ulps(s.sigmas(), &theirs);
                    assert!(
                        u <= 1,
                        "{tag} sigmas[{i}]: {} vs {} ({u} ulp)",
                        s.sigmas()[i],
                        theirs[i]
                    );
                }
            } else {
                assert!(
                    s.sigmas().is_empty(),
                    "{tag}: sigmas of a non-Euler sampler"
                );
            }
            let init = run["init_noise_sigma"].as_f64().unwrap() as f32;
            assert!(
                ulps(s.init_noise_sigma(), init) <= 1,
                "{tag} init_noise_sigma {} vs {init}",
                s.init_noise_sigma()
            );

            // run
            let mut x = gaussian(&shape, init_seed, &Device::Cpu)
                .unwrap()
                .affine(s.init_noise_sigma() as f64, 0.0)
                .unwrap();
            // The run's scale: errors are measured against the largest sample so far. The
            // first step of a zero-terminal-SNR Euler run goes from σ_max = 4096 (x_T of
            // magnitude ~10^4) to samples of magnitude ~10, cancelling three decimal digits
            // in float32; torch's σ_max (MKL's sqrt) and the IEEE one differ by an ulp there,
            // which is 7e-5 of the step's output, 1e-7 of its input, and carried along.
            let mut scale = max_abs(&flat(&x)).max(1.0);
            let traj_key = format!("{tag}.traj");
            let expected = g.tensors.get(&traj_key).map(|t| {
                assert_eq!(
                    t.dim(0).unwrap(),
                    s.timesteps().len(),
                    "{tag} trajectory length"
                );
                (0..s.timesteps().len())
                    .map(|k| flat(&t.i(k).unwrap()))
                    .collect::<Vec<_>>()
            });
            let step = |s: &mut Sampler, x: &Tensor, i: usize| {
                let x_in = s.scale_model_input(x, i).unwrap();
                let out = model(&x_in, s.timesteps()[i], &c);
                let noise = gaussian(&shape, noise_seed + i as u64, &Device::Cpu).unwrap();
                let noise = s.step_needs_noise(i).then_some(&noise);
                s.step(&out, i, x, noise).unwrap()
            };
            for i in 0..s.timesteps().len() {
                if let (Some(exp), true) = (&expected, i > 0) {
                    // Locally: this step from diffusers' own input, against the larger of
                    // that input's and the output's scale.
                    let input =
                        Tensor::from_vec(exp[i - 1].clone(), shape.as_slice(), &Device::Cpu)
                            .unwrap();
                    let ours = flat(&step(&mut s.clone(), &input, i));
                    let local = max_abs(&exp[i - 1]).max(max_abs(&exp[i])).max(1.0);
                    let e = max_diff(&ours, &exp[i]) / local;
                    if e > worst.0 {
                        worst = (e, format!("{traj_key}[{i}] (one step)"));
                    }
                    assert!(
                        e <= TRAJ_TOL,
                        "{traj_key}[{i}], one step: relative error {e:e}"
                    );
                }
                x = step(&mut s, &x, i);
                let ours = flat(&x);
                let theirs = match &expected {
                    Some(exp) => Some((exp[i].clone(), format!("{traj_key}[{i}]"))),
                    None if i + 1 == s.timesteps().len() => {
                        Some((g.v32(&format!("{tag}.final")), format!("{tag}.final")))
                    }
                    None => None,
                };
                if let Some((theirs, key)) = theirs {
                    scale = scale.max(max_abs(&theirs));
                    let e = max_diff(&ours, &theirs) / scale;
                    if e > worst.0 {
                        worst = (e, key.clone());
                    }
                    assert!(e <= TRAJ_TOL, "{key}: relative error {e:e}");
                }
            }
            runs += 1;
        }
    }
    eprintln!(
        "{runs} sampling runs; worst relative error {:e} ({})",
        worst.0, worst.1
    );
    assert_eq!(runs, 68);
}

#[test]
fn add_noise_velocity_and_targets_match() {
    let g = golden();
    for case in g.meta["noise_cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let s = NoiseSchedule::new(&config(case["config"].as_str().unwrap())).unwrap();
        let p = |k: &str| g.t(&format!("noise.{name}.{k}")).clone();
        let (x0, eps) = (p("x0"), p("noise"));
        let ts: Vec<usize> = p("timesteps")
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|t| t as usize)
            .collect();
        let xt = s.add_noise(&x0, &eps, &ts).unwrap();
        let v = s.velocity(&x0, &eps, &ts).unwrap();
        assert_eq!(xt.dtype(), x0.dtype(), "{name}: dtype kept");
        assert_eq!(xt.dims(), x0.dims());
        for (what, ours) in [("x_t", &xt), ("velocity", &v)] {
            let theirs = p(what);
            let (a, b) = (flat(ours), flat(&theirs));
            let (u, i) = max_ulps(&a, &b);
            if x0.dtype() == DType::BF16 {
                // torch rounds the bf16 coefficients, each product and the sum to bf16, as
                // candle's bf16 ops do: bit for bit
                assert_eq!(u, 0, "{name} {what}[{i}]: {} vs {}", a[i], b[i]);
            } else {
                // the coefficients are float32 square roots (torch's through MKL, within
                // 0.75 ulp; ours IEEE): 1e-7 of the scale measured
                let e = rel_err(&a, &b);
                assert!(
                    e <= 1e-6,
                    "{name} {what}[{i}]: {} vs {} ({u} ulp, rel {e:e})",
                    a[i],
                    b[i]
                );
            }
        }
        let tgt = |p: PredictionType| flat(&s.target(p, &x0, &eps, &ts).unwrap());
        assert_eq!(tgt(PredictionType::Epsilon), flat(&eps));
        assert_eq!(tgt(PredictionType::Sample), flat(&x0));
        assert_eq!(tgt(PredictionType::VPrediction), flat(&v));
    }
}

#[test]
fn add_noise_refuses_bad_input() {
    let s = NoiseSchedule::new(&config("sd15")).unwrap();
    let x = Tensor::zeros((2, 4, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(
        s.add_noise(&x, &x, &[0]).is_err(),
        "batch / timesteps mismatch"
    );
    assert!(
        s.add_noise(&x, &x, &[0, 1000]).is_err(),
        "timestep out of range"
    );
    let y = Tensor::zeros((2, 4, 8, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(s.add_noise(&x, &y, &[0, 1]).is_err(), "shape mismatch");
    let v = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(s.add_noise(&v, &v, &[0, 1, 2]).is_err(), "rank 1");
    assert_eq!(s.prediction_type(), PredictionType::Epsilon);
}

#[test]
fn gaussian_matches_its_python_port_bit_for_bit() {
    let g = golden();
    for p in g.meta["prng"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let seed = p["seed"].as_u64().unwrap();
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let ours = gaussian(&shape, seed, &Device::Cpu).unwrap();
        assert_eq!(ours.dims(), shape.as_slice());
        let theirs = g.v32(name);
        let ours = flat(&ours);
        let same = ours
            .iter()
            .zip(&theirs)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same,
            "{name}: ours {:?} python {:?}",
            &ours[..4.min(ours.len())],
            &theirs[..4.min(theirs.len())]
        );
    }
    // Moments, and independent streams for seed and seed + 1.
    let a = gaussian_vec(200_000, 123);
    let b = gaussian_vec(200_000, 124);
    let n = a.len() as f64;
    let mean = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = a.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    let cov = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.01, "variance {var}");
    assert!(cov.abs() < 0.01, "seed / seed + 1 covariance {cov}");
    assert_eq!(
        gaussian_vec(5, 9)[..],
        gaussian_vec(6, 9)[..5],
        "prefixes agree"
    );
}

#[test]
fn turbo_timesteps_are_the_four_step_trailing_grid() {
    assert_eq!(
        turbo_timesteps(&[0, 1, 2, 3, 0]).unwrap(),
        vec![249, 499, 749, 999, 249]
    );
    assert!(turbo_timesteps(&[4]).is_err());
    let mut s = Sampler::new(&config("sdxl_turbo")).unwrap();
    s.set_timesteps(4).unwrap();
    let mut grid: Vec<usize> = s.timesteps().iter().map(|&t| t as usize).collect();
    grid.reverse();
    assert_eq!(grid, TURBO_TIMESTEPS);
}

#[test]
fn configs_resolve_class_defaults_like_diffusers() {
    let sd15 = config("sd15");
    assert_eq!(sd15.class, SchedulerClass::Pndm);
    assert_eq!(sd15.timestep_spacing(), TimestepSpacing::Leading);
    assert!(!sd15.set_alpha_to_one());
    assert!(sd15.skip_prk_steps);
    assert_eq!(sd15.steps_offset, 1);
    // The same file read as Euler: no timestep_spacing in it, so Euler's default.
    let euler = sd15.as_class(SchedulerClass::EulerDiscrete);
    assert_eq!(euler.timestep_spacing(), TimestepSpacing::Linspace);
    let ddim = SchedulerConfig::from_json_as(
        &std::fs::read_to_string(root().join("configs/ddpm_linear.json")).unwrap(),
        SchedulerClass::Ddim,
    )
    .unwrap();
    assert!(ddim.set_alpha_to_one(), "DDIM's default");
    assert!(ddim.clip_sample());
    let turbo = config("sdxl_turbo");
    assert_eq!(turbo.class, SchedulerClass::EulerAncestralDiscrete);
    assert_eq!(turbo.timestep_spacing(), TimestepSpacing::Trailing);
    assert_eq!(
        config("sd21_v").prediction_type,
        PredictionType::VPrediction
    );
}

fn refusal(json: &str) -> String {
    match SchedulerConfig::from_json(json) {
        Ok(c) => panic!("accepted {json}: {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unsupported_settings_are_refused_by_name() {
    let e = refusal(r#"{"_class_name": "LMSDiscreteScheduler"}"#);
    assert!(e.contains("LMSDiscreteScheduler"), "{e}");
    let e = refusal(r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#);
    assert!(e.contains("thresholding"), "{e}");
    let e = refusal(r#"{"_class_name": "EulerDiscreteScheduler", "use_karras_sigmas": true}"#);
    assert!(e.contains("use_karras_sigmas"), "{e}");
    let e = refusal(r#"{"_class_name": "DDPMScheduler", "variance_type": "learned_range"}"#);
    assert!(e.contains("learned_range"), "{e}");
    let e = refusal(r#"{"_class_name": "DDPMScheduler", "beta_schedule": "sigmoid"}"#);
    assert!(e.contains("sigmoid"), "{e}");
    let e = refusal(r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "karras"}"#);
    assert!(e.contains("timestep_spacing"), "{e}");
    let e = refusal(
        r#"{"_class_name": "EulerAncestralDiscreteScheduler", "prediction_type": "sample"}"#,
    );
    assert!(e.contains("sample"), "{e}");
    let e = refusal(
        r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 3, "trained_betas": [0.1, 0.2]}"#,
    );
    assert!(e.contains("trained_betas"), "{e}");
    let e = refusal(r#"{"_class_name": "DDIMScheduler", "beta_start": "x"}"#);
    assert!(e.contains("beta_start"), "{e}");
    let e = refusal(r#"{"beta_start": 0.1}"#);
    assert!(e.contains("_class_name"), "{e}");
    // Keys a class does not take are ignored, as diffusers ignores them.
    SchedulerConfig::from_json(
        r#"{"_class_name": "EulerDiscreteScheduler", "thresholding": true}"#,
    )
    .unwrap();
    // trained_betas are used as given.
    let c = SchedulerConfig::from_json(
        r#"{"_class_name": "DDIMScheduler", "num_train_timesteps": 3, "trained_betas": [0.1, 0.2, 0.5]}"#,
    )
    .unwrap();
    let s = NoiseSchedule::new(&c).unwrap();
    assert_eq!(s.betas(), &[0.1f32, 0.2, 0.5]);
    let alphas = [1.0 - 0.1f32, 1.0 - 0.2f32, 1.0 - 0.5f32].map(f64::from);
    assert_eq!(
        s.alphas_cumprod()[2],
        (alphas[0] * alphas[1] * alphas[2]) as f32
    );
}

#[test]
fn sampler_misuse_is_an_error() {
    let sd15 = config("sd15");
    let x = Tensor::zeros((1, 4, 2, 2), DType::F32, &Device::Cpu).unwrap();
    let mut s = Sampler::new(&sd15).unwrap();
    assert!(s.step(&x, 0, &x, None).is_err(), "before set_timesteps");
    assert!(s.set_timesteps(0).is_err());
    assert!(s.set_timesteps(1001).is_err());
    s.set_timesteps(10).unwrap();
    assert_eq!(s.timesteps().len(), 11, "PLMS repeats one timestep");
    assert!(s.step(&x, 1, &x, None).is_err(), "PNDM steps in order");
    s.step(&x, 0, &x, None).unwrap();
    s.step(&x, 1, &x, None).unwrap();
    assert!(s.step(&x, 11, &x, None).is_err(), "index out of range");
    // Euler ancestral needs its noise.
    let mut ea = Sampler::new(&config("sdxl_turbo")).unwrap();
    ea.set_timesteps(2).unwrap();
    assert!(ea.step_needs_noise(0));
    assert!(!ea.step_needs_noise(1), "last step: sigma_up = 0");
    assert!(ea.step(&x, 0, &x, None).is_err());
    let bad = Tensor::zeros((1, 4, 2, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(ea.step(&x, 0, &x, Some(&bad)).is_err(), "noise shape");
    ea.step(&x, 1, &x, None).unwrap();
    // PRK warm-up needs 4 steps.
    let mut prk = Sampler::new(&config("pndm_prk")).unwrap();
    assert!(prk.set_timesteps(3).is_err());
    // Euler returns model_output's dtype, as diffusers.
    let mut eu = Sampler::new(&config("sdxl")).unwrap();
    eu.set_timesteps(4).unwrap();
    let y = eu
        .step(&x.to_dtype(DType::BF16).unwrap(), 0, &x, None)
        .unwrap();
    assert_eq!(y.dtype(), DType::BF16);
}
