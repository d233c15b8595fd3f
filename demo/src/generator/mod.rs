//! The demo's image generator: the pipeline it starts from ([`pipeline`]), its UNet as
//! pretrained offline ([`pretrained`]) and the world's ground truth for what it draws
//! ([`truth`]).

pub mod pipeline;
pub mod pretrained;
pub mod truth;
