//! LoRA adapters (Hu et al. 2021) as PEFT defines, stores and merges them.
//!
//! For each targeted linear weight W [out, in] the adapter holds A [r, in] (initialised
//! Kaiming-uniform with a = √5, as PEFT does: U(−1/√in, 1/√in)) and B [out, r] (zeros), and
//! the layer computes base(x) + (alpha / r)·B·(A·x), as PEFT does: the frozen weight is read
//! as it is and the factors are variables of the model's linear layers (`models::linear`'s
//! LoRA branch), so backpropagation reaches them and nothing else, and an optimizer step
//! needs no rebuild of the model ([`crate::varmap_model`]). [`merge`] folds W + (alpha/r)·B·A
//! into a checkpoint (added in f32, f64 for f64 weights, rounded once to W's dtype); the DPO
//! reference of a LoRA run is such a merged copy, and it computes what the adapted model
//! computes up to that rounding (in f64 the decoder's hidden states agree to 1e-10:
//! tests/lora.rs).
//!
//! Dropout on the adapter's input is refused for now (it would need a training-only, seeded
//! mask); adapters trained elsewhere with dropout merge and load as usual (dropout is off at
//! inference).
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
mod diffusers_file;
mod merge;
pub mod module_names;
mod peft_file;
mod targets;
#[cfg(test)]
mod test_support;

pub use adapter::{merged_weight, LoraAdapter};
pub use config::{LoraConfig, DEFAULT_TARGETS, UNET_DEFAULT_TARGETS};
pub use diffusers_file::{read_diffusers, restore_diffusers, save_diffusers, DIFFUSERS_LORA_FILE};
pub use merge::{merge, MergeSummary};
pub use targets::select_modules;
