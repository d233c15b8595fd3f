//! The reward model run directly by candle.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use unireward_models::config::LlavaConfig;
use unireward_models::family::JudgeModel;
use unireward_models::LlavaOnevision;

use super::{Backend, Continuation};
use crate::error::{EngineError, Result};

pub struct CandleBackend {
    model: LlavaOnevision,
    newline: Tensor,
}

impl CandleBackend {
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        Self::new(LlavaOnevision::load(dir, dtype, device)?)
    }

    pub fn new(model: LlavaOnevision) -> Result<Self> {
        let newline = model.image_newline().to_dtype(DType::F32)?;
        Ok(Self { model, newline })
    }

    pub fn model(&self) -> &LlavaOnevision {
        &self.model
    }
}

impl Backend for CandleBackend {
    fn name(&self) -> String {
        format!("candle-{:?}", self.model.dtype()).to_lowercase()
    }

    fn config(&self) -> &LlavaConfig {
        self.model.config()
    }

    fn image_newline(&self) -> &Tensor {
        &self.newline
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        let tiles = tiles.to_device(self.model.device())?;
        Ok(self.model.encode_tiles(&tiles)?.to_dtype(DType::F32)?)
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let ids = Tensor::new(ids, self.model.device())?;
        Ok(self.model.decoder().embed(&ids)?.to_dtype(DType::F32)?)
    }

    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>> {
        if seqs.len() != positions.len() {
            return Err(EngineError::Invalid(
                "one position list per sequence".into(),
            ));
        }
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let lens = seqs
            .iter()
            .map(|s| s.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let dtype = self.model.dtype();
        // Right padding: under a causal mask the pad rows after a sequence never reach it.
        let rows = seqs
            .iter()
            .zip(&lens)
            .map(|(s, &n)| {
                let s = s.to_dtype(dtype)?.to_device(self.model.device())?;
                if n == max_len {
                    Ok(s)
                } else {
                    s.pad_with_zeros(0, 0, max_len - n)
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        for (pos, &n) in positions.iter().zip(&lens) {
            if let Some(&bad) = pos.iter().find(|&&p| p >= n) {
                return Err(EngineError::Invalid(format!(
                    "position {bad} is past the sequence's {n} tokens"
                )));
            }
        }
        // Every sequence asks for as many rows as the longest list; shorter lists repeat row
        // 0, whose result is dropped.
        let width = positions.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            let vocab = self.model.config().text.vocab_size;
            let none = Tensor::zeros((0, vocab), DType::F32, self.model.device())?;
            return Ok(vec![none; seqs.len()]);
        }
        let index: Vec<u32> = positions
            .iter()
            .flat_map(|pos| {
                pos.iter()
                    .map(|&p| p as u32)
                    .chain(std::iter::repeat_n(0, width - pos.len()))
            })
            .collect();
        let index = Tensor::from_vec(index, (seqs.len(), width), self.model.device())?;
        let hidden = self
            .model
            .hidden_states_at(&Tensor::stack(&rows, 0)?, None, &index)?;
        positions
            .iter()
            .enumerate()
            .map(|(b, pos)| {
                let h = hidden.get(b)?.narrow(0, 0, pos.len())?;
                let logits = self.model.decoder().logits(&h)?;
                Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
            })
            .collect()
    }

    fn continuations(
        &self,
        prompt: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        let mut all =
            self.continuations_batch(std::slice::from_ref(prompt), &[continuations.to_vec()])?;
        Ok(all.pop().unwrap_or_default())
    }

    fn continuations_batch(
        &self,
        prompts: &[Tensor],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>> {
        let model = &self.model;
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        // One prompt pass for the batch, right-padded: under the causal mask a row's real
        // tokens never see its padding, so each row's cache, cut to its length, is exact.
        let lens = prompts
            .iter()
            .map(|p| p.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if lens.contains(&0) {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        let longest = lens.iter().copied().max().unwrap_or(0);
        let rows = prompts
            .iter()
            .zip(&lens)
            .map(|(p, &n)| p.to_dtype(model.dtype())?.pad_with_zeros(0, 0, longest - n))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mut cache = model.new_cache();
        let last_rows: Vec<u32> = lens.iter().map(|&n| n as u32 - 1).collect();
        let last_rows = Tensor::from_vec(last_rows, (prompts.len(), 1), model.device())?;
        let hidden =
            model.hidden_states_at(&Tensor::stack(&rows, 0)?, Some(&mut cache), &last_rows)?;
        (0..prompts.len())
            .map(|b| {
                let last = hidden.get(b)?;
                let first = log_softmax_rows(model, &last)?.get(0)?;
                let row_cache = cache.select(b, lens[b])?;
                self.continue_from(&row_cache, &first, &continuations[b])
            })
            .collect()
    }

    fn generate(&self, prompt: &Tensor, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        let model = &self.model;
        if prompt.dim(0)? == 0 {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        let mut cache = model.new_cache();
        let mut input = prompt.to_dtype(model.dtype())?.unsqueeze(0)?;
        let mut out = Vec::new();
        for _ in 0..max_new {
            let last = Tensor::new(&[[input.dim(1)? as u32 - 1]], model.device())?;
            let hidden = model.hidden_states_at(&input, Some(&mut cache), &last)?;
            let logits = model.decoder().logits(&hidden.get(0)?)?;
            let next = logits.get(0)?.argmax(0)?.to_scalar::<u32>()?;
            if stop.contains(&next) {
                break;
            }
            out.push(next);
            let id = Tensor::new(&[[next]], model.device())?;
            input = model.decoder().embed(&id)?;
        }
        Ok(out)
    }
}

impl CandleBackend {
    /// Scores `continuations` after a prompt whose cache is `cache` and whose last row's
    /// log-softmax is `first`.
    fn continue_from(
        &self,
        cache: &unireward_models::decode::KvCache,
        first: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        let model = &self.model;
        let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 {
            return Ok(continuations
                .iter()
                .map(|_| Continuation {
                    token_logprobs: Vec::new(),
                    next: first.clone(),
                })
                .collect());
        }
        // All continuations in one batch over the shared prompt cache; right padding is
        // harmless under the causal mask.
        let k = continuations.len();
        let ids: Vec<u32> = continuations
            .iter()
            .flat_map(|c| {
                c.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - c.len()))
            })
            .collect();
        let ids = Tensor::from_vec(ids, (k, longest), model.device())?;
        let embeds = model.decoder().embed(&ids)?;
        let mut batch_cache = cache.repeat_batch(k)?;
        let hidden = model.hidden_states(&embeds, Some(&mut batch_cache))?;
        let rows = log_softmax_rows(model, &hidden)?; // [k, longest, vocab]
        continuations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let all = Tensor::cat(&[&first.unsqueeze(0)?, &rows.get(i)?], 0)?;
                Continuation::from_rows(c, &all)
            })
            .collect()
    }
}

/// Hidden states [.., hidden] → log-softmax over the vocabulary, f32.
fn log_softmax_rows(model: &LlavaOnevision, hidden: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::log_softmax(
        &model.decoder().logits(hidden)?,
        D::Minus1,
    )?)
}
