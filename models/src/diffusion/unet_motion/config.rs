//! `unet/config.json` of a diffusers `UNetMotionModel` (AnimateDiff: SD 1.5's UNet with motion
//! modules), resolved into the image UNet's per-block settings plus the motion modules' own.
//!
//! The spatial part is the image UNet's: the file is translated into a `UNet2DConditionModel`
//! config (block types renamed, the motion keys taken out) and resolved by
//! [`UNetConfig::resolve`], so both UNets check and derive their blocks one way.

use serde_json::{Map, Value};

use crate::diffusion::unet::config::{PerBlock, UNetConfig, UNetSpec};
use crate::{Error, Result};

/// The motion module (`AnimateDiffTransformer3D`) settings of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MotionBlockSpec {
    pub heads: usize,
    /// Transformer layers of each of the block's motion modules.
    pub layers: usize,
}

/// The config checked and spelled out.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionSpec {
    /// The spatial UNet (resnets, cross-attention, resampling, embeddings).
    pub unet: UNetSpec,
    /// Per down block; the up blocks use them reversed.
    pub down: Vec<MotionBlockSpec>,
    pub up: Vec<MotionBlockSpec>,
    /// `use_motion_mid_block`: the mid block's motion module, or `None` for the image UNet's
    /// plain mid block (AnimateDiff v1's adapters have none, v2's have one).
    pub mid: Option<MotionBlockSpec>,
    /// `motion_max_seq_length`: the length of the sinusoidal frame-position table, so the
    /// most frames one forward takes.
    pub max_seq_length: usize,
}

/// What the motion model's keys are in the image UNet's config.
const BLOCK_NAMES: [(&str, &str); 4] = [
    ("CrossAttnDownBlockMotion", "CrossAttnDownBlock2D"),
    ("DownBlockMotion", "DownBlock2D"),
    ("CrossAttnUpBlockMotion", "CrossAttnUpBlock2D"),
    ("UpBlockMotion", "UpBlock2D"),
];

fn bad<T>(what: String) -> Result<T> {
    Err(Error::Config(format!("unet (UNetMotionModel): {what}")))
}

fn per_block(cfg: &mut Map<String, Value>, key: &str, default: usize) -> Result<PerBlock> {
    match cfg.remove(key) {
        None | Some(Value::Null) => Ok(PerBlock::One(default)),
        Some(v) => serde_json::from_value(v.clone())
            .or_else(|_| bad(format!("{key} {v} is neither an integer nor one per block"))),
    }
}

fn resolve_per_block(v: &PerBlock, n: usize, key: &str) -> Result<Vec<usize>> {
    match v {
        PerBlock::One(x) => Ok(vec![*x; n]),
        PerBlock::Each(xs) if xs.len() == n => Ok(xs.clone()),
        PerBlock::Each(xs) => bad(format!("{key} has {} entries for {n} blocks", xs.len())),
    }
}

fn usize_of(cfg: &mut Map<String, Value>, key: &str, default: usize) -> Result<usize> {
    match cfg.remove(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .map(|x| x as usize)
            .map_or_else(|| bad(format!("{key} {v} is not an integer")), Ok),
    }
}

