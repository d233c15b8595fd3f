//! Continuations of prompts that begin with the same rows: one of them runs whole, and its
//! cache cut to the shared beginning serves the others, whose remaining rows run after copies
//! of it (right-padded, so a row's real tokens never see its padding and its cache cut to its
//! length is exact); each prompt's continuations run after its own row of the cache, as
//! [`super::cached`] runs them after a whole prompt.

use candle_core::Tensor;

use super::{cached, Continuation, Decoding};
use crate::backend::{Decoder, DecoderCache, Rows};
use crate::error::{EngineError, Result};

/// A prompt, and prompts that begin with its first `shared` rows, given by the rows after
/// those (at least one each).
pub struct PromptFamily {
    pub prompt: Tensor,
    pub continuations: Vec<Vec<u32>>,
    pub shared: usize,
    pub followers: Vec<(Tensor, Vec<Vec<u32>>)>,
}

/// For each family, the continuations of its prompt then of each follower, as
/// [`Decoding::continuations`] scores them. The families' prompts run together as
/// [`Decoding::continuations_batch`] runs prompts (calls of at most the backend's batch);
/// each prompt's cache cut to its `shared` rows then takes its followers' remaining rows, in
/// passes of at most `token_budget` padded tokens (one longer runs alone) that put together
/// only followers of similar lengths, so that padding costs little of what sharing saves.
/// Without a cache every prompt is whole again and recomputed.
pub fn continuations_of_families<B: Decoder + ?Sized>(
    backend: &B,
    families: &[PromptFamily],
    token_budget: usize,
) -> Result<Vec<Vec<Vec<Continuation>>>> {
    for f in families {
        let len = f.prompt.dim(0)?;
        let short = f
            .followers
            .iter()
            .map(|(s, _)| s.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?
            .contains(&0);
        if len == 0 || f.shared == 0 || f.shared > len || short {
            return Err(EngineError::Invalid(
                "an empty prompt, shared beginning or follower".into(),
            ));
        }
    }
    if !backend.limits().kv_cache {
        return recomputed(backend, families);
    }
    let per_call = backend.limits().batch();
    let mut out = Vec::with_capacity(families.len());
    for chunk in families.chunks(per_call) {
        let prompts: Vec<Tensor> = chunk.iter().map(|f| f.prompt.clone()).collect();
        let lens = prompts
            .iter()
            .map(|p| p.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n - 1]).collect();
        let mut cache = backend.new_cache()?;
        let firsts = backend.decode(&prompts, Rows::At(&last), Some(cache.as_mut()))?;
        for (b, (f, first)) in chunk.iter().zip(&firsts).enumerate() {
            let own = cache.select(b, lens[b])?;
            let mut all = vec![cached::continue_from(
                backend,
                own.as_ref(),
                &first.get(0)?,
                &f.continuations,
            )?];
            if !f.followers.is_empty() {
                let prefix = cache.select(b, f.shared)?;
                all.extend(after_prefix(
                    backend,
                    prefix.as_ref(),
                    &f.followers,
                    token_budget,
                )?);
            }
            out.push(all);
        }
    }
    Ok(out)
}

/// Each follower's continuations after the one-sequence cache `prefix`.
fn after_prefix<B: Decoder + ?Sized>(
    backend: &B,
    prefix: &dyn DecoderCache,
    followers: &[(Tensor, Vec<Vec<u32>>)],
    token_budget: usize,
) -> Result<Vec<Vec<Continuation>>> {
    let shared = prefix.len();
    let lens = followers
        .iter()
        .map(|(s, _)| s.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let per_call = prefix
        .copies_per_call()
        .min(backend.limits().batch())
        .max(1);
    let mut out: Vec<Option<Vec<Continuation>>> = followers.iter().map(|_| None).collect();
    for call in similar_length_batches(&lens, token_budget, per_call) {
        let seqs: Vec<Tensor> = call.iter().map(|&k| followers[k].0.clone()).collect();
        let last: Vec<Vec<usize>> = call.iter().map(|&k| vec![lens[k] - 1]).collect();
        let mut copies = prefix.repeat(call.len())?;
        let firsts = backend.decode(&seqs, Rows::At(&last), Some(copies.as_mut()))?;
        for (b, (&k, first)) in call.iter().zip(&firsts).enumerate() {
            let own = copies.select(b, shared + lens[k])?;
            out[k] = Some(cached::continue_from(
                backend,
                own.as_ref(),
                &first.get(0)?,
                &followers[k].1,
            )?);
        }
    }
    out.into_iter()
        .map(|c| c.ok_or_else(|| EngineError::Invalid("a follower was not run".into())))
        .collect()
}

/// Without a cache: every prompt whole, recomputed.
fn recomputed<B: Decoder + ?Sized>(
    backend: &B,
    families: &[PromptFamily],
) -> Result<Vec<Vec<Vec<Continuation>>>> {
    let mut prompts = Vec::new();
    let mut continuations = Vec::new();
    for f in families {
        prompts.push(f.prompt.clone());
        continuations.push(f.continuations.clone());
        let prefix = f.prompt.narrow(0, 0, f.shared)?;
        for (suffix, c) in &f.followers {
            prompts.push(Tensor::cat(&[&prefix, suffix], 0)?);
            continuations.push(c.clone());
        }
    }
    let mut scored = backend
        .continuations_batch(&prompts, &continuations)?
        .into_iter();
    Ok(families
        .iter()
        .map(|f| scored.by_ref().take(1 + f.followers.len()).collect())
        .collect())
}

/// Sequences of lengths `lens` (by index) in decoder calls: shortest first, a call growing
/// while its padded size stays within `budget` and within an eighth over its real tokens, and
/// it holds at most `per_call`. Padding is computed as real rows are; what batching saves
/// beside it (a call's fixed cost, fuller matrix products) is small next to long sequences.
pub(crate) fn similar_length_batches(
    lens: &[usize],
    budget: usize,
    per_call: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&k| lens[k]);
    let mut calls: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut real = 0;
    for k in order {
        let len = lens[k];
        // Sorted: this suffix is the call's longest.
        let padded = len * (current.len() + 1);
        let fits = padded <= budget && 8 * padded <= 9 * (real + len) && current.len() < per_call;
        if !current.is_empty() && !fits {
            calls.push(std::mem::take(&mut current));
            real = 0;
        }
        current.push(k);
        real += len;
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::similar_length_batches;

    #[test]
    fn calls_hold_similar_lengths_within_the_budget() {
        // The two long suffixes together, the short ones together, shortest first.
        assert_eq!(
            similar_length_batches(&[900, 250, 880, 260], 4096, usize::MAX),
            vec![vec![1, 3], vec![2, 0]]
        );
        // 3 x 900 padded is over the budget of 2000.
        assert_eq!(
            similar_length_batches(&[900, 900, 900], 2000, usize::MAX),
            vec![vec![0, 1], vec![2]]
        );
        assert_eq!(similar_length_batches(&[10; 5], 4096, 2).len(), 3);
        // A suffix over the budget runs alone.
        assert_eq!(similar_length_batches(&[5000], 4096, 8), vec![vec![0]]);
        assert!(similar_length_batches(&[], 4096, 8).is_empty());
    }
}
