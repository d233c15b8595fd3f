//! Qwen3-VL behind the family seam, as the trainer runs it: images encoded with their grids and
//! deep-stack levels; whole sequences at their M-RoPE positions with each row's deep-stack
//! features added after the decoder's first layers (as inference does); text after a cache
//! with all three axes advancing together and nothing injected (the trainer's caches hold
//! text only).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::{refuse_videos, Qwen3Vl};
use crate::config::{LlavaConfig, TextConfig};
use crate::decode::checkpointing::Checkpointing;
use crate::decode::KvCache;
use crate::family::judge_model::{JudgeMedia, JudgeModel};
use crate::family::kind::ModelFamily;
use crate::pack::{merge_deepstack, merge_media, MediaFeatures};
use crate::qwen2_5_vl::judge_model::{masked_text_hidden_states, no_tiles, text_hidden_states};
use crate::qwen2_5_vl::padded_positions;
use crate::tokenize::Tokenized;
use crate::{Error, Result};

const FAMILY: &str = "Qwen3-VL";

impl Qwen3Vl {
    /// Each row's deep-stack levels laid over its tokens and zero-padded to the batch's `t`
    /// tokens → per level [B, T, D]; none when no row shows media.
    fn batch_deepstack(
        &self,
        embeds: &Tensor,
        seqs: &[(&Tokenized, &MediaFeatures)],
    ) -> Result<Vec<Tensor>> {
        if seqs.iter().all(|(_, m)| m.deepstack.is_empty()) {
            return Ok(Vec::new());
        }
        let (_, t, d) = embeds.dims3()?;
        let levels = self.cfg.vision.deepstack_visual_indexes.len();
        let zeros = |n: usize| Tensor::zeros((n, d), embeds.dtype(), embeds.device());
        let mut per_level: Vec<Vec<Tensor>> = vec![Vec::with_capacity(seqs.len()); levels];
        for (row, (tokens, media)) in seqs.iter().enumerate() {
            let n = tokens.ids.len();
            if n > t {
                return Err(Error::Input(format!(
                    "a sequence of {n} tokens in rows of {t} embeddings"
                )));
            }
            let laid = merge_deepstack(&embeds.get(row)?.narrow(0, 0, n)?, tokens, media)?;
            if !laid.is_empty() && laid.len() != levels {
                return Err(Error::Input(format!(
                    "media with {} deep-stack levels for a model of {levels}",
                    laid.len()
                )));
            }
            for (l, out) in per_level.iter_mut().enumerate() {
                let level = match laid.get(l) {
                    Some(level) if n < t => Tensor::cat(&[level, &zeros(t - n)?], 0)?,
                    Some(level) => level.clone(),
                    None => zeros(t)?,
                };
                out.push(level);
            }
        }
        per_level
            .iter()
            .map(|rows| Ok(Tensor::stack(rows, 0)?))
            .collect()
    }
}

impl JudgeModel for Qwen3Vl {
    fn family(&self) -> ModelFamily {
        ModelFamily::Qwen3Vl
    }

    fn text_config(&self) -> &TextConfig {
        &self.cfg.text
    }

    fn llava_config(&self) -> Option<&LlavaConfig> {
        None
    }

    fn device(&self) -> &Device {
        Qwen3Vl::device(self)
    }

    fn dtype(&self) -> DType {
        Qwen3Vl::dtype(self)
    }

    fn encode_tiles(&self, _: &Tensor) -> Result<Tensor> {
        Err(no_tiles(FAMILY, "tiles"))
    }

    fn pack_image(&self, _: &Tensor, _: (u32, u32)) -> Result<Tensor> {
        Err(no_tiles(FAMILY, "packed tiles"))
    }

    fn pack_video(&self, _: &Tensor) -> Result<Tensor> {
        Err(no_tiles(FAMILY, "pooled frames"))
    }

    fn media_features(&self, media: &JudgeMedia) -> Result<MediaFeatures> {
        match media {
            JudgeMedia::QwenVl(m) => Ok(m.encoded(self)?.into_features()),
            JudgeMedia::Llava(_) => Err(Error::Media(
                "media prepared by LLaVA's processor reached Qwen3-VL".into(),
            )),
        }
    }

    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor> {
        self.decoder.embed(ids)
    }

    fn embed(&self, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor> {
        refuse_videos(tokens)?;
        let ids = Tensor::new(tokens.ids.as_slice(), &self.device)?;
        merge_media(&self.decoder.embed(&ids)?, tokens, media)
    }

    fn hidden_states(&self, embeds: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        text_hidden_states(&self.decoder, embeds, cache, None)
    }

    fn sequence_hidden_states(
        &self,
        embeds: &Tensor,
        seqs: &[(&Tokenized, &MediaFeatures)],
    ) -> Result<Tensor> {
        let rows = seqs
            .iter()
            .map(|(tokens, media)| {
                refuse_videos(tokens)?;
                self.positions(tokens, &media.image_grids, &[])
            })
            .collect::<Result<Vec<_>>>()?;
        let positions = padded_positions(&rows, embeds)?;
        let deepstack = self.batch_deepstack(embeds, seqs)?;
        self.hidden_states(embeds, &deepstack, &positions, None, None)
    }

    fn hidden_states_at(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: &Tensor,
    ) -> Result<Tensor> {
        text_hidden_states(&self.decoder, embeds, cache, Some(rows))
    }

    fn hidden_states_masked(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        masked_text_hidden_states(&self.decoder, embeds, positions, mask, cache)
    }

    fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        Qwen3Vl::logits(self, hidden)
    }

    fn new_cache(&self) -> KvCache {
        Qwen3Vl::new_cache(self)
    }

    fn set_checkpointing(&mut self, grads: Option<Arc<Checkpointing>>) -> Result<()> {
        self.decoder.set_checkpointing(grads);
        Ok(())
    }
}
