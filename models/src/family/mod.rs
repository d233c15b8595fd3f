//! The model-family seam: what differs between judge families sits behind [`JudgeModel`]
//! (the candle model: vision encoder, packing, positions, decoder) and [`ModelFamily`] (which
//! family a checkpoint is, how to build its model, which prompt templates it answers).
//! The engine's candle backend, the trainer and the exporter hold a family through these, so
//! a second family (Qwen2.5-VL, Qwen3-VL) is one more variant and one more implementation.
//!
//! LLaVA-OneVision is the first implementation (`crate::llava`). The files stack without a
//! circle: `kind` (the enum) and `judge_model` (the trait) are what an implementation imports;
//! `load` alone knows the implementations.

mod detect;
pub(crate) mod judge_model;
pub(crate) mod kind;
mod load;

pub use detect::UnsupportedFamily;
pub use judge_model::{JudgeMedia, JudgeModel};
pub use kind::ModelFamily;
pub use load::{build_llava, build_qwen2_5_vl, build_qwen3_vl, load_judge};
