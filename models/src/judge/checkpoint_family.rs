//! Which template family a checkpoint takes, from its directory name and its `config.json`,
//! and the checkpoints whose prompts are not supported yet (Edit, Flex), refused by name.
//!
//! The name is the checkpoint's Hugging Face name as a directory (`UnifiedReward-2.0-qwen-7b`);
//! in a Hugging Face cache (`models--CodeGoat24--UnifiedReward-2.0-qwen-7b/snapshots/<hash>`)
//! the nearest folder up the path whose name holds "unifiedreward" is read instead of the hash.
//! The config tells a Qwen-VL checkpoint (`Qwen2_5_VLForConditionalGeneration`,
//! `Qwen3VLForConditionalGeneration`) from a LLaVA-OneVision one whatever the folder is called.

use std::path::{Component, Path};

use serde::Deserialize;

use super::templates::Family;
use crate::{Error, Result};

#[derive(Debug, Default, Deserialize)]
struct ConfigFields {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

/// The model line a config names, when it names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line {
    Llava,
    Qwen25Vl,
    Qwen3Vl,
}

fn line_of(config: &ConfigFields) -> Option<Line> {
    let named = |arch: &str, model_type: &str| {
        config.architectures.iter().any(|a| a == arch)
            || config.model_type.as_deref() == Some(model_type)
    };
    if named("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl") {
        Some(Line::Qwen25Vl)
    } else if named("Qwen3VLForConditionalGeneration", "qwen3_vl")
        || named("Qwen3VLMoeForConditionalGeneration", "qwen3_vl_moe")
    {
        Some(Line::Qwen3Vl)
    } else if config.architectures.iter().any(|a| a.starts_with("Llava"))
        || config
            .model_type
            .as_deref()
            .is_some_and(|t| t.starts_with("llava"))
    {
        Some(Line::Llava)
    } else {
        None
    }
}

/// The checkpoint's name as written: the nearest path component naming a UnifiedReward
/// checkpoint, else the last one.
fn checkpoint_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let names: Vec<String> = dir
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    names
        .iter()
        .rev()
        .find(|n| n.to_ascii_lowercase().contains("unifiedreward"))
        .or(names.last())
        .cloned()
        .unwrap_or_default()
}

/// The words of a name: split at '-', '_', '.', '/' and spaces, lower-cased.
fn words(name: &str) -> Vec<String> {
    name.to_ascii_lowercase()
        .split(['-', '_', '.', '/', ' '])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The family of a checkpoint called `name` whose config names `line`; an error for the Edit
/// and Flex checkpoints.
fn family_of(name: &str, line: Option<Line>) -> std::result::Result<Family, String> {
    let lower = name.to_ascii_lowercase();
    let words = words(name);
    let has = |w: &str| words.iter().any(|x| x == w);
    if has("edit") {
        return Err(format!(
            "{name} is an UnifiedReward-Edit checkpoint (a source image and two edits, JSON \
             answers); its prompts are not supported yet"
        ));
    }
    if has("flex") {
        return Err(format!(
            "{name} is an UnifiedReward-Flex checkpoint (JSON category answers); its prompts \
             are not supported yet"
        ));
    }
    let qwen3 = line == Some(Line::Qwen3Vl) || words.iter().any(|w| w.starts_with("qwen3"));
    let qwen = qwen3
        || line == Some(Line::Qwen25Vl)
        || (line.is_none() && words.iter().any(|w| w.starts_with("qwen")));
    let family = if has("think") {
        if qwen3 {
            Family::ThinkQwen3vl
        } else if qwen {
            Family::ThinkQwen
        } else {
            Family::Think
        }
    } else if lower.contains("2.0") || has("v2") {
        Family::V2
    } else if qwen {
        Family::Qwen
    } else {
        Family::Llava
    };
    Ok(family)
}

/// The template family the checkpoint in `dir` takes: from its name (Think, 2.0) and config
/// (LLaVA-OneVision or Qwen-VL). UnifiedReward-7b-v1.5 gets `llava`, not `llava-acs`: its
/// "Final Score" prompt is the one Flow-GRPO scores with; the ACS prompt is asked for by name.
/// The Edit and Flex checkpoints are refused, naming the checkpoint.
pub fn checkpoint_family(dir: &Path) -> Result<Family> {
    let config_path = dir.join("config.json");
    let config = match std::fs::read_to_string(&config_path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| Error::Json {
            path: config_path.clone(),
            source,
        })?,
        // An ONNX export directory may carry no config.json: the name decides.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ConfigFields::default(),
        Err(e) => return Err(Error::io(&config_path, e)),
    };
    let name = checkpoint_name(dir);
    family_of(&name, line_of(&config))
        .map_err(|msg| Error::Config(format!("{}: {msg}", dir.display())))
}

