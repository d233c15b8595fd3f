//! Reading an export directory through its contract
//! ([`unireward_models::formats::export_manifest`]) and checking it before any session
//! opens: the manifest's format, every file's recorded size, the model dimensions against
//! `config.json`, the graphs' input and output names, the KV cache, and the embeddings.

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use unireward_models::config::LlavaConfig;
use unireward_models::family::ModelFamily;
use unireward_models::formats::export_manifest::{
    self as contract, Embeddings, ExportFamily, Manifest, FILE_NAME, FORMAT_VERSION,
    FORMAT_VERSION_NO_CACHE,
};
use unireward_models::qwen_vl::QwenVlConfig;

use super::kv::KvLayout;
use crate::error::{EngineError, Result};

/// What the engine needs of an export directory, checked.
pub(super) struct ExportDir {
    /// `config.json`, its vision tower the one the graphs were built for.
    pub cfg: LlavaConfig,
    /// `fp32` or `fp16`.
    pub dtype: String,
    pub vision_file: PathBuf,
    pub decoder_file: PathBuf,
    pub vision_input: String,
    pub vision_output: String,
    pub features_per_tile: usize,
    /// The decoder's cache, `None` for a format-1 export.
    pub kv: Option<KvLayout>,
    /// [vocab, hidden] in the export's precision (f32 or f16).
    pub embed_tokens: Tensor,
    pub newline: Tensor,
}

impl ExportDir {
    pub fn read(dir: &Path) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        check_file_sizes(dir, &manifest)?;
        if manifest.family != ExportFamily::LlavaOnevision {
            return Err(invalid(
                dir,
                format!("a {:?} export, not a LLaVA-OneVision one", manifest.family),
            ));
        }
        let mut cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        let essentials = manifest
            .config
            .as_ref()
            .ok_or_else(|| invalid(dir, "the manifest has no model dimensions (config)"))?;
        if essentials.text.vocab_size != cfg.text.vocab_size
            || essentials.text.hidden_size != cfg.text.hidden_size
        {
            return Err(invalid(
                dir,
                format!(
                    "the graphs were built for vocab {} / hidden {}, config.json says {} / {}",
                    essentials.text.vocab_size,
                    essentials.text.hidden_size,
                    cfg.text.vocab_size,
                    cfg.text.hidden_size
                ),
            ));
        }
        // The tower the graphs were built for (a LLaVA-NeXT config.json only names it).
        cfg.vision = essentials.vision.to_config();

        let vision_entry = &manifest.graphs.vision;
        let (vision_input, vision_output) =
            match (&vision_entry.inputs[..], &vision_entry.outputs[..]) {
                ([i], [o]) => (i.name.clone(), o.name.clone()),
                _ => {
                    return Err(invalid(
                        dir,
                        "the vision graph must have one input and one output",
                    ))
                }
            };
        let kv = kv_layout(dir, &manifest)?;
        if kv.is_none() {
            tracing::warn!(
                "{}: a format-{FORMAT_VERSION_NO_CACHE} export without a KV cache: every \
                 continuation and generated token recomputes the prompt (export the model again \
                 for the cached decoder)",
                dir.display()
            );
        }
        let decoder_entry = &manifest.graphs.decoder;
        let kv_layers = kv.map(|kv| kv.num_layers);
        let want_inputs = contract::decoder_input_names(kv_layers, 0);
        let want_outputs = contract::decoder_output_names(kv_layers);
        if decoder_entry.input_names() != want_inputs
            || decoder_entry.output_names() != want_outputs
        {
            return Err(invalid(
                dir,
                format!(
                    "the decoder graph must take {want_inputs:?} and give {want_outputs:?}, the \
                     manifest lists {:?} → {:?}",
                    decoder_entry.input_names(),
                    decoder_entry.output_names()
                ),
            ));
        }

