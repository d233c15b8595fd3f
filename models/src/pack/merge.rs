//! Token embeddings with each media span overwritten by that medium's packed features.

use candle_core::Tensor;

use crate::qwen2_5_vl::MediaGrid;
use crate::tokenize::{MediaKind, Tokenized, VideoPads};
use crate::{Error, Result};

/// Media features for one prompt, in marker order.
#[derive(Default, Clone)]
pub struct MediaFeatures {
    pub images: Vec<Tensor>,
    pub videos: Vec<Tensor>,
    /// Each image's and video's patch grid, for a family whose positions follow it (Qwen-VL's
    /// M-RoPE); empty for LLaVA, whose positions are 0..T.
    pub image_grids: Vec<MediaGrid>,
    pub video_grids: Vec<MediaGrid>,
    /// Per deep-stack level, the same media's features at that level (Qwen3-VL adds them to
    /// the hidden states at the media tokens after its first decoder layers; grids unused);
    /// empty for the other families.
    pub deepstack: Vec<MediaFeatures>,
    /// Qwen3-VL's timed video items: per video marker, each temporal patch's time; its
    /// features (and grids) are then one entry per patch in `videos` (`video_grids`). Empty
    /// when every video is one run of features.
    pub video_seconds: Vec<Vec<f64>>,
}

impl MediaFeatures {
    /// `other`'s media after these (their features, grids and deep-stack levels).
    pub fn append(&mut self, other: MediaFeatures) {
        self.images.extend(other.images);
        self.videos.extend(other.videos);
        self.image_grids.extend(other.image_grids);
        self.video_grids.extend(other.video_grids);
        self.video_seconds.extend(other.video_seconds);
        if self.deepstack.len() < other.deepstack.len() {
            self.deepstack
                .resize_with(other.deepstack.len(), MediaFeatures::default);
        }
        for (level, more) in self.deepstack.iter_mut().zip(other.deepstack) {
            level.append(more);
        }
    }
}

impl MediaFeatures {
    /// Placeholders per image, and what each video marker expands to: one run per video, or
    /// (timed items) a run per temporal patch after its time.
    pub fn pads(&self) -> Result<(Vec<usize>, Vec<VideoPads>)> {
        let lens = |ts: &[Tensor]| {
            ts.iter()
                .map(|t| t.dim(0))
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let (images, runs) = (lens(&self.images)?, lens(&self.videos)?);
        if self.video_seconds.is_empty() {
            return Ok((images, runs.into_iter().map(VideoPads::Run).collect()));
        }
        let mut runs = runs.into_iter();
        let videos = self
            .video_seconds
            .iter()
            .map(|seconds| {
                let patches: Vec<usize> = runs.by_ref().take(seconds.len()).collect();
                match patches.first() {
                    Some(&per_patch)
                        if patches.len() == seconds.len()
                            && patches.iter().all(|&n| n == per_patch) =>
                    {
                        Ok(VideoPads::Timed {
                            seconds: seconds.clone(),
                            per_patch,
                        })
                    }
                    _ => Err(Error::Input(format!(
                        "a timed video of {} patches has features of {patches:?} tokens",
                        seconds.len()
                    ))),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if runs.next().is_some() {
            return Err(Error::Input(
                "video features left over after the timed videos' patches".into(),
            ));
        }
        Ok((images, videos))
    }
}

/// Each of `media`'s deep-stack levels laid over the prompt: [T, D] like `text` (the prompt's
/// embeddings), the level's features at the media tokens and zero elsewhere.
pub fn merge_deepstack(
    text: &Tensor,
    tokens: &Tokenized,
    media: &MediaFeatures,
) -> Result<Vec<Tensor>> {
    if media.deepstack.is_empty() {
        return Ok(Vec::new());
    }
    let zeros = text.zeros_like()?;
    media
        .deepstack
        .iter()
        .map(|level| merge_media(&zeros, tokens, level))
        .collect()
}

/// text [T, D] (embeddings of `tokens.ids`) → [T, D] with media spliced in.
pub fn merge_media(text: &Tensor, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor> {
    if tokens.spans.is_empty() {
        return Ok(text.clone());
    }
    let mut pieces = Vec::with_capacity(2 * tokens.spans.len() + 1);
    let mut at = 0;
    for span in &tokens.spans {
        let feats = match span.kind {
            MediaKind::Image => media.images.get(span.index),
            MediaKind::Video => media.videos.get(span.index),
        }
        .ok_or_else(|| Error::Input(format!("no features for {:?} {}", span.kind, span.index)))?;
        let n = feats.dim(0)?;
        if n != span.len {
            return Err(Error::Input(format!(
                "{:?} {} yields {n} features but its marker was expanded to {}",
                span.kind, span.index, span.len
            )));
        }
        if span.start > at {
            pieces.push(text.narrow(0, at, span.start - at)?);
        }
        pieces.push(feats.to_dtype(text.dtype())?);
        at = span.start + span.len;
    }
    if at < tokens.ids.len() {
        pieces.push(text.narrow(0, at, tokens.ids.len() - at)?);
    }
    Ok(Tensor::cat(&pieces, 0)?)
}
