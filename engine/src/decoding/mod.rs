//! The algorithms above a backend's decoder call, written once for every backend: log-probs
//! at positions of whole sequences, the log-probabilities of continuations of a prompt (what
//! fast judging is made of), and greedy generation. With a KV cache ([`cached`]) a prompt
//! runs once and continuations and generated tokens run after it; without one
//! ([`recomputing`]) every continuation and token recomputes the prompt. Work is split into
//! decoder calls of at most the backend's [`Limits::max_batch`] sequences.
//!
//! [`Limits::max_batch`]: crate::backend::Limits::max_batch

mod cached;
mod generation_batch;
mod recomputing;
mod shared_prefix;

use candle_core::Tensor;
use unireward_models::qwen2_5_vl::RopePositions;

use crate::backend::{Decoder, Rows};
use crate::error::{EngineError, Result};

pub use self::generation_batch::{Finish, Generated, GenerationBatch};
pub(crate) use shared_prefix::similar_length_batches;
pub use shared_prefix::{continuations_of_families, PromptFamily};

/// The algorithms every [`Backend`] gets.
pub trait Decoding {
    /// Sequences of embeddings ([T_i, hidden] each) → for each, the log-softmax over the
    /// vocabulary at the requested positions ([positions_i, vocab] f32). The row at position
    /// p predicts the token at p + 1.
    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>>;

    /// Continuations of one prompt ([T, hidden] embeddings): for each, the log-probability of
    /// each of its tokens and the log-softmax row after its last token.
    fn continuations(
        &self,
        prompt: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>>;

    /// [`Decoding::continuations`] for several prompts at once (one list of continuations per
    /// prompt); with a cache their prompt passes are batched.
    fn continuations_batch(
        &self,
        prompts: &[Tensor],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>>;

    /// [`Decoding::continuations_batch`] of prompts that carry their own positions (a
    /// family whose positions are not 0..T: [`Decoder::prompt_positions`]).
    fn prompt_continuations_batch(
        &self,
        prompts: &[Prompt],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>>;

    /// Greedy decoding after a prompt ([T, hidden]) until a stop token or `max_new` tokens.
    /// The stop token is not returned.
    fn generate(&self, prompt: &Tensor, max_new: usize, stop: &[u32]) -> Result<Vec<u32>>;

    /// [`Decoding::generate`] after a prompt that carries its own positions.
    fn generate_after(&self, prompt: &Prompt, max_new: usize, stop: &[u32]) -> Result<Vec<u32>>;
}

/// A prompt as the decoder takes it: its embeddings [T, hidden] (media spliced in) and, for a
/// family whose positions are not 0..T (Qwen-VL's M-RoPE), its positions.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub embeds: Tensor,
    pub positions: Option<RopePositions>,
    /// Per deep-stack level, [T, hidden] f32 added to the hidden states after that decoder
    /// layer (Qwen3-VL's visual features, zero outside the media tokens); empty otherwise.
    pub deepstack: Vec<Tensor>,
}

impl Prompt {
    /// A prompt at positions 0..T.
    pub fn plain(embeds: Tensor) -> Self {
        Self {
            embeds,
            positions: None,
            deepstack: Vec::new(),
        }
    }
}

/// A prompt at positions 0..T.
impl From<Tensor> for Prompt {
    fn from(embeds: Tensor) -> Self {
        Self::plain(embeds)
    }
}

impl<B: Decoder + ?Sized> Decoding for B {
    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>> {
        if seqs.len() != positions.len() {
            return Err(EngineError::Invalid(
                "one position list per sequence".into(),
            ));
        }
        for (s, pos) in seqs.iter().zip(positions) {
            let n = s.dim(0)?;
            if let Some(&bad) = pos.iter().find(|&&p| p >= n) {
                return Err(EngineError::Invalid(format!(
                    "position {bad} is past the sequence's {n} tokens"
                )));
            }
        }
        let per_call = self.limits().batch();
        let mut out = Vec::with_capacity(seqs.len());
        for (s, p) in seqs.chunks(per_call).zip(positions.chunks(per_call)) {
            out.extend(self.decode(s, Rows::At(p), None)?);
        }
        Ok(out)
    }

    fn continuations(
        &self,
        prompt: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        if !self.limits().kv_cache {
            return recomputing::continuations(self, prompt, continuations);
        }
        let mut all = cached::continuations_batch(
            self,
            &[Prompt::plain(prompt.clone())],
            &[continuations.to_vec()],
        )?;
        Ok(all.pop().unwrap_or_default())
    }

    fn continuations_batch(
        &self,
        prompts: &[Tensor],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>> {
        if prompts.len() != continuations.len() {
            return Err(EngineError::Invalid(
                "one list of continuations per prompt".into(),
            ));
        }
        if !self.limits().kv_cache {
            return recomputing::continuations_batch(self, prompts, continuations);
        }
        let prompts: Vec<Prompt> = prompts.iter().cloned().map(Prompt::plain).collect();
        cached::continuations_batch(self, &prompts, continuations)
    }

    fn prompt_continuations_batch(
        &self,
        prompts: &[Prompt],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>> {
        if prompts.iter().all(|p| p.positions.is_none()) {
            let embeds: Vec<Tensor> = prompts.iter().map(|p| p.embeds.clone()).collect();
            return self.continuations_batch(&embeds, continuations);
        }
        if prompts.len() != continuations.len() {
            return Err(EngineError::Invalid(
                "one list of continuations per prompt".into(),
            ));
        }
        if !self.limits().kv_cache {
            return Err(positions_need_cache(self));
        }
        cached::continuations_batch(self, prompts, continuations)
    }

    fn generate(&self, prompt: &Tensor, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        self.generate_after(&Prompt::plain(prompt.clone()), max_new, stop)
    }

    fn generate_after(&self, prompt: &Prompt, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        if !self.limits().kv_cache {
            if prompt.positions.is_some() {
                return Err(positions_need_cache(self));
            }
            return recomputing::generate(self, &prompt.embeds, max_new, stop);
        }
        cached::generate(self, prompt, max_new, stop)
    }
}

/// Prompts with their own positions continue through the cache, which keeps their offsets.
pub(crate) fn positions_need_cache<B: Decoder + ?Sized>(backend: &B) -> EngineError {
    EngineError::Invalid(format!(
        "the {} backend keeps no cache, which prompts with their own positions continue from",
        backend.name()
    ))
}

/// One continuation's log-probabilities.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// log p of each token given everything before it.
    pub token_logprobs: Vec<f32>,
    /// log-softmax over the vocabulary after the last token [vocab].
    pub next: Tensor,
}

impl Continuation {
    /// From the rows at positions T-1 .. T-1+len (row j predicts token j).
    pub fn from_rows(tokens: &[u32], rows: &Tensor) -> Result<Self> {
        let token_logprobs = tokens
            .iter()
            .enumerate()
            .map(|(j, &tok)| Ok(rows.get(j)?.get(tok as usize)?.to_scalar::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_logprobs,
            next: rows.get(tokens.len())?,
        })
    }

    pub fn total(&self) -> f64 {
        self.token_logprobs.iter().map(|&x| x as f64).sum()
    }
}

#[cfg(test)]
mod tests;
