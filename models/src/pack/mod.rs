//! Projected tile features to the token sequence the decoder sees: anyres packing of images
//! (unpad, downsample, one newline per row, base tile first) and pooling of video frames;
//! [`encoded_media`] encodes and packs a whole request's media.

pub mod encoded_media;
pub mod image;
pub mod interpolate;
pub mod merge;
pub mod video;

pub use encoded_media::{encode_media_with, encode_request_with, EncodedMedia, VideoFeatures};
pub use image::pack_image;
pub use merge::{merge_deepstack, merge_media, MediaFeatures};
pub use video::pack_video;