        let (embed_tokens, newline) = read_embeddings(dir, &manifest.embeddings)?;
        let hidden = cfg.text.hidden_size;
        if embed_tokens.dims() != [cfg.text.vocab_size, hidden] || newline.dims() != [hidden] {
            return Err(invalid(
                dir,
                format!(
                    "embeddings of shape {:?} and newline {:?} do not fit vocab {} / hidden {hidden}",
                    embed_tokens.dims(),
                    newline.dims(),
                    cfg.text.vocab_size
                ),
            ));
        }
        Ok(Self {
            cfg,
            vision_file: dir.join(&vision_entry.file),
            decoder_file: dir.join(&decoder_entry.file),
            dtype: manifest.dtype,
            vision_input,
            vision_output,
            features_per_tile: essentials.features_per_tile,
            kv,
            embed_tokens,
            newline,
        })
    }
}

/// What the engine needs of a Qwen-VL export directory, checked.
pub(super) struct QwenExportDir {
    /// `config.json`.
    pub cfg: QwenVlConfig,
    pub family: ExportFamily,
    pub dtype: String,
    pub vision_file: PathBuf,
    pub decoder_file: PathBuf,
    pub deepstack: usize,
    pub kv: KvLayout,
    /// [vocab, hidden] in the export's precision (f32 or f16).
    pub embed_tokens: Tensor,
}

impl QwenExportDir {
    pub fn read(dir: &Path) -> Result<Self> {
        let manifest = read_manifest(dir)?;
        check_file_sizes(dir, &manifest)?;
        let cfg = QwenVlConfig::load(dir)?;
        let family = manifest.family;
        let wanted = match cfg.family() {
            ModelFamily::Qwen25Vl => ExportFamily::Qwen25Vl,
            _ => ExportFamily::Qwen3Vl,
        };
        if family != wanted {
            return Err(invalid(
                dir,
                format!(
                    "the manifest says a {family:?} export, config.json a {} checkpoint",
                    cfg.family().name()
                ),
            ));
        }
        let kv = kv_layout(dir, &manifest)?
            .ok_or_else(|| invalid(dir, "a Qwen-VL export without its KV cache"))?;
        let text = cfg.text();
        if kv.num_layers != text.num_hidden_layers || kv.kv_heads != text.num_key_value_heads {
            return Err(invalid(
                dir,
                format!(
                    "a cache of {} layers x {} heads, config.json says {} x {}",
                    kv.num_layers, kv.kv_heads, text.num_hidden_layers, text.num_key_value_heads
                ),
            ));
        }
        let deepstack = manifest.deepstack_levels;
        let check = |what: &str, entry: &contract::GraphEntry, inputs: Vec<String>, outputs| {
            if entry.input_names() != inputs || entry.output_names() != outputs {
                return Err(invalid(
                    dir,
                    format!(
                        "the {what} graph must take {inputs:?} and give {outputs:?}, the \
                         manifest lists {:?} → {:?}",
                        entry.input_names(),
                        entry.output_names()
                    ),
                ));
            }
            Ok(())
        };
        check(
            "vision",
            &manifest.graphs.vision,
            family
                .vision_input_names()
                .into_iter()
                .map(String::from)
                .collect(),
            family.vision_output_names(deepstack),
        )?;
        let layers = Some(kv.num_layers);
        check(
            "decoder",
            &manifest.graphs.decoder,
            contract::decoder_input_names(layers, deepstack),
            contract::decoder_output_names(layers),
        )?;
        let embed_tokens = read_table(dir, &manifest.embeddings)?;
        if embed_tokens.dims() != [text.vocab_size, text.hidden_size] {
            return Err(invalid(
                dir,
                format!(
                    "embeddings of shape {:?} do not fit vocab {} / hidden {}",
                    embed_tokens.dims(),
                    text.vocab_size,
                    text.hidden_size
                ),
            ));
        }
        Ok(Self {
            vision_file: dir.join(&manifest.graphs.vision.file),
            decoder_file: dir.join(&manifest.graphs.decoder.file),
            cfg,
            family,
            dtype: manifest.dtype,
            deepstack,
            kv,
            embed_tokens,
        })
    }
}

/// The cache an export declares, checked against its manifest format.
fn kv_layout(dir: &Path, manifest: &Manifest) -> Result<Option<KvLayout>> {
    match (manifest.format_version, &manifest.kv_cache) {
        (FORMAT_VERSION_NO_CACHE, _) => Ok(None),
        (_, Some(c)) => {
            let half = match c.dtype.as_str() {
                "float32" => false,
                "float16" => true,
                other => {
                    return Err(invalid(
                        dir,
                        format!("a KV cache of {other}; the engine feeds float32 or float16"),
                    ))
                }
            };
            Ok(Some(KvLayout {
                num_layers: c.num_layers,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                half,
            }))
        }
        (v, None) => Err(invalid(
            dir,
            format!("a format-{v} manifest without its kv_cache entry"),
        )),
    }
}

