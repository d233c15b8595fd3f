//! `manifest.json`: what an export directory holds, for the engine to open it without
//! guessing. Its types are the contract in [`unireward_models::formats::export_manifest`],
//! which the engine reads through; this module fills them from the exporter's own types.

use unireward_models::config::LlavaConfig;

pub use unireward_models::formats::export_manifest::{
    Embeddings, Essentials, ExportFamily, GraphEntry, Graphs, IoEntry, KvCache, Manifest,
    FILE_NAME, FORMAT_VERSION,
};

use crate::dtype::DataType;
use crate::graph::Dim;
use crate::model::graphs::IoSpec;
use crate::precision::Precision;

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

pub fn dtype_name(d: DataType) -> &'static str {
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

/// The decoder's KV cache as `precision` computes it.
pub fn kv_cache(cfg: &LlavaConfig, precision: Precision) -> KvCache {
    KvCache::new(cfg, dtype_name(precision.compute_type()))
}
