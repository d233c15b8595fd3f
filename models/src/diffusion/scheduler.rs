//! diffusers' noise schedules and samplers, with diffusers' arithmetic.
//!
//! A pipeline's `scheduler/scheduler_config.json` becomes a [`SchedulerConfig`]; from it
//!
//! * [`NoiseSchedule`] is the training side: betas and `alphas_cumprod` as
//!   `DDPMScheduler.from_config(config)` computes them (Diffusion-DPO's training script loads
//!   its noise scheduler that way, whatever class the pipeline samples with), `add_noise`,
//!   the velocity, and the regression target of each prediction type;
//! * [`Sampler`] is the inference side: `DDIMScheduler` (eta 0), `EulerDiscreteScheduler`,
//!   `EulerAncestralDiscreteScheduler`, `DDPMScheduler` and `PNDMScheduler` (SD 1.5's default;
//!   its PLMS steps, and its Runge-Kutta warm-up when `skip_prk_steps` is false), with
//!   `set_timesteps`, `init_noise_sigma`, `scale_model_input` and `step`. Steps that draw noise
//!   (Euler ancestral, DDPM) take it from the caller, so sampling is reproducible with
//!   [`gaussian`], a seeded source defined here and nowhere else.
//!
//! Numerics follow diffusers on the CPU in float32: `torch.linspace` as ATen computes it (each
//! element one fused multiply-add from the nearer end), `torch.cumprod` accumulating in
//! float64, numpy's float64 `interp`/`linspace`/`arange` for the inference grids, and every
//! per-step coefficient from 0-d float32 tensor arithmetic, operation for operation.
//! `fixtures/diffusion/scheduler` (made by `scripts/golden/make_scheduler.py`) holds
//! diffusers' values: betas and `alphas_cumprod` of the `linear`, `scaled_linear` and cosine
//! schedules and all inference timesteps agree bit for bit. Square roots here are IEEE
//! (correctly rounded); torch takes float32 square roots on the CPU with MKL, within 0.75 ulp
//! but not correctly rounded (one value in six differs), so what goes through one (sigmas,
//! `add_noise` coefficients, the zero-terminal-SNR rescale, which amplifies it to ~4e-6 of
//! ᾱ) agrees to that last bit, and sampling runs to ~1e-6 of their scale.
//!
//! Refused rather than approximated (each with an error naming the key): `thresholding`,
//! Karras / exponential / beta sigmas, Euler's `timestep_type: continuous` with
//! v-prediction, DDPM's learned variances and `fixed_large_log`, `sample` prediction for
//! Euler ancestral and PNDM (diffusers raises too), and beta schedules other than `linear`,
//! `scaled_linear` and `squaredcos_cap_v2`. Keys a class does not take are ignored, as
//! diffusers' `from_config` ignores them (SDXL's Euler config carries `clip_sample`, PNDM has
//! no `rescale_betas_zero_snr`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{Map, Value};

use crate::splitmix64::SplitMix64;
use crate::{Error, Result};

/// The scheduler classes this module implements, by diffusers' `_class_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerClass {
    Ddpm,
    Ddim,
    EulerDiscrete,
    EulerAncestralDiscrete,
    /// SD 1.5's default. Sampled with PNDM's own steps (PLMS, plus the Runge-Kutta warm-up
    /// unless `skip_prk_steps`), not replaced by DDIM.
    Pndm,
}

impl SchedulerClass {
    pub const ALL: [SchedulerClass; 5] = [
        SchedulerClass::Ddpm,
        SchedulerClass::Ddim,
        SchedulerClass::EulerDiscrete,
        SchedulerClass::EulerAncestralDiscrete,
        SchedulerClass::Pndm,
    ];

    /// diffusers' class name (`DDIMScheduler`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerClass::Ddpm => "DDPMScheduler",
            SchedulerClass::Ddim => "DDIMScheduler",
            SchedulerClass::EulerDiscrete => "EulerDiscreteScheduler",
            SchedulerClass::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SchedulerClass::Pndm => "PNDMScheduler",
        }
    }

    /// The class of a `_class_name`; other names are refused, naming them.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let known: Vec<_> = Self::ALL.iter().map(|c| c.name()).collect();
                Error::Config(format!(
                    "scheduler class `{name}` is not supported (supported: {})",
                    known.join(", ")
                ))
            })
    }

    fn is_euler(self) -> bool {
        matches!(
            self,
            SchedulerClass::EulerDiscrete | SchedulerClass::EulerAncestralDiscrete
        )
    }

    fn default_spacing(self) -> TimestepSpacing {
        if self.is_euler() {
            TimestepSpacing::Linspace
        } else {
            TimestepSpacing::Leading
        }
    }
}

/// `beta_schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    /// `torch.linspace(beta_start, beta_end, T)`.
    Linear,
    /// `torch.linspace(beta_start ** 0.5, beta_end ** 0.5, T) ** 2` (Stable Diffusion's).
    ScaledLinear,
    /// Nichol & Dhariwal's cosine schedule, betas capped at 0.999.
    SquaredCosCapV2,
}

/// `prediction_type`: what the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    /// The noise.
    Epsilon,
    /// The velocity `sqrt(ᾱ)·ε - sqrt(1-ᾱ)·x0`.
    VPrediction,
    /// The clean sample.
    Sample,
}

/// `timestep_spacing`: how `set_timesteps(n)` picks n of the training timesteps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    /// `(0..n) * (T // n)`, reversed, plus `steps_offset`.
    Leading,
    /// `round(arange(T, 0, -T / n)) - 1`.
    Trailing,
    /// `linspace(0, T - 1, n)` reversed (rounded, except in Euler schedulers).
    Linspace,
}

/// Euler's `interpolation_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterpolationType {
    Linear,
    LogLinear,
}

/// Euler's `final_sigmas_type`: the sigma after the last step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalSigmas {
    Zero,
    SigmaMin,
}

/// DDPM's `variance_type`. Only the fixed ones can be sampled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
    FixedLargeLog,
    Learned,
    LearnedRange,
}

impl VarianceType {
    /// The name in `scheduler_config.json`.
    pub fn name(self) -> &'static str {
        match self {
            VarianceType::FixedSmall => "fixed_small",
            VarianceType::FixedSmallLog => "fixed_small_log",
            VarianceType::FixedLarge => "fixed_large",
            VarianceType::FixedLargeLog => "fixed_large_log",
            VarianceType::Learned => "learned",
            VarianceType::LearnedRange => "learned_range",
        }
    }
}

