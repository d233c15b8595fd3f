//! Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`: UnifiedReward-qwen-3b/7b/32b,
//! UnifiedReward-2.0-qwen-*): the vision transformer (`encode::qwen2_5_vl_vision`) → merged
//! features spliced over the `<|image_pad|>` / `<|video_pad|>` runs → the Qwen2 decoder with
//! 3-D M-RoPE positions (`positions`).

pub mod config;
pub(crate) mod judge_model;
pub mod media;
pub mod positions;

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::checkpoint::Checkpoint;
use crate::decode::{KvCache, Qwen2};
use crate::encode::qwen2_5_vl_vision::Qwen25VisionTransformer;
use crate::pack::{merge_media, MediaFeatures};
use crate::preprocess::qwen_vl::QwenVlPixels;
use crate::preprocess::qwen_vl_video::QwenVlVideo;
use crate::tokenize::Tokenized;
use crate::{Error, Result};
use media::stacked_pixels;

pub use config::{Qwen25VisionConfig, Qwen25VlConfig};
pub use media::{QwenMedia, QwenVideo, QwenVideos, QwenVision, QwenVisionFeatures};
pub use positions::{continuation_positions, padded_positions, MediaGrid, RopePositions};

/// Where the parts live in a checkpoint's key space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qwen25VlLayout {
    pub name: &'static str,
    /// Prefix of the vision transformer (`patch_embed`, `blocks.N`, `merger` follow).
    pub vision: &'static str,
    /// Prefix of the Qwen2 body (`embed_tokens`, `layers.N`, `norm` follow).
    pub decoder: &'static str,
    /// The output head; `None` when tied to the embeddings and not stored.
    pub lm_head: Option<&'static str>,
}

impl Qwen25VlLayout {
    /// The hub's files (transformers 4.49, the Qwen and UnifiedReward repositories).
    pub const HUB: Self = Self {
        name: "Qwen2.5-VL hub (visual., model.)",
        vision: "visual",
        decoder: "model",
        lm_head: Some("lm_head"),
    };
    /// What transformers 5 saves.
    pub const TRANSFORMERS_5: Self = Self {
        name: "Qwen2.5-VL transformers 5 (model.visual., model.language_model.)",
        vision: "model.visual",
        decoder: "model.language_model",
        lm_head: Some("lm_head"),
    };

    /// The layout of `ckpt`'s keys; the head is taken as tied when the config ties it or
    /// the checkpoint stores none.
    pub fn detect(ckpt: &Checkpoint, tied: bool) -> Self {
        let mut layout = if ckpt.contains("model.language_model.embed_tokens.weight") {
            Self::TRANSFORMERS_5
        } else {
            Self::HUB
        };
        if tied || !ckpt.contains("lm_head.weight") {
            layout.lm_head = None;
        }
        layout
    }
}

pub struct Qwen25Vl {
    cfg: Qwen25VlConfig,
    vision: Qwen25VisionTransformer,
    decoder: Qwen2,
    device: Device,
}

