//! Media of a request: paths resolved, images and video frames decoded and preprocessed (on
//! worker threads), then encoded by the backend and packed into token features.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde_json::Value;
use unireward_models::config::LlavaConfig;
use unireward_models::pack::{pack_image, pack_video};
use unireward_models::preprocess::image::to_rgb;
use unireward_models::preprocess::resize::resize_pillow;
use unireward_models::preprocess::{
    load_image, AnyresGeometry, Filter, FrameLoader, ImageProcessor, ImageProcessorConfig,
    ProcessedImage, VideoProcessor, VideoProcessorConfig, VideoSource,
};
use unireward_models::MediaFeatures;

use crate::backend::Backend;
use crate::error::Result;

/// The media a request names: image paths and at most one video per field entry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaRequest {
    pub images: Vec<PathBuf>,
    pub videos: Vec<VideoSource>,
}

impl MediaRequest {
    /// Reads `images_key` (list of paths) and `video_key`: a path (frame directory, GIF or
    /// video file), a list of frame paths, or a list of such videos.
    pub fn parse(
        v: &Value,
        images_key: &str,
        video_key: &str,
    ) -> std::result::Result<Self, String> {
        let mut out = Self::default();
        match v.get(images_key) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let p = item
                        .as_str()
                        .ok_or_else(|| format!("{images_key:?} must list paths, found {item}"))?;
                    out.images.push(PathBuf::from(p));
                }
            }
            Some(Value::String(p)) => out.images.push(PathBuf::from(p)),
            Some(other) => return Err(format!("{images_key:?} must list paths, found {other}")),
        }
        match v.get(video_key) {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) => out.videos.push(VideoSource::from_path(p)),
            // A list of strings is one video's frames when it has several entries; a list
            // holding lists (or a single path) is a list of videos.
            Some(Value::Array(items)) if items.len() > 1 && items.iter().all(Value::is_string) => {
                let frames = items.iter().filter_map(Value::as_str).map(PathBuf::from);
                out.videos.push(VideoSource::FrameFiles(frames.collect()));
            }
            Some(Value::Array(items)) => {
                for item in items {
                    match item {
                        Value::String(p) => out.videos.push(VideoSource::from_path(p)),
                        Value::Array(fr) => out.videos.push(VideoSource::FrameFiles(
                            fr.iter()
                                .filter_map(Value::as_str)
                                .map(PathBuf::from)
                                .collect(),
                        )),
                        other => return Err(format!("{video_key:?}: not a video: {other}")),
                    }
                }
            }
            Some(other) => return Err(format!("{video_key:?}: not a video: {other}")),
        }
        Ok(out)
    }
}

/// Preprocessed pixels of one request.
pub struct PreparedMedia {
    pub images: Vec<ProcessedImage>,
    /// Frames [n, 3, S, S] per video.
    pub videos: Vec<Tensor>,
}

pub struct MediaLoader {
    images: ImageProcessor,
    videos: VideoProcessor,
    frames: FrameLoader,
}

impl MediaLoader {
    /// Processor settings from the model directory (`processor_config.json` or
    /// `preprocessor_config.json`; without either, the model's tile size and pinpoints with
    /// SigLIP's normalisation), `frames` sampled per video.
    pub fn from_model_dir(dir: &Path, cfg: &LlavaConfig, frames: usize) -> Result<Self> {
        let found = ["processor_config.json", "preprocessor_config.json"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file());
        let (mut image, video) = match &found {
            Some(p) => (
                ImageProcessorConfig::from_file(p)?,
                VideoProcessorConfig::from_file(p)?,
            ),
            None => {
                let s = cfg.vision.image_size as u32;
                let image = ImageProcessorConfig {
                    size: (s, s),
                    ..Default::default()
                };
                let video = VideoProcessorConfig {
                    size: (s, s),
                    ..Default::default()
                };
                (image, video)
            }
        };
        // The model packs by its own pinpoints; tiling by others would misplace features.
        image.image_grid_pinpoints = cfg.anyres.pinpoints.clone();
        Ok(Self {
            images: ImageProcessor::new(image),
            videos: VideoProcessor::new(video),
            frames: FrameLoader::new(frames),
        })
    }

    /// Relative paths are taken from `base` (the request file's directory).
    pub fn load(&self, req: &MediaRequest, base: &Path) -> Result<PreparedMedia> {
        self.load_resized(req, base, None)
    }

    /// [`Self::load`], each image and video frame first resized to `size` (width, height) as
    /// Pillow's `Image.resize` does by default (bicubic), as the DPO-data scripts do.
    pub fn load_resized(
        &self,
        req: &MediaRequest,
        base: &Path,
        size: Option<(u32, u32)>,
    ) -> Result<PreparedMedia> {
        let resize = |rgb| -> Result<_> {
            Ok(match size {
                Some((w, h)) => resize_pillow(&rgb, w, h, Filter::Bicubic)?,
                None => rgb,
            })
        };
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let images = req
            .images
            .iter()
            .map(|p| {
                let image = load_image(resolve(p))?;
                Ok(match size {
                    Some(_) => {
                        let rgb = to_rgb(&image, self.images.config.alpha);
                        self.images.preprocess_rgb(&resize(rgb)?)?
                    }
                    None => self.images.preprocess(&image)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let videos = req
            .videos
            .iter()
            .map(|v| {
                let source = match v {
                    VideoSource::FrameDir(p) => VideoSource::FrameDir(resolve(p)),
                    VideoSource::Gif(p) => VideoSource::Gif(resolve(p)),
                    VideoSource::File(p) => VideoSource::File(resolve(p)),
                    VideoSource::FrameFiles(fs) => {
                        VideoSource::FrameFiles(fs.iter().map(|p| resolve(p)).collect())
                    }
                };
                let frames = self
                    .frames
                    .load(&source)?
                    .into_iter()
                    .map(resize)
                    .collect::<Result<Vec<_>>>()?;
                Ok(self.videos.preprocess(&frames)?)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedMedia { images, videos })
    }
}

/// Encodes a request's tiles in one backend call and packs them per image / video.
pub fn encode_media(backend: &dyn Backend, media: &PreparedMedia) -> Result<MediaFeatures> {
    encode_media_with(
        |tiles| backend.encode_tiles(tiles),
        backend.image_newline(),
        &backend.config().anyres,
        media,
    )
}

/// Encodes all of a request's tiles with one call of `encode` ([tiles, 3, S, S] →
/// [tiles, patches, hidden]) and packs them per image (anyres) and video (pooling). Training
/// passes the model itself, so the result stays differentiable in its weights.
pub fn encode_media_with(
    encode: impl FnOnce(&Tensor) -> Result<Tensor>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> Result<MediaFeatures> {
    let mut all: Vec<&Tensor> = media.images.iter().map(|i| &i.pixel_values).collect();
    all.extend(media.videos.iter());
    if all.is_empty() {
        return Ok(MediaFeatures::default());
    }
    let counts = all
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let feats = encode(&Tensor::cat(&all, 0)?)?;
    let mut out = MediaFeatures::default();
    let mut at = 0;
    for (k, n) in counts.into_iter().enumerate() {
        let part = feats.narrow(0, at, n)?;
        at += n;
        match media.images.get(k) {
            Some(image) => {
                out.images
                    .push(pack_image(&part, image.original_size, newline, geometry)?)
            }
            None => out.videos.push(pack_video(&part, newline)?),
        }
    }
    Ok(out)
}