/// A scheduler's `scheduler_config.json`, as diffusers' `from_config` reads it.
///
/// Settings whose default depends on the class (`timestep_spacing`, `set_alpha_to_one`,
/// `clip_sample`) are kept as written (`None` when absent) and resolved by the methods of the
/// same name for [`SchedulerConfig::class`], so [`SchedulerConfig::as_class`] gives what
/// `OtherScheduler.from_config(config)` would.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct SchedulerConfig {
    pub class: SchedulerClass,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Betas given outright (`trained_betas`), replacing the schedule.
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: usize,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    pub thresholding: bool,
    pub rescale_betas_zero_snr: bool,
    pub interpolation_type: InterpolationType,
    pub final_sigmas_type: FinalSigmas,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    /// Euler's `timestep_type` is `continuous`.
    pub continuous_timesteps: bool,
    pub variance_type: VarianceType,
    pub skip_prk_steps: bool,
}

impl SchedulerConfig {
    /// diffusers' defaults for `class` (its `__init__` arguments).
    pub fn new(class: SchedulerClass) -> Self {
        SchedulerConfig {
            class,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            set_alpha_to_one: None,
            clip_sample: None,
            clip_sample_range: 1.0,
            thresholding: false,
            rescale_betas_zero_snr: false,
            interpolation_type: InterpolationType::Linear,
            final_sigmas_type: FinalSigmas::Zero,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            continuous_timesteps: false,
            variance_type: VarianceType::FixedSmall,
            skip_prk_steps: false,
        }
    }

    /// Reads `path` (a pipeline's `scheduler/scheduler_config.json`) as its `_class_name`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_value(&value, None)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), strip(e))))
    }

    /// Parses a `scheduler_config.json` text as its `_class_name`.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("scheduler config: invalid JSON: {e}")))?;
        Self::from_value(&value, None)
    }

    /// Parses a config as `class`, whatever its `_class_name` (diffusers'
    /// `Class.from_config`): the file's keys, `class`'s defaults for the others.
    pub fn from_json_as(text: &str, class: SchedulerClass) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("scheduler config: invalid JSON: {e}")))?;
        Self::from_value(&value, Some(class))
    }

    /// The same settings read by another class (`Class.from_config(config)`); checked when a
    /// [`Sampler`] is built.
    pub fn as_class(&self, class: SchedulerClass) -> Self {
        SchedulerConfig {
            class,
            ..self.clone()
        }
    }

    /// `timestep_spacing`, or the class's default (`linspace` for the Euler schedulers,
    /// `leading` for the others).
    pub fn timestep_spacing(&self) -> TimestepSpacing {
        self.timestep_spacing
            .unwrap_or_else(|| self.class.default_spacing())
    }

    /// `set_alpha_to_one`, or the class's default (DDIM true, PNDM false).
    pub fn set_alpha_to_one(&self) -> bool {
        self.set_alpha_to_one
            .unwrap_or(self.class == SchedulerClass::Ddim)
    }

    /// `clip_sample`, or the class's default (true; only DDIM and DDPM clip).
    pub fn clip_sample(&self) -> bool {
        self.clip_sample.unwrap_or(true)
    }

    /// Refuses settings this module does not implement for [`SchedulerConfig::class`].
    pub fn validate(&self) -> Result<()> {
        let class = self.class.name();
        let refuse = |what: &str| Err(Error::Config(format!("{class}: {what}")));
        if self.num_train_timesteps == 0 {
            return refuse("num_train_timesteps must be at least 1");
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return refuse(&format!(
                    "trained_betas has {} values, num_train_timesteps is {}",
                    b.len(),
                    self.num_train_timesteps
                ));
            }
        }
        match self.class {
            SchedulerClass::Ddpm | SchedulerClass::Ddim => {
                if self.thresholding {
                    return refuse(
                        "thresholding (dynamic thresholding of the predicted sample) is not \
                         implemented; set \"thresholding\": false",
                    );
                }
                if self.class == SchedulerClass::Ddpm {
                    match self.variance_type {
                        VarianceType::FixedSmall
                        | VarianceType::FixedSmallLog
                        | VarianceType::FixedLarge => {}
                        other => {
                            return refuse(&format!(
                                "variance_type \"{}\" is not implemented (fixed_small, \
                                 fixed_small_log and fixed_large are)",
                                other.name()
                            ))
                        }
                    }
                }
            }
            SchedulerClass::EulerDiscrete => {
                for (on, key) in [
                    (self.use_karras_sigmas, "use_karras_sigmas"),
                    (self.use_exponential_sigmas, "use_exponential_sigmas"),
                    (self.use_beta_sigmas, "use_beta_sigmas"),
                ] {
                    if on {
                        return refuse(&format!("{key}: true is not implemented"));
                    }
                }
                if self.continuous_timesteps && self.prediction_type == PredictionType::VPrediction
                {
                    return refuse(
                        "timestep_type \"continuous\" with v_prediction is not implemented",
                    );
                }
            }
            SchedulerClass::EulerAncestralDiscrete | SchedulerClass::Pndm => {
                if self.prediction_type == PredictionType::Sample {
                    return refuse(
                        "prediction_type \"sample\" is not supported (diffusers raises)",
                    );
                }
            }
        }
        Ok(())
    }

    fn from_value(value: &Value, class: Option<SchedulerClass>) -> Result<Self> {
        let map = value
            .as_object()
            .ok_or_else(|| Error::Config("scheduler config: not a JSON object".into()))?;
        let class = match class {
            Some(c) => c,
            None => {
                let name = get_str(map, "_class_name")?
                    .ok_or_else(|| Error::Config("scheduler config: no `_class_name`".into()))?;
                SchedulerClass::from_name(name)?
            }
        };
        let mut c = SchedulerConfig::new(class);
        if let Some(v) = get_usize(map, "num_train_timesteps")? {
            c.num_train_timesteps = v;
        }
        if let Some(v) = get_f64(map, "beta_start")? {
            c.beta_start = v;
        }
        if let Some(v) = get_f64(map, "beta_end")? {
            c.beta_end = v;
        }
        if let Some(s) = get_str(map, "beta_schedule")? {
            c.beta_schedule = match s {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                "squaredcos_cap_v2" => BetaSchedule::SquaredCosCapV2,
                other => return Err(unsupported("beta_schedule", other)),
            };
        }
        match map.get("trained_betas") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let betas = items
                    .iter()
                    .map(|v| v.as_f64())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad_type("trained_betas", "a list of numbers"))?;
                c.trained_betas = Some(betas);
            }
            Some(_) => return Err(bad_type("trained_betas", "a list of numbers")),
        }
        if let Some(s) = get_str(map, "prediction_type")? {
            c.prediction_type = match s {
                "epsilon" => PredictionType::Epsilon,
                "v_prediction" => PredictionType::VPrediction,
                "sample" | "original_sample" => PredictionType::Sample,
                other => return Err(unsupported("prediction_type", other)),
            };
        }
        if let Some(s) = get_str(map, "timestep_spacing")? {
            c.timestep_spacing = Some(match s {
                "leading" => TimestepSpacing::Leading,
                "trailing" => TimestepSpacing::Trailing,
                "linspace" => TimestepSpacing::Linspace,
                other => return Err(unsupported("timestep_spacing", other)),
            });
        }
        if let Some(v) = get_usize(map, "steps_offset")? {
            c.steps_offset = v;
        }
        c.set_alpha_to_one = get_bool(map, "set_alpha_to_one")?;
        c.clip_sample = get_bool(map, "clip_sample")?;
        if let Some(v) = get_f64(map, "clip_sample_range")? {
            c.clip_sample_range = v;
        }
        if let Some(v) = get_bool(map, "thresholding")? {
            c.thresholding = v;
        }
        if let Some(v) = get_bool(map, "rescale_betas_zero_snr")? {
            c.rescale_betas_zero_snr = v;
        }
        if let Some(s) = get_str(map, "interpolation_type")? {
            c.interpolation_type = match s {
                "linear" => InterpolationType::Linear,
                "log_linear" => InterpolationType::LogLinear,
                other => return Err(unsupported("interpolation_type", other)),
            };
        }
        if let Some(s) = get_str(map, "final_sigmas_type")? {
            c.final_sigmas_type = match s {
                "zero" => FinalSigmas::Zero,
                "sigma_min" => FinalSigmas::SigmaMin,
                other => return Err(unsupported("final_sigmas_type", other)),
            };
        }
        for (key, slot) in [
            ("use_karras_sigmas", &mut c.use_karras_sigmas),
            ("use_exponential_sigmas", &mut c.use_exponential_sigmas),
            ("use_beta_sigmas", &mut c.use_beta_sigmas),
            ("skip_prk_steps", &mut c.skip_prk_steps),
        ] {
            if let Some(v) = get_bool(map, key)? {
                *slot = v;
            }
        }
        if let Some(s) = get_str(map, "timestep_type")? {
            c.continuous_timesteps = match s {
                "discrete" => false,
                "continuous" => true,
                other => return Err(unsupported("timestep_type", other)),
            };
        }
        if let Some(s) = get_str(map, "variance_type")? {
            c.variance_type = match s {
                "fixed_small" => VarianceType::FixedSmall,
                "fixed_small_log" => VarianceType::FixedSmallLog,
                "fixed_large" => VarianceType::FixedLarge,
                "fixed_large_log" => VarianceType::FixedLargeLog,
                "learned" => VarianceType::Learned,
                "learned_range" => VarianceType::LearnedRange,
                other => return Err(unsupported("variance_type", other)),
            };
        }
        c.validate()?;
        Ok(c)
    }
}

