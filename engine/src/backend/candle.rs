//! The reward model run directly by candle.

use std::any::Any;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_models::decode::KvCache;
use unireward_models::family::{JudgeModel, ModelFamily};
use unireward_models::LlavaOnevision;

use super::candle_batch::{
    lengths, next_token_mask, no_rows, per_sequence, right_padded, wanted, Wanted,
};
use super::{own_cache, Backend, Decoder, DecoderCache, Limits, Rows};
use crate::error::{EngineError, Result};

/// Runs a judge family's candle model ([`JudgeModel`]). The packing between the two graphs
/// is still LLaVA's (the `Backend` trait hands out its config and newline row), so the
/// backend keeps those beside the family-neutral model.
pub struct CandleBackend {
    model: Box<dyn JudgeModel>,
    config: LlavaConfig,
    newline: Tensor,
}

impl CandleBackend {
    /// Detects the checkpoint's family (refusing one that is not implemented, by name) and
    /// loads it.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        match ModelFamily::of_dir(dir)? {
            ModelFamily::LlavaOnevision => Self::new(LlavaOnevision::load(dir, dtype, device)?),
            family @ (ModelFamily::Qwen25Vl | ModelFamily::Qwen3Vl) => {
                Err(EngineError::Invalid(format!(
                    "{}: {}",
                    dir.join("config.json").display(),
                    family
                        .not_runnable_by("the LLaVA-OneVision candle backend")
                        .unwrap_or_default()
                )))
            }
        }
    }

    pub fn new(model: LlavaOnevision) -> Result<Self> {
        let newline = model.image_newline().to_dtype(DType::F32)?;
        let config = model.config().clone();
        Ok(Self {
            model: Box::new(model),
            config,
            newline,
        })
    }

    pub fn model(&self) -> &dyn JudgeModel {
        self.model.as_ref()
    }
}

impl Decoder for CandleBackend {
    fn name(&self) -> String {
        format!("candle-{:?}", self.model.dtype()).to_lowercase()
    }

    fn text_config(&self) -> &TextConfig {
        &self.config.text
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.model.device())?;
        Ok(self.model.embed_ids(&ids)?.to_dtype(DType::F32)?)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: None,
            max_length: None,
            kv_cache: true,
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(CandleCache(self.model.new_cache())))
    }

    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        let model = self.model.as_ref();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let cache = match cache {
            Some(c) => Some(&mut own_cache::<CandleCache>(c)?.0),
            None => None,
        };
        let input = right_padded(seqs, model.dtype(), model.device())?;
        match wanted(rows, seqs.len(), model.device())? {
            Wanted::All => {
                // Every row: the whole last layer, and the vocabulary projection in one go.
                let hidden = model.hidden_states(&input, cache)?;
                let rows = log_softmax_rows(model, &hidden)?;
                per_sequence(&rows, &lengths(seqs)?, |r| Ok(r.clone()))
            }
            Wanted::At { index, counts } => {
                let hidden = model.hidden_states_at(&input, cache, &index)?;
                per_sequence(&hidden, &counts, |h| log_softmax_rows(model, h))
            }
            Wanted::Nothing => no_rows(seqs.len(), model.text_config().vocab_size, model.device()),
        }
    }

    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        let model = self.model.as_ref();
        let cache = &mut own_cache::<CandleCache>(cache)?.0;
        let (batch, hidden) = embeds.dims2()?;
        let past = cache.len();
        super::check_next(batch, hidden, positions, seen, past, &self.config.text)?;
        let input = embeds
            .to_dtype(model.dtype())?
            .to_device(model.device())?
            .unsqueeze(1)?;
        let positions: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let positions = Tensor::from_vec(positions, (batch, 1), model.device())?;
        let mask = next_token_mask(seen, past, model.device())?;
        let hidden = model.hidden_states_masked(&input, &positions, &mask, Some(cache))?;
        log_softmax_rows(model, &hidden.squeeze(1)?)
    }
}

impl Backend for CandleBackend {
    fn config(&self) -> &LlavaConfig {
        &self.config
    }

    fn image_newline(&self) -> &Tensor {
        &self.newline
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        let tiles = tiles.to_device(self.model.device())?;
        Ok(self.model.encode_tiles(&tiles)?.to_dtype(DType::F32)?)
    }
}

/// Hidden states [.., hidden] → log-softmax over the vocabulary, f32.
fn log_softmax_rows(model: &dyn JudgeModel, hidden: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &model.logits(hidden)?,
        D::Minus1,
    )?)
}

/// The model's cache (cloning shares its tensors).
struct CandleCache(KvCache);

impl DecoderCache for CandleCache {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(Self(self.0.select(b, len)?)))
    }

    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(Self(self.0.repeat_batch(n)?)))
    }

    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(Self(self.0.gather(rows, slots)?)))
    }

    fn append(&mut self, other: &mut dyn DecoderCache) -> Result<()> {
        let other = &own_cache::<CandleCache>(other)?.0;
        Ok(self.0.append(other)?)
    }

    fn copies_per_call(&self) -> usize {
        // No bound: every continuation of a prompt runs in one call, as it always has here.
        usize::MAX
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
