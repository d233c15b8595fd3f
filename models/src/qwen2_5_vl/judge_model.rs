//! Qwen2.5-VL behind the family seam, as the trainer runs it: media encoded with their grids,
//! and every forward at the positions inference uses (M-RoPE from the media grids for whole
//! sequences, all three axes advancing together for text after a cache).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{continuation_positions, padded_positions, Qwen25Vl};
use crate::config::{LlavaConfig, TextConfig};
use crate::decode::checkpointing::Checkpointing;
use crate::decode::{KvCache, Qwen2};
use crate::family::judge_model::{JudgeMedia, JudgeModel};
use crate::family::kind::ModelFamily;
use crate::pack::MediaFeatures;
use crate::tokenize::Tokenized;
use crate::{Error, Result};

/// Why a Qwen-VL model refuses LLaVA's tile-shaped calls.
/// Text tokens [B, T, D] after `cache` (whose history holds no media that would shift them)
/// through a Qwen-VL decoder: every M-RoPE axis advances together; with `rows` [B, P], only
/// those rows.
pub(crate) fn text_hidden_states(
    decoder: &Qwen2,
    embeds: &Tensor,
    cache: Option<&mut KvCache>,
    rows: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t, _) = embeds.dims3()?;
    let past = cache.as_ref().map_or(0, |c| c.len());
    let positions = continuation_positions(b, t, past, 0, embeds.device())?;
    match rows {
        Some(rows) => decoder.forward_at(embeds, &positions, None, cache, rows),
        None => decoder.forward(embeds, &positions, None, cache),
    }
}

/// Text at 1-D `positions` [B, T] under `mask` through a Qwen-VL decoder: every M-RoPE axis
/// takes the same position.
pub(crate) fn masked_text_hidden_states(
    decoder: &Qwen2,
    embeds: &Tensor,
    positions: &Tensor,
    mask: &Tensor,
    cache: Option<&mut KvCache>,
) -> Result<Tensor> {
    let (b, t) = positions.dims2()?;
    let positions = positions
        .unsqueeze(0)?
        .broadcast_as((3, b, t))?
        .contiguous()?;
    decoder.forward(embeds, &positions, Some(mask), cache)
}

pub(crate) fn no_tiles(family: &str, what: &str) -> Error {
    Error::Media(format!(
        "{family} encodes each image or video with its patch grid, not as {what}; use \
         media_features"
    ))
}

impl JudgeModel for Qwen25Vl {
    fn family(&self) -> ModelFamily {
        ModelFamily::Qwen25Vl
    }

    fn text_config(&self) -> &TextConfig {
        &self.config().text
    }

    fn llava_config(&self) -> Option<&LlavaConfig> {
        None
    }

    fn device(&self) -> &Device {
        Qwen25Vl::device(self)
    }

    fn dtype(&self) -> DType {
        Qwen25Vl::dtype(self)
    }

    fn encode_tiles(&self, _: &Tensor) -> Result<Tensor> {
        Err(no_tiles("Qwen2.5-VL", "tiles"))
    }

    fn pack_image(&self, _: &Tensor, _: (u32, u32)) -> Result<Tensor> {
        Err(no_tiles("Qwen2.5-VL", "packed tiles"))
    }

    fn pack_video(&self, _: &Tensor) -> Result<Tensor> {
        Err(no_tiles("Qwen2.5-VL", "pooled frames"))
    }

    fn media_features(&self, media: &JudgeMedia) -> Result<MediaFeatures> {
        match media {
            JudgeMedia::QwenVl(m) => Ok(m.encoded(self)?.into_features()),
            JudgeMedia::Llava(_) => Err(Error::Media(
                "media prepared by LLaVA's processor reached Qwen2.5-VL".into(),
            )),
        }
    }

    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.decoder().embed(ids)
    }

    fn embed(&self, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor> {
        Qwen25Vl::embed(self, tokens, media)
    }

    fn hidden_states(&self, embeds: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        text_hidden_states(self.decoder(), embeds, cache, None)
    }

    fn sequence_hidden_states(
        &self,
        embeds: &Tensor,
        seqs: &[(&Tokenized, &MediaFeatures)],
    ) -> Result<Tensor> {
        let rows = seqs
            .iter()
            .map(|(tokens, media)| self.positions(tokens, &media.image_grids, &media.video_grids))
            .collect::<Result<Vec<_>>>()?;
        let positions = padded_positions(&rows, embeds)?;
        self.decoder().forward(embeds, &positions, None, None)
    }

    fn hidden_states_at(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: &Tensor,
    ) -> Result<Tensor> {
        text_hidden_states(self.decoder(), embeds, cache, Some(rows))
    }

    fn hidden_states_masked(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        masked_text_hidden_states(self.decoder(), embeds, positions, mask, cache)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Qwen25Vl::logits(self, hidden)
    }

    fn new_cache(&self) -> KvCache {
        Qwen25Vl::new_cache(self)
    }

    fn set_checkpointing(&mut self, grads: Option<Arc<Checkpointing>>) -> Result<()> {
        self.decoder.set_checkpointing(grads);
        Ok(())
    }
}