fn strip(e: Error) -> String {
    match e {
        Error::Config(m) => m,
        other => other.to_string(),
    }
}

fn unsupported(key: &str, value: &str) -> Error {
    Error::Config(format!(
        "scheduler config: {key} \"{value}\" is not supported"
    ))
}

fn bad_type(key: &str, what: &str) -> Error {
    Error::Config(format!("scheduler config: `{key}` is not {what}"))
}

fn get_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(bad_type(key, "a string")),
    }
}

fn get_f64(map: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad_type(key, "a number")),
    }
}

fn get_usize(map: &Map<String, Value>, key: &str) -> Result<Option<usize>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|v| usize::try_from(v).ok())
            .map(Some)
            .ok_or_else(|| bad_type(key, "a non-negative integer")),
    }
}

fn get_bool(map: &Map<String, Value>, key: &str) -> Result<Option<bool>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(bad_type(key, "true or false")),
    }
}

// ---------------------------------------------------------------------------------------------
// Betas and alphas_cumprod, as torch computes them in float32.

/// `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU: the endpoints rounded
/// to float32, `step = (end - start) / (steps - 1)` in float32, the first half
/// `start + step * i` and the second `end - step * (steps - 1 - i)`, each a fused
/// multiply-add (ATen's kernel, vectorised with FMA).
pub fn torch_linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    match steps {
        0 => return Vec::new(),
        1 => return vec![s],
        _ => {}
    }
    let step = (e - s) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, s)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, e)
            }
        })
        .collect()
}

/// `torch.cumprod` of a float32 vector on the CPU (accumulated in float64, each partial
/// product rounded to float32).
fn cumprod_f32(xs: &[f32]) -> Vec<f32> {
    let mut acc = 1f64;
    xs.iter()
        .map(|&x| {
            acc *= x as f64;
            acc as f32
        })
        .collect()
}

/// diffusers' `betas_for_alpha_bar` (cosine), in float64, rounded to float32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        let c = ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos();
        c * c
    };
    (0..n)
        .map(|i| {
            let t1 = i as f64 / n as f64;
            let t2 = (i + 1) as f64 / n as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// diffusers' `rescale_zero_terminal_snr` (Lin et al. 2023, algorithm 1) in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    let mut sqrt_ab: Vec<f32> = cumprod_f32(&alphas).iter().map(|a| a.sqrt()).collect();
    let (first, last) = match (sqrt_ab.first(), sqrt_ab.last()) {
        (Some(&f), Some(&l)) => (f, l),
        _ => return Vec::new(),
    };
    let scale = first / (first - last);
    for v in sqrt_ab.iter_mut() {
        *v -= last;
        *v *= scale;
    }
    let ab: Vec<f32> = sqrt_ab.iter().map(|v| v * v).collect();
    let mut out = Vec::with_capacity(ab.len());
    out.push(1.0 - ab[0]);
    for w in ab.windows(2) {
        out.push(1.0 - w[1] / w[0]);
    }
    out
}

/// Betas of `config` as diffusers' constructors compute them (float32).
fn betas_of(config: &SchedulerConfig, rescale: bool) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let betas = match &config.trained_betas {
        Some(b) => b.iter().map(|&v| v as f32).collect(),
        None => match config.beta_schedule {
            BetaSchedule::Linear => torch_linspace_f32(config.beta_start, config.beta_end, n),
            BetaSchedule::ScaledLinear => {
                torch_linspace_f32(config.beta_start.powf(0.5), config.beta_end.powf(0.5), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect()
            }
            BetaSchedule::SquaredCosCapV2 => cosine_betas(n),
        },
    };
    if rescale {
        rescale_zero_terminal_snr(&betas)
    } else {
        betas
    }
}

fn alphas_cumprod_of(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
    cumprod_f32(&alphas)
}

// ---------------------------------------------------------------------------------------------
// Tensor helpers.

/// `x * s` (one rounding, as torch's tensor-by-scalar product).
fn mul_s(x: &Tensor, s: f32) -> Result<Tensor> {
    Ok(x.affine(s as f64, 0.0)?)
}

/// `x / s` as a division (not a product with 1 / s).
fn div_s(x: &Tensor, s: f32) -> Result<Tensor> {
    let s = Tensor::new(s, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&s)?)
}