/// Refuses the Edit and Flex checkpoints even when a family is given by hand: their tasks
/// (a source image and two edits; JSON categories) are not the four this judge knows.
pub fn refuse_unsupported_checkpoint(dir: &Path) -> Result<()> {
    let name = checkpoint_name(dir);
    family_of(&name, None)
        .map(|_| ())
        .map_err(|msg| Error::Config(format!("{}: {msg}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_configs_pick_the_families() {
        let cases = [
            ("UnifiedReward-7b", Some(Line::Llava), Family::Llava),
            ("UnifiedReward-0.5b", None, Family::Llava),
            ("UnifiedReward-7b-v1.5", Some(Line::Llava), Family::Llava),
            ("UnifiedReward-qwen-7b", Some(Line::Qwen25Vl), Family::Qwen),
            ("UnifiedReward-qwen-32b", None, Family::Qwen),
            ("my-judge", Some(Line::Qwen25Vl), Family::Qwen),
            (
                "UnifiedReward-2.0-qwen-7b",
                Some(Line::Qwen25Vl),
                Family::V2,
            ),
            (
                "UnifiedReward-2.0-qwen3vl-8b",
                Some(Line::Qwen3Vl),
                Family::V2,
            ),
            ("UnifiedReward-2.0-qwen35-9b", None, Family::V2),
            ("UnifiedReward-Think-7b", Some(Line::Llava), Family::Think),
            (
                "UnifiedReward-Think-qwen-7b",
                Some(Line::Qwen25Vl),
                Family::ThinkQwen,
            ),
            ("UnifiedReward-Think-qwen3vl-8b", None, Family::ThinkQwen3vl),
            ("think-judge", Some(Line::Qwen3Vl), Family::ThinkQwen3vl),
            // A LLaVA config decides over a name that mentions its Qwen2 language model.
            ("llava-onevision-qwen2-7b", Some(Line::Llava), Family::Llava),
            ("llava_ov_tiny", None, Family::Llava),
        ];
        for (name, line, want) in cases {
            assert_eq!(family_of(name, line), Ok(want), "{name}");
        }
    }

    #[test]
    fn edit_and_flex_checkpoints_are_refused_by_name() {
        for name in [
            "UnifiedReward-Edit-qwen-7b",
            "UnifiedReward-Edit-qwen3vl-8b",
            "UnifiedReward-Flex-qwen3vl-8b",
        ] {
            let err = family_of(name, Some(Line::Qwen3Vl)).unwrap_err();
            assert!(
                err.starts_with(name) && err.contains("not supported yet"),
                "{err}"
            );
        }
        // A word, not a substring: "flexible" and "edited" are names like any other.
        assert_eq!(family_of("flexible-judge", None), Ok(Family::Llava));
    }

    #[test]
    fn the_checkpoint_folder_is_found_in_a_hub_cache_path() -> Result<()> {
        let root = std::env::temp_dir().join(format!("unireward-family-{}", std::process::id()));
        let snapshot = root
            .join("models--CodeGoat24--UnifiedReward-Think-qwen-7b")
            .join("snapshots")
            .join("0123abcd");
        std::fs::create_dir_all(&snapshot).map_err(|e| Error::io(&snapshot, e))?;
        std::fs::write(
            snapshot.join("config.json"),
            r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl"}"#,
        )
        .map_err(|e| Error::io(&snapshot, e))?;
        assert_eq!(checkpoint_family(&snapshot)?, Family::ThinkQwen);
        let edit = root.join("UnifiedReward-Edit-qwen-7b");
        std::fs::create_dir_all(&edit).map_err(|e| Error::io(&edit, e))?;
        let err = checkpoint_family(&edit).unwrap_err().to_string();
        assert!(
            err.contains("UnifiedReward-Edit-qwen-7b") && err.contains("not supported yet"),
            "{err}"
        );
        assert!(refuse_unsupported_checkpoint(&edit).is_err());
        assert!(refuse_unsupported_checkpoint(&snapshot).is_ok());
        std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        Ok(())
    }
}
