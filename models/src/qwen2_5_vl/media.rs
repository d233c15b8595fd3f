//! A request's images and videos read and preprocessed for a Qwen-VL checkpoint, as
//! `engine score`, `engine logprob` and the trainer read them, and encoded by the model's
//! vision transformer with the grids its M-RoPE positions need. Images go through the processor (`smart_resize`,
//! 14 px patches, temporal pairs). A video is given as its frames (a list of files or a
//! directory) or as a video file (decoded by `ffmpeg`, sampled at 2 fps as qwen_vl_utils
//! samples a file) and reaches the model as its family's scripts send it ([`QwenVideos`]).

use std::path::Path;

use candle_core::{Device, Tensor};

use super::MediaGrid;
use crate::pack::{EncodedMedia, VideoFeatures};
use crate::preprocess::video::find_program;
use crate::preprocess::{
    load_image, FrameLoader, FrameSampling, MediaRequest, QwenVlPixels, QwenVlProcessor,
    QwenVlVideo, VideoSource,
};
use crate::{Error, Result};

/// One medium's merged features [tokens, hidden] and, per deep-stack level (Qwen3-VL; none
/// for Qwen2.5-VL), its deep-stack features [tokens, hidden].
#[derive(Debug, Clone)]
pub struct QwenVisionFeatures {
    pub merged: Tensor,
    pub deepstack: Vec<Tensor>,
}

/// What reading a request's media needs of a Qwen-VL model (Qwen2.5-VL, Qwen3-VL): its vision
/// transformer over a batch of media, and a video item's grid.
pub trait QwenVision {
    /// Several media encoded in one pass (attention never crosses a medium) → each one's
    /// features, in order.
    fn encode_media(&self, media: &[&QwenVlPixels]) -> Result<Vec<QwenVisionFeatures>>;

    /// A video item's grid for the M-RoPE positions; a model without video items says so.
    fn video_grid(&self, video: &QwenVlVideo) -> Result<MediaGrid>;

    /// Whether a video item reaches the prompt as one run of tokens per temporal patch, each
    /// after its time, at positions of its own (Qwen3-VL), rather than one run (Qwen2.5-VL).
    fn timed_video_items(&self) -> bool {
        false
    }
}

/// A medium's `(grid_t, grid_h, grid_w)` in patches.
pub(crate) type GridThw = (usize, usize, usize);