impl MotionSpec {
    /// Parses and checks `config.json`'s object, naming the first setting this model does not
    /// implement.
    pub fn from_config(config: &Value) -> Result<Self> {
        let Some(obj) = config.as_object() else {
            return bad("config.json is not an object".into());
        };
        let mut cfg = obj.clone();
        match cfg.get("_class_name").and_then(Value::as_str) {
            Some("UNetMotionModel") | None => {}
            Some(other) => return bad(format!("_class_name {other:?} is not UNetMotionModel")),
        }
        let unsupported = [
            "reverse_transformer_layers_per_block",
            "reverse_temporal_transformer_layers_per_block",
            "reverse_motion_num_attention_heads",
            "encoder_hid_dim",
            "encoder_hid_dim_type",
            "time_cond_proj_dim",
            "addition_embed_type",
        ];
        for key in unsupported {
            if cfg.get(key).is_some_and(|v| !v.is_null()) {
                let why = if key == "addition_embed_type" {
                    " (the SDXL motion UNet, AnimateDiff-SDXL, is not implemented)"
                } else {
                    ""
                };
                return bad(format!("{key} is not supported{why}"));
            }
        }
        if cfg.get("layers_per_block").is_some_and(|v| !v.is_u64()) {
            return bad("layers_per_block other than one integer for all blocks".into());
        }
        let max_seq_length = usize_of(&mut cfg, "motion_max_seq_length", 32)?;
        if max_seq_length == 0 {
            return bad("motion_max_seq_length must be at least 1".into());
        }
        let motion_heads = per_block(&mut cfg, "motion_num_attention_heads", 8)?;
        let motion_layers = per_block(&mut cfg, "temporal_transformer_layers_per_block", 1)?;
        let mid_motion_layers = usize_of(&mut cfg, "temporal_transformer_layers_per_mid_block", 1)?;
        let use_motion_mid = match cfg.remove("use_motion_mid_block") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => b,
            Some(v) => return bad(format!("use_motion_mid_block {v} is not a boolean")),
        };
        if usize_of(&mut cfg, "mid_block_layers", 1)? != 1 {
            return bad("mid_block_layers other than 1 is not supported".into());
        }
        let mid_transformer_layers = cfg.remove("transformer_layers_per_mid_block");
        // UNetMotionModel has no attention_head_dim: num_attention_heads (default 8) is the
        // number of heads, and it always embeds timesteps with flip_sin_to_cos and shift 0.
        for ignored in [
            "attention_head_dim",
            "flip_sin_to_cos",
            "freq_shift",
            "mid_block_type",
        ] {
            cfg.remove(ignored);
        }
        if !cfg.contains_key("num_attention_heads") {
            cfg.insert("num_attention_heads".into(), Value::from(8));
        }
        for key in ["down_block_types", "up_block_types"] {
            let Some(Value::Array(types)) = cfg.get_mut(key) else {
                continue;
            };
            for t in types.iter_mut() {
                let name = t.as_str().unwrap_or_default();
                match BLOCK_NAMES.iter().find(|(motion, _)| *motion == name) {
                    Some((_, image)) => *t = Value::from(*image),
                    None => return bad(format!("{key}: block type {t} is not supported")),
                }
            }
        }
        let unet_cfg: UNetConfig = serde_json::from_value(Value::Object(cfg))
            .map_err(|e| Error::Config(format!("unet (UNetMotionModel): {e}")))?;
        let unet = unet_cfg.resolve()?;
        let n = unet.down.len();
        if let Some(v) = mid_transformer_layers.filter(|v| !v.is_null()) {
            let depth = unet.down[n - 1].transformer_layers;
            if v.as_u64() != Some(depth as u64) {
                return bad(format!(
                    "transformer_layers_per_mid_block {v} other than the last block's {depth}"
                ));
            }
        }
        let heads = resolve_per_block(&motion_heads, n, "motion_num_attention_heads")?;
        let layers = resolve_per_block(&motion_layers, n, "temporal_transformer_layers_per_block")?;
        let down: Vec<MotionBlockSpec> = heads
            .iter()
            .zip(&layers)
            .map(|(&heads, &layers)| MotionBlockSpec { heads, layers })
            .collect();
        for (i, (m, b)) in down.iter().zip(&unet.down).enumerate() {
            if m.heads == 0 || !b.out_channels.is_multiple_of(m.heads) {
                return bad(format!(
                    "block {i}: {} channels do not split into {} motion heads",
                    b.out_channels, m.heads
                ));
            }
        }
        let up = down.iter().rev().copied().collect();
        let mid = use_motion_mid.then(|| MotionBlockSpec {
            heads: heads[n - 1],
            layers: mid_motion_layers,
        });
        Ok(Self {
            unet,
            down,
            up,
            mid,
            max_seq_length,
        })
    }
}
