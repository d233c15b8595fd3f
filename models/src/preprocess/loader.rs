//! A request's media loaded for the model: paths resolved, images and video frames decoded
//! and preprocessed with the processor settings of the model directory.

use std::path::Path;

use candle_core::Tensor;

use super::frame_tiles::FrameTileProcessor;
use super::image::{load_image, to_rgb, ImageProcessor, ImageProcessorConfig, ProcessedImage};
use super::request::{MediaRequest, VideoMode};
use super::resize::{resize_pillow, Filter};
use super::video::{FrameLoader, FrameSampling, VideoProcessor, VideoProcessorConfig, VideoSource};
use crate::config::LlavaConfig;
use crate::Result;

/// Preprocessed pixels of one request.
pub struct PreparedMedia {
    pub images: Vec<ProcessedImage>,
    /// Frames [n, 3, S, S] per video, preprocessed for `video_mode`.
    pub videos: Vec<Tensor>,
    pub video_mode: VideoMode,
}

impl PreparedMedia {
    /// Tiles and frames the vision tower encodes for this request.
    pub fn tiles(&self) -> usize {
        let first_dim = |t: &Tensor| t.dims().first().copied().unwrap_or(0);
        self.images
            .iter()
            .map(|i| first_dim(&i.pixel_values))
            .sum::<usize>()
            + self.videos.iter().map(first_dim).sum::<usize>()
    }
}

pub struct MediaLoader {
    images: ImageProcessor,
    videos: VideoProcessor,
    frame_tiles: FrameTileProcessor,
    frames: FrameLoader,
    video_mode: VideoMode,
}

impl MediaLoader {
    /// Processor settings from the model directory (`processor_config.json` or
    /// `preprocessor_config.json`; without either, the model's tile size and pinpoints with
    /// SigLIP's normalisation), `frames` sampled per video. Videos take the pooled path
    /// (what the trainer's `<video>` markers expect) until [`Self::with_video_mode`] says
    /// otherwise.
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
            frame_tiles: FrameTileProcessor::new(image.clone()),
            images: ImageProcessor::new(image),
            videos: VideoProcessor::new(video),
            frames: FrameLoader::new(frames),
            video_mode: VideoMode::Pooled,
        })
    }

    pub fn with_video_mode(mut self, mode: VideoMode) -> Self {
        self.video_mode = mode;
        self
    }

    pub fn video_mode(&self) -> VideoMode {
        self.video_mode
    }

    /// Relative paths are taken from `base` (the request file's directory).
    pub fn load(&self, req: &MediaRequest, base: &Path) -> Result<PreparedMedia> {
        self.load_with(req, base, self.video_mode, None)
    }

    /// [`Self::load`] with videos prepared for `mode`.
    pub fn load_as(
        &self,
        req: &MediaRequest,
        base: &Path,
        mode: VideoMode,
    ) -> Result<PreparedMedia> {
        self.load_with(req, base, mode, None)
    }

    /// [`Self::load`], each image and video frame first resized to `size` (width, height) as
    /// Pillow's `Image.resize` does by default (bicubic), as the DPO-data scripts do.
    pub fn load_resized(
        &self,
        req: &MediaRequest,
        base: &Path,
        size: Option<(u32, u32)>,
    ) -> Result<PreparedMedia> {
        self.load_with(req, base, self.video_mode, size)
    }

    fn load_with(
        &self,
        req: &MediaRequest,
        base: &Path,
        mode: VideoMode,
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
                // What a path is (frame directory, GIF, video file) is only known once it is
                // taken from `base`.
                let source = match v {
                    VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => {
                        VideoSource::from_path(resolve(p))
                    }
                    VideoSource::FrameFiles(fs) => {
                        VideoSource::FrameFiles(fs.iter().map(|p| resolve(p)).collect())
                    }
                };
                Ok(match mode {
                    VideoMode::Pooled => {
                        let frames = self
                            .frames
                            .load(&source)?
                            .into_iter()
                            .map(resize)
                            .collect::<Result<Vec<_>>>()?;
                        self.videos.preprocess(&frames)?
                    }
                    VideoMode::Frames => {
                        let loader = self.frames.clone().with_sampling(FrameSampling::Truncated);
                        let frames = loader
                            .load(&source)?
                            .into_iter()
                            .map(resize)
                            .collect::<Result<Vec<_>>>()?;
                        self.frame_tiles.preprocess(&frames)?
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PreparedMedia {
            images,
            videos,
            video_mode: mode,
        })
    }
}
