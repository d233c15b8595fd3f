//! The Qwen-VL judges — Qwen2.5-VL and Qwen3-VL — as one model for the engine. They differ in
//! their vision transformers (Qwen3-VL's also yields deep-stack features, added to the
//! decoder's hidden states at the media tokens after its first layers) and in their decoders'
//! attention (carried by [`crate::decode::Qwen2`] itself); the prompt's M-RoPE positions, the
//! decoder calls and the cache are the same.

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::config::TextConfig;
use crate::decode::{KvCache, Qwen2};
use crate::family::ModelFamily;
use crate::preprocess::qwen_vl_video::QwenVlVideo;
use crate::qwen2_5_vl::{MediaGrid, Qwen25Vl, Qwen25VlConfig, QwenVision, RopePositions};
use crate::qwen3_vl::{Qwen3Vl, Qwen3VlConfig};
use crate::tokenize::Tokenized;
use crate::{Error, Result};

pub enum QwenVlModel {
    Qwen25(Qwen25Vl),
    Qwen3(Qwen3Vl),
}

impl QwenVlModel {
    /// The Qwen-VL checkpoint in `dir`, of the family its `config.json` names.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        match ModelFamily::of_dir(dir)? {
            ModelFamily::Qwen25Vl => Ok(Self::Qwen25(Qwen25Vl::load(dir, dtype, device)?)),
            ModelFamily::Qwen3Vl => Ok(Self::Qwen3(Qwen3Vl::load(dir, dtype, device)?)),
            other => Err(Error::Config(format!(
                "{}: a {} checkpoint, not a Qwen-VL one",
                dir.join("config.json").display(),
                other.name()
            ))),
        }
    }

    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Qwen25(_) => ModelFamily::Qwen25Vl,
            Self::Qwen3(_) => ModelFamily::Qwen3Vl,
        }
    }

    pub fn text_config(&self) -> &TextConfig {
        match self {
            Self::Qwen25(m) => &m.config().text,
            Self::Qwen3(m) => &m.config().text,
        }
    }

    /// `(image_token_id, video_token_id)`: the pads the prompt's media markers expand to.
    pub fn media_token_ids(&self) -> (u32, u32) {
        match self {
            Self::Qwen25(m) => (m.config().image_token_id, m.config().video_token_id),
            Self::Qwen3(m) => (m.config().image_token_id, m.config().video_token_id),
        }
    }

    pub fn decoder(&self) -> &Qwen2 {
        match self {
            Self::Qwen25(m) => m.decoder(),
            Self::Qwen3(m) => m.decoder(),
        }
    }

    /// The vision transformer, as reading a request's media uses it.
    pub fn vision(&self) -> &dyn QwenVision {
        match self {
            Self::Qwen25(m) => m,
            Self::Qwen3(m) => m,
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Self::Qwen25(m) => m.device(),
            Self::Qwen3(m) => m.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.decoder().dtype()
    }

    /// The M-RoPE positions of a prompt whose spans hold media of these grids.
    pub fn positions(
        &self,
        tokens: &Tokenized,
        images: &[MediaGrid],
        videos: &[MediaGrid],
    ) -> Result<RopePositions> {
        match self {
            Self::Qwen25(m) => m.positions(tokens, images, videos),
            // Qwen3-VL's `videos` are one grid per temporal patch (timed items).
            Self::Qwen3(m) => m.positions(tokens, images, videos),
        }
    }

    /// Embeddings [B, T, D] at `positions` [3, B, T], `deepstack` levels [B, T, D] added after
    /// the first decoder layers (Qwen3-VL prompts with media; empty otherwise) → final hidden
    /// states, continuing `cache`; with `rows` [B, P], only those rows.
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
                "Qwen-VL decoders take 3-D positions [3, B, T]".into(),
            ));
        }
        if !deepstack.is_empty() && matches!(self, Self::Qwen25(_)) {
            return Err(Error::Input("Qwen2.5-VL has no deep-stack features".into()));
        }
        self.decoder()
            .forward_injected(embeds, positions, None, cache, rows, deepstack)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.decoder().logits(hidden)
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.decoder().num_layers())
    }
}

/// A Qwen-VL checkpoint's configuration, of either family: what running it needs besides the
/// weights (the ONNX Runtime backend's model is its export).
#[derive(Debug, Clone)]
pub enum QwenVlConfig {
    Qwen25(Qwen25VlConfig),
    Qwen3(Qwen3VlConfig),
}

impl QwenVlConfig {
    /// `config.json` of `dir`, of the family it names.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        match ModelFamily::of_dir(dir)? {
            ModelFamily::Qwen25Vl => Ok(Self::Qwen25(Qwen25VlConfig::from_file(&path)?)),
            ModelFamily::Qwen3Vl => Ok(Self::Qwen3(Qwen3VlConfig::from_file(&path)?)),
            other => Err(Error::Config(format!(
                "{}: a {} checkpoint, not a Qwen-VL one",
                path.display(),
                other.name()
            ))),
        }
    }

    pub fn family(&self) -> ModelFamily {
        match self {
            Self::Qwen25(_) => ModelFamily::Qwen25Vl,
            Self::Qwen3(_) => ModelFamily::Qwen3Vl,
        }
    }

    pub fn text(&self) -> &TextConfig {
        match self {
            Self::Qwen25(c) => &c.text,
            Self::Qwen3(c) => &c.text,
        }
    }

    /// `(image_token_id, video_token_id)`.
    pub fn media_token_ids(&self) -> (u32, u32) {
        match self {
            Self::Qwen25(c) => (c.image_token_id, c.video_token_id),
            Self::Qwen3(c) => (c.image_token_id, c.video_token_id),
        }
    }

    pub fn spatial_merge_size(&self) -> usize {
        match self {
            Self::Qwen25(c) => c.vision.spatial_merge_size,
            Self::Qwen3(c) => c.vision.spatial_merge_size,
        }
    }
}

impl QwenVlConfig {
    /// The M-RoPE positions of a prompt whose spans hold media of these grids, as the candle
    /// models compute them.
    pub fn positions(
        &self,
        tokens: &Tokenized,
        images: &[MediaGrid],
        videos: &[MediaGrid],
    ) -> Result<RopePositions> {
        match self {
            Self::Qwen25(c) => {
                RopePositions::new(tokens, images, videos, c.vision.spatial_merge_size)
            }
            Self::Qwen3(c) => crate::qwen3_vl::positions(c, tokens, images, videos),
        }
    }

    /// A video item's grid for the M-RoPE positions.
    pub fn video_grid(&self, video: &QwenVlVideo) -> Result<MediaGrid> {
        match self {
            Self::Qwen25(c) => Ok(crate::qwen2_5_vl::video_grid(c, video)),
            Self::Qwen3(_) => Ok(crate::qwen3_vl::video_grid(video)),
        }
    }

    /// Whether a video item reaches the prompt one temporal patch at a time (Qwen3-VL).
    pub fn timed_video_items(&self) -> bool {
        matches!(self, Self::Qwen3(_))
    }
}
