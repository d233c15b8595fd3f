//! A request's preprocessed media encoded in one call of the vision tower and packed into
//! token features, kept per image and per video so that prompts showing some or all of them
//! can be built. The encoder is the caller's (a backend, or the model itself in training).

use candle_core::Tensor;

use super::image::pack_image;
use super::merge::MediaFeatures;
use super::video::pack_video;
use crate::judge::Media;
use crate::preprocess::anyres::AnyresGeometry;
use crate::preprocess::loader::PreparedMedia;
use crate::preprocess::request::VideoMode;
use crate::qwen2_5_vl::MediaGrid;
use crate::{Error, Result};

/// A video's encoded features.
#[derive(Debug, Clone)]
pub enum VideoFeatures {
    /// [`VideoMode::Frames`]: one `[tokens_per_tile, D]` per frame, each filling one `<image>`.
    Frames(Vec<Tensor>),
    /// [`VideoMode::Pooled`]: `[tokens, D]`, filling one `<video>`.
    Pooled(Tensor),
    /// Qwen3-VL's video item: one `[tokens, D]` per temporal patch, each filling its own run
    /// of `<|video_pad|>` after the patch's time (`seconds`).
    Timed {
        patches: Vec<Tensor>,
        seconds: Vec<f64>,
    },
}

/// A request's encoded media, per image and per video, from which prompts showing some or
/// all of them are built.
#[derive(Debug, Clone, Default)]
pub struct EncodedMedia {
    /// `[tokens, D]` per image (anyres-packed).
    pub images: Vec<Tensor>,
    pub videos: Vec<VideoFeatures>,
    /// For a family whose positions follow the media's layout (Qwen-VL's M-RoPE): each
    /// image's grid, and each video's (one per frame in frames mode, one for a pooled video).
    /// Empty for LLaVA.
    pub image_grids: Vec<MediaGrid>,
    pub video_grids: Vec<Vec<MediaGrid>>,
    /// Per deep-stack level (Qwen3-VL), the same media's features at that level, laid out as
    /// `images` and `videos` are; empty for the other families.
    pub deepstack: Vec<EncodedMedia>,
}

impl EncodedMedia {
    /// The features and built-in markers of a prompt showing the images at `images` and
    /// then the videos at `videos`, in that order. A frames-mode video shows as its frames'
    /// `<image>` markers; the built-in prompts cannot show images next to pooled videos.
    pub fn select(&self, images: &[usize], videos: &[usize]) -> Result<(MediaFeatures, Media)> {
        let missing = |what: &str, i: usize, n: usize| {
            Error::Media(format!("no {what} {i}: the request has {n}"))
        };
        let mut out = MediaFeatures::default();
        let mut video_markers = 0;
        for &i in images {
            let t = self
                .images
                .get(i)
                .ok_or_else(|| missing("image", i, self.images.len()))?;
            out.images.push(t.clone());
            out.image_grids.extend(self.image_grids.get(i).copied());
        }
        for &i in videos {
            let grids = self.video_grids.get(i).map(Vec::as_slice).unwrap_or(&[]);
            match self
                .videos
                .get(i)
                .ok_or_else(|| missing("video", i, self.videos.len()))?
            {
                VideoFeatures::Frames(frames) => {
                    out.images.extend(frames.iter().cloned());
                    out.image_grids.extend_from_slice(grids);
                }
                VideoFeatures::Pooled(t) => {
                    out.videos.push(t.clone());
                    out.video_grids.extend_from_slice(grids);
                    video_markers += 1;
                }
                VideoFeatures::Timed { patches, seconds } => {
                    out.videos.extend(patches.iter().cloned());
                    out.video_grids.extend_from_slice(grids);
                    out.video_seconds.push(seconds.clone());
                    video_markers += 1;
                }
            }
        }
        out.deepstack = self
            .deepstack
            .iter()
            .map(|level| Ok(level.select(images, videos)?.0))
            .collect::<Result<_>>()?;
        let marks = match (out.images.len(), video_markers) {
            (n, 0) => Media::Images(n),
            (0, n) => Media::Videos(n),
            (i, v) => {
                return Err(Error::Media(format!(
                    "a built-in prompt shows images or videos, not both: {i} image(s) and {v} \
                     video(s)"
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
            image_grids: self.image_grids,
            deepstack: self
                .deepstack
                .into_iter()
                .map(EncodedMedia::into_features)
                .collect(),
            ..Default::default()
        };
        let mut grids = self.video_grids.into_iter();
        for v in self.videos {
            let g = grids.next().unwrap_or_default();
            match v {
                VideoFeatures::Frames(frames) => {
                    out.images.extend(frames);
                    out.image_grids.extend(g);
                }
                VideoFeatures::Pooled(t) => {
                    out.videos.push(t);
                    out.video_grids.extend(g);
                }
                VideoFeatures::Timed { patches, seconds } => {
                    out.videos.extend(patches);
                    out.video_grids.extend(g);
                    out.video_seconds.push(seconds);
                }
            }
        }
        out
    }
}

/// Encodes all of a request's tiles with one call of `encode` ([tiles, 3, S, S] →
/// [tiles, patches, hidden]) and packs them per image (anyres) and video (pooling, or plain
/// frame tiles). Training passes the model itself, so the result stays differentiable in its
/// weights.
pub fn encode_media_with<E: From<Error>>(
    encode: impl FnOnce(&Tensor) -> std::result::Result<Tensor, E>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> std::result::Result<MediaFeatures, E> {
    Ok(encode_request_with(encode, newline, geometry, media)?.into_features())
}

/// [`encode_media_with`], kept per image and per video.
pub fn encode_request_with<E: From<Error>>(
    encode: impl FnOnce(&Tensor) -> std::result::Result<Tensor, E>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> std::result::Result<EncodedMedia, E> {
    let mut all: Vec<&Tensor> = media.images.iter().map(|i| &i.pixel_values).collect();
    all.extend(media.videos.iter());
    if all.is_empty() {
        return Ok(EncodedMedia::default());
    }
    let counts = all
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(Error::from)?;
    let feats = encode(&Tensor::cat(&all, 0).map_err(Error::from)?)?;
    Ok(pack_request(&feats, counts, newline, geometry, media)?)
}

/// The encoded tiles `feats` of a request's images and videos (`counts` tiles each, in that
/// order) packed per image and video.
fn pack_request(
    feats: &Tensor,
    counts: Vec<usize>,
    newline: &Tensor,
    geometry: &AnyresGeometry,
    media: &PreparedMedia,
) -> Result<EncodedMedia> {
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

    #[test]
    fn frames_mode_selects_frames_as_images() {
        let t = |v: f32| Tensor::full(v, (2, 3), &candle_core::Device::Cpu).unwrap();
        let media = EncodedMedia {
            images: vec![],
            videos: vec![
                VideoFeatures::Frames(vec![t(0.0), t(1.0), t(2.0)]),
                VideoFeatures::Frames(vec![t(10.0), t(11.0)]),
            ],
            ..Default::default()
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
        assert_eq!(
            media.select(&[], &[2]).err().map(|e| e.to_string()),
            Some("no video 2: the request has 2".to_string())
        );
        let pooled = EncodedMedia {
            images: vec![t(5.0)],
            videos: vec![VideoFeatures::Pooled(t(7.0))],
            ..Default::default()
        };
        assert_eq!(pooled.select(&[], &[0]).unwrap().1, Media::Videos(1));
        assert!(pooled.all().is_err());
        assert_eq!(pooled.clone().into_features().videos.len(), 1);
    }
}
