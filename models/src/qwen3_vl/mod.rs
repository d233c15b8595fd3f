//! Qwen3-VL, dense (`Qwen3VLForConditionalGeneration`: Qwen3-VL-2B/4B/8B, UnifiedReward-2.0-
//! qwen3vl-*): the vision transformer (`vision`) → merged features spliced over the
//! `<|image_pad|>` runs, and deep-stack features added to the hidden states at those tokens after
//! the decoder's first layers → the Qwen3 decoder (the Qwen2 decoder with Qwen3's
//! [`AttentionVariant`]) with interleaved 3-D M-RoPE positions.
//!
//! The processor is Qwen2.5-VL's ([`crate::preprocess::QwenVlProcessor`]) with Qwen3-VL's
//! `preprocessor_config.json` (patch 16, factor 32, mean / std 0.5): `preprocess_torchvision`
//! for the torchvision backend its `Qwen2VLImageProcessorFast` names, `preprocess` for the
//! Pillow one. Image positions are Qwen2.5-VL's ([`RopePositions`]).
//!
//! A video item is prepared as Qwen2.5-VL's ([`QwenVlVideo`], qwen_vl_utils' sampling) and
//! encoded whole (attention per frame), then shown one temporal patch at a time:
//! `<t.t seconds><|vision_start|>` + the patch's tokens + `<|vision_end|>` (the tokenizer's
//! [`crate::tokenize::VideoPads::Timed`]), each patch at positions of its own as an image of
//! one frame (`get_rope_index` splits the video grid into t = 1 pieces), its deep-stack
//! features added there as an image's are. The training path (`JudgeModel`) takes none yet.

pub mod config;
mod judge_model;
pub mod vision;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::Checkpoint;
use crate::decode::{KvCache, Qwen2};
use crate::pack::{merge_deepstack, merge_media, MediaFeatures};
use crate::preprocess::qwen_vl::QwenVlPixels;
use crate::preprocess::qwen_vl_video::QwenVlVideo;
use crate::qwen2_5_vl::media::stacked_pixels;
use crate::qwen2_5_vl::{MediaGrid, QwenVision, QwenVisionFeatures, RopePositions};
use crate::tokenize::{MediaKind, Tokenized};
use crate::{Error, Result};

pub use config::{Qwen3VisionConfig, Qwen3VlConfig};
pub use vision::Qwen3VisionTransformer;

/// Key prefixes: transformers 5's `save_pretrained` and the hub's Qwen3-VL files (saved by
/// transformers 4.57) agree.
pub const VISION: &str = "model.visual";
pub const DECODER: &str = "model.language_model";
pub const LM_HEAD: &str = "lm_head";
pub const LAYOUT_NAME: &str = "Qwen3-VL (model.visual., model.language_model., lm_head)";

/// A prompt ready for the decoder: its embeddings [T, hidden] with the media spliced in, and per
/// deep-stack level the features to add after that decoder layer [T, hidden] (zero outside the
/// media tokens; none for a text-only prompt).
#[derive(Debug, Clone)]
pub struct Qwen3VlInputs {
    pub embeds: Tensor,
    pub deepstack: Vec<Tensor>,
}

pub struct Qwen3Vl {
    cfg: Qwen3VlConfig,
    vision: Qwen3VisionTransformer,
    decoder: Qwen2,
    device: Device,
}

