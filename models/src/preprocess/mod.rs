//! Pixels in: images and videos to the tensors the vision tower takes, reproducing
//! transformers' LLaVA-OneVision processors, plus the anyres geometry that decides
//! how many tokens an image or a video becomes.
//!
//! - [`resize`]: Pillow-exact (and torch-uint8-exact) resampling;
//! - [`anyres`]: tile grid, letterbox, unpad and anyres_max_N downsample, token counts;
//! - [`image`]: the image processor (base tile + grid tiles);
//! - [`video`]: frame sources, frame sampling, the video processor (pooled `<video>` path);
//! - [`frame_tiles`]: video frames as plain image tiles, the UnifiedReward scripts' way;
//! - [`gif_frames`]: bounded decoding of an animated GIF's sampled frames;
//! - [`media_file`]: regular files only, and the decode limits of images and frames;
//! - [`request`]: the media a request names (as records write them) and [`VideoMode`];
//! - [`qwen_vl`]: the Qwen2-VL / Qwen2.5-VL processor (`smart_resize`, merge-window patches);
//! - [`loader`]: a request's media decoded and preprocessed for a model directory.

pub mod anyres;
pub mod frame_tiles;
pub mod gif_frames;
pub mod image;
pub mod loader;
pub mod media_file;
pub mod qwen_vl;
pub mod qwen_vl_video;
pub mod request;
pub mod resize;
pub mod resize_torchvision;
pub mod video;

pub use self::anyres::{AnyresGeometry, Crop, GridShape, ImageLayout, Letterbox};
pub use self::frame_tiles::FrameTileProcessor;
pub use self::image::{
    load_image, pad_batch, AlphaHandling, ImageProcessor, ImageProcessorConfig, ProcessedImage,
};
pub use self::loader::{MediaLoader, PreparedMedia};
pub use self::qwen_vl::{smart_resize, QwenVlPixels, QwenVlProcessor, QwenVlProcessorConfig};
pub use self::qwen_vl_video::QwenVlVideo;
pub use self::request::{MediaRequest, RawEntry, RawFrame, RawMedia, VideoMode};
pub use self::resize::{Filter, Flavor};
pub use self::video::{
    sample_indices, sample_indices_truncated, FrameLoader, FrameSampling, VideoProcessor,
    VideoProcessorConfig, VideoSource,
};