/// The media's patches stacked for one pass of a vision transformer on `device`, with their
/// grids.
pub(crate) fn stacked_pixels(
    media: &[&QwenVlPixels],
    device: &Device,
) -> Result<(Tensor, Vec<GridThw>)> {
    let grids = media.iter().map(|m| m.grid_thw).collect();
    let pixels = Tensor::cat(
        &media.iter().map(|m| &m.pixel_values).collect::<Vec<_>>(),
        0,
    )?
    .to_device(device)?;
    Ok((pixels, grids))
}

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

    /// The most patches one frame has (an image is one frame; a video item's frames are its
    /// grid's rows and columns).
    pub fn frame_patches(&self) -> usize {
        let frame = |p: &QwenVlPixels| p.grid_thw.1 * p.grid_thw.2;
        self.images
            .iter()
            .map(frame)
            .chain(self.videos.iter().flat_map(|v| match v {
                QwenVideo::Item(video) => vec![frame(&video.pixels)],
                QwenVideo::Frames(frames) => frames.iter().map(frame).collect(),
            }))
            .max()
            .unwrap_or(0)
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
                let files = match &source {
                    // qwen_vl_utils reads a GIF as any other file (decord, through ffmpeg), so it
                    // is sampled by its frame rate, not as a list of frames.
                    VideoSource::File(path) | VideoSource::Gif(path) => {
                        let ffmpeg = find_program("ffmpeg", std::env::var_os("PATH").as_deref());
                        return processor
                            .preprocess_file(path, ffmpeg.as_deref())
                            .map(QwenVideo::Item);
                    }
                    VideoSource::FrameFiles(_) | VideoSource::FrameDir(_) => {
                        source.frame_files()?.unwrap_or_default()
                    }
                };
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
    /// video with its grids (and its deep-stack levels, for Qwen3-VL), from which prompts
    /// showing some or all of them are built.
    pub fn encoded(&self, model: &dyn QwenVision) -> Result<EncodedMedia> {
        let mut all: Vec<&QwenVlPixels> = self.images.iter().collect();
        for v in &self.videos {
            match v {
                QwenVideo::Item(video) => all.push(&video.pixels),
                QwenVideo::Frames(frames) => all.extend(frames),
            }
        }
        let (image_grids, video_grids) = self.grids(model)?;
        let encoded = model.encode_media(&all)?;
        let levels = encoded.first().map_or(0, |f| f.deepstack.len());
        if let Some(odd) = encoded.iter().find(|f| f.deepstack.len() != levels) {
            return Err(Error::Media(format!(
                "media encoded with {} and {levels} deep-stack levels",
                odd.deepstack.len()
            )));
        }
        let timed = model.timed_video_items();
        let deepstack = (0..levels)
            .map(|l| self.laid_out(encoded.iter().map(|f| f.deepstack[l].clone()), timed))
            .collect::<Result<_>>()?;
        Ok(EncodedMedia {
            image_grids,
            video_grids,
            deepstack,
            ..self.laid_out(encoded.into_iter().map(|f| f.merged), timed)?
        })
    }

    /// Features of every medium in encoding order (images, then each video's item or frames)
    /// laid out per image and per video; `timed`: video items split per temporal patch.
    fn laid_out(
        &self,
        mut feats: impl Iterator<Item = Tensor>,
        timed: bool,
    ) -> Result<EncodedMedia> {
        let mut out = EncodedMedia {
            images: feats.by_ref().take(self.images.len()).collect(),
            ..Default::default()
        };
        for v in &self.videos {
            out.videos.push(match v {
                QwenVideo::Item(video) => {
                    let all = feats
                        .next()
                        .ok_or_else(|| Error::Media("a video was not encoded".into()))?;
                    if timed {
                        let t = video.timestamps.len();
                        let n = all.dim(0)?;
                        if t == 0 || n % t != 0 || t != video.pixels.grid_thw.0 {
                            return Err(Error::Media(format!(
                                "a video of {} temporal patches with {t} timestamps and {n} \
                                 features",
                                video.pixels.grid_thw.0
                            )));
                        }
                        VideoFeatures::Timed {
                            patches: (0..t)
                                .map(|k| all.narrow(0, k * (n / t), n / t))
                                .collect::<candle_core::Result<_>>()?,
                            seconds: video.timestamps.clone(),
                        }
                    } else {
                        VideoFeatures::Pooled(all)
                    }
                }
                QwenVideo::Frames(frames) => {
                    VideoFeatures::Frames(feats.by_ref().take(frames.len()).collect())
                }
            });
        }
        Ok(out)
    }

    /// Each image's grid, and each video's (one per frame in frames mode, one per temporal
    /// patch of a timed item): what the prompt's M-RoPE positions follow, known without
    /// encoding. A model without video items refuses a video sent as one.
    pub fn grids(&self, model: &dyn QwenVision) -> Result<(Vec<MediaGrid>, Vec<Vec<MediaGrid>>)> {
        let images = self.images.iter().map(MediaGrid::of_image).collect();
        let videos = self
            .videos
            .iter()
            .map(|v| match v {
                QwenVideo::Item(video) if model.timed_video_items() => {
                    // transformers' `get_rope_index`: the grid repeated per temporal patch,
                    // each of t = 1.
                    let grid = model.video_grid(video)?;
                    Ok(vec![MediaGrid { t: 1, ..grid }; grid.t])
                }
                QwenVideo::Item(video) => Ok(vec![model.video_grid(video)?]),
                QwenVideo::Frames(frames) => Ok(frames.iter().map(MediaGrid::of_image).collect()),
            })
            .collect::<Result<_>>()?;
        Ok((images, videos))
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
