//! Which family a checkpoint is, read from the two fields every Hugging Face and LLaVA-NeXT
//! config carries (`architectures`, `model_type`) before the family's own config parser runs:
//! a Qwen2.5-VL config also has a `vision_config`, and parsed as LLaVA it would fail on some
//! unrelated field instead of saying what it is.

use std::path::Path;

use serde::Deserialize;

use super::kind::ModelFamily;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct FamilyFields {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

/// A family that is known but not implemented: which checkpoints are in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsupportedFamily {
    pub name: &'static str,
    pub checkpoints: &'static str,
    /// How far its support goes, when it has begun ("" otherwise).
    pub status: &'static str,
}

/// Families implemented besides LLaVA-OneVision: (architecture, model_type, family).
const KNOWN: &[(&str, &str, ModelFamily)] = &[
    (
        "Qwen2_5_VLForConditionalGeneration",
        "qwen2_5_vl",
        ModelFamily::Qwen25Vl,
    ),
    (
        "Qwen3VLForConditionalGeneration",
        "qwen3_vl",
        ModelFamily::Qwen3Vl,
    ),
];

const UNSUPPORTED: &[(&str, &str, UnsupportedFamily)] = &[(
    "Qwen3VLMoeForConditionalGeneration",
    "qwen3_vl_moe",
    UnsupportedFamily {
        name: "Qwen3-VL mixture-of-experts",
        checkpoints: "Qwen3-VL MoE judges",
        status: "",
    },
)];

impl ModelFamily {
    /// The family of the checkpoint in `dir`, from its `config.json`; a known family that is
    /// not implemented yet is refused by name, before any weight is read.
    pub fn of_dir(dir: &Path) -> Result<Self> {
        family_of_config(&dir.join("config.json"))
    }
}

fn family_of_config(path: &Path) -> Result<ModelFamily> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let fields: FamilyFields = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    family_of(&fields).map_err(|msg| Error::Config(format!("{}: {msg}", path.display())))
}

fn family_of(fields: &FamilyFields) -> std::result::Result<ModelFamily, String> {
    for (arch, model_type, family) in KNOWN {
        if fields.architectures.iter().any(|a| a == arch)
            || fields.model_type.as_deref() == Some(model_type)
        {
            return Ok(*family);
        }
    }
    for (arch, model_type, family) in UNSUPPORTED {
        if fields.architectures.iter().any(|a| a == arch)
            || fields.model_type.as_deref() == Some(model_type)
        {
            return Err(format!(
                "{} checkpoints ({}) are not supported yet{}; unireward runs LLaVA-OneVision \
                 judges (UnifiedReward-7b, -7b-v1.5, -0.5b)",
                family.name, family.checkpoints, family.status
            ));
        }
    }
    // Everything else is handed to the LLaVA parser, whose errors name what it lacks: the
    // LLaVA-NeXT configs of UnifiedReward carry no usable model_type, and test checkpoints
    // may carry no architectures at all.
    Ok(ModelFamily::LlavaOnevision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> FamilyFields {
        serde_json::from_str(json).expect("test json")
    }

    #[test]
    fn llava_layouts_are_llava_onevision() {
        for json in [
            r#"{"architectures": ["LlavaOnevisionForConditionalGeneration"], "model_type": "llava_onevision"}"#,
            r#"{"architectures": ["LlavaQwenForCausalLM"], "model_type": "llava"}"#,
            r#"{"vision_config": {}}"#,
        ] {
            assert_eq!(
                family_of(&fields(json)),
                Ok(ModelFamily::LlavaOnevision),
                "{json}"
            );
        }
    }

    #[test]
    fn qwen_vl_families_are_detected_and_qwen3_vl_moe_refused_by_name() {
        for json in [
            r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl", "vision_config": {}}"#,
            r#"{"model_type": "qwen2_5_vl"}"#,
            r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"]}"#,
        ] {
            assert_eq!(
                family_of(&fields(json)),
                Ok(ModelFamily::Qwen25Vl),
                "{json}"
            );
        }
        for json in [
            r#"{"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl"}"#,
            r#"{"model_type": "qwen3_vl"}"#,
        ] {
            assert_eq!(family_of(&fields(json)), Ok(ModelFamily::Qwen3Vl), "{json}");
        }
        let err = family_of(&fields(
            r#"{"architectures": ["Qwen3VLMoeForConditionalGeneration"], "model_type": "qwen3_vl_moe"}"#,
        ))
        .unwrap_err();
        assert!(
            err.starts_with("Qwen3-VL mixture-of-experts checkpoints"),
            "{err}"
        );
    }
}
