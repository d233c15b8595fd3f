//! `manifest.json`, the contract of an export directory: what `unireward-export onnx` writes and the
//! engine's ONNX Runtime backend reads — graph files and the names of their inputs and
//! outputs, precision, where the embeddings are, the model dimensions the graphs were built
//! for, the decoder's KV cache and every file's size.
//!
//! The exporter writes every field. The reader needs only what it uses: fields it never read
//! default when absent, so exports from earlier exporters still open.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{LlavaConfig, VisionConfig};

/// Bumped whenever a reader of an older manifest would misread a newer one. Format 2: the
/// decoder takes and returns a KV cache (`past_key_values.*` / `present.*`, [`KvCache`]).
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format still read: a decoder without a cache.
pub const FORMAT_VERSION_NO_CACHE: u32 = 1;
pub const FILE_NAME: &str = "manifest.json";

/// The vision graph's input (pixel tiles) and output (projected features).
pub const VISION_INPUT: &str = "pixel_values";
pub const VISION_OUTPUT: &str = "image_features";

/// The decoder graph's inputs, in order, before the cache.
pub const INPUTS_EMBEDS: &str = "inputs_embeds";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";
pub const POSITIONS: &str = "positions";
/// The decoder graph's first output, before the cache.
pub const LOG_PROBS: &str = "log_probs";

/// The Qwen-VL vision graphs' inputs besides `pixel_values` (the flattened patches [N, C·tp·p·p]
/// in the processor's order): what the candle towers compute on the host from the grids
/// (`unireward_models::encode::vision_graph_inputs`). Qwen2.5-VL's: the window order [N], the
/// rotary tables [N, head_dim] (window order), the windows' and the frames' padded segments
/// (gather and keys [segments, len], scatter [N]), the merged tokens' raster order [N / 4].
pub const WINDOW_ORDER: &str = "window_order";
pub const ROTARY_COS: &str = "rotary_cos";
pub const ROTARY_SIN: &str = "rotary_sin";
pub const WINDOW_GATHER: &str = "window_gather";
pub const WINDOW_KEYS: &str = "window_keys";
pub const WINDOW_SCATTER: &str = "window_scatter";
pub const FRAME_GATHER: &str = "frame_gather";
pub const FRAME_KEYS: &str = "frame_keys";
pub const FRAME_SCATTER: &str = "frame_scatter";
pub const MERGE_ORDER: &str = "merge_order";
/// Qwen3-VL's: the learned positions' taps [N · 4] and weights [N · 4].
pub const POS_INDEX: &str = "pos_index";
pub const POS_WEIGHT: &str = "pos_weight";

/// Qwen3-VL's deep-stack level `l`: an output of the vision graph ([N / 4, hidden], as
/// `image_features`) and an input of the decoder ([batch, sequence, hidden], zero outside the
/// media tokens), added after decoder layer `l`.
pub fn deepstack_name(level: usize) -> String {
    format!("deepstack.{level}")
}

/// Which family's graphs an export holds: what its vision graph takes and how its decoder's
/// positions are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFamily {
    /// Tiles → projected features; positions [batch, sequence].
    #[default]
    LlavaOnevision,
    /// Patches and their layout → merged features; M-RoPE positions [3, batch, sequence].
    Qwen25Vl,
    /// As Qwen2.5-VL, with deep-stack levels out of the vision graph and into the decoder.
    Qwen3Vl,
}

impl ExportFamily {
    /// The vision graph's inputs, in order.
    pub fn vision_input_names(self) -> Vec<&'static str> {
        match self {
            Self::LlavaOnevision => vec![VISION_INPUT],
            Self::Qwen25Vl => vec![
                VISION_INPUT,
                WINDOW_ORDER,
                ROTARY_COS,
                ROTARY_SIN,
                WINDOW_GATHER,
                WINDOW_KEYS,
                WINDOW_SCATTER,
                FRAME_GATHER,
                FRAME_KEYS,
                FRAME_SCATTER,
                MERGE_ORDER,
            ],
            Self::Qwen3Vl => vec![
                VISION_INPUT,
                POS_INDEX,
                POS_WEIGHT,
                ROTARY_COS,
                ROTARY_SIN,
                FRAME_GATHER,
                FRAME_KEYS,
                FRAME_SCATTER,
            ],
        }
    }

    /// The vision graph's outputs: the features, then each deep-stack level.
    pub fn vision_output_names(self, deepstack: usize) -> Vec<String> {
        std::iter::once(VISION_OUTPUT.to_string())
            .chain((0..deepstack).map(deepstack_name))
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvKind {
    Key,
    Value,
}

impl KvKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KvKind::Key => "key",
            KvKind::Value => "value",
        }
    }
}

