//! The end-to-end demo: a synthetic world of coloured shapes, a LLaVA-OneVision reward
//! model trained on it from scratch with `trainer reward`, exported with `unireward-export onnx`,
//! judging held-out data with `engine score --batch`, building preference pairs with
//! `engine pairs`, aligning an answer model with `trainer dpo --kind vlm` and an image generator
//! with `trainer dpo --kind diffusion`, and a report.

pub mod checkpoint;
pub mod corpus;
pub mod error;
pub mod generator;
pub mod jsonl;
pub mod judge_data;
pub mod metrics;
pub mod report;
pub mod rng;
pub mod run_dir;
pub mod settings;
pub mod steps;
pub mod tokenizer;
pub mod tools;
pub mod world;

pub use error::{Error, Result};
