//! Media of a request: paths resolved, images and video frames decoded and preprocessed (on
//! worker threads), then encoded by the backend and packed into token features.
//!
//! A video reaches the model in one of two ways ([`VideoMode`]): as the UnifiedReward LLaVA
//! scripts send it (its sampled frames as plain image tiles, one `<image>` marker each), or
//! through LLaVA-OneVision's pooled video path (one `<video>` marker).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Tensor;
use serde_json::Value;
use unireward_models::config::LlavaConfig;
use unireward_models::judge::Media;
use unireward_models::pack::{pack_image, pack_video};
use unireward_models::preprocess::image::to_rgb;
use unireward_models::preprocess::resize::resize_pillow;
use unireward_models::preprocess::{
    load_image, AnyresGeometry, Filter, FrameLoader, FrameSampling, FrameTileProcessor,
    ImageProcessor, ImageProcessorConfig, ProcessedImage, VideoProcessor, VideoProcessorConfig,
    VideoSource,
};
use unireward_models::MediaFeatures;

use crate::backend::Backend;
use crate::error::{EngineError, Result};

/// How a video reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoMode {
    /// As the UnifiedReward LLaVA scripts run their checkpoints: frames sampled at
    /// `linspace(0, n - 1, N, dtype=int)`, each one plain tile (Pillow bicubic to the tile
    /// size, the image processor's arithmetic; no anyres, no newline, no pooling), one
    /// `<image>` marker per frame. See `unireward_models::preprocess::frame_tiles`.
    Frames,
    /// LLaVA-OneVision's video path (transformers): frames at `round(linspace(0, n - 1, N))`,
    /// torchvision's resize, each frame's features 2x2-pooled, one newline after the last
    /// frame, one `<video>` marker per video.
    Pooled,
}

impl FromStr for VideoMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "frames" => Ok(VideoMode::Frames),
            "pooled" => Ok(VideoMode::Pooled),
            _ => Err(format!(
                "unknown video mode {s:?}; expected frames or pooled"
            )),
        }
    }
}

impl fmt::Display for VideoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoMode::Frames => "frames",
            VideoMode::Pooled => "pooled",
        })
    }
}

/// The media a request names: image paths and videos.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaRequest {
    pub images: Vec<PathBuf>,
    pub videos: Vec<VideoSource>,
}

impl MediaRequest {
    /// Reads `images_key` (a list of paths, or one path) and `video_key`. A plural key
    /// (`videos`, ending in `s`) lists videos, each a path (frame directory, GIF or video file)
    /// or a list of frame paths; a bare path is one video. A singular key (`video`) is one
    /// video: a path, or a list of frame paths (a one-entry list is that path).
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
        let lists_videos = video_key.ends_with('s');
        match v.get(video_key) {
            None | Some(Value::Null) => {}
            Some(Value::String(p)) => out.videos.push(VideoSource::from_path(p)),
            Some(Value::Array(items)) if lists_videos => {
                for item in items {
                    out.videos.push(video_source(item, video_key)?);
                }
            }
            // A list of frame lists under the singular key is how earlier files (and the
            // demo's judge data) wrote one video: still read as the videos it lists.
            Some(Value::Array(items)) if !items.is_empty() && items.iter().all(Value::is_array) => {
                for item in items {
                    out.videos.push(video_source(item, video_key)?);
                }
            }
            Some(one @ Value::Array(_)) => out.videos.push(video_source(one, video_key)?),
            Some(other) => return Err(format!("{video_key:?}: not a video: {other}")),
        }
        Ok(out)
    }
}

