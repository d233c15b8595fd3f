//! Qwen3-VL's `config.json` (dense: `Qwen3VLForConditionalGeneration`), as the hub's files
//! (transformers 4.57: `text_config.rope_scaling` with `mrope_section`, `rope_theta` beside it)
//! and transformers 5 (`text_config.rope_parameters`) write it. The mixture-of-experts variant
//! (`Qwen3VLMoe*`) is refused by name.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::config::TextConfig;
use crate::decode::AttentionVariant;
use crate::qwen2_5_vl::config::{marker_token_ids, mrope_text_config};
use crate::{Error, Result};

/// The vision transformer (`vision_config`).
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// The decoder's width: what the mergers project to.
    pub out_hidden_size: usize,
    /// Learned positions: a square grid of this many, resampled to each image's grid.
    pub num_position_embeddings: usize,
    /// Blocks whose output also goes, through its own merger, into the decoder's first layers.
    pub deepstack_visual_indexes: Vec<usize>,
    pub rope_theta: f64,
}

impl Qwen3VisionConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Side of the learned position grid.
    pub fn position_grid_side(&self) -> usize {
        (self.num_position_embeddings as f64).sqrt().round() as usize
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3VlConfig {
    pub vision: Qwen3VisionConfig,
    pub text: TextConfig,
    /// Qwen3's attention: explicit head size, no q/k/v biases, q/k RMSNorm, interleaved M-RoPE.
    pub attention: AttentionVariant,
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
    in_channels: Option<usize>,
    patch_size: Option<usize>,
    temporal_patch_size: Option<usize>,
    spatial_merge_size: Option<usize>,
    out_hidden_size: Option<usize>,
    num_position_embeddings: Option<usize>,
    deepstack_visual_indexes: Option<Vec<usize>>,
    hidden_act: Option<String>,
    rope_parameters: Option<RawRope>,
}

#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_theta: Option<f64>,
}

