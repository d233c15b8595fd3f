//! The Qwen-VL judges (Qwen2.5-VL, Qwen3-VL) run by candle, as a [`Decoder`]: their decoders'
//! positions are 3-D (M-RoPE), so a prompt with media takes the positions
//! [`Decoder::prompt_positions`] computes from its media's grids ([`Decoder::decode_prompts`]),
//! and every token after it advances all three axes together from the prompt's offset
//! (transformers' `rope_deltas`), which the cache keeps per sequence. A Qwen3-VL prompt also
//! carries its deep-stack features, added after the decoder's first layers in the prompt pass
//! only (the tokens after it are text). Media are encoded by the model's own vision
//! transformer ([`QwenVlBackend::model`]); there are no LLaVA tiles, so it is not a
//! [`super::Backend`].

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use unireward_models::config::TextConfig;
use unireward_models::decode::KvCache;
use unireward_models::qwen2_5_vl::{QwenVision, RopePositions};
use unireward_models::qwen_vl::QwenVlModel;
use unireward_models::tokenize::Tokenized;
use unireward_models::MediaFeatures;

use super::candle_batch::{
    lengths, next_token_mask, no_rows, per_sequence, right_padded, wanted, Wanted,
};
use super::mrope_calls::{continuing, next_positions, PromptPass, RopeCache};
use super::{own_cache, Decoder, DecoderCache, Limits, Prompt, QwenBackend, Rows};
use crate::error::{EngineError, Result};

pub struct QwenVlBackend {
    model: QwenVlModel,
}

impl QwenVlBackend {
    /// The Qwen2.5-VL or Qwen3-VL checkpoint in `dir`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::new(QwenVlModel::load(dir, dtype, device)?))
    }

    pub fn new(model: QwenVlModel) -> Self {
        Self { model }
    }

    pub fn model(&self) -> &QwenVlModel {
        &self.model
    }

    /// One decoder call over right-padded `seqs` at `positions` [3, B, T] after `cache`, with
    /// each sequence's deep-stack levels (`deepstack[b]`: [T_b, hidden] per level, or none).
    fn run(
        &self,
        seqs: &[Tensor],
        deepstack: &[&[Tensor]],
        positions: &Tensor,
        rows: Rows<'_>,
        cache: Option<&mut KvCache>,
    ) -> Result<Vec<Tensor>> {
        let model = &self.model;
        let input = right_padded(seqs, model.dtype(), model.device())?;
        let levels = padded_levels(seqs, deepstack, model.dtype(), model.device())?;
        let positions = positions.to_device(model.device())?;
        match wanted(rows, seqs.len(), model.device())? {
            Wanted::All => {
                let hidden = model.hidden_states(&input, &levels, &positions, cache, None)?;
                let rows = self.log_softmax(&hidden)?;
                per_sequence(&rows, &lengths(seqs)?, |r| Ok(r.clone()))
            }
            Wanted::At { index, counts } => {
                let hidden =
                    model.hidden_states(&input, &levels, &positions, cache, Some(&index))?;
                per_sequence(&hidden, &counts, |h| self.log_softmax(h))
            }
            Wanted::Nothing => no_rows(seqs.len(), model.text_config().vocab_size, model.device()),
        }
    }

    fn log_softmax(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::log_softmax(
            &self.model.logits(hidden)?.to_dtype(DType::F32)?,
            D::Minus1,
        )?)
    }
}

impl QwenBackend for QwenVlBackend {
    fn vision(&self) -> &dyn QwenVision {
        self.model.vision()
    }

    fn media_token_ids(&self) -> (u32, u32) {
        self.model.media_token_ids()
    }
}

impl Decoder for QwenVlBackend {
    fn name(&self) -> String {
        format!(
            "candle-{}-{:?}",
            self.model.family().name(),
            self.model.dtype()
        )
        .to_lowercase()
    }

