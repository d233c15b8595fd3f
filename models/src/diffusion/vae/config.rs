//! `vae/config.json` of a diffusers pipeline: the fields of `AutoencoderKL.__init__`, with
//! diffusers' defaults for the ones a config leaves out (SD 1.x configs predate
//! `force_upcast`, `use_quant_conv`, ...).

use std::path::Path;

use serde::Deserialize;

use crate::{Error, Result};

/// The encoder's block; the only one `AutoencoderKL` configs use.
pub const DOWN_BLOCK: &str = "DownEncoderBlock2D";
/// The decoder's block.
pub const UP_BLOCK: &str = "UpDecoderBlock2D";

/// `sample_size`: an int, or `[height, width]` in some configs. Only diffusers' tiling reads
/// it, which this port does not do; kept so that a config round-trips.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

/// diffusers `AutoencoderKL` config (`vae/config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    /// `AutoencoderKL` when present; other classes (`AutoencoderKLTemporalDecoder`,
    /// `AutoencoderTiny`, ...) have other layers and are refused.
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default = "down_blocks")]
    pub down_block_types: Vec<String>,
    #[serde(default = "up_blocks")]
    pub up_block_types: Vec<String>,
    #[serde(default = "block_out")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "sample_size")]
    pub sample_size: SampleSize,
    /// 0.18215 for SD 1.x / 2.x, 0.13025 for SDXL.
    #[serde(default = "scaling")]
    pub scaling_factor: f64,
    /// SD3 / Flux VAEs: latents = (sample − shift) · scaling.
    #[serde(default)]
    pub shift_factor: Option<f64>,
    /// Per-channel statistics some SDXL-geometry VAEs carry (Playground v2.5): latents =
    /// (sample − mean_c) · scaling / std_c, as diffusers' SDXL pipelines apply them.
    #[serde(default)]
    pub latents_mean: Option<Vec<f64>>,
    #[serde(default)]
    pub latents_std: Option<Vec<f64>>,
    /// diffusers runs such a VAE in float32 even in a half-precision pipeline (SDXL's
    /// overflows in float16); the caller picks the dtype, this says what diffusers would do.
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn one() -> usize {
    1
}
fn four() -> usize {
    4
}
fn thirty_two() -> usize {
    32
}
fn down_blocks() -> Vec<String> {
    vec![DOWN_BLOCK.into()]
}
fn up_blocks() -> Vec<String> {
    vec![UP_BLOCK.into()]
}
fn block_out() -> Vec<usize> {
    vec![64]
}
fn silu() -> String {
    "silu".into()
}
fn sample_size() -> SampleSize {
    SampleSize::Square(32)
}
fn scaling() -> f64 {
    0.18215
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// Reads and checks `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Refuses what this port does not build, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("vae: {msg}")));
        if let Some(class) = &self.class_name {
            if class != "AutoencoderKL" {
                return bad(format!(
                    "_class_name {class:?} is not supported (only AutoencoderKL)"
                ));
            }
        }
        // diffusers' get_activation maps both names to nn.SiLU.
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return bad(format!(
                "act_fn {:?} is not supported (only \"silu\")",
                self.act_fn
            ));
        }
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("block_out_channels is empty".into());
        }
        for (field, types, want) in [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, UP_BLOCK),
        ] {
            if types.len() != n {
                return bad(format!(
                    "{field} has {} entries but block_out_channels has {n}",
                    types.len()
                ));
            }
            if let Some(t) = types.iter().find(|t| *t != want) {
                return bad(format!("{field}: {t:?} is not supported (only {want})"));
            }
        }
        if self.norm_num_groups == 0 {
            return bad("norm_num_groups is 0".into());
        }
        if let Some(c) = self
            .block_out_channels
            .iter()
            .find(|&&c| c == 0 || !c.is_multiple_of(self.norm_num_groups))
        {
            return bad(format!(
                "block_out_channels {:?}: {c} channels do not split into norm_num_groups {}",
                self.block_out_channels, self.norm_num_groups
            ));
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block is 0".into());
        }
        for (field, v) in [
            ("in_channels", self.in_channels),
            ("out_channels", self.out_channels),
            ("latent_channels", self.latent_channels),
        ] {
            if v == 0 {
                return bad(format!("{field} is 0"));
            }
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return bad(format!(
                "scaling_factor {} is not a non-zero number",
                self.scaling_factor
            ));
        }
        if let Some(s) = self.shift_factor {
            if !s.is_finite() {
                return bad(format!("shift_factor {s} is not finite"));
            }
        }
        match (&self.latents_mean, &self.latents_std) {
            (None, None) => {}
            (Some(mean), Some(std)) => {
                if self.shift_factor.is_some_and(|s| s != 0.0) {
                    return bad("both shift_factor and latents_mean / latents_std are set: \
                         no diffusers pipeline applies both"
                        .into());
                }
                if mean.len() != self.latent_channels || std.len() != self.latent_channels {
                    return bad(format!(
                        "latents_mean ({}) / latents_std ({}) do not have latent_channels {} entries",
                        mean.len(),
                        std.len(),
                        self.latent_channels
                    ));
                }
                if mean.iter().chain(std).any(|v| !v.is_finite()) || std.contains(&0.0) {
                    return bad(
                        "latents_mean / latents_std hold a non-finite value or a zero std".into(),
                    );
                }
            }
            _ => return bad("latents_mean and latents_std must be given together".into()),
        }
        Ok(())
    }

    /// How many times smaller the latents are than the image (8 for SD / SDXL).
    pub fn downsampling_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}
