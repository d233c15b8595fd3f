//! Training losses beyond the plain negative log-likelihood.

pub mod denoise;
pub mod diffusion_dpo;
pub mod dpo;
