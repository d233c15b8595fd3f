//! A request's images and videos read and preprocessed for a Qwen2.5-VL checkpoint, as
//! `engine score`, `engine logprob` and the trainer read them, and encoded by the model's
//! vision transformer with the grids its M-RoPE positions need. Images go through the processor (`smart_resize`,
//! 14 px patches, temporal pairs). A video is given as its frames (a list of files or a
//! directory) and reaches the model as its family's scripts send it ([`QwenVideos`]).

use std::path::Path;

use super::{MediaGrid, Qwen25Vl};
use crate::pack::{EncodedMedia, VideoFeatures};
use crate::preprocess::{
    load_image, FrameLoader, FrameSampling, MediaRequest, QwenVlPixels, QwenVlProcessor,
    QwenVlVideo,
};
use crate::{Error, Result};

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

/// One video, preprocessed as its family's scripts send it.
#[derive(Clone)]
pub enum QwenVideo {
    /// One video item.
    Item(QwenVlVideo),
    /// Sampled frames, each an image item.
    Frames(Vec<QwenVlPixels>),
}

/// A request's media, preprocessed, in marker order.
#[derive(Clone)]
pub struct QwenMedia {
    pub images: Vec<QwenVlPixels>,
    pub videos: Vec<QwenVideo>,
}

impl QwenMedia {
    /// Patch rows the vision transformer encodes.
    pub fn patches(&self) -> usize {
        let rows = |p: &QwenVlPixels| p.pixel_values.dims().first().copied().unwrap_or(0);
        self.images.iter().map(rows).sum::<usize>()
            + self
                .videos
                .iter()
                .map(|v| match v {
                    QwenVideo::Item(video) => rows(&video.pixels),
                    QwenVideo::Frames(frames) => frames.iter().map(rows).sum(),
                })
                .sum::<usize>()
    }

    /// The media of `request`, relative paths under `base`; the error names the file.
    pub fn read(
        processor: &QwenVlProcessor,
        request: &MediaRequest,
        base: &Path,
        mode: QwenVideos,
    ) -> Result<Self> {
        let at = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let images = request
            .images
            .iter()
            .map(|p| {
                let path = at(p);
                let image = load_image(&path)?;
                processor
                    .preprocess(&image)
                    .map_err(|e| Error::Media(format!("{}: {e}", path.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        let videos = request
            .videos
            .iter()
            .map(|source| {
                let source = source.under(base);
                if let QwenVideos::Frames(n) = mode {
                    let loader = FrameLoader::new(n).with_sampling(FrameSampling::Truncated);
                    return loader
                        .load(&source)
                        .and_then(|frames| {
                            frames.iter().map(|f| processor.preprocess_rgb(f)).collect()
                        })
                        .map(QwenVideo::Frames);
                }
                let files = source.frame_files()?.ok_or_else(|| {
                    Error::Media(format!(
                        "{:?}: Qwen2.5-VL takes a video as its frames (a list of image files or a \
                         directory of them); decoding a video file with qwen_vl_utils' 2 fps \
                         sampling is not built yet",
                        source
                    ))
                })?;
                let frames = files
                    .iter()
                    .map(|f| Ok(processor.rgb(&load_image(f)?)))
                    .collect::<Result<Vec<_>>>()?;
                processor
                    .preprocess_frames(&frames)
                    .map(QwenVideo::Item)
                    .map_err(|e| Error::Media(format!("video of {} frames: {e}", files.len())))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { images, videos })
    }

    /// Every medium encoded in one pass of the vision transformer, kept per image and per
    /// video with its grids, from which prompts showing some or all of them are built.
    pub fn encoded(&self, model: &Qwen25Vl) -> Result<EncodedMedia> {
        let mut all: Vec<&QwenVlPixels> = self.images.iter().collect();
        for v in &self.videos {
            match v {
                QwenVideo::Item(video) => all.push(&video.pixels),
                QwenVideo::Frames(frames) => all.extend(frames),
            }
        }
        let mut encoded = model.media_features_batch(&all)?.into_iter();
        let (image_grids, video_grids) = self.grids(model);
        let mut out = EncodedMedia {
            images: encoded.by_ref().take(self.images.len()).collect(),
            image_grids,
            video_grids,
            ..Default::default()
        };
        for v in &self.videos {
            match v {
                QwenVideo::Item(_) => {
                    let feats = encoded
                        .next()
                        .ok_or_else(|| Error::Media("a video was not encoded".into()))?;
                    out.videos.push(VideoFeatures::Pooled(feats));
                }
                QwenVideo::Frames(frames) => {
                    out.videos.push(VideoFeatures::Frames(
                        encoded.by_ref().take(frames.len()).collect(),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Each image's grid, and each video's (one per frame in frames mode): what the prompt's
    /// M-RoPE positions follow, known without encoding.
    pub fn grids(&self, model: &Qwen25Vl) -> (Vec<MediaGrid>, Vec<Vec<MediaGrid>>) {
        let images = self.images.iter().map(|p| model.image_grid(p)).collect();
        let videos = self
            .videos
            .iter()
            .map(|v| match v {
                QwenVideo::Item(video) => vec![model.video_grid(video)],
                QwenVideo::Frames(frames) => frames.iter().map(|p| model.image_grid(p)).collect(),
            })
            .collect();
        (images, videos)
    }

    /// The images at `images` and the videos at `videos`, in that order (pixels shared, not
    /// copied): the media of a request that still need encoding.
    pub fn subset(&self, images: &[usize], videos: &[usize]) -> Self {
        Self {
            images: images
                .iter()
                .filter_map(|&i| self.images.get(i).cloned())
                .collect(),
            videos: videos
                .iter()
                .filter_map(|&i| self.videos.get(i).cloned())
                .collect(),
        }
    }
}
