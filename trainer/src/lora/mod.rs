//! LoRA adapters (Hu et al. 2021) as PEFT defines, stores and merges them.
//!
//! For each targeted linear weight W [out, in] the adapter holds A [r, in] (initialised
//! Kaiming-uniform with a = √5, as PEFT does: U(−1/√in, 1/√in)) and B [out, r] (zeros), and
//! the layer computes with W + (alpha / r)·B·A. Training keeps W frozen and builds the model
//! with that merged weight: an expression in A and B, so backpropagation reaches them and
//! nothing else, and the model crate's layers stay as they are (the model is rebuilt after
//! every optimizer step anyway, see [`crate::varmap_model`]). The update is added in f32 (f64
//! for f64 weights) and rounded once to the weight's dtype, as [`merge`] does, so a merged
//! checkpoint computes what the trained model computed.
//!
//! Dropout on the adapter's input masks every token's input differently, which no merged
//! weight can express: training refuses a dropout other than 0. Adapters trained elsewhere
//! with dropout merge and load as usual (dropout is off at inference).
//!
//! On disk, the PEFT layout: `adapter_config.json` and `adapter_model.safetensors` with the
//! keys `base_model.model.<module>.lora_A.weight` / `.lora_B.weight`, where `<module>` is the
//! module's path in transformers' model ([`module_names`]), so that `PeftModel` loads our
//! adapters; in memory, modules are known by their checkpoint key without `.weight`.
//! [`config`] holds the settings and their `adapter_config.json`, [`targets`] picks the
//! adapted layers, [`adapter`] the factors, [`peft_file`] reads adapters, [`merge`] folds one
//! into a checkpoint.

mod adapter;
mod config;
mod merge;
pub mod module_names;
mod peft_file;
mod targets;
#[cfg(test)]
mod test_support;

pub use adapter::{merged_weight, LoraAdapter};
pub use config::{LoraConfig, DEFAULT_TARGETS};
pub use merge::{merge, MergeSummary};
pub use targets::select_modules;
