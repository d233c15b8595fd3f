//! The UnifiedReward judge as candle code: LLaVA-OneVision (SigLIP → projector → Qwen2).
//!
//! Modules follow the pipeline: `preprocess` (pixels) → `encode` (vision tower, projector)
//! → `pack` (anyres packing, video pooling) → `decode` (Qwen2) → `llava` (the composition);
//! `judge` holds the UnifiedReward prompts and what a verdict means.

pub mod allocator;
pub mod checkpoint;
pub mod config;
pub mod decode;
pub mod device;
pub mod diffusion;
pub mod encode;
pub mod error;
pub mod family;
pub mod formats;
pub mod judge;
pub mod linear;
pub mod llava;
pub mod logging;
pub mod nn;
pub mod ops;
pub mod pack;
pub mod preprocess;
pub mod qwen2_5_vl;
pub mod qwen3_vl;
pub mod qwen_vl;
pub mod splitmix64;
pub mod tokenize;

pub use error::{Error, Result};
pub use llava::LlavaOnevision;
pub use pack::MediaFeatures;