fn f32_of(x: &Tensor) -> Result<Tensor> {
    Ok(x.to_dtype(DType::F32)?)
}

fn check_same(what: &str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.dims() != b.dims() {
        return Err(Error::Input(format!(
            "{what}: shapes differ ({:?} vs {:?})",
            a.dims(),
            b.dims()
        )));
    }
    Ok(())
}

/// A float32 value as the dtype `dtype` holds it (torch casts `alphas_cumprod` to the
/// sample's dtype before taking square roots).
fn round_to(dtype: DType, v: f32) -> Result<f32> {
    Ok(match dtype {
        DType::F32 | DType::F64 => v,
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        other => {
            return Err(Error::Input(format!(
                "noise schedule: samples of dtype {other:?} (expected a float dtype)"
            )))
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Training side.

/// The forward (noising) process of a config, as `DDPMScheduler.from_config(config)` defines
/// it; what Diffusion-DPO's training loop uses.
#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    betas: Vec<f32>,
    alphas_cumprod: Vec<f32>,
    prediction_type: PredictionType,
}

impl NoiseSchedule {
    /// Betas and `alphas_cumprod` of `config` read as a `DDPMScheduler` (the config's class is
    /// ignored: `rescale_betas_zero_snr` applies whichever class wrote it).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let config = config.as_class(SchedulerClass::Ddpm);
        if config.num_train_timesteps == 0 {
            return Err(Error::Config(
                "noise schedule: num_train_timesteps must be at least 1".into(),
            ));
        }
        if let Some(b) = &config.trained_betas {
            if b.len() != config.num_train_timesteps {
                return Err(Error::Config(format!(
                    "noise schedule: trained_betas has {} values, num_train_timesteps is {}",
                    b.len(),
                    config.num_train_timesteps
                )));
            }
        }
        let betas = betas_of(&config, config.rescale_betas_zero_snr);
        let alphas_cumprod = alphas_cumprod_of(&betas);
        Ok(NoiseSchedule {
            betas,
            alphas_cumprod,
            prediction_type: config.prediction_type,
        })
    }

    pub fn betas(&self) -> &[f32] {
        &self.betas
    }

    /// `ᾱ_t` for t in `0..num_train_timesteps`.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// The config's `prediction_type` (what the model was trained to predict).
    pub fn prediction_type(&self) -> PredictionType {
        self.prediction_type
    }

    /// Per-sample `(sqrt(ᾱ_t), sqrt(1 - ᾱ_t))` shaped `[B, 1, ...]` like `like`, in its dtype,
    /// computed as torch does in that dtype.
    fn coefficients(&self, like: &Tensor, timesteps: &[usize]) -> Result<(Tensor, Tensor)> {
        let dims = like.dims();
        if dims.len() < 2 {
            return Err(Error::Input(format!(
                "noise schedule: samples must have a batch dimension and at least one more \
                 (shape {dims:?})"
            )));
        }
        if dims[0] != timesteps.len() {
            return Err(Error::Input(format!(
                "noise schedule: {} timesteps for a batch of {}",
                timesteps.len(),
                dims[0]
            )));
        }
        let dtype = like.dtype();
        let mut a = Vec::with_capacity(timesteps.len());
        let mut b = Vec::with_capacity(timesteps.len());
        for &t in timesteps {
            let ac = *self.alphas_cumprod.get(t).ok_or_else(|| {
                Error::Input(format!(
                    "noise schedule: timestep {t} out of range (num_train_timesteps {})",
                    self.alphas_cumprod.len()
                ))
            })?;
            if dtype == DType::F64 {
                let ac = ac as f64;
                a.push(ac.sqrt());
                b.push((1.0 - ac).sqrt());
            } else {
                let ac = round_to(dtype, ac)?;
                let sa = round_to(dtype, ac.sqrt())?;
                let one_minus = round_to(dtype, 1.0 - ac)?;
                let sb = round_to(dtype, one_minus.sqrt())?;
                a.push(sa as f64);
                b.push(sb as f64);
            }
        }
        let mut shape = vec![1usize; dims.len()];
        shape[0] = dims[0];
        let make = |v: Vec<f64>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape.as_slice(), like.device())?.to_dtype(dtype)?)
        };
        Ok((make(a)?, make(b)?))
    }

    /// `x_t = sqrt(ᾱ_t)·x0 + sqrt(1 - ᾱ_t)·noise`, `t = timesteps[i]` for sample i of the
    /// batch (`x0` of any rank >= 2, e.g. `[B, C, H, W]` or `[B, C, F, H, W]`).
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        check_same("add_noise", x0, noise)?;
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((x0.broadcast_mul(&a)? + noise.broadcast_mul(&b)?)?)
    }

    /// `v = sqrt(ᾱ_t)·noise - sqrt(1 - ᾱ_t)·x0` (diffusers' `get_velocity`).
    pub fn velocity(&self, x0: &Tensor, noise: &Tensor, timesteps: &[usize]) -> Result<Tensor> {
        check_same("velocity", x0, noise)?;
        let (a, b) = self.coefficients(x0, timesteps)?;
        Ok((noise.broadcast_mul(&a)? - x0.broadcast_mul(&b)?)?)
    }

    /// What a model of `prediction_type` is trained to output for `add_noise(x0, noise, t)`:
    /// the noise, the velocity or `x0`.
    pub fn target(
        &self,
        prediction_type: PredictionType,
        x0: &Tensor,
        noise: &Tensor,
        timesteps: &[usize],
    ) -> Result<Tensor> {
        check_same("target", x0, noise)?;
        match prediction_type {
            PredictionType::Epsilon => {
                self.coefficients(x0, timesteps)?;
                Ok(noise.clone())
            }
            PredictionType::Sample => {
                self.coefficients(x0, timesteps)?;
                Ok(x0.clone())
            }
            PredictionType::VPrediction => self.velocity(x0, noise, timesteps),
        }
    }
}

