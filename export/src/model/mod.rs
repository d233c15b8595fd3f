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
pub mod qwen_vl_graphs;
pub mod qwen_vl_vision;
pub mod siglip;
pub mod staging;
pub mod weights;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unireward_models::checkpoint::{open_model_dir, Checkpoint, KeyLayout};
use unireward_models::config::LlavaConfig;
use unireward_models::family::ModelFamily;

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::graph::{SavedModel, DEFAULT_OPSET, MIN_OPSET};
use crate::model::graphs::IoSpec;
use crate::model::qwen_vl_graphs::QwenSource;
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

/// A checkpoint to export, opened: its configuration, weights and key layout.
enum Source {
    Llava(LlavaConfig, Checkpoint, KeyLayout),
    Qwen(QwenSource, Checkpoint),
}

impl Source {
    /// Before anything is written: a config that does not fit the weights stops here.
    fn open(model_dir: &Path) -> Result<Self> {
        match ModelFamily::of_dir(model_dir)? {
            ModelFamily::LlavaOnevision => {
                let (cfg, ckpt, layout) = open_model_dir(model_dir)?;
                Ok(Self::Llava(cfg, ckpt, layout))
            }
            family => {
                let ckpt = Checkpoint::open(model_dir)?;
                Ok(Self::Qwen(
                    QwenSource::open(model_dir, family, &ckpt)?,
                    ckpt,
                ))
            }
        }
    }
}

