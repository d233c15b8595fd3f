//! Embeddings to log-probabilities: the Qwen2 decoder and its KV cache.

pub mod checkpointing;
pub mod kv_cache;
pub mod qwen2;

pub use kv_cache::KvCache;
pub use qwen2::{AttentionVariant, Qwen2};