    fn text_config(&self) -> &TextConfig {
        self.model.text_config()
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.model.device())?;
        Ok(self.model.decoder().embed(&ids)?.to_dtype(DType::F32)?)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: None,
            max_length: None,
            kv_cache: true,
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(RopeCache::new(self.model.new_cache())))
    }

    /// Tokens after a cache continue each sequence from its cached offset; without a cache (or
    /// into an empty one) a sequence is text at positions 0..T.
    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let longest = lengths(seqs)?.into_iter().max().unwrap_or(0);
        let cache = match cache {
            Some(c) => Some(own_cache::<QwenCache>(c)?),
            None => None,
        };
        let (past, deltas) = match &cache {
            Some(c) => c.continued(seqs.len())?,
            None => (0, vec![0; seqs.len()]),
        };
        let flat = continuing(&deltas, past, longest)?;
        let positions = Tensor::from_vec(flat, (3, seqs.len(), longest), self.model.device())?;
        match cache {
            Some(c) => {
                c.deltas = deltas;
                self.run(seqs, &[], &positions, rows, Some(&mut c.kv))
            }
            None => self.run(seqs, &[], &positions, rows, None),
        }
    }

    fn prompt_positions(
        &self,
        tokens: &Tokenized,
        media: &MediaFeatures,
    ) -> Result<Option<RopePositions>> {
        Ok(Some(self.model.positions(
            tokens,
            &media.image_grids,
            &media.video_grids,
        )?))
    }

    fn decode_prompts(
        &self,
        prompts: &[Prompt],
        rows: Rows<'_>,
        cache: &mut dyn DecoderCache,
    ) -> Result<Vec<Tensor>> {
        let cache = own_cache::<QwenCache>(cache)?;
        let pass = PromptPass::new(prompts, cache)?;
        let positions = Tensor::from_vec(
            pass.positions,
            (3, pass.seqs.len(), pass.longest),
            self.model.device(),
        )?;
        let out = self.run(
            &pass.seqs,
            &pass.deepstack,
            &positions,
            rows,
            Some(&mut cache.kv),
        )?;
        cache.deltas = pass.deltas;
        Ok(out)
    }

    /// Each sequence's token at its cached count plus its prompt's offset, on all three axes
    /// (as [`Decoder::decode`] continues one sequence), over a cache whose holes it masks.
    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        let model = &self.model;
        let cache = own_cache::<QwenCache>(cache)?;
        let (batch, hidden) = embeds.dims2()?;
        let past = cache.kv.len();
        super::check_next(batch, hidden, positions, seen, past, model.text_config())?;
        let flat = next_positions(positions, &cache.deltas)?;
        let positions = Tensor::from_vec(flat, (3, batch, 1), model.device())?;
        let input = embeds
            .to_dtype(model.dtype())?
            .to_device(model.device())?
            .unsqueeze(1)?;
        let mask = next_token_mask(seen, past, model.device())?;
        let hidden =
            model
                .decoder()
                .forward(&input, &positions, Some(&mask), Some(&mut cache.kv))?;
        self.log_softmax(&hidden.squeeze(1)?)
    }
}

/// Each deep-stack level [B, T, hidden] of `dtype`: sequence b's [T_b, hidden] right-padded
/// with zeros, or zeros where b has no levels (a text-only prompt beside prompts with media);
/// empty when no sequence has any.
fn padded_levels(
    seqs: &[Tensor],
    deepstack: &[&[Tensor]],
    dtype: DType,
    device: &Device,
) -> Result<Vec<Tensor>> {
    let levels = deepstack.iter().map(|d| d.len()).max().unwrap_or(0);
    if levels == 0 {
        return Ok(Vec::new());
    }
    if deepstack.len() != seqs.len() {
        return Err(EngineError::Invalid(format!(
            "{} sequences with {} deep-stack lists",
            seqs.len(),
            deepstack.len()
        )));
    }
    (0..levels)
        .map(|l| {
            let level = seqs
                .iter()
                .zip(deepstack)
                .map(|(s, d)| match d.get(l) {
                    Some(t) if t.dims() == s.dims() => Ok(t.clone()),
                    Some(t) => Err(EngineError::Invalid(format!(
                        "deep-stack features {:?} for a prompt of {:?}",
                        t.dims(),
                        s.dims()
                    ))),
                    None => Ok(s.zeros_like()?),
                })
                .collect::<Result<Vec<_>>>()?;
            right_padded(&level, dtype, device)
        })
        .collect()
}

/// The candle decoder's cache with each sequence's position offset.
type QwenCache = RopeCache<KvCache>;
