//! Qwen2.5-VL's `config.json`, in the layouts transformers has written: the hub's (transformers
//! 4.49, what the Qwen2.5-VL and UnifiedReward-qwen repositories ship: the decoder's settings
//! at the top level, `rope_scaling` with `mrope_section`, `vision_config` with `in_chans`) and
//! transformers 5's (`text_config` with `rope_parameters`, `vision_config` with `in_channels`).

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config::{text_config_from_json, TextConfig};
use crate::{Error, Result};

/// The vision transformer (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen25VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Window side in pixels (112: 4 x 4 merged tokens).
    pub window_size: usize,
    /// The decoder's width: what the merger projects to.
    pub out_hidden_size: usize,
    /// Blocks that attend over a whole frame; the others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
    pub tokens_per_second: f64,
    pub rope_theta: f64,
}

impl Qwen25VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Merged tokens along a window's side.
    pub fn merged_window(&self) -> usize {
        self.window_size / self.spatial_merge_size / self.patch_size
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen25VlConfig {
    pub vision: Qwen25VisionConfig,
    pub text: TextConfig,
    /// `mrope_section`: how the rotary frequencies of a head split between the temporal,
    /// height and width positions.
    pub mrope_section: Vec<usize>,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

#[derive(Debug, Default, Deserialize)]
struct RawVision {
    depth: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_heads: Option<usize>,
    in_chans: Option<usize>,
    in_channels: Option<usize>,
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    window_size: Option<usize>,
    out_hidden_size: Option<usize>,
    fullatt_block_indexes: Option<Vec<usize>>,
    tokens_per_second: Option<f64>,
    hidden_act: Option<String>,
    rope_parameters: Option<RawRope>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
}

impl Qwen25VlConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let bad = |key: &str, e: serde_json::Error| Error::Config(format!("{key}: {e}"));
        let raw_vision: RawVision = match v.get("vision_config").filter(|x| !x.is_null()) {
            Some(x) => serde_json::from_value(x.clone()).map_err(|e| bad("vision_config", e))?,
            None => return Err(Error::Config("no vision_config".into())),
        };
        if let Some(act) = raw_vision.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(Error::Config(format!(
                "vision_config.hidden_act {act:?}: Qwen2.5-VL's vision MLP is silu"
            )));
        }
        let vision = Qwen25VisionConfig {
            depth: raw_vision.depth.unwrap_or(32),
            hidden_size: raw_vision.hidden_size.unwrap_or(1280),
            intermediate_size: raw_vision.intermediate_size.unwrap_or(3420),
            num_heads: raw_vision.num_heads.unwrap_or(16),
            in_channels: raw_vision.in_channels.or(raw_vision.in_chans).unwrap_or(3),
            patch_size: raw_vision.patch_size.unwrap_or(14),
            temporal_patch_size: raw_vision.temporal_patch_size.unwrap_or(2),
            spatial_merge_size: raw_vision.spatial_merge_size.unwrap_or(2),
            window_size: raw_vision.window_size.unwrap_or(112),
            out_hidden_size: raw_vision.out_hidden_size.unwrap_or(3584),
            fullatt_block_indexes: raw_vision
                .fullatt_block_indexes
                .unwrap_or_else(|| vec![7, 15, 23, 31]),
            tokens_per_second: raw_vision.tokens_per_second.unwrap_or(2.0),
            rope_theta: raw_vision
                .rope_parameters
                .and_then(|r| r.rope_theta)
                .unwrap_or(10000.0),
        };
        let sizes = [
            vision.depth,
            vision.hidden_size,
            vision.num_heads,
            vision.in_channels,
            vision.patch_size,
            vision.temporal_patch_size,
            vision.spatial_merge_size,
        ];
        if sizes.contains(&0)
            || !vision.hidden_size.is_multiple_of(vision.num_heads)
            || !vision.head_dim().is_multiple_of(4)
            || vision.merged_window() == 0
        {
            return Err(Error::Config(format!(
                "vision_config: inconsistent sizes (hidden {} / heads {}, patch {}, merge {}, \
                 window {})",
                vision.hidden_size,
                vision.num_heads,
                vision.patch_size,
                vision.spatial_merge_size,
                vision.window_size
            )));
        }
        if let Some(b) = vision
            .fullatt_block_indexes
            .iter()
            .find(|&&b| b >= vision.depth)
        {
            return Err(Error::Config(format!(
                "vision_config.fullatt_block_indexes: {b} is past the {} blocks",
                vision.depth
            )));
        }

        let (text, mrope_section) = mrope_text_config(v)?;
        let mrope_section = mrope_section.unwrap_or_else(|| vec![16, 24, 24]);
        if mrope_section.len() != 3 || mrope_section.iter().sum::<usize>() * 2 != text.head_dim() {
            return Err(Error::Config(format!(
                "mrope_section {mrope_section:?} does not split head_dim {} / 2 in three",
                text.head_dim()
            )));
        }
        if vision.out_hidden_size != text.hidden_size {
            return Err(Error::Config(format!(
                "vision_config.out_hidden_size {} is not the decoder's hidden_size {}",
                vision.out_hidden_size, text.hidden_size
            )));
        }
        let [image_token_id, video_token_id, vision_start_token_id, vision_end_token_id] =
            marker_token_ids(v, text.vocab_size)?;
        Ok(Self {
            image_token_id,
            video_token_id,
            vision_start_token_id,
            vision_end_token_id,
            vision,
            text,
            mrope_section,
        })
    }
}

