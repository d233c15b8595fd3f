//! The two things the trainer optimises, as [`crate::train_loop::Objective`]s.

pub mod denoise;
pub mod diffusion;
pub mod diffusion_dpo;
pub mod dpo;
pub mod reward;

pub use dpo::{DpoObjective, Reference};
pub use reward::RewardObjective;
