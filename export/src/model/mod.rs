//! The reward model as ONNX: one emitter per candle block (`siglip`, `projector`, `qwen2`),
//! each mirroring that block's `forward` operation for operation with the checkpoint's keys as
//! initializer names; `graphs` assembles them into `vision.onnx` and `decoder.onnx`, and
//! [`export_onnx`] writes a whole export directory (graphs, embeddings, tokenizer and
//! configuration files, manifest).

pub mod embeddings;
pub mod graphs;
pub mod layers;
pub mod manifest;
pub mod projector;
pub mod qwen2;
pub mod siglip;
pub mod staging;
pub mod weights;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unireward_models::checkpoint::{open_model_dir, Checkpoint, KeyLayout};
use unireward_models::config::LlavaConfig;
use unireward_models::family::ModelFamily;

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::graph::{SavedModel, DEFAULT_OPSET, MIN_OPSET};
use crate::precision::Precision;
use crate::proto::IR_VERSION;

pub use layers::Emitter;
pub use manifest::Manifest;
pub use staging::Staging;
pub use weights::Weights;

/// The highest opset the written IR version ([`IR_VERSION`] 9) may carry: opset 21 came with
/// IR 10.
pub const MAX_OPSET: i64 = 20;

/// Files copied from the checkpoint when present; the first two are required (the engine
/// reads its configuration and tokenizer from the export directory).
pub const COPIED_FILES: [&str; 10] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
];
const REQUIRED_FILES: usize = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportOptions {
    pub precision: Precision,
    pub opset: i64,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            precision: Precision::F32,
            opset: DEFAULT_OPSET,
        }
    }
}

/// What [`export_onnx`] wrote.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out_dir: PathBuf,
    pub vision: SavedModel,
    pub decoder: SavedModel,
    pub embeddings: PathBuf,
    pub manifest: Manifest,
    /// Wall time of each stage, in order.
    pub timings: Vec<(&'static str, Duration)>,
}

impl ExportReport {
    /// Every file written or copied, with its size in bytes.
    pub fn files(&self) -> Result<Vec<(PathBuf, u64)>> {
        let mut paths = vec![self.vision.model.clone()];
        paths.extend(self.vision.data.clone());
        paths.push(self.decoder.model.clone());
        paths.extend(self.decoder.data.clone());
        paths.push(self.embeddings.clone());
        paths.extend(self.manifest.files.iter().map(|f| self.out_dir.join(f)));
        paths.push(self.out_dir.join(manifest::FILE_NAME));
        paths
            .into_iter()
            .map(|p| {
                let len = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?.len();
                Ok((p, len))
            })
            .collect()
    }
}

/// The configuration, memory-mapped checkpoint and key layout of `model_dir`, as
/// `LlavaOnevision::load` opens them (the configuration fixed up for LLaVA-NeXT and its
/// sizes checked against the stored shapes).
/// The exporter's graphs are LLaVA-OneVision's: a checkpoint of another family is refused by
/// name before any weight is read.
pub fn open_source(model_dir: &Path) -> Result<(LlavaConfig, Checkpoint, KeyLayout)> {
    let family = ModelFamily::of_dir(model_dir)?;
    if let Some(why) = family.not_runnable_by("the exporter") {
        return Err(unireward_models::Error::Config(format!(
            "{}: {why}",
            model_dir.join("config.json").display()
        ))
        .into());
    }
    Ok(open_model_dir(model_dir)?)
}