/// One video: a path, or a list of frame paths.
fn video_source(item: &Value, key: &str) -> std::result::Result<VideoSource, String> {
    match item {
        Value::String(p) => Ok(VideoSource::from_path(p)),
        Value::Array(frames) => {
            let paths = frames
                .iter()
                .map(|f| {
                    f.as_str().map(PathBuf::from).ok_or_else(|| {
                        format!("{key:?}: a video's frame list holds paths, found {f}")
                    })
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            VideoSource::from_paths(paths).map_err(|e| format!("{key:?}: {e}"))
        }
        other => Err(format!("{key:?}: not a video: {other}")),
    }
}

/// Preprocessed pixels of one request.
pub struct PreparedMedia {
    pub images: Vec<ProcessedImage>,
    /// Frames [n, 3, S, S] per video, preprocessed for `video_mode`.
    pub videos: Vec<Tensor>,
    pub video_mode: VideoMode,
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

/// A video's encoded features.
#[derive(Debug, Clone)]
pub enum VideoFeatures {
    /// [`VideoMode::Frames`]: one `[tokens_per_tile, D]` per frame, each filling one `<image>`.
    Frames(Vec<Tensor>),
    /// [`VideoMode::Pooled`]: `[tokens, D]`, filling one `<video>`.
    Pooled(Tensor),
}

/// A request's encoded media, per image and per video, from which prompts showing some or
/// all of them are built.
#[derive(Debug, Clone, Default)]
pub struct EncodedMedia {
    /// `[tokens, D]` per image (anyres-packed).
    pub images: Vec<Tensor>,
    pub videos: Vec<VideoFeatures>,
}

impl EncodedMedia {
    /// The features and built-in markers of a prompt showing the images at `images` and
    /// then the videos at `videos`, in that order. A frames-mode video shows as its frames'
    /// `<image>` markers; the built-in prompts cannot show images next to pooled videos.
    pub fn select(&self, images: &[usize], videos: &[usize]) -> Result<(MediaFeatures, Media)> {
        let missing = |what: &str, i: usize, n: usize| {
            EngineError::Invalid(format!("no {what} {i}: the request has {n}"))
        };
        let mut out = MediaFeatures::default();
        for &i in images {
            let t = self
                .images
                .get(i)
                .ok_or_else(|| missing("image", i, self.images.len()))?;
            out.images.push(t.clone());
        }
        for &i in videos {
            match self
                .videos
                .get(i)
                .ok_or_else(|| missing("video", i, self.videos.len()))?
            {
                VideoFeatures::Frames(frames) => out.images.extend(frames.iter().cloned()),
                VideoFeatures::Pooled(t) => out.videos.push(t.clone()),
            }
        }
        let marks = match (out.images.len(), out.videos.len()) {
            (n, 0) => Media::Images(n),
            (0, n) => Media::Videos(n),
            (i, v) => {
                return Err(EngineError::Invalid(format!(
                    "a built-in prompt shows images or videos, not both: {i} image(s) and {v} \
                     pooled video(s)"
                )))
            }
        };
        Ok((out, marks))
    }

    /// [`Self::select`] of every image and video.
    pub fn all(&self) -> Result<(MediaFeatures, Media)> {
        let images: Vec<usize> = (0..self.images.len()).collect();
        let videos: Vec<usize> = (0..self.videos.len()).collect();
        self.select(&images, &videos)
    }

    /// Every feature in marker order: the images, then each video's frames as further
    /// images (frames mode) or the pooled videos.
    pub fn into_features(self) -> MediaFeatures {
        let mut out = MediaFeatures {
            images: self.images,
            videos: Vec::new(),
        };
        for v in self.videos {
            match v {
                VideoFeatures::Frames(frames) => out.images.extend(frames),
                VideoFeatures::Pooled(t) => out.videos.push(t),
            }
        }
        out
    }
}

/// Encodes a request's tiles in one backend call and packs them per image / video.
pub fn encode_media(backend: &dyn Backend, media: &PreparedMedia) -> Result<MediaFeatures> {
    Ok(encode_request(backend, media)?.into_features())
}

/// [`encode_media`], kept per image and per video.
pub fn encode_request(backend: &dyn Backend, media: &PreparedMedia) -> Result<EncodedMedia> {
    encode_request_with(
        |tiles| backend.encode_tiles(tiles),
        backend.image_newline(),
        &backend.config().anyres,
        media,
    )
}

/// Encodes all of a request's tiles with one call of `encode` ([tiles, 3, S, S] →
/// [tiles, patches, hidden]) and packs them per image (anyres) and video (pooling, or plain
/// frame tiles). Training passes the model itself, so the result stays differentiable in its
/// weights.
pub fn encode_media_with(
    encode: impl FnOnce(&Tensor) -> Result<Tensor>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> Result<MediaFeatures> {
    Ok(encode_request_with(encode, newline, geometry, media)?.into_features())
}

/// [`encode_media_with`], kept per image and per video.
pub fn encode_request_with(
    encode: impl FnOnce(&Tensor) -> Result<Tensor>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> Result<EncodedMedia> {
    let mut all: Vec<&Tensor> = media.images.iter().map(|i| &i.pixel_values).collect();
    all.extend(media.videos.iter());
    if all.is_empty() {
        return Ok(EncodedMedia::default());
    }
    let counts = all
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let feats = encode(&Tensor::cat(&all, 0)?)?;
    let mut out = EncodedMedia::default();
    let mut at = 0;
    for (k, n) in counts.into_iter().enumerate() {
        let part = feats.narrow(0, at, n)?;
        at += n;
        match media.images.get(k) {
            Some(image) => {
                out.images
                    .push(pack_image(&part, image.original_size, newline, geometry)?)
            }
            None => out.videos.push(match media.video_mode {
                VideoMode::Pooled => VideoFeatures::Pooled(pack_video(&part, newline)?),
                // One plain tile a frame, as `encode_images` leaves a 4-D image tensor.
                VideoMode::Frames => VideoFeatures::Frames(
                    (0..n)
                        .map(|f| part.get(f))
                        .collect::<candle_core::Result<Vec<_>>>()?,
                ),
            }),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn videos(v: Value, key: &str) -> std::result::Result<Vec<VideoSource>, String> {
        MediaRequest::parse(&v, "images", key).map(|r| r.videos)
    }

    #[test]
    fn videos_lists_videos_and_video_is_one() {
        // The README's pair: two videos, whatever each path is.
        let two = videos(json!({"videos": ["a.gif", "frames_b/"]}), "videos").unwrap();
        assert_eq!(
            two,
            vec![
                VideoSource::Gif("a.gif".into()),
                VideoSource::File("frames_b/".into())
            ]
        );
        // Each entry a path or a frame list.
        let mixed = videos(
            json!({"videos": [["f0.png", "f1.png"], "c.mp4", ["d.mp4"]]}),
            "videos",
        )
        .unwrap();
        assert_eq!(
            mixed,
            vec![
                VideoSource::FrameFiles(vec!["f0.png".into(), "f1.png".into()]),
                VideoSource::File("c.mp4".into()),
                VideoSource::File("d.mp4".into()),
            ]
        );
        assert_eq!(
            videos(json!({"videos": "c.mp4"}), "videos").unwrap().len(),
            1
        );
        // Singular: one video, a path or its frames.
        let frames = videos(json!({"video": ["f0.png", "f1.png", "f2.png"]}), "video").unwrap();
        assert_eq!(
            frames,
            vec![VideoSource::FrameFiles(vec![
                "f0.png".into(),
                "f1.png".into(),
                "f2.png".into()
            ])]
        );
        assert_eq!(
            videos(json!({"video": "clip.gif"}), "video").unwrap(),
            vec![VideoSource::Gif("clip.gif".into())]
        );
        // Earlier files wrote one video as a list of one frame list under the singular key.
        let nested = videos(json!({"video": [["f0.png", "f1.png"]]}), "video").unwrap();
        assert_eq!(
            nested,
            vec![VideoSource::FrameFiles(vec![
                "f0.png".into(),
                "f1.png".into()
            ])]
        );
        assert!(videos(json!({"video": [1, 2]}), "video")
            .unwrap_err()
            .contains("frame list holds paths"));
        assert!(videos(json!({"videos": [["a.png", 3]]}), "videos").is_err());
        assert!(videos(json!({"videos": [[]]}), "videos").is_err());
        assert!(videos(json!({"videos": 3}), "videos").is_err());
    }

    #[test]
    fn frames_mode_selects_frames_as_images() {
        let t = |v: f32| Tensor::full(v, (2, 3), &candle_core::Device::Cpu).unwrap();
        let media = EncodedMedia {
            images: vec![],
            videos: vec![
                VideoFeatures::Frames(vec![t(0.0), t(1.0), t(2.0)]),
                VideoFeatures::Frames(vec![t(10.0), t(11.0)]),
            ],
        };
        let (f, marks) = media.select(&[], &[1, 0]).unwrap();
        assert_eq!(marks, Media::Images(5));
        let firsts: Vec<f32> = f
            .images
            .iter()
            .map(|x| x.get(0).unwrap().get(0).unwrap().to_scalar().unwrap())
            .collect();
        assert_eq!(firsts, vec![10.0, 11.0, 0.0, 1.0, 2.0]);
        assert!(f.videos.is_empty());
        assert!(media.select(&[], &[2]).is_err());
        let pooled = EncodedMedia {
            images: vec![t(5.0)],
            videos: vec![VideoFeatures::Pooled(t(7.0))],
        };
        assert_eq!(pooled.select(&[], &[0]).unwrap().1, Media::Videos(1));
        assert!(pooled.all().is_err());
        assert_eq!(pooled.clone().into_features().videos.len(), 1);
    }
}