fn invalid(dir: &Path, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("export {}: {msg}", dir.display()))
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(FILE_NAME);
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let probe: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
    let version = probe.get("format_version").and_then(|v| v.as_u64());
    let readable = u64::from(FORMAT_VERSION_NO_CACHE)..=u64::from(FORMAT_VERSION);
    if !version.is_some_and(|v| readable.contains(&v)) {
        return Err(EngineError::Invalid(format!(
            "{}: manifest format {version:?}, this engine reads formats \
             {FORMAT_VERSION_NO_CACHE} to {FORMAT_VERSION}: export the model again with this \
             version's `unireward-export onnx`",
            path.display()
        )));
    }
    serde_json::from_value(probe)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))
}
/// Refuses an export whose files are not those its manifest was written with (what an
/// export interrupted while overwriting another leaves): every file the manifest records
/// must have the recorded size, and the graphs, their data and the embeddings must be among
/// them.
fn check_file_sizes(dir: &Path, manifest: &Manifest) -> Result<()> {
    let Some(sizes) = &manifest.file_sizes else {
        tracing::warn!(
            "{}: the manifest records no file sizes (an older exporter): the files are not \
             checked against it; export the model again to have them checked",
            dir.display()
        );
        return Ok(());
    };
    let g = &manifest.graphs;
    let named = [
        Some(&g.vision.file),
        g.vision.data.as_ref(),
        Some(&g.decoder.file),
        g.decoder.data.as_ref(),
        Some(&manifest.embeddings.file),
    ];
    if let Some(missing) = named
        .into_iter()
        .flatten()
        .find(|f| !sizes.contains_key(*f))
    {
        return Err(invalid(
            dir,
            format!("{FILE_NAME} names {missing} but records no size for it"),
        ));
    }
    for (name, &want) in sizes {
        let plain = Path::new(name)
            .file_name()
            .is_some_and(|n| n == name.as_str());
        if !plain {
            return Err(invalid(
                dir,
                format!("{FILE_NAME} records {name:?}, which is not a file name"),
            ));
        }
        let path = dir.join(name);
        let got = std::fs::metadata(&path)
            .map_err(|e| {
                invalid(
                    dir,
                    format!("{name} (recorded in {FILE_NAME}) cannot be read: {e}"),
                )
            })?
            .len();
        if got != want {
            return Err(invalid(
                dir,
                format!(
                    "{name} is {got} bytes but {FILE_NAME} records {want}: the files are \
                     not those of this export (an interrupted or mixed export); export the \
                     model again"
                ),
            ));
        }
    }
    Ok(())
}

/// The embeddings file, mapped.
fn map_embeddings(dir: &Path, entry: &Embeddings) -> Result<MmapedSafetensors> {
    let path = dir.join(&entry.file);
    if !path.is_file() {
        return Err(invalid(dir, format!("{} is missing", entry.file)));
    }
    // SAFETY: mapped read-only; only its tensors are copied out, and the map is dropped
    // before the caller returns. As with checkpoints, the file must not be truncated meanwhile.
    unsafe { MmapedSafetensors::new(&path) }
        .map_err(|e| invalid(dir, format!("{}: {e}", entry.file)))
}

/// The token embedding table.
fn read_table(dir: &Path, entry: &Embeddings) -> Result<Tensor> {
    map_embeddings(dir, entry)?
        .load(&entry.embed_tokens, &Device::Cpu)
        .map_err(|e| invalid(dir, format!("{}: {}: {e}", entry.file, entry.embed_tokens)))
}