/// Exports the checkpoint in `model_dir` to `out_dir` (created if needed): `vision.onnx`,
/// `decoder.onnx` with their `.onnx.data`, `embeddings.safetensors`, the tokenizer and
/// configuration files, and `manifest.json` with every file's size. Everything is written
/// into a staging directory first and moved into place only when complete, the manifest
/// last ([`staging`]): a failed or killed export leaves the earlier export of `out_dir` as
/// it was, or no manifest. Weights are streamed from the memory-mapped checkpoint one
/// tensor at a time.
pub fn export_onnx(model_dir: &Path, out_dir: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    if !(MIN_OPSET..=MAX_OPSET).contains(&opts.opset) {
        return Err(Error::Unsupported(format!(
            "opset {} is outside {MIN_OPSET}..={MAX_OPSET} (the graphs declare IR version \
             {IR_VERSION})",
            opts.opset
        )));
    }
    if !model_dir.is_dir() {
        return Err(Error::Unsupported(format!(
            "the checkpoint directory {} does not exist",
            model_dir.display()
        )));
    }
    for name in &COPIED_FILES[..REQUIRED_FILES] {
        let p = model_dir.join(name);
        if !p.is_file() {
            return Err(Error::Unsupported(format!(
                "{} is missing (the export copies it for the engine)",
                p.display()
            )));
        }
    }
    // Before anything is written: a config that does not fit the weights stops here.
    let (cfg, ckpt, layout) = open_source(model_dir)?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(model_dir, out_dir) {
        return Err(Error::Unsupported(format!(
            "the export directory {} is the checkpoint directory",
            out_dir.display()
        )));
    }

    let staging = Staging::begin(out_dir)?;
    let stage = staging.dir();
    let weights = Weights::from_checkpoint(&ckpt, &layout);
    let precision = opts.precision;
    let mut timings = Vec::new();

    let start = Instant::now();
    let vision = graphs::vision_graph(stage, &weights, &cfg, &layout, precision, opts.opset)?;
    timings.push(("vision graph", start.elapsed()));

    let start = Instant::now();
    let decoder = graphs::decoder_graph(stage, &weights, &cfg, &layout, precision, opts.opset)?;
    timings.push(("decoder graph", start.elapsed()));

    let start = Instant::now();
    let table_type = precision.compute_type();
    let table = weights.get(
        &graphs::embed_tokens_key(&layout),
        &[cfg.text.vocab_size, cfg.text.hidden_size],
    )?;
    let newline = weights.get(&layout.image_newline, &[cfg.text.hidden_size])?;
    embeddings::write_safetensors(
        &stage.join(embeddings::FILE_NAME),
        &[
            (embeddings::EMBED_TOKENS, &table, table_type),
            (embeddings::IMAGE_NEWLINE, &newline, DataType::Float),
        ],
    )?;
    drop(table);
    timings.push(("embeddings", start.elapsed()));

    let mut copied = Vec::new();
    for name in COPIED_FILES {
        let from = model_dir.join(name);
        if from.is_file() {
            staging.copy_in(&from, name)?;
            copied.push(name.to_string());
        }
    }

    let file_sizes = staging.file_sizes()?;
    let manifest = build_manifest(
        model_dir, &cfg, &layout, opts, &vision, &decoder, table_type, copied, file_sizes,
    )?;
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Unsupported(format!("manifest: {e}")))?;
    staging.commit(manifest::FILE_NAME, &(text + "\n"))?;

    // The files now lie in `out_dir` under the names they had in the staging directory.
    let moved = |p: &Path| match p.file_name() {
        Some(name) => out_dir.join(name),
        None => p.to_path_buf(),
    };
    let placed = |m: SavedModel| SavedModel {
        model: moved(&m.model),
        data: m.data.as_deref().map(moved),
        data_bytes: m.data_bytes,
    };
    Ok(ExportReport {
        out_dir: out_dir.to_path_buf(),
        vision: placed(vision),
        decoder: placed(decoder),
        embeddings: out_dir.join(embeddings::FILE_NAME),
        manifest,
        timings,
    })
}

#[allow(clippy::too_many_arguments)]
fn build_manifest(
    model_dir: &Path,
    cfg: &LlavaConfig,
    layout: &KeyLayout,
    opts: &ExportOptions,
    vision: &SavedModel,
    decoder: &SavedModel,
    table_type: DataType,
    files: Vec<String>,
    file_sizes: BTreeMap<String, u64>,
) -> Result<Manifest> {
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let (v_in, v_out) = graphs::vision_io(cfg);
    let (d_in, d_out) = graphs::decoder_io(cfg, opts.precision);
    Ok(Manifest {
        format_version: manifest::FORMAT_VERSION,
        producer: format!("unireward-export {}", env!("CARGO_PKG_VERSION")),
        dtype: graphs::precision_name(opts.precision).to_string(),
        opset: opts.opset,
        source: model_dir
            .canonicalize()
            .unwrap_or_else(|_| model_dir.to_path_buf())
            .display()
            .to_string(),
        layout: layout.name.to_string(),
        graphs: manifest::Graphs {
            vision: manifest::GraphEntry {
                file: file_name(&vision.model),
                data: vision.data.as_deref().map(file_name),
                inputs: vec![(&v_in).into()],
                outputs: vec![(&v_out).into()],
            },
            decoder: manifest::GraphEntry {
                file: file_name(&decoder.model),
                data: decoder.data.as_deref().map(file_name),
                inputs: d_in.iter().map(Into::into).collect(),
                outputs: d_out.iter().map(Into::into).collect(),
            },
        },
        embeddings: manifest::Embeddings {
            file: embeddings::FILE_NAME.to_string(),
            embed_tokens: embeddings::EMBED_TOKENS.to_string(),
            image_newline: embeddings::IMAGE_NEWLINE.to_string(),
            embed_tokens_dtype: embeddings::safetensors_dtype(table_type)?.to_string(),
        },
        config: manifest::Essentials::new(cfg, cfg.vision_layers_used()?),
        kv_cache: Some(manifest::kv_cache(cfg, opts.precision)),
        files,
        file_sizes: Some(file_sizes),
    })
}