/// Exports the checkpoint in `model_dir` (LLaVA-OneVision, Qwen2.5-VL or Qwen3-VL) to
/// `out_dir` (created if needed): `vision.onnx`, `decoder.onnx` with their `.onnx.data`,
/// `embeddings.safetensors`, the tokenizer and configuration files, and `manifest.json` with
/// every file's size. Everything is written into a staging directory first and moved into
/// place only when complete, the manifest last ([`staging`]): a failed or killed export
/// leaves the earlier export of `out_dir` as it was, or no manifest. Weights are streamed from
/// the memory-mapped checkpoint one tensor at a time.
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
    let source = Source::open(model_dir)?;
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
    let precision = opts.precision;
    let table_type = precision.compute_type();
    let mut timings = Vec::new();
    let (vision, decoder, mut manifest) = match &source {
        Source::Llava(cfg, ckpt, layout) => {
            let weights = Weights::from_checkpoint(ckpt, layout);
            let start = Instant::now();
            let vision = graphs::vision_graph(stage, &weights, cfg, layout, precision, opts.opset)?;
            timings.push(("vision graph", start.elapsed()));
            let start = Instant::now();
            let spec = graphs::DecoderSpec::llava(cfg, layout);
            let decoder = graphs::decoder_graph(stage, &weights, &spec, precision, opts.opset)?;
            timings.push(("decoder graph", start.elapsed()));
            let start = Instant::now();
            let table = weights.get(
                &graphs::embed_tokens_key(layout),
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
            let manifest = llava_manifest(cfg, layout, opts, &vision, &decoder, table_type)?;
            (vision, decoder, manifest)
        }
        Source::Qwen(src, ckpt) => {
            let weights = Weights::from_checkpoint_named(ckpt, src.layout_name());
            let start = Instant::now();
            let vision = qwen_vl_graphs::vision_graph(stage, &weights, src, precision, opts.opset)?;
            timings.push(("vision graph", start.elapsed()));
            let start = Instant::now();
            let spec = src.decoder_spec();
            let decoder = graphs::decoder_graph(stage, &weights, &spec, precision, opts.opset)?;
            timings.push(("decoder graph", start.elapsed()));
            let start = Instant::now();
            let text = src.text();
            let table = weights.get(
                &src.embed_tokens_key(),
                &[text.vocab_size, text.hidden_size],
            )?;
            embeddings::write_safetensors(
                &stage.join(embeddings::FILE_NAME),
                &[(embeddings::EMBED_TOKENS, &table, table_type)],
            )?;
            drop(table);
            timings.push(("embeddings", start.elapsed()));
            let manifest = qwen_manifest(src, opts, &vision, &decoder, table_type)?;
            (vision, decoder, manifest)
        }
    };

    let mut copied = Vec::new();
    for name in COPIED_FILES {
        let from = model_dir.join(name);
        if from.is_file() {
            staging.copy_in(&from, name)?;
            copied.push(name.to_string());
        }
    }
    manifest.source = model_dir
        .canonicalize()
        .unwrap_or_else(|_| model_dir.to_path_buf())
        .display()
        .to_string();
    manifest.files = copied;
    manifest.file_sizes = Some(staging.file_sizes()?);
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

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn graph_entry(saved: &SavedModel, inputs: &[IoSpec], outputs: &[IoSpec]) -> manifest::GraphEntry {
    manifest::GraphEntry {
        file: file_name(&saved.model),
        data: saved.data.as_deref().map(file_name),
        inputs: inputs.iter().map(Into::into).collect(),
        outputs: outputs.iter().map(Into::into).collect(),
    }
}

/// A manifest without the files' names, sizes and source (filled in once they are copied).
#[allow(clippy::too_many_arguments)]
fn manifest_of(
    family: manifest::ExportFamily,
    deepstack_levels: usize,
    layout: &str,
    opts: &ExportOptions,
    graphs: manifest::Graphs,
    table_type: DataType,
    image_newline: Option<String>,
    config: Option<manifest::Essentials>,
    kv_cache: manifest::KvCache,
) -> Result<Manifest> {
    Ok(Manifest {
        format_version: manifest::FORMAT_VERSION,
        family,
        deepstack_levels,
        producer: format!("unireward-export {}", env!("CARGO_PKG_VERSION")),
        dtype: graphs::precision_name(opts.precision).to_string(),
        opset: opts.opset,
        source: String::new(),
        layout: layout.to_string(),
        graphs,
        embeddings: manifest::Embeddings {
            file: embeddings::FILE_NAME.to_string(),
            embed_tokens: embeddings::EMBED_TOKENS.to_string(),
            image_newline,
            embed_tokens_dtype: embeddings::safetensors_dtype(table_type)?.to_string(),
        },
        config,
        kv_cache: Some(kv_cache),
        files: Vec::new(),
        file_sizes: None,
    })
}

fn llava_manifest(
    cfg: &LlavaConfig,
    layout: &KeyLayout,
    opts: &ExportOptions,
    vision: &SavedModel,
    decoder: &SavedModel,
    table_type: DataType,
) -> Result<Manifest> {
    let (v_in, v_out) = graphs::vision_io(cfg);
    let (d_in, d_out) =
        graphs::decoder_io(&graphs::DecoderSpec::llava(cfg, layout), opts.precision);
    manifest_of(
        manifest::ExportFamily::LlavaOnevision,
        0,
        layout.name,
        opts,
        manifest::Graphs {
            vision: graph_entry(vision, &[v_in], &[v_out]),
            decoder: graph_entry(decoder, &d_in, &d_out),
        },
        table_type,
        Some(embeddings::IMAGE_NEWLINE.to_string()),
        Some(manifest::Essentials::new(cfg, cfg.vision_layers_used()?)),
        manifest::kv_cache(cfg, opts.precision),
    )
}

fn qwen_manifest(
    src: &QwenSource,
    opts: &ExportOptions,
    vision: &SavedModel,
    decoder: &SavedModel,
    table_type: DataType,
) -> Result<Manifest> {
    let (v_in, v_out) = qwen_vl_graphs::vision_io(src);
    let (d_in, d_out) = graphs::decoder_io(&src.decoder_spec(), opts.precision);
    let text = src.text();
    manifest_of(
        src.family(),
        src.deepstack_levels(),
        src.layout_name(),
        opts,
        manifest::Graphs {
            vision: graph_entry(vision, &v_in, &v_out),
            decoder: graph_entry(decoder, &d_in, &d_out),
        },
        table_type,
        None,
        None,
        manifest::KvCache {
            num_layers: text.num_hidden_layers,
            num_key_value_heads: text.num_key_value_heads,
            head_dim: src.attention().head_dim,
            dtype: manifest::dtype_name(opts.precision.compute_type()).to_string(),
        },
    )
}
