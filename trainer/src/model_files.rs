//! The files of a model or checkpoint directory: their names, and which of a source model's
//! files are copied beside written weights.

use std::path::Path;

use crate::{Error, Result};

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const STATE_FILE: &str = "trainer_state.json";
/// An adapter in PEFT's layout (see [`crate::lora`]).
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Whether a file of the source directory goes beside the written weights: not weights
/// (replaced by the one written), and not what a training run leaves in its output
/// (metrics, caches, loop state, temporaries), since a run may start from another's output;
/// nor an adapter's configuration, which would make the directory read as an adapter.
fn is_copied(name: &str) -> bool {
    let weights = [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".gguf",
        ".index.json",
    ]
    .iter()
    .any(|ext| name.ends_with(ext));
    let run_output = name.ends_with(".jsonl")
        || name.ends_with(".tmp")
        || name == STATE_FILE
        || name == ADAPTER_CONFIG_FILE;
    !(weights || run_output || name.starts_with('.'))
}

/// Copies the non-weight files of `source_dir` (config, tokenizer, processor, chat
/// template) into `dir` (created).
pub fn copy_model_files(source_dir: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let entries = std::fs::read_dir(source_dir).map_err(|e| Error::io(source_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(source_dir, e))?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if !is_file || !is_copied(name_str) {
            continue;
        }
        let to = dir.join(&name);
        std::fs::copy(entry.path(), &to).map_err(|e| Error::io(&to, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_copied_weights_and_run_outputs_are_not() {
        for name in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "processor_config.json",
            "chat_template.jinja",
            "generation_config.json",
        ] {
            assert!(is_copied(name), "{name}");
        }
        for name in [
            "model.safetensors",
            "model-00001-of-00004.safetensors",
            "model.safetensors.index.json",
            "pytorch_model.bin",
            "metrics.jsonl",
            "ref_logps.jsonl",
            "trainer_state.json",
            "optimizer.safetensors",
            ".final.tmp",
            "adapter_config.json",
            "adapter_model.safetensors",
        ] {
            assert!(!is_copied(name), "{name}");
        }
    }
}
