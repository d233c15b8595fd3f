//! Training data: the readers of the two formats, what they share (reading a JSON array or
//! JSONL file, media of a record, tokenizing a conversation into scored sequences), and the
//! order examples are visited in.

pub mod captioned_images;
pub mod diffusion_pairs;
pub mod dpo;
pub mod fingerprint;
pub mod order;
pub mod reward;

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward_models::config::LlavaConfig;
use unireward_models::family::JudgeMedia;
use unireward_models::judge::MediaMarkers;
use unireward_models::preprocess::{
    AnyresGeometry, MediaLoader, MediaRequest, QwenVlProcessor, VideoSource,
};
use unireward_models::qwen2_5_vl::{Qwen25VlConfig, QwenMedia, QwenVideo, QwenVideos};
use unireward_models::qwen3_vl::Qwen3VlConfig;
use unireward_models::tokenize::{PromptTokenizer, IMAGE_MARKER, VIDEO_MARKER};

use crate::logprob::ScoredSequence;
use crate::{Error, Result};

/// The records of a data file: a JSON array (LLaVA's `.json` files) or one object a line
/// (JSONL; blank lines skipped), each with its 1-based position for error messages.
pub fn read_records(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |record, msg: String| Error::Data {
        path: path.to_path_buf(),
        record,
        msg,
    };
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> =
            serde_json::from_str(&text).map_err(|e| bad(0, format!("invalid JSON: {e}")))?;
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (i + 1, v))
            .collect());
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map(|v| (i + 1, v))
                .map_err(|e| bad(i + 1, format!("invalid JSON: {e}")))
        })
        .collect()
}

/// A record's `id` as text (numbers are common in LLaVA data); its position when absent.
pub fn record_id(v: &Value, position: usize) -> String {
    match v.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => format!("#{position}"),
        Some(other) => other.to_string(),
    }
}