impl Qwen3Vl {
    /// Reads `config.json` and the weights of `dir` (one file or shards), converting them to
    /// `dtype`; every missing or misshapen key is named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = Qwen3VlConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let tied = cfg.text.tie_word_embeddings || !ckpt.contains("lm_head.weight");
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let built = Self::new(cfg, tied, vb);
        audit.finish_named(dir, LAYOUT_NAME)?;
        built
    }

    /// Builds the model from any weight source in the checkpoints' key layout; `tied`: the
    /// head is the embeddings.
    pub fn new(cfg: Qwen3VlConfig, tied: bool, vb: VarBuilder) -> Result<Self> {
        let vision = Qwen3VisionTransformer::new(&cfg.vision, vb.pp(VISION))?;
        let head = (!tied).then(|| vb.pp(LM_HEAD));
        let decoder = Qwen2::with_variant(&cfg.text, vb.pp(DECODER), head, &cfg.attention)?;
        Ok(Self {
            cfg,
            vision,
            decoder,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Qwen3VlConfig {
        &self.cfg
    }

    pub fn decoder(&self) -> &Qwen2 {
        &self.decoder
    }

    pub fn vision(&self) -> &Qwen3VisionTransformer {
        &self.vision
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }

    /// Several images encoded in one pass of the vision transformer (attention never crosses
    /// an image) → each one's features.
    pub fn image_features(&self, images: &[&QwenVlPixels]) -> Result<Vec<QwenVisionFeatures>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (pixels, grids) = stacked_pixels(images, &self.device)?;
        let all = self.vision.forward(&pixels, &grids)?;
        let merge = self.cfg.vision.spatial_merge_size;
        let mut out = Vec::with_capacity(images.len());
        let mut at = 0;
        for m in images {
            let n = m.num_tokens(merge);
            out.push(QwenVisionFeatures {
                merged: all.merged.narrow(0, at, n)?,
                deepstack: all
                    .deepstack
                    .iter()
                    .map(|level| level.narrow(0, at, n))
                    .collect::<candle_core::Result<_>>()?,
            });
            at += n;
        }
        Ok(out)
    }

    /// The grid of a preprocessed image, for [`RopePositions`].
    pub fn image_grid(&self, pixels: &QwenVlPixels) -> MediaGrid {
        MediaGrid::of_image(pixels)
    }

    /// The M-RoPE positions of a prompt ([`positions`]).
    pub fn positions(
        &self,
        tokens: &Tokenized,
        images: &[MediaGrid],
        video_patches: &[MediaGrid],
    ) -> Result<RopePositions> {
        positions(&self.cfg, tokens, images, video_patches)
    }

    /// Token embeddings with each image span overwritten by its merged features, and the
    /// deep-stack levels laid over the prompt.
    pub fn inputs(
        &self,
        tokens: &Tokenized,
        images: &[QwenVisionFeatures],
    ) -> Result<Qwen3VlInputs> {
        refuse_videos(tokens)?;
        let levels = self.cfg.vision.deepstack_visual_indexes.len();
        let level = |l: usize| {
            images
                .iter()
                .map(|f| {
                    f.deepstack.get(l).cloned().ok_or_else(|| {
                        Error::Input(format!("image features lack deep-stack level {l}"))
                    })
                })
                .collect::<Result<Vec<_>>>()
        };
        let media = MediaFeatures {
            images: images.iter().map(|f| f.merged.clone()).collect(),
            deepstack: if tokens.spans.is_empty() {
                Vec::new()
            } else {
                (0..levels)
                    .map(|l| {
                        Ok(MediaFeatures {
                            images: level(l)?,
                            ..Default::default()
                        })
                    })
                    .collect::<Result<_>>()?
            },
            ..Default::default()
        };
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?;
        let text = self.decoder.embed(&ids)?;
        Ok(Qwen3VlInputs {
            embeds: merge_media(&text, tokens, &media)?,
            deepstack: merge_deepstack(&text, tokens, &media)?,
        })
    }

    /// A prompt's inputs (embeddings [B, T, D] and deep-stack levels [B, T, D], B = 1 for
    /// [`Self::inputs`]' [T, D] after `unsqueeze(0)`) at `positions` [3, B, T] → final hidden
    /// states, continuing `cache`; with `rows` [B, P], only those rows ([`Qwen2::forward_at`]).
    pub fn hidden_states(
        &self,
        embeds: &Tensor,
        deepstack: &[Tensor],
        positions: &Tensor,
        cache: Option<&mut KvCache>,
        rows: Option<&Tensor>,
    ) -> Result<Tensor> {
        if positions.rank() != 3 {
            return Err(Error::Input(
                "Qwen3-VL takes 3-D positions [3, B, T]".into(),
            ));
        }
        self.decoder
            .forward_injected(embeds, positions, None, cache, rows, deepstack)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.decoder.num_layers())
    }
}

/// The M-RoPE positions of a prompt whose image spans hold `images` and whose video spans
/// (one per temporal patch) hold `video_patches`, each of t = 1.
pub fn positions(
    cfg: &Qwen3VlConfig,
    tokens: &Tokenized,
    images: &[MediaGrid],
    video_patches: &[MediaGrid],
) -> Result<RopePositions> {
    if let Some(g) = video_patches.iter().find(|g| g.t != 1) {
        return Err(Error::Input(format!(
            "a Qwen3-VL video span holds one temporal patch, not a grid of {}",
            g.t
        )));
    }
    RopePositions::new(tokens, images, video_patches, cfg.vision.spatial_merge_size)
}

/// A video item's whole grid; the prompt shows it per temporal patch
/// ([`QwenVision::timed_video_items`]), so its timing is in the text, not the positions.
pub fn video_grid(video: &QwenVlVideo) -> MediaGrid {
    let (t, h, w) = video.pixels.grid_thw;
    MediaGrid {
        t,
        h,
        w,
        time_interval: 1.0,
    }
}

pub(crate) fn refuse_videos(tokens: &Tokenized) -> Result<()> {
    if tokens.spans.iter().any(|s| s.kind == MediaKind::Video) {
        return Err(videos_refused());
    }
    Ok(())
}

/// Where Qwen3-VL's video items are not built: training; a video sent as sampled frames (the
/// 2.0 and Think-qwen3vl scripts' way) is images.
pub(crate) fn videos_refused() -> Error {
    Error::Input(
        "Qwen3-VL video items (timestamped frames) are judged by the engine (candle and ONNX \
         Runtime), not trained on yet: send a video as sampled frames (--video-mode frames, the \
         2.0 and Think-qwen3vl scripts' way)"
            .into(),
    )
}

impl QwenVision for Qwen3Vl {
    fn encode_media(&self, media: &[&QwenVlPixels]) -> Result<Vec<QwenVisionFeatures>> {
        self.image_features(media)
    }

    fn video_grid(&self, video: &QwenVlVideo) -> Result<MediaGrid> {
        Ok(video_grid(video))
    }

    fn timed_video_items(&self) -> bool {
        true
    }
}
