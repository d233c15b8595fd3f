//! Pixels to projected features: the SigLIP vision tower and the projector (LLaVA), and
//! Qwen2.5-VL's vision transformer with its patch merger.

pub mod projector;
pub mod qwen2_5_vl_vision;
pub mod siglip;
pub mod vision_graph_inputs;

pub use projector::Projector;
pub use siglip::SiglipVision;