/// `path` made absolute with links resolved (as given when that fails): how a data file is
/// recorded in a checkpoint, so that a resumed run may name it differently.
pub fn canonical(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

pub fn count_markers(text: &str) -> (usize, usize) {
    (
        text.matches(IMAGE_MARKER).count(),
        text.matches(VIDEO_MARKER).count(),
    )
}

/// What a data set needs to turn records into model inputs: the tokenizer, the processors
/// of the model's media, and where relative media paths start.
pub struct Preparer {
    pub tokenizer: PromptTokenizer,
    pub media: MediaProcessor,
    pub media_root: PathBuf,
    /// Sequences longer than this are refused (the model's context by default).
    pub max_length: usize,
}

/// A family's media processor, and how many tokens each medium it prepares fills.
pub enum MediaProcessor {
    /// LLaVA-OneVision: anyres tiles, pooled video frames.
    Llava {
        loader: Box<MediaLoader>,
        geometry: AnyresGeometry,
    },
    /// Qwen-VL: `smart_resize` patches, a video as one item of its frames (what
    /// `inference_qwen` sends; Qwen3-VL has no video items: `video_items` false), each medium
    /// `merge`² patches a token.
    QwenVl {
        processor: QwenVlProcessor,
        merge: usize,
        video_items: bool,
    },
}

/// What the preparer reads of a Qwen-VL config, either family's.
#[derive(Debug, Clone, Copy)]
pub struct QwenVlGeometry {
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub merge: usize,
    /// The decoder's context: the default longest sequence.
    pub context: usize,
    /// Whether the model reads a video as one item of its frames.
    pub video_items: bool,
}

impl From<&Qwen25VlConfig> for QwenVlGeometry {
    fn from(cfg: &Qwen25VlConfig) -> Self {
        Self {
            image_token_id: cfg.image_token_id,
            video_token_id: cfg.video_token_id,
            merge: cfg.vision.spatial_merge_size,
            context: cfg.text.max_position_embeddings,
            video_items: true,
        }
    }
}

impl From<&Qwen3VlConfig> for QwenVlGeometry {
    fn from(cfg: &Qwen3VlConfig) -> Self {
        Self {
            image_token_id: cfg.image_token_id,
            video_token_id: cfg.video_token_id,
            merge: cfg.vision.spatial_merge_size,
            context: cfg.text.max_position_embeddings,
            // Its video items (timestamped frames) are not built (`qwen3_vl`).
            video_items: false,
        }
    }
}

impl Preparer {
    /// `frames`: frames sampled per video.
    pub fn new(
        model_dir: &Path,
        cfg: &LlavaConfig,
        media_root: PathBuf,
        frames: usize,
        max_length: Option<usize>,
    ) -> Result<Self> {
        Ok(Self {
            tokenizer: PromptTokenizer::load(model_dir, cfg)?,
            media: MediaProcessor::Llava {
                loader: Box::new(MediaLoader::from_model_dir(model_dir, cfg, frames)?),
                geometry: cfg.anyres.clone(),
            },
            media_root,
            max_length: max_length.unwrap_or(cfg.text.max_position_embeddings),
        })
    }

    /// For the Qwen-VL checkpoint (Qwen2.5-VL or Qwen3-VL) in `model_dir`: its tokenizer with
    /// the media pads its config names, and its processor (`preprocessor_config.json`, as
    /// `engine score` reads it).
    pub fn qwen_vl(
        model_dir: &Path,
        cfg: impl Into<QwenVlGeometry>,
        media_root: PathBuf,
        max_length: Option<usize>,
    ) -> Result<Self> {
        let geometry = cfg.into();
        let processor = QwenVlProcessor::from_model_dir(model_dir)?;
        Ok(Self {
            tokenizer: PromptTokenizer::load_qwen_vl(
                model_dir,
                geometry.image_token_id,
                geometry.video_token_id,
            )?,
            media: MediaProcessor::QwenVl {
                processor,
                merge: geometry.merge,
                video_items: geometry.video_items,
            },
            media_root,
            max_length: max_length.unwrap_or(geometry.context),
        })
    }

    /// Whether `text` names an existing file (relative to the media root when relative).
    pub fn is_media_file(&self, text: &str) -> bool {
        let p = Path::new(text);
        !text.is_empty()
            && !text.contains('\n')
            && (if p.is_absolute() {
                p.is_file()
            } else {
                self.media_root.join(p).is_file()
            })
    }

    /// The first of a record's media files that does not exist, so that a typo stops the
    /// run when the data is read rather than hours into training.
    pub fn missing_media(&self, req: &MediaRequest) -> Option<PathBuf> {
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                self.media_root.join(p)
            }
        };
        let videos = req.videos.iter().flat_map(|v| match v {
            VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => vec![p],
            VideoSource::FrameFiles(fs) => fs.iter().collect(),
        });
        req.images
            .iter()
            .chain(videos)
            .map(|p| resolve(p))
            .find(|p| !p.exists())
    }

    /// Decodes and preprocesses a record's images and videos.
    pub fn load_media(&self, id: &str, req: &MediaRequest) -> Result<JudgeMedia> {
        match &self.media {
            MediaProcessor::Llava { loader, .. } => {
                loader.load(req, &self.media_root).map(JudgeMedia::Llava)
            }
            // Refused when the data is read rather than at the record's first step.
            MediaProcessor::QwenVl {
                video_items: false, ..
            } if !req.videos.is_empty() => Err(unireward_models::Error::Media(
                "this model (Qwen3-VL) has no video items and the trainer does not yet send a \
                 video as sampled frames; give its frames as images"
                    .into(),
            )),
            MediaProcessor::QwenVl { processor, .. } => {
                QwenMedia::read(processor, req, &self.media_root, QwenVideos::Items)
                    .map(JudgeMedia::QwenVl)
            }
        }
        .map_err(|e| Error::record(id, e))
    }

    /// Tokens each image and each video of `media` fills, in marker order.
    fn token_lens(&self, media: &JudgeMedia) -> Result<(Vec<usize>, Vec<usize>)> {
        match (&self.media, media) {
            (MediaProcessor::Llava { geometry, .. }, JudgeMedia::Llava(media)) => Ok((
                media
                    .images
                    .iter()
                    .map(|im| geometry.image_token_count(im.original_size))
                    .collect::<unireward_models::Result<Vec<_>>>()?,
                media
                    .videos
                    .iter()
                    .map(|v| Ok(geometry.video_token_count(v.dim(0)?)))
                    .collect::<Result<Vec<_>>>()?,
            )),
            (MediaProcessor::QwenVl { merge, .. }, JudgeMedia::QwenVl(media)) => Ok((
                media.images.iter().map(|p| p.num_tokens(*merge)).collect(),
                media
                    .videos
                    .iter()
                    .map(|v| match v {
                        QwenVideo::Item(video) => video.pixels.num_tokens(*merge),
                        QwenVideo::Frames(frames) => {
                            frames.iter().map(|p| p.num_tokens(*merge)).sum()
                        }
                    })
                    .collect(),
            )),
            _ => Err(Error::Config(
                "media prepared by another family's processor".into(),
            )),
        }
    }

    /// Tokenizes `segments` (text, scored) in order into one sequence, each marker expanded
    /// to as many placeholders as its image or video yields. Segments are tokenized apart,
    /// so a prompt ends at a token boundary and exactly the answer tokens are scored. The
    /// segments carry LLaVA's `<image>` / `<video>` marker lines; a Qwen-VL model reads them
    /// as its processor writes media items (`MediaMarkers`).
    pub fn encode(
        &self,
        id: &str,
        segments: &[(String, bool)],
        media: &JudgeMedia,
    ) -> Result<ScoredSequence> {
        let (image_lens, video_lens) = self.token_lens(media)?;
        let markers = match self.media {
            MediaProcessor::Llava { .. } => MediaMarkers::Llava,
            MediaProcessor::QwenVl { .. } => MediaMarkers::QwenVl,
        };
        let (mut next_image, mut next_video) = (0, 0);
        let mut seq = ScoredSequence::default();
        for (text, scored) in segments {
            let (ni, nv) = count_markers(text);
            let (images, videos) = (
                image_lens.get(next_image..next_image + ni),
                video_lens.get(next_video..next_video + nv),
            );
            let (Some(images), Some(videos)) = (images, videos) else {
                return Err(Error::record(
                    id,
                    format!(
                        "the text has more markers than the record's {} image(s) and {} video(s)",
                        image_lens.len(),
                        video_lens.len()
                    ),
                ));
            };
            let mut part = self
                .tokenizer
                .encode(&markers.apply(text), images, videos)
                .map_err(|e| Error::record(id, e))?;
            for span in &mut part.spans {
                span.start += seq.tokens.ids.len();
                span.index += match span.kind {
                    unireward_models::tokenize::MediaKind::Image => next_image,
                    unireward_models::tokenize::MediaKind::Video => next_video,
                };
            }
            seq.targets
                .extend(std::iter::repeat_n(*scored, part.ids.len()));
            seq.tokens.ids.extend(part.ids);
            seq.tokens.spans.extend(part.spans);
            next_image += ni;
            next_video += nv;
        }
        if next_image != image_lens.len() || next_video != video_lens.len() {
            return Err(Error::record(
                id,
                format!(
                    "the text has {next_image} {IMAGE_MARKER} and {next_video} {VIDEO_MARKER} \
                     marker(s) for {} image(s) and {} video(s)",
                    image_lens.len(),
                    video_lens.len()
                ),
            ));
        }
        if seq.tokens.ids.len() > self.max_length {
            return Err(Error::record(
                id,
                format!(
                    "{} tokens, over the maximum length {}",
                    seq.tokens.ids.len(),
                    self.max_length
                ),
            ));
        }
        if seq.num_targets() == 0 {
            return Err(Error::record(id, "no answer tokens to score"));
        }
        Ok(seq)
    }
}

/// Puts one marker line per medium before `text` when it has no markers of that kind, as
/// LLaVA's data code places `<image>` before the question.
pub fn ensure_markers(text: &str, images: usize, videos: usize) -> String {
    let (ni, nv) = count_markers(text);
    let mut prefix = String::new();
    if ni == 0 {
        prefix.push_str(&format!("{IMAGE_MARKER}\n").repeat(images));
    }
    if nv == 0 {
        prefix.push_str(&format!("{VIDEO_MARKER}\n").repeat(videos));
    }
    prefix + text
}