impl Qwen25Vl {
    /// Reads `config.json` and the weights of `dir`, converting them to `dtype`; every
    /// missing or misshapen key is named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = Qwen25VlConfig::from_file(&dir.join("config.json"))?;
        let ckpt = Checkpoint::open(dir)?;
        let layout = Qwen25VlLayout::detect(&ckpt, cfg.text.tie_word_embeddings);
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let built = Self::new(cfg, &layout, vb);
        audit.finish_named(dir, layout.name)?;
        built
    }

    /// Builds the model from any weight source whose names follow `layout`.
    pub fn new(cfg: Qwen25VlConfig, layout: &Qwen25VlLayout, vb: VarBuilder) -> Result<Self> {
        let vision = Qwen25VisionTransformer::new(&cfg.vision, vb.pp(layout.vision))?;
        let head = layout.lm_head.map(|h| vb.pp(h));
        let decoder = Qwen2::with_mrope(
            &cfg.text,
            vb.pp(layout.decoder),
            head,
            Some(&cfg.mrope_section),
        )?;
        Ok(Self {
            cfg,
            vision,
            decoder,
            device: vb.device().clone(),
        })
    }

    pub fn config(&self) -> &Qwen25VlConfig {
        &self.cfg
    }

    pub fn decoder(&self) -> &Qwen2 {
        &self.decoder
    }

    pub fn vision(&self) -> &Qwen25VisionTransformer {
        &self.vision
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One preprocessed image or video → its merged features [tokens, hidden].
    pub fn media_features(&self, pixels: &QwenVlPixels) -> Result<Tensor> {
        let (t, h, w) = pixels.grid_thw;
        self.vision
            .forward(&pixels.pixel_values.to_device(&self.device)?, &[(t, h, w)])
    }

    /// Several media encoded in one pass of the vision transformer (attention never crosses
    /// a frame) → each one's features.
    pub fn media_features_batch(&self, media: &[&QwenVlPixels]) -> Result<Vec<Tensor>> {
        if media.is_empty() {
            return Ok(Vec::new());
        }
        let (pixels, grids) = stacked_pixels(media, &self.device)?;
        let feats = self.vision.forward(&pixels, &grids)?;
        let merge = self.cfg.vision.spatial_merge_size;
        let mut out = Vec::with_capacity(media.len());
        let mut at = 0;
        for m in media {
            let n = m.num_tokens(merge);
            out.push(feats.narrow(0, at, n)?);
            at += n;
        }
        Ok(out)
    }

    /// The grid of a preprocessed image, for [`RopePositions`].
    pub fn image_grid(&self, pixels: &QwenVlPixels) -> MediaGrid {
        MediaGrid::of_image(pixels)
    }

    /// The grid of a prepared video: its temporal patches `second_per_grid` seconds apart, each
    /// second `tokens_per_second` positions (transformers' `second_per_grid_ts` timing).
    pub fn video_grid(&self, video: &QwenVlVideo) -> MediaGrid {
        video_grid(&self.cfg, video)
    }

    /// The M-RoPE positions of a prompt whose spans hold the media of `images` / `videos`.
    pub fn positions(
        &self,
        tokens: &Tokenized,
        images: &[MediaGrid],
        videos: &[MediaGrid],
    ) -> Result<RopePositions> {
        RopePositions::new(tokens, images, videos, self.cfg.vision.spatial_merge_size)
    }

    /// Token embeddings [T, hidden] with each media span overwritten by its features.
    pub fn embed(&self, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor> {
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?;
        merge_media(&self.decoder.embed(&ids)?, tokens, media)
    }

    /// Embeddings [B, T, D] at `positions` [3, B, T] → final hidden states, continuing `cache`.
    pub fn hidden_states(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        if positions.rank() != 3 {
            return Err(Error::Input(
                "Qwen2.5-VL takes 3-D positions [3, B, T]".into(),
            ));
        }
        self.decoder.forward(embeds, positions, None, cache)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder.logits(hidden)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.decoder.num_layers())
    }

    pub fn dtype(&self) -> DType {
        self.decoder.dtype()
    }
}

/// A video item's grid: its temporal patches step the time axis by the seconds they span
/// times `tokens_per_second`.
pub fn video_grid(cfg: &Qwen25VlConfig, video: &QwenVlVideo) -> MediaGrid {
    let (t, h, w) = video.pixels.grid_thw;
    MediaGrid {
        t,
        h,
        w,
        time_interval: video.second_per_grid * cfg.vision.tokens_per_second,
    }
}

impl QwenVision for Qwen25Vl {
    fn encode_media(&self, media: &[&QwenVlPixels]) -> Result<Vec<QwenVisionFeatures>> {
        Ok(self
            .media_features_batch(media)?
            .into_iter()
            .map(|merged| QwenVisionFeatures {
                merged,
                deepstack: Vec::new(),
            })
            .collect())
    }

    fn video_grid(&self, video: &QwenVlVideo) -> Result<MediaGrid> {
        Ok(Qwen25Vl::video_grid(self, video))
    }
}
