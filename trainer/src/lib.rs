//! Training the reward model (LLaVA-OneVision or Qwen2.5-VL) in candle.
//!
//! - [`varmap_model`]: the model over a `VarMap` holding a checkpoint's weights, with the
//!   vision tower, projector and decoder each trained or frozen, built through the family
//!   seam (`unireward_models::family::JudgeModel`);
//! - [`data`]: judge data for supervised fine-tuning ([`data::reward`]), preference pairs for
//!   DPO ([`data::dpo`]), and the seeded order examples are visited in ([`data::order`]);
//! - [`logprob`]: summed completion log-probabilities of right-padded batches, with gradients;
//! - [`loss`]: the DPO losses and their TRL metrics;
//! - [`schedule`], [`optim`]: learning-rate schedules and AdamW with savable moments;
//! - [`train_loop`]: the loop both commands share (accumulation, clipping, metrics,
//!   checkpoints, exact resume), over an [`train_loop::Objective`]
//!   ([`objectives::RewardObjective`], [`objectives::DpoObjective`]);
//! - [`checkpoint_keys`]: the part of the model a checkpoint key belongs to, and key shapes;
//! - [`checkpoint_io`]: weights written under the key names they were loaded with;
//!   [`model_files`]: the names of the files written, and which model files are copied;
//!   [`durable_file`], [`json_file`]: files replaced whole, synced;
//! - [`lora`]: LoRA adapters (trained through merged weights), saved and merged in PEFT's
//!   layout.

pub mod checkpoint_io;
pub mod checkpoint_keys;
pub mod data;
pub mod durable_file;
pub mod error;
pub mod json_file;
pub mod logprob;
pub mod lora;
pub mod loss;
pub mod memory_estimate;
pub mod model_files;
pub mod objectives;
pub mod optim;
pub mod schedule;
pub mod train_loop;
pub mod trainee;
pub mod unet_trainee;
pub mod varmap_model;

pub use error::{Error, Result};
