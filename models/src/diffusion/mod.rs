//! The generators Diffusion-DPO aligns, in diffusers' layout (`unet/`, `vae/`,
//! `text_encoder/`, `text_encoder_2/`, `scheduler/`): every block is built from ops with a
//! backward pass (our norms and softmax, candle's convolutions), so the same forward serves
//! sampling and training.

pub mod clip_text;
pub mod clip_tokenizer;
pub mod component;
pub mod conv;
pub mod denoiser;
pub mod group_norm;
pub mod pipeline;
pub mod scheduler;
pub mod synthetic_weights;
pub mod train_image;
pub mod unet;
pub mod unet_motion;
pub mod vae;
