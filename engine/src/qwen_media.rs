//! A request's images and videos read and preprocessed for a Qwen2.5-VL checkpoint, as
//! `engine score` and `engine logprob` read them, and encoded by the model's vision transformer
//! with the grids its M-RoPE positions need. Images go through the processor (`smart_resize`,
//! 14 px patches, temporal pairs). A video is given as its frames (a list of files or a
//! directory) and reaches the model as its family's scripts send it ([`QwenVideos`]).

use std::path::Path;

use unireward_models::judge::Media;
use unireward_models::preprocess::{
    load_image, FrameLoader, FrameSampling, MediaRequest, QwenVlPixels, QwenVlProcessor,
    QwenVlVideo,
};
use unireward_models::qwen2_5_vl::Qwen25Vl;
use unireward_models::MediaFeatures;

use crate::error::{EngineError, Result};

/// How a Qwen-VL judge's scripts send a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QwenVideos {
    /// One video item of all its frames: `inference_qwen`'s `{"type": "video", "video":
    /// [frames]}` through qwen_vl_utils ([`QwenVlProcessor::preprocess_frames`]).
    Items,
    /// This many frames, sampled as `linspace(0, n - 1, N, dtype=int)`, each sent as an image
    /// item: the UnifiedReward-2.0 and Think-qwen3vl scripts (`--video-mode frames`).
    Frames(usize),
}

/// A request's media, preprocessed, in marker order.
pub struct QwenMedia {
    pub images: Vec<QwenVlPixels>,
    pub videos: Vec<QwenVlVideo>,
}

impl QwenMedia {
    /// The media of `request`, relative paths under `base`; the error names the file. In
    /// frames mode a video's sampled frames follow the request's images as images.
    pub fn read(
        processor: &QwenVlProcessor,
        request: &MediaRequest,
        base: &Path,
        mode: QwenVideos,
    ) -> std::result::Result<Self, String> {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let mut images = request
            .images
            .iter()
            .map(|p| {
                let path = at(p);
                let image = load_image(&path).map_err(|e| e.to_string())?;
                processor
                    .preprocess(&image)
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        if let QwenVideos::Frames(n) = mode {
            let loader = FrameLoader::new(n).with_sampling(FrameSampling::Truncated);
            for source in &request.videos {
                let source = source.under(base);
                for frame in loader.load(&source).map_err(|e| e.to_string())? {
                    images.push(
                        processor
                            .preprocess_rgb(&frame)
                            .map_err(|e| e.to_string())?,
                    );
                }
            }
            return Ok(Self {
                images,
                videos: Vec::new(),
            });
        }
        let videos = request
            .videos
            .iter()
            .map(|source| {
                let source = source.under(base);
                let files = source
                    .frame_files()
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| {
                        format!(
                        "{:?}: Qwen2.5-VL takes a video as its frames (a list of image files or a \
                         directory of them); decoding a video file with qwen_vl_utils' 2 fps \
                         sampling is not built yet",
                        source
                    )
                    })?;
                let frames = files
                    .iter()
                    .map(|f| Ok(processor.rgb(&load_image(f)?)))
                    .collect::<unireward_models::Result<Vec<_>>>()
                    .map_err(|e| e.to_string())?;
                processor
                    .preprocess_frames(&frames)
                    .map_err(|e| format!("video of {} frames: {e}", files.len()))
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        Ok(Self { images, videos })
    }

    /// How the templates mark these media: images, or videos (one marker each); a request
    /// with both is refused, as no template has places for both.
    pub fn marks(&self) -> Result<Media> {
        match (self.images.len(), self.videos.len()) {
            (n, 0) => Ok(Media::Images(n)),
            (0, n) => Ok(Media::Videos(n)),
            (i, v) => Err(EngineError::Invalid(format!(
                "{i} image(s) and {v} video(s) in one request; a template marks one kind"
            ))),
        }
    }

    /// Every medium encoded in one vision pass, with its grid.
    pub fn features(&self, model: &Qwen25Vl) -> Result<MediaFeatures> {
        let all: Vec<&QwenVlPixels> = self
            .images
            .iter()
            .chain(self.videos.iter().map(|v| &v.pixels))
            .collect();
        let mut encoded = model.media_features_batch(&all)?;
        let videos = encoded.split_off(self.images.len());
        Ok(MediaFeatures {
            images: encoded,
            videos,
            image_grids: self.images.iter().map(|p| model.image_grid(p)).collect(),
            video_grids: self.videos.iter().map(|v| model.video_grid(v)).collect(),
        })
    }
}