/// The token embedding table and LLaVA's `image_newline`.
fn read_embeddings(dir: &Path, entry: &Embeddings) -> Result<(Tensor, Tensor)> {
    let st = map_embeddings(dir, entry)?;
    let table = st
        .load(&entry.embed_tokens, &Device::Cpu)
        .map_err(|e| invalid(dir, format!("{}: {}: {e}", entry.file, entry.embed_tokens)))?;
    let name = entry
        .image_newline
        .as_deref()
        .ok_or_else(|| invalid(dir, "the manifest names no image_newline"))?;
    let newline = st
        .load(name, &Device::Cpu)
        .map_err(|e| invalid(dir, format!("{}: {name}: {e}", entry.file)))?
        .to_dtype(DType::F32)?;
    Ok((table, newline))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_of_another_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        for v in [0, 3] {
            std::fs::write(
                dir.path().join(FILE_NAME),
                format!(r#"{{"format_version": {v}}}"#),
            )
            .unwrap();
            let err = read_manifest(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("format Some({v})")) && err.contains("export onnx"),
                "{err}"
            );
        }

        std::fs::write(dir.path().join(FILE_NAME), r#"{"format_version": 1}"#).unwrap();
        let err = read_manifest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
    }

    /// The parts of a manifest `kv_layout` reads, at `version` with `kv_cache`.
    fn manifest(version: u32, kv_cache: &str) -> Manifest {
        let io = r#"{"file": "g.onnx", "inputs": [], "outputs": []}"#;
        let text = format!(
            r#"{{"format_version": {version}, "dtype": "fp16",
                "graphs": {{"vision": {io}, "decoder": {io}}},
                "embeddings": {{"file": "e", "embed_tokens": "t", "image_newline": "n"}},
                "config": {{"vision": {{"hidden_size": 1, "intermediate_size": 1,
                    "num_hidden_layers": 1, "num_attention_heads": 1, "num_channels": 3,
                    "image_size": 1, "patch_size": 1, "layer_norm_eps": 1e-6}},
                    "text": {{"vocab_size": 1, "hidden_size": 1}}, "features_per_tile": 1}}
                {kv_cache}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn format_1_has_no_cache_and_format_2_needs_one() {
        let dir = Path::new("export");
        assert_eq!(kv_layout(dir, &manifest(1, "")).unwrap(), None);
        let kv = r#", "kv_cache": {"num_layers": 2, "num_key_value_heads": 2, "head_dim": 8,
            "dtype": "float16"}"#;
        let layout = kv_layout(dir, &manifest(2, kv)).unwrap().unwrap();
        assert_eq!(
            layout,
            KvLayout {
                num_layers: 2,
                kv_heads: 2,
                head_dim: 8,
                half: true
            }
        );
        assert_eq!(
            layout.past_names()[..3],
            [
                "past_key_values.0.key",
                "past_key_values.0.value",
                "past_key_values.1.key"
            ]
        );
        let err = kv_layout(dir, &manifest(2, "")).unwrap_err().to_string();
        assert!(err.contains("kv_cache"), "{err}");
        let bf16 = kv.replace("float16", "bfloat16");
        assert!(kv_layout(dir, &manifest(2, &bf16)).is_err());
    }

    #[test]
    fn files_must_have_the_sizes_the_manifest_records() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.onnx"), b"abc").unwrap();
        std::fs::write(dir.path().join("e"), b"x").unwrap();
        let sizes = |g: u64| format!(r#", "file_sizes": {{"g.onnx": {g}, "e": 1}}"#);
        check_file_sizes(dir.path(), &manifest(2, &sizes(3))).unwrap();

        let err = check_file_sizes(dir.path(), &manifest(2, &sizes(4)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.onnx is 3 bytes but manifest.json records 4"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("e")).unwrap();
        let err = check_file_sizes(dir.path(), &manifest(2, &sizes(3)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("e (recorded in manifest.json)"), "{err}");

        // Every file the manifest names needs a recorded size.
        let partial = r#", "file_sizes": {"g.onnx": 3}"#;
        let err = check_file_sizes(dir.path(), &manifest(2, partial))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names e but records no size"), "{err}");
        let outside = r#", "file_sizes": {"g.onnx": 3, "e": 1, "../x": 1}"#;
        let err = check_file_sizes(dir.path(), &manifest(2, outside))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a file name"), "{err}");
        // Exports from before the sizes were recorded still open.
        check_file_sizes(dir.path(), &manifest(2, "")).unwrap();
    }
}
