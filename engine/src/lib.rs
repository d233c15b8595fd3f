//! The scoring engine: backends, batching and the `engine` commands.

pub mod backend;
pub mod batching;
pub mod decoding;
pub mod encode_media;
pub mod error;
pub mod judge;
pub mod logprob;
pub mod pairs;
pub mod pipeline;
pub mod qwen_logprob;
pub mod qwen_score;
pub mod records;
pub mod score;
pub mod serve;

pub use error::{EngineError, Result};