/// Layer `i`'s cached keys or values fed in: `past_key_values.{i}.key` / `.value`.
pub fn past_name(layer: usize, kind: KvKind) -> String {
    format!("past_key_values.{layer}.{}", kind.as_str())
}

/// Layer `i`'s keys or values after this call: `present.{i}.key` / `.value`.
pub fn present_name(layer: usize, kind: KvKind) -> String {
    format!("present.{layer}.{}", kind.as_str())
}

/// Every layer's past key and value, in the graph's input order.
pub fn past_names(num_layers: usize) -> Vec<String> {
    kv_names(num_layers, past_name)
}

/// Every layer's present key and value, in the graph's output order.
pub fn present_names(num_layers: usize) -> Vec<String> {
    kv_names(num_layers, present_name)
}

fn kv_names(num_layers: usize, name: fn(usize, KvKind) -> String) -> Vec<String> {
    (0..num_layers)
        .flat_map(|i| [KvKind::Key, KvKind::Value].map(|k| name(i, k)))
        .collect()
}

/// The decoder's input names: the four sequence inputs, the `deepstack` levels (Qwen3-VL),
/// then with a cache of `kv_layers` layers each layer's past.
pub fn decoder_input_names(kv_layers: Option<usize>, deepstack: usize) -> Vec<String> {
    let mut names: Vec<String> = [INPUTS_EMBEDS, ATTENTION_MASK, POSITION_IDS, POSITIONS]
        .map(String::from)
        .to_vec();
    names.extend((0..deepstack).map(deepstack_name));
    names.extend(kv_layers.map(past_names).unwrap_or_default());
    names
}