/// The timesteps SDXL-Turbo's Diffusion-DPO training draws from: `250·k + 249`, k in 0..4
/// (the 4-step `trailing` grid of 1000 training steps).
pub const TURBO_TIMESTEPS: [usize; 4] = [249, 499, 749, 999];

/// Maps indices drawn uniformly from `0..4` to [`TURBO_TIMESTEPS`] (`250·k + 249`).
pub fn turbo_timesteps(indices: &[usize]) -> Result<Vec<usize>> {
    indices
        .iter()
        .map(|&k| {
            TURBO_TIMESTEPS.get(k).copied().ok_or_else(|| {
                Error::Input(format!("turbo timestep index {k} out of range (0..4)"))
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Inference grids (numpy float64 semantics).

/// `np.linspace(start, stop, num)` (float64, endpoint included).
fn np_linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 0 {
        return Vec::new();
    }
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// `np.arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values
/// `start + i * delta` with `delta = (start + step) - start` (numpy's fill).
fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil();
    if len.is_nan() || len <= 0.0 {
        return Vec::new();
    }
    let len = len as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// `np.interp(x, arange(len(fp)), fp)`.
fn np_interp_index(x: f64, fp: &[f32]) -> f64 {
    let n = fp.len();
    let last = (n - 1) as f64;
    if x.is_nan() {
        return x;
    }
    if x < 0.0 {
        return fp[0] as f64;
    }
    if x > last {
        return fp[n - 1] as f64;
    }
    let j = x.floor() as usize;
    if j >= n - 1 {
        return fp[n - 1] as f64;
    }
    if x == j as f64 {
        return fp[j] as f64;
    }
    let (y0, y1) = (fp[j] as f64, fp[j + 1] as f64);
    let slope = (y1 - y0) / 1.0;
    let r = slope * (x - j as f64) + y0;
    if r.is_nan() {
        let r2 = slope * (x - (j + 1) as f64) + y1;
        if r2.is_nan() && y0 == y1 {
            return y0;
        }
        return r2;
    }
    r
}

/// The integer timesteps of DDIM / DDPM `set_timesteps(n)`, in sampling order.
fn int_timesteps(spacing: TimestepSpacing, t_train: usize, n: usize, offset: usize) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t_train / n;
            (0..n).rev().map(|i| (i * ratio + offset) as i64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_train as f64 / n as f64;
            np_arange(t_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

/// The float32 timesteps of the Euler schedulers' `set_timesteps(n)`.
fn euler_timesteps(spacing: TimestepSpacing, t_train: usize, n: usize, offset: usize) -> Vec<f32> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t_train - 1) as f64, n)
            .into_iter()
            .rev()
            .map(|v| v as f32)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t_train / n;
            (0..n)
                .rev()
                .map(|i| (i * ratio) as f32 + offset as f32)
                .collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_train as f64 / n as f64;
            np_arange(t_train as f64, 0.0, -ratio)
                .into_iter()
                .map(|v| v.round_ties_even() as f32 - 1.0)
                .collect()
        }
    }
}

/// PNDM's `_timesteps` (ascending, as PNDM builds them before ordering).
fn pndm_base_timesteps(
    spacing: TimestepSpacing,
    t_train: usize,
    n: usize,
    offset: usize,
) -> Vec<i64> {
    match spacing {
        TimestepSpacing::Linspace => np_linspace(0.0, (t_train - 1) as f64, n)
            .into_iter()
            .map(|v| v.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            let ratio = t_train / n;
            (0..n).map(|i| (i * ratio + offset) as i64).collect()
        }
        TimestepSpacing::Trailing => {
            let ratio = t_train as f64 / n as f64;
            np_arange(t_train as f64, 0.0, -ratio)
                .into_iter()
                .rev()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Samplers.

#[derive(Debug, Clone, Default)]
struct PndmState {
    counter: usize,
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
    cur_model_output: Option<Tensor>,
    prk_len: usize,
}

/// One of diffusers' samplers, stepped by index into [`Sampler::timesteps`].
///
/// ```text
/// let mut s = Sampler::new(&config)?;
/// s.set_timesteps(n)?;
/// let mut x = gaussian(shape, seed, dev)?.affine(s.init_noise_sigma() as f64, 0.)?;
/// for i in 0..s.timesteps().len() {
///     let x_in = s.scale_model_input(&x, i)?;
///     let eps = unet(&x_in, s.timesteps()[i])?;
///     let noise = if s.step_needs_noise(i) { Some(gaussian(shape, seed_i, dev)?) } else { None };
///     x = s.step(&eps, i, &x, noise.as_ref())?;
/// }
/// ```
///
/// DDIM, DDPM and the Euler schedulers are stateless between steps (the index says where
/// the step is); PNDM keeps its multistep history, so its steps must come in order from 0
/// (a new `set_timesteps` starts over).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// sqrt((1 - ᾱ) / ᾱ) over the training timesteps (Euler).
    train_sigmas: Vec<f32>,
    num_inference_steps: usize,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    pndm: PndmState,
}

impl Sampler {
    /// A sampler of `config.class` (see [`SchedulerConfig::as_class`] to sample a pipeline
    /// with another class than its config names).
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.validate()?;
        let class = config.class;
        // PNDM takes no rescale_betas_zero_snr (diffusers ignores it there).
        let rescale = config.rescale_betas_zero_snr && class != SchedulerClass::Pndm;
        let betas = betas_of(config, rescale);
        let mut alphas_cumprod = alphas_cumprod_of(&betas);
        if class.is_euler() && rescale {
            if let Some(last) = alphas_cumprod.last_mut() {
                *last = 2f32.powi(-24);
            }
        }
        let final_alpha_cumprod = if config.set_alpha_to_one() {
            1.0
        } else {
            alphas_cumprod[0]
        };
        let train_sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| ((1.0 - a) / a).sqrt())
            .collect();
        Ok(Sampler {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            train_sigmas,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            pndm: PndmState::default(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn class(&self) -> SchedulerClass {
        self.config.class
    }

    /// The sampler's `alphas_cumprod` (Euler with zero-terminal-SNR sets the last to 2^-24).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// Chooses the `n` sampling steps (diffusers' `set_timesteps(n)`), `1 <= n <=
    /// num_train_timesteps`. PNDM has more entries than `n` (PLMS repeats one timestep; the
    /// Runge-Kutta warm-up adds 12 evaluations and needs `n >= 4`).
    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let t_train = self.config.num_train_timesteps;
        if n == 0 || n > t_train {
            return Err(Error::Input(format!(
                "{}: {n} inference steps (1..={t_train} allowed)",
                self.config.class.name()
            )));
        }
        let spacing = self.config.timestep_spacing();
        let offset = self.config.steps_offset;
        self.num_inference_steps = n;
        self.pndm = PndmState::default();
        self.sigmas = Vec::new();
        match self.config.class {
            SchedulerClass::Ddim | SchedulerClass::Ddpm => {
                self.timesteps = int_timesteps(spacing, t_train, n, offset)
                    .into_iter()
                    .map(|t| t as f32)
                    .collect();
            }
            SchedulerClass::EulerDiscrete | SchedulerClass::EulerAncestralDiscrete => {
                self.set_euler_timesteps(spacing, n, offset);
            }
            SchedulerClass::Pndm => {
                let base = pndm_base_timesteps(spacing, t_train, n, offset);
                let ts: Vec<i64> = if self.config.skip_prk_steps {
                    let len = base.len();
                    let mut v: Vec<i64> = base[..len.saturating_sub(1)].to_vec();
                    if len >= 2 {
                        v.push(base[len - 2]);
                    }
                    v.extend_from_slice(&base[len.saturating_sub(1)..]);
                    v.reverse();
                    self.pndm.prk_len = 0;
                    v
                } else {
                    if base.len() < 4 {
                        return Err(Error::Input(format!(
                            "PNDMScheduler: the Runge-Kutta warm-up needs at least 4 inference \
                             steps (got {n}); set skip_prk_steps"
                        )));
                    }
                    let half = (t_train / n / 2) as i64;
                    let last4 = &base[base.len() - 4..];
                    let mut prk: Vec<i64> = Vec::with_capacity(8);
                    for &t in last4 {
                        prk.push(t);
                        prk.push(t + half);
                    }
                    // prk[:-1].repeat(2)[1:-1][::-1]
                    let rep: Vec<i64> = prk[..7].iter().flat_map(|&t| [t, t]).collect();
                    let mut prk: Vec<i64> = rep[1..rep.len() - 1].to_vec();
                    prk.reverse();
                    self.pndm.prk_len = prk.len();
                    let mut plms: Vec<i64> = base[..base.len() - 3].to_vec();
                    plms.reverse();
                    prk.extend(plms);
                    prk
                };
                self.timesteps = ts.into_iter().map(|t| t as f32).collect();
            }
        }
        Ok(())
    }

    fn set_euler_timesteps(&mut self, spacing: TimestepSpacing, n: usize, offset: usize) {
        let t_train = self.config.num_train_timesteps;
        let timesteps = euler_timesteps(spacing, t_train, n, offset);
        let mut sigmas: Vec<f32> = match (self.config.class, self.config.interpolation_type) {
            (SchedulerClass::EulerDiscrete, InterpolationType::LogLinear) => {
                let hi = (*self.train_sigmas.last().unwrap_or(&0.0)).ln();
                let lo = self.train_sigmas[0].ln();
                torch_linspace_f32(hi as f64, lo as f64, n + 1)
                    .into_iter()
                    .map(f32::exp)
                    .collect()
            }
            _ => timesteps
                .iter()
                .map(|&t| np_interp_index(t as f64, &self.train_sigmas) as f32)
                .collect(),
        };
        let last = match (self.config.class, self.config.final_sigmas_type) {
            (SchedulerClass::EulerDiscrete, FinalSigmas::SigmaMin) => self.train_sigmas[0],
            _ => 0.0,
        };
        sigmas.push(last);
        self.timesteps = timesteps;
        self.sigmas = sigmas;
    }

    /// The timesteps to evaluate the model at, in order (integers for DDIM, DDPM and PNDM;
    /// Euler's may be fractional with `linspace`). Empty before `set_timesteps`.
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// The Euler schedulers' sigmas after `set_timesteps` (one more than the timesteps);
    /// empty for the others.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The `n` of the last `set_timesteps` (0 before).
    pub fn num_inference_steps(&self) -> usize {
        self.num_inference_steps
    }

    /// What the initial Gaussian latents are multiplied by: 1, or for the Euler schedulers
    /// the largest sigma (`linspace` and `trailing` spacing) or `sqrt(σ_max² + 1)`
    /// (`leading`), after `set_timesteps` as in the pipelines.
    pub fn init_noise_sigma(&self) -> f32 {
        if !self.config.class.is_euler() {
            return 1.0;
        }
        let sigmas = if self.sigmas.is_empty() {
            // before set_timesteps: the training sigmas, flipped, and 0
            &self.train_sigmas
        } else {
            &self.sigmas
        };
        let max = sigmas.iter().copied().fold(0f32, f32::max);
        match self.config.timestep_spacing() {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// The model's input at step `t_index`: `x / sqrt(σ² + 1)` for the Euler schedulers, `x`
    /// otherwise.
    pub fn scale_model_input(&self, x: &Tensor, t_index: usize) -> Result<Tensor> {
        self.check_index(t_index)?;
        if !self.config.class.is_euler() {
            return Ok(x.clone());
        }
        let sigma = self.sigmas[t_index];
        div_s(x, (sigma * sigma + 1.0).sqrt())
    }

    /// Whether `step(.., t_index, ..)` uses its `noise` (Euler ancestral while σ_up > 0, DDPM
    /// while t > 0).
    pub fn step_needs_noise(&self, t_index: usize) -> bool {
        match self.config.class {
            SchedulerClass::EulerAncestralDiscrete => {
                t_index < self.timesteps.len() && self.ancestral_sigmas(t_index).0 > 0.0
            }
            SchedulerClass::Ddpm => self.timesteps.get(t_index).is_some_and(|&t| t > 0.0),
            _ => false,
        }
    }

    fn check_index(&self, t_index: usize) -> Result<()> {
        if self.timesteps.is_empty() {
            return Err(Error::Input(format!(
                "{}: call set_timesteps before sampling",
                self.config.class.name()
            )));
        }
        if t_index >= self.timesteps.len() {
            return Err(Error::Input(format!(
                "{}: step index {t_index} out of range ({} timesteps)",
                self.config.class.name(),
                self.timesteps.len()
            )));
        }
        Ok(())
    }

    /// One denoising step from `sample` at `timesteps()[t_index]` to the next timestep, given
    /// the model's output there. `noise` (standard Gaussian, shaped like `sample`) is required
    /// when [`Sampler::step_needs_noise`] says so and ignored otherwise. Computed in float32;
    /// returned in `model_output`'s dtype for the Euler schedulers (as diffusers), else in
    /// `sample`'s (float32 when the two differ).
    pub fn step(
        &mut self,
        model_output: &Tensor,
        t_index: usize,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.check_index(t_index)?;
        check_same("step", model_output, sample)?;
        if let Some(n) = noise {
            check_same("step noise", n, sample)?;
        }
        let out_dtype = match self.config.class {
            SchedulerClass::EulerDiscrete | SchedulerClass::EulerAncestralDiscrete => {
                model_output.dtype()
            }
            _ if model_output.dtype() == sample.dtype() => sample.dtype(),
            _ => DType::F32,
        };
        let mo = f32_of(model_output)?;
        let x = f32_of(sample)?;
        let prev = match self.config.class {
            SchedulerClass::Ddim => self.step_ddim(&mo, t_index, &x)?,
            SchedulerClass::Ddpm => self.step_ddpm(&mo, t_index, &x, noise)?,
            SchedulerClass::EulerDiscrete => self.step_euler(&mo, t_index, &x)?,
            SchedulerClass::EulerAncestralDiscrete => {
                self.step_ancestral(&mo, t_index, &x, noise)?
            }
            SchedulerClass::Pndm => self.step_pndm(&mo, t_index, &x)?,
        };
        Ok(prev.to_dtype(out_dtype)?)
    }

    fn timestep_int(&self, t_index: usize) -> usize {
        self.timesteps[t_index] as usize
    }

    fn alpha_at(&self, t: i64) -> Result<f32> {
        if t < 0 {
            return Ok(self.final_alpha_cumprod);
        }
        self.alphas_cumprod.get(t as usize).copied().ok_or_else(|| {
            Error::Input(format!(
                "{}: timestep {t} out of range",
                self.config.class.name()
            ))
        })
    }

    /// `(x0, eps)` predicted from the model output, DDIM/DDPM style (with clipping).
    fn predict_x0(&self, mo: &Tensor, x: &Tensor, a_t: f32) -> Result<Tensor> {
        let b_t = 1.0 - a_t;
        let x0 = match self.config.prediction_type {
            PredictionType::Epsilon => div_s(&(x - mul_s(mo, b_t.sqrt())?)?, a_t.sqrt())?,
            PredictionType::Sample => mo.clone(),
            PredictionType::VPrediction => (mul_s(x, a_t.sqrt())? - mul_s(mo, b_t.sqrt())?)?,
        };
        if self.config.clip_sample() {
            let r = self.config.clip_sample_range as f32;
            Ok(x0.clamp(-r, r)?)
        } else {
            Ok(x0)
        }
    }

    fn step_ddim(&self, mo: &Tensor, t_index: usize, x: &Tensor) -> Result<Tensor> {
        let t = self.timestep_int(t_index) as i64;
        let prev_t = t - (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let a_t = self.alpha_at(t)?;
        let a_prev = self.alpha_at(prev_t)?;
        let b_t = 1.0 - a_t;
        let eps = match self.config.prediction_type {
            PredictionType::Epsilon => mo.clone(),
            PredictionType::VPrediction => (mul_s(mo, a_t.sqrt())? + mul_s(x, b_t.sqrt())?)?,
            // from the predicted sample before clipping, as diffusers does
            PredictionType::Sample => div_s(&(x - mul_s(mo, a_t.sqrt())?)?, b_t.sqrt())?,
        };
        let x0 = self.predict_x0(mo, x, a_t)?;
        // eta = 0: std_dev_t = 0 * sqrt(variance)
        let b_prev = 1.0 - a_prev;
        let variance = (b_prev / b_t) * (1.0 - a_t / a_prev);
        let std = 0.0 * variance.sqrt();
        let dir = mul_s(&eps, (1.0 - a_prev - std * std).sqrt())?;
        Ok((mul_s(&x0, a_prev.sqrt())? + dir)?)
    }

    fn step_ddpm(
        &self,
        mo: &Tensor,
        t_index: usize,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let t = self.timestep_int(t_index) as i64;
        let prev_t = match self.timesteps.get(t_index + 1) {
            Some(&p) => p as i64,
            None => -1,
        };
        let a_t = self.alpha_at(t)?;
        let a_prev = if prev_t >= 0 {
            self.alpha_at(prev_t)?
        } else {
            1.0
        };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        let x0 = self.predict_x0(mo, x, a_t)?;
        let c_x0 = (a_prev.sqrt() * cur_beta) / b_t;
        let c_xt = cur_alpha.sqrt() * b_prev / b_t;
        let prev = (mul_s(&x0, c_x0)? + mul_s(x, c_xt)?)?;
        if t <= 0 {
            return Ok(prev);
        }
        let noise = noise.ok_or_else(|| {
            Error::Input(format!(
                "DDPMScheduler: step {t_index} (t = {t}) needs a noise tensor"
            ))
        })?;
        let noise = f32_of(noise)?;
        let variance = ((1.0 - a_prev) / (1.0 - a_t) * cur_beta).max(1e-20);
        let std = match self.config.variance_type {
            VarianceType::FixedSmall => variance.sqrt(),
            VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
            VarianceType::FixedLarge => cur_beta.sqrt(),
            other => {
                return Err(Error::Config(format!(
                    "DDPMScheduler: variance_type \"{}\" is not implemented",
                    other.name()
                )))
            }
        };
        Ok((prev + mul_s(&noise, std)?)?)
    }

    fn euler_x0(&self, mo: &Tensor, x: &Tensor, sigma: f32) -> Result<Tensor> {
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => (x - mul_s(mo, sigma)?)?,
            PredictionType::VPrediction => {
                let s2 = sigma * sigma + 1.0;
                (mul_s(mo, -sigma / s2.sqrt())? + div_s(x, s2)?)?
            }
            PredictionType::Sample => mo.clone(),
        })
    }

    fn step_euler(&self, mo: &Tensor, t_index: usize, x: &Tensor) -> Result<Tensor> {
        // s_churn = 0: gamma = 0, sigma_hat = sigma
        let sigma = self.sigmas[t_index];
        let x0 = self.euler_x0(mo, x, sigma)?;
        let derivative = div_s(&(x - x0)?, sigma)?;
        let dt = self.sigmas[t_index + 1] - sigma;
        Ok((x + mul_s(&derivative, dt)?)?)
    }

    /// `(sigma_up, sigma_down)` of Euler ancestral's step `t_index`.
    fn ancestral_sigmas(&self, t_index: usize) -> (f32, f32) {
        let from = self.sigmas[t_index];
        let to = self.sigmas[t_index + 1];
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        (up, down)
    }

    fn step_ancestral(
        &self,
        mo: &Tensor,
        t_index: usize,
        x: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[t_index];
        let x0 = self.euler_x0(mo, x, sigma)?;
        let (up, down) = self.ancestral_sigmas(t_index);
        let derivative = div_s(&(x - x0)?, sigma)?;
        let dt = down - sigma;
        let prev = (x + mul_s(&derivative, dt)?)?;
        if up == 0.0 {
            return Ok(prev);
        }
        let noise = noise.ok_or_else(|| {
            Error::Input(format!(
                "EulerAncestralDiscreteScheduler: step {t_index} needs a noise tensor"
            ))
        })?;
        Ok((prev + mul_s(&f32_of(noise)?, up)?)?)
    }

    /// PNDM's `_get_prev_sample` (formula (9) of the PNDM paper).
    fn pndm_prev(&self, x: &Tensor, t: i64, prev_t: i64, mo: &Tensor) -> Result<Tensor> {
        let a_t = self.alpha_at(t)?;
        let a_prev = self.alpha_at(prev_t)?;
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let mo = match self.config.prediction_type {
            PredictionType::VPrediction => (mul_s(mo, a_t.sqrt())? + mul_s(x, b_t.sqrt())?)?,
            _ => mo.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let rhs = div_s(&mul_s(&mo, a_prev - a_t)?, denom)?;
        Ok((mul_s(x, sample_coeff)? - rhs)?)
    }

    fn step_pndm(&mut self, mo: &Tensor, t_index: usize, x: &Tensor) -> Result<Tensor> {
        if t_index != self.pndm.counter {
            return Err(Error::Input(format!(
                "PNDMScheduler: steps must run in order (expected step {}, got {t_index})",
                self.pndm.counter
            )));
        }
        let timestep = self.timesteps[t_index] as i64;
        let ratio = (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let counter = self.pndm.counter;
        let prev = if counter < self.pndm.prk_len {
            // Runge-Kutta warm-up (step_prk)
            let diff = if counter % 2 == 1 { 0 } else { ratio / 2 };
            let prev_t = timestep - diff;
            let t = self.timesteps[counter / 4 * 4] as i64;
            let mut model_output = mo.clone();
            let acc = self.pndm.cur_model_output.take();
            match counter % 4 {
                0 => {
                    let add = mul_s(mo, 1.0 / 6.0)?;
                    self.pndm.cur_model_output = Some(match acc {
                        Some(a) => (a + add)?,
                        None => add,
                    });
                    self.pndm.ets.push(mo.clone());
                    self.pndm.cur_sample = Some(x.clone());
                }
                1 | 2 => {
                    let add = mul_s(mo, 1.0 / 3.0)?;
                    self.pndm.cur_model_output = Some(match acc {
                        Some(a) => (a + add)?,
                        None => add,
                    });
                }
                _ => {
                    let add = mul_s(mo, 1.0 / 6.0)?;
                    model_output = match acc {
                        Some(a) => (a + add)?,
                        None => add,
                    };
                }
            }
            let cur = self.pndm.cur_sample.clone().unwrap_or_else(|| x.clone());
            self.pndm_prev(&cur, t, prev_t, &model_output)?
        } else {
            // linear multistep (step_plms)
            if !self.config.skip_prk_steps && self.pndm.ets.len() < 3 {
                return Err(Error::Input(
                    "PNDMScheduler: PLMS steps need the Runge-Kutta warm-up first".into(),
                ));
            }
            let mut t = timestep;
            let mut prev_t = timestep - ratio;
            if counter != 1 {
                let keep = self.pndm.ets.len().saturating_sub(3);
                self.pndm.ets.drain(..keep);
                self.pndm.ets.push(mo.clone());
            } else {
                prev_t = timestep;
                t = timestep + ratio;
            }
            let ets = &self.pndm.ets;
            let k = ets.len();
            let mut sample = x.clone();
            let model_output = if k == 1 && counter == 0 {
                self.pndm.cur_sample = Some(x.clone());
                mo.clone()
            } else if k == 1 && counter == 1 {
                let m = div_s(&(mo + &ets[0])?, 2.0)?;
                sample = self.pndm.cur_sample.take().unwrap_or(sample);
                m
            } else if k == 2 {
                div_s(&(mul_s(&ets[1], 3.0)? - &ets[0])?, 2.0)?
            } else if k == 3 {
                let s = ((mul_s(&ets[2], 23.0)? - mul_s(&ets[1], 16.0)?)? + mul_s(&ets[0], 5.0)?)?;
                div_s(&s, 12.0)?
            } else {
                let s = (((mul_s(&ets[k - 1], 55.0)? - mul_s(&ets[k - 2], 59.0)?)?
                    + mul_s(&ets[k - 3], 37.0)?)?
                    - mul_s(&ets[k - 4], 9.0)?)?;
                mul_s(&s, 1.0 / 24.0)?
            };
            self.pndm_prev(&sample, t, prev_t, &model_output)?
        };
        self.pndm.counter += 1;
        Ok(prev)
    }
}

// ---------------------------------------------------------------------------------------------
// Seeded Gaussian noise.

/// `count` standard normal samples from `seed`: SplitMix64 from state `seed`; per pair of
/// outputs `(a, b)`, `u1 = ((a >> 11) + 1) · 2^-53` in (0, 1], `u2 = (b >> 11) · 2^-53` in
/// [0, 1), `r = sqrt(-2 ln u1)`, values `r cos(2π u2)` then `r sin(2π u2)` (Box-Muller in
/// float64, rounded to float32; an odd count drops the last sine). Fixed here so that noise
/// does not change with any crate's version; `scripts/golden/make_scheduler.py` has the same
/// generator in Python and the tests compare the two.
pub fn gaussian_vec(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(count + 1);
    const SCALE: f64 = 1.0 / (1u64 << 53) as f64;
    while out.len() < count {
        let u1 = ((rng.next_u64() >> 11) + 1) as f64 * SCALE;
        let u2 = (rng.next_u64() >> 11) as f64 * SCALE;
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(count);
    out
}

/// A float32 tensor of standard normal samples ([`gaussian_vec`] in row-major order) on
/// `device`. Candidates sampled with seeds `seed + j` get independent streams.
pub fn gaussian(shape: &[usize], seed: u64, device: &Device) -> Result<Tensor> {
    let count = shape.iter().product();
    Ok(Tensor::from_vec(gaussian_vec(count, seed), shape, device)?)
}