/// The ids of a Qwen-VL `config.json`'s media markers — `image_token_id`, `video_token_id`,
/// `vision_start_token_id`, `vision_end_token_id` — each Qwen2.5's where the file has none.
pub(crate) fn marker_token_ids(v: &Value, vocab_size: usize) -> Result<[u32; 4]> {
    let id = |key: &str, default: u32| -> Result<u32> {
        match v.get(key).filter(|x| !x.is_null()) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|&n| (n as usize) < vocab_size)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "{key}: {x} is not a token id under vocab_size {vocab_size}"
                    ))
                }),
        }
    };
    Ok([
        id("image_token_id", 151655)?,
        id("video_token_id", 151656)?,
        id("vision_start_token_id", 151652)?,
        id("vision_end_token_id", 151653)?,
    ])
}

/// The decoder's settings of a Qwen-VL `config.json` (Qwen2.5-VL's, Qwen3-VL's) and its
/// `mrope_section`, wherever the file's transformers version put them.
pub(crate) fn mrope_text_config(v: &Value) -> Result<(TextConfig, Option<Vec<usize>>)> {
    let bad = |key: &str, e: serde_json::Error| Error::Config(format!("{key}: {e}"));
    // transformers 5 nests the decoder's settings in `text_config`; the hub's files have
    // them at the top level. The rotary kind is M-RoPE in both, spelt `"type": "mrope"`
    // by the oldest files, `"default"` with an `mrope_section` since.
    let text_obj = v
        .get("text_config")
        .filter(|t| t.is_object())
        .unwrap_or(v)
        .clone();
    let mut text_obj = text_obj;
    let mut mrope_section = None;
    for key in ["rope_scaling", "rope_parameters"] {
        let Some(rope) = text_obj.get_mut(key).and_then(Value::as_object_mut) else {
            continue;
        };
        if let Some(s) = rope.remove("mrope_section") {
            let s: Vec<usize> =
                serde_json::from_value(s).map_err(|e| bad(&format!("{key}.mrope_section"), e))?;
            mrope_section = Some(s);
        }
        for kind in ["type", "rope_type"] {
            if rope.get(kind).and_then(Value::as_str) == Some("mrope") {
                rope.insert(kind.into(), Value::from("default"));
            }
        }
    }
    // Settings the hub's files keep at the top level even beside a `text_config`.
    if let (Some(t), Some(top)) = (text_obj.as_object_mut(), v.as_object()) {
        for key in ["tie_word_embeddings", "eos_token_id"] {
            if !t.contains_key(key) {
                if let Some(x) = top.get(key) {
                    t.insert(key.into(), x.clone());
                }
            }
        }
    }
    let text = text_config_from_json(&text_obj, "text_config.")?;
    Ok((text, mrope_section))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_hub_and_the_transformers_5_layouts() {
        let hub = serde_json::json!({
            "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "hidden_size": 2048, "intermediate_size": 11008, "num_attention_heads": 16,
            "num_hidden_layers": 36, "num_key_value_heads": 2, "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0, "vocab_size": 151936, "tie_word_embeddings": true,
            "rope_scaling": {"mrope_section": [16, 24, 24], "rope_type": "default", "type": "default"},
            "image_token_id": 151655, "video_token_id": 151656,
            "vision_config": {"depth": 32, "hidden_act": "silu", "hidden_size": 1280,
                "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048,
                "patch_size": 14, "spatial_merge_size": 2, "window_size": 112,
                "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                "temporal_patch_size": 2}
        });
        let c = Qwen25VlConfig::from_json(&hub).unwrap();
        assert_eq!(c.mrope_section, [16, 24, 24]);
        assert_eq!(c.text.head_dim(), 128);
        assert!(c.text.tie_word_embeddings);
        assert_eq!(c.vision.merged_window(), 4);
        assert_eq!(c.vision.fullatt_block_indexes, [7, 15, 23, 31]);

        let v5 = serde_json::json!({
            "model_type": "qwen2_5_vl", "tie_word_embeddings": false,
            "text_config": {"hidden_size": 3584, "num_attention_heads": 28,
                "num_key_value_heads": 4, "num_hidden_layers": 28, "vocab_size": 152064,
                "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24],
                    "rope_theta": 1000000.0}},
            "vision_config": {"out_hidden_size": 3584, "in_channels": 3}
        });
        let c = Qwen25VlConfig::from_json(&v5).unwrap();
        assert_eq!(c.text.rope_theta, 1e6);
        assert!(!c.text.tie_word_embeddings);
        assert_eq!(c.image_token_id, 151655);

        let mut old = hub.clone();
        old["rope_scaling"] = serde_json::json!({"type": "mrope", "mrope_section": [16, 24, 24]});
        assert!(Qwen25VlConfig::from_json(&old).is_ok());
        let mut bad = hub;
        bad["rope_scaling"]["mrope_section"] = serde_json::json!([16, 24, 20]);
        assert!(Qwen25VlConfig::from_json(&bad).is_err());
    }
}
