//! Continuations and generation for a decoder without a cache: every continuation and every
//! generated token re-runs the whole sequence from position 0.

use candle_core::Tensor;

use super::{Continuation, Decoding};
use crate::backend::Decoder;
use crate::error::{EngineError, Result};

/// Each continuation appended to the prompt and run whole, the rows from the prompt's last
/// position on read.
pub(super) fn continuations<B: Decoder + ?Sized>(
    backend: &B,
    prompt: &Tensor,
    continuations: &[Vec<u32>],
) -> Result<Vec<Continuation>> {
    let t = prompt.dim(0)?;
    if t == 0 {
        return Err(EngineError::Invalid("an empty prompt".into()));
    }
    let mut seqs = Vec::with_capacity(continuations.len());
    let mut positions = Vec::with_capacity(continuations.len());
    for c in continuations {
        let seq = if c.is_empty() {
            prompt.clone()
        } else {
            Tensor::cat(&[prompt, &backend.embed_tokens(c)?], 0)?
        };
        seqs.push(seq);
        positions.push((t - 1..t + c.len()).collect());
    }
    let rows = backend.log_probs_at(&seqs, &positions)?;
    continuations
        .iter()
        .zip(rows)
        .map(|(c, lp)| Continuation::from_rows(c, &lp))
        .collect()
}

/// One prompt after another.
pub(super) fn continuations_batch<B: Decoder + ?Sized>(
    backend: &B,
    prompts: &[Tensor],
    continuations: &[Vec<Vec<u32>>],
) -> Result<Vec<Vec<Continuation>>> {
    prompts
        .iter()
        .zip(continuations)
        .map(|(p, c)| self::continuations(backend, p, c))
        .collect()
}

/// The whole sequence run again for every token.
pub(super) fn generate<B: Decoder + ?Sized>(
    backend: &B,
    prompt: &Tensor,
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    if prompt.dim(0)? == 0 {
        return Err(EngineError::Invalid("an empty prompt".into()));
    }
    let mut seq = prompt.clone();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let last = seq.dim(0)? - 1;
        let rows = backend.log_probs_at(std::slice::from_ref(&seq), &[vec![last]])?;
        let next = rows[0].get(0)?.argmax(0)?.to_scalar::<u32>()?;
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        seq = Tensor::cat(&[&seq, &backend.embed_tokens(&[next])?], 0)?;
    }
    Ok(out)
}
