//! The demo's image generator: the pipeline it starts from ([`pipeline`]) and the world's
//! ground truth for what it draws ([`truth`]).

pub mod pipeline;
pub mod truth;