/// What Qwen3 adds to the decoder's settings.
#[derive(Debug, Default, Deserialize)]
struct RawQwen3Text {
    head_dim: Option<usize>,
    attention_bias: Option<bool>,
    hidden_act: Option<String>,
    num_experts: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct FamilyFields {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

impl Qwen3VlConfig {
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
        let family: FamilyFields =
            serde_json::from_value(v.clone()).map_err(|e| bad("architectures / model_type", e))?;
        let text_obj = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let raw_text: RawQwen3Text =
            serde_json::from_value(text_obj.clone()).map_err(|e| bad("text_config", e))?;
        // The MoE checkpoints share the vision tower but route each token through experts
        // that this decoder does not have: refused before any other field is read.
        if family
            .architectures
            .iter()
            .any(|a| a.starts_with("Qwen3VLMoe"))
            || family.model_type.as_deref() == Some("qwen3_vl_moe")
            || raw_text.num_experts.as_ref().is_some_and(|n| !n.is_null())
        {
            return Err(Error::Config(
                "a Qwen3-VL mixture-of-experts checkpoint (Qwen3VLMoe*): only the dense \
                 Qwen3VLForConditionalGeneration is supported"
                    .into(),
            ));
        }
        let raw_vision: RawVision = match v.get("vision_config").filter(|x| !x.is_null()) {
            Some(x) => serde_json::from_value(x.clone()).map_err(|e| bad("vision_config", e))?,
            None => return Err(Error::Config("no vision_config".into())),
        };
        for (key, act, want) in [
            ("vision_config", &raw_vision.hidden_act, "gelu_pytorch_tanh"),
            ("text_config", &raw_text.hidden_act, "silu"),
        ] {
            if let Some(a) = act.as_deref().filter(|a| *a != want) {
                return Err(Error::Config(format!(
                    "{key}.hidden_act {a:?}: Qwen3-VL's is {want}"
                )));
            }
        }
        // Defaults: Qwen3-VL-8B-Instruct's.
        let vision = Qwen3VisionConfig {
            depth: raw_vision.depth.unwrap_or(27),
            hidden_size: raw_vision.hidden_size.unwrap_or(1152),
            intermediate_size: raw_vision.intermediate_size.unwrap_or(4304),
            num_heads: raw_vision.num_heads.unwrap_or(16),
            in_channels: raw_vision.in_channels.unwrap_or(3),
            patch_size: raw_vision.patch_size.unwrap_or(16),
            temporal_patch_size: raw_vision.temporal_patch_size.unwrap_or(2),
            spatial_merge_size: raw_vision.spatial_merge_size.unwrap_or(2),
            out_hidden_size: raw_vision.out_hidden_size.unwrap_or(4096),
            num_position_embeddings: raw_vision.num_position_embeddings.unwrap_or(2304),
            deepstack_visual_indexes: raw_vision
                .deepstack_visual_indexes
                .unwrap_or_else(|| vec![8, 16, 24]),
            rope_theta: raw_vision
                .rope_parameters
                .and_then(|r| r.rope_theta)
                .unwrap_or(10000.0),
        };
        let side = vision.position_grid_side();
        let sizes = [
            vision.depth,
            vision.hidden_size,
            vision.num_heads,
            vision.in_channels,
            vision.patch_size,
            vision.temporal_patch_size,
            vision.spatial_merge_size,
            vision.num_position_embeddings,
        ];
        if sizes.contains(&0)
            || !vision.hidden_size.is_multiple_of(vision.num_heads)
            || !vision.head_dim().is_multiple_of(4)
            || side * side != vision.num_position_embeddings
        {
            return Err(Error::Config(format!(
                "vision_config: inconsistent sizes (hidden {} / heads {}, patch {}, merge {}, \
                 {} position embeddings: a square grid)",
                vision.hidden_size,
                vision.num_heads,
                vision.patch_size,
                vision.spatial_merge_size,
                vision.num_position_embeddings
            )));
        }
        if let Some(b) = vision
            .deepstack_visual_indexes
            .iter()
            .find(|&&b| b >= vision.depth)
        {
            return Err(Error::Config(format!(
                "vision_config.deepstack_visual_indexes: {b} is past the {} blocks",
                vision.depth
            )));
        }

        let (text, mrope_section) = mrope_text_config(v)?;
        let head_dim = raw_text.head_dim.unwrap_or(128);
        // transformers 5.24 interleaves Qwen3-VL's M-RoPE whatever `mrope_interleaved` says.
        let attention = AttentionVariant {
            head_dim,
            qkv_bias: raw_text.attention_bias.unwrap_or(false),
            qk_norm: true,
            mrope_section: Some(mrope_section.unwrap_or_else(|| vec![24, 20, 20])),
            mrope_interleaved: true,
        };
        let section = attention.mrope_section.as_deref().unwrap_or_default();
        if head_dim == 0
            || !head_dim.is_multiple_of(2)
            || section.len() != 3
            || section.iter().sum::<usize>() * 2 != head_dim
        {
            return Err(Error::Config(format!(
                "mrope_section {section:?} does not split head_dim {head_dim} / 2 in three"
            )));
        }
        if vision.out_hidden_size != text.hidden_size {
            return Err(Error::Config(format!(
                "vision_config.out_hidden_size {} is not the decoder's hidden_size {}",
                vision.out_hidden_size, text.hidden_size
            )));
        }
        if vision.deepstack_visual_indexes.len() > text.num_hidden_layers {
            return Err(Error::Config(format!(
                "{} deep-stack levels for {} decoder layers",
                vision.deepstack_visual_indexes.len(),
                text.num_hidden_layers
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
            attention,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen/Qwen3-VL-4B-Instruct's config.json (transformers 4.57).
    fn hub_4b() -> Value {
        serde_json::json!({
            "architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "image_token_id": 151655, "video_token_id": 151656,
            "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "tie_word_embeddings": true,
            "text_config": {"attention_bias": false, "attention_dropout": 0.0,
                "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128,
                "hidden_act": "silu", "hidden_size": 2560, "intermediate_size": 9728,
                "max_position_embeddings": 262144, "model_type": "qwen3_vl_text",
                "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
                "rms_norm_eps": 1e-6,
                "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20],
                    "rope_type": "default"},
                "rope_theta": 5000000, "tie_word_embeddings": true, "vocab_size": 151936},
            "vision_config": {"deepstack_visual_indexes": [5, 11, 17], "depth": 24,
                "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1024, "in_channels": 3,
                "intermediate_size": 4096, "model_type": "qwen3_vl", "num_heads": 16,
                "num_position_embeddings": 2304, "out_hidden_size": 2560, "patch_size": 16,
                "spatial_merge_size": 2, "temporal_patch_size": 2}
        })
    }

    #[test]
    fn reads_the_hub_4b_config() {
        let c = Qwen3VlConfig::from_json(&hub_4b()).unwrap();
        assert_eq!(c.attention.head_dim, 128);
        assert_eq!(
            c.text.head_dim(),
            80,
            "hidden / heads differs from head_dim in 4B"
        );
        assert_eq!(
            c.attention.mrope_section.as_deref(),
            Some(&[24, 20, 20][..])
        );
        assert!(c.attention.qk_norm && !c.attention.qkv_bias && c.attention.mrope_interleaved);
        assert_eq!(c.text.rope_theta, 5e6);
        assert!(c.text.tie_word_embeddings);
        assert_eq!(c.vision.deepstack_visual_indexes, [5, 11, 17]);
        assert_eq!(c.vision.position_grid_side(), 48);
        assert_eq!(c.image_token_id, 151655);
    }

    #[test]
    fn refuses_moe_and_inconsistent_configs() {
        let mut moe = hub_4b();
        moe["architectures"] = serde_json::json!(["Qwen3VLMoeForConditionalGeneration"]);
        moe["model_type"] = serde_json::json!("qwen3_vl_moe");
        let err = Qwen3VlConfig::from_json(&moe).unwrap_err().to_string();
        assert!(err.contains("mixture-of-experts"), "{err}");
        let mut experts = hub_4b();
        experts["text_config"]["num_experts"] = serde_json::json!(128);
        assert!(Qwen3VlConfig::from_json(&experts).is_err());

        let mut bad = hub_4b();
        bad["text_config"]["rope_scaling"]["mrope_section"] = serde_json::json!([24, 20, 16]);
        assert!(Qwen3VlConfig::from_json(&bad).is_err());
        let mut bad = hub_4b();
        bad["vision_config"]["deepstack_visual_indexes"] = serde_json::json!([5, 24]);
        assert!(Qwen3VlConfig::from_json(&bad).is_err());
        let mut bad = hub_4b();
        bad["vision_config"]["num_position_embeddings"] = serde_json::json!(2300);
        assert!(Qwen3VlConfig::from_json(&bad).is_err());
    }
}