/// The decoder's output names: `log_probs`, then with a cache each layer's present.
pub fn decoder_output_names(kv_layers: Option<usize>) -> Vec<String> {
    let mut names = vec![LOG_PROBS.to_string()];
    names.extend(kv_layers.map(present_names).unwrap_or_default());
    names
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    /// Absent from LLaVA exports written before Qwen-VL ones existed.
    #[serde(default)]
    pub family: ExportFamily,
    /// Qwen3-VL's deep-stack levels (vision outputs, decoder inputs); 0 for the others.
    #[serde(default)]
    pub deepstack_levels: usize,
    #[serde(default)]
    pub producer: String,
    /// `fp32` or `fp16`: how weights are stored and matmuls run. Inputs and outputs are f32
    /// either way.
    pub dtype: String,
    #[serde(default)]
    pub opset: i64,
    /// The checkpoint directory exported, and the key layout detected in it.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub layout: String,
    pub graphs: Graphs,
    pub embeddings: Embeddings,
    /// The LLaVA dimensions the graphs were built for; a Qwen-VL export's are its
    /// `config.json`'s.
    #[serde(default)]
    pub config: Option<Essentials>,
    /// Format 2 on (always written); absent from a format-1 export.
    pub kv_cache: Option<KvCache>,
    /// Files copied from the checkpoint (configuration, tokenizer, processor, chat template).
    #[serde(default)]
    pub files: Vec<String>,
    /// The size in bytes of every file of the export but the manifest: the engine refuses
    /// a directory whose files are not the ones this manifest was written with (always
    /// written; absent from exports written before the exporter recorded them).
    #[serde(default)]
    pub file_sizes: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graphs {
    pub vision: GraphEntry,
    pub decoder: GraphEntry,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphEntry {
    pub file: String,
    /// The external data file, beside the graph.
    #[serde(default)]
    pub data: Option<String>,
    pub inputs: Vec<IoEntry>,
    pub outputs: Vec<IoEntry>,
}

impl GraphEntry {
    pub fn input_names(&self) -> Vec<String> {
        self.inputs.iter().map(|e| e.name.clone()).collect()
    }

    pub fn output_names(&self) -> Vec<String> {
        self.outputs.iter().map(|e| e.name.clone()).collect()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IoEntry {
    pub name: String,
    #[serde(default)]
    pub dtype: String,
    /// A number for a fixed dim, a name for a dynamic one.
    #[serde(default)]
    pub dims: Vec<serde_json::Value>,
}

/// The decoder's KV cache: after the four sequence inputs come, per layer `i`,
/// `past_key_values.{i}.key` and `.value` [batch, kv_heads, past, head_dim]; after `log_probs`
/// come `present.{i}.key` and `.value` [batch, kv_heads, past + sequence, head_dim], keys
/// after the rotation. `attention_mask` spans past + sequence; an empty past (past = 0) is a
/// cacheless run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KvCache {
    pub num_layers: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Element type of pasts and presents (`float32`, or `float16` in an fp16 export).
    pub dtype: String,
}

impl KvCache {
    /// The cache of `cfg`'s decoder, its elements of type `dtype`.
    pub fn new(cfg: &LlavaConfig, dtype: &str) -> Self {
        Self {
            num_layers: cfg.text.num_hidden_layers,
            num_key_value_heads: cfg.text.num_key_value_heads,
            head_dim: cfg.text.head_dim(),
            dtype: dtype.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Embeddings {
    pub file: String,
    /// Tensor names inside the file.
    pub embed_tokens: String,
    /// LLaVA's learned row; Qwen-VL has none.
    #[serde(default)]
    pub image_newline: Option<String>,
    /// safetensors dtype of the embedding table (`F32` or `F16`); `image_newline` is F32.
    #[serde(default)]
    pub embed_tokens_dtype: String,
}

/// The model dimensions the graphs were built for. `vision` overrides what `config.json`
/// says: a LLaVA-NeXT config names its tower rather than describing it, and the exporter has
/// read the real layer count from the checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Essentials {
    pub vision: VisionEssentials,
    pub text: TextEssentials,
    #[serde(default)]
    pub image_token_id: Option<u32>,
    #[serde(default)]
    pub video_token_id: Option<u32>,
    #[serde(default)]
    pub drop_first_feature: bool,
    /// Features one tile yields (rows of the vision output per tile).
    pub features_per_tile: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VisionEssentials {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub layers_used: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl VisionEssentials {
    /// The tower the graphs were built for, as a vision configuration.
    pub fn to_config(&self) -> VisionConfig {
        VisionConfig {
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: self.num_channels,
            image_size: self.image_size,
            patch_size: self.patch_size,
            layer_norm_eps: self.layer_norm_eps,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TextEssentials {
    pub vocab_size: usize,
    pub hidden_size: usize,
    #[serde(default)]
    pub intermediate_size: usize,
    #[serde(default)]
    pub num_hidden_layers: usize,
    #[serde(default)]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: usize,
    #[serde(default)]
    pub rope_theta: f64,
    #[serde(default)]
    pub rms_norm_eps: f64,
    #[serde(default)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_names_put_each_layers_key_before_its_value() {
        assert_eq!(
            decoder_input_names(Some(2), 0)[3..],
            [
                "positions",
                "past_key_values.0.key",
                "past_key_values.0.value",
                "past_key_values.1.key",
                "past_key_values.1.value"
            ]
        );
        assert_eq!(
            decoder_output_names(Some(1)),
            ["log_probs", "present.0.key", "present.0.value"]
        );
        assert_eq!(decoder_output_names(None), ["log_probs"]);
        assert_eq!(decoder_input_names(None, 0).len(), 4);
        assert_eq!(
            decoder_input_names(Some(1), 2)[3..],
            [
                "positions",
                "deepstack.0",
                "deepstack.1",
                "past_key_values.0.key",
                "past_key_values.0.value"
            ]
        );
    }
}
