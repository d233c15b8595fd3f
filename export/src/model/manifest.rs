//! `manifest.json`: what an export directory holds, for the engine to open it without
//! guessing: graph files and their inputs / outputs, precision, where the embeddings are, and
//! the model dimensions the graphs were built for.

use std::collections::BTreeMap;

use serde::Serialize;
use unireward_models::config::LlavaConfig;

use crate::dtype::DataType;
use crate::graph::Dim;
use crate::model::graphs::IoSpec;
use crate::precision::Precision;

/// Bumped whenever a reader of an older manifest would misread a newer one. Format 2: the
/// decoder takes and returns a KV cache (`past_key_values.*` / `present.*`, [`KvCache`]).
pub const FORMAT_VERSION: u32 = 2;
pub const FILE_NAME: &str = "manifest.json";

#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub format_version: u32,
    pub producer: String,
    /// `fp32` or `fp16`: how weights are stored and matmuls run. Inputs and outputs are f32
    /// either way.
    pub dtype: String,
    pub opset: i64,
    /// The checkpoint directory exported, and the key layout detected in it.
    pub source: String,
    pub layout: String,
    pub graphs: Graphs,
    pub embeddings: Embeddings,
    pub config: Essentials,
    pub kv_cache: KvCache,
    /// Files copied from the checkpoint (configuration, tokenizer, processor, chat template).
    pub files: Vec<String>,
    /// The size in bytes of every file of the export but the manifest: the engine refuses
    /// a directory whose files are not the ones this manifest was written with.
    pub file_sizes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Graphs {
    pub vision: GraphEntry,
    pub decoder: GraphEntry,
}

#[derive(Debug, Clone, Serialize)]
pub struct GraphEntry {
    pub file: String,
    /// The external data file, beside the graph.
    pub data: Option<String>,
    pub inputs: Vec<IoEntry>,
    pub outputs: Vec<IoEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IoEntry {
    pub name: String,
    pub dtype: String,
    /// A number for a fixed dim, a name for a dynamic one.
    pub dims: Vec<serde_json::Value>,
}

impl From<&IoSpec> for IoEntry {
    fn from(s: &IoSpec) -> Self {
        Self {
            name: s.name.to_string(),
            dtype: dtype_name(s.dtype).to_string(),
            dims: s
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(v) => serde_json::Value::from(*v),
                    Dim::Symbolic(s) => serde_json::Value::from(s.as_str()),
                })
                .collect(),
        }
    }
}

fn dtype_name(d: DataType) -> &'static str {
    match d {
        DataType::Float => "float32",
        DataType::Float16 => "float16",
        DataType::BFloat16 => "bfloat16",
        DataType::Double => "float64",
        DataType::Int64 => "int64",
        DataType::Int32 => "int32",
        DataType::Int8 => "int8",
        DataType::Uint8 => "uint8",
        DataType::Bool => "bool",
    }
}

/// The decoder's KV cache: after the four sequence inputs come, per layer `i`,
/// `past_key_values.{i}.key` and `.value` [batch, kv_heads, past, head_dim]; after `log_probs`
/// come `present.{i}.key` and `.value` [batch, kv_heads, past + sequence, head_dim], keys
/// after the rotation. `attention_mask` spans past + sequence; an empty past (past = 0) is a
/// cacheless run.
#[derive(Debug, Clone, Serialize)]
pub struct KvCache {
    pub num_layers: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Element type of pasts and presents (`float32`, or `float16` in an fp16 export).
    pub dtype: String,
}

impl KvCache {
    pub fn new(cfg: &LlavaConfig, precision: Precision) -> Self {
        Self {
            num_layers: cfg.text.num_hidden_layers,
            num_key_value_heads: cfg.text.num_key_value_heads,
            head_dim: cfg.text.head_dim(),
            dtype: dtype_name(precision.compute_type()).to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Embeddings {
    pub file: String,
    /// Tensor names inside the file.
    pub embed_tokens: String,
    pub image_newline: String,
    /// safetensors dtype of the embedding table (`F32` or `F16`); `image_newline` is F32.
    pub embed_tokens_dtype: String,
}

/// The model dimensions the graphs were built for. `vision` overrides what `config.json`
/// says: a LLaVA-NeXT config names its tower rather than describing it, and the exporter has
/// read the real layer count from the checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct Essentials {
    pub vision: VisionEssentials,
    pub text: TextEssentials,
    pub image_token_id: Option<u32>,
    pub video_token_id: Option<u32>,
    pub drop_first_feature: bool,
    /// Features one tile yields (rows of the vision output per tile).
    pub features_per_tile: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct VisionEssentials {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub layers_used: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TextEssentials {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl Essentials {
    pub fn new(cfg: &LlavaConfig, layers_used: usize) -> Self {
        let (v, t) = (&cfg.vision, &cfg.text);
        Self {
            vision: VisionEssentials {
                hidden_size: v.hidden_size,
                intermediate_size: v.intermediate_size,
                num_hidden_layers: v.num_hidden_layers,
                layers_used,
                num_attention_heads: v.num_attention_heads,
                num_channels: v.num_channels,
                image_size: v.image_size,
                patch_size: v.patch_size,
                layer_norm_eps: v.layer_norm_eps,
            },
            text: TextEssentials {
                vocab_size: t.vocab_size,
                hidden_size: t.hidden_size,
                intermediate_size: t.intermediate_size,
                num_hidden_layers: t.num_hidden_layers,
                num_attention_heads: t.num_attention_heads,
                num_key_value_heads: t.num_key_value_heads,
                rope_theta: t.rope_theta,
                rms_norm_eps: t.rms_norm_eps,
                tie_word_embeddings: t.tie_word_embeddings,
            },
            image_token_id: cfg.image_token_id,
            video_token_id: cfg.video_token_id,
            drop_first_feature: cfg.drop_first_feature,
            features_per_tile: v.tokens_per_tile() - usize::from(cfg.drop_first_feature),
        }
    }
}
