//! Continuations and generation over a backend's KV cache: the prompts run once, batched and
//! right-padded (a row's real tokens never see its padding under the causal mask, so its
//! cache cut to its length is exact); the continuations of a prompt then run together over
//! copies of its cache, and generation runs one token per decoder call.

use candle_core::{DType, Tensor};

use super::{Continuation, Prompt};
use crate::backend::{Decoder, DecoderCache, Rows};
use crate::error::{EngineError, Result};

/// Prompt passes of at most `max_batch` prompts, each prompt's continuations after its own.
pub(super) fn continuations_batch<B: Decoder + ?Sized>(
    backend: &B,
    prompts: &[Prompt],
    continuations: &[Vec<Vec<u32>>],
) -> Result<Vec<Vec<Continuation>>> {
    let per_call = backend.limits().batch();
    let mut out = Vec::with_capacity(prompts.len());
    for (p, c) in prompts.chunks(per_call).zip(continuations.chunks(per_call)) {
        out.extend(after_prompt_pass(backend, p, c)?);
    }
    Ok(out)
}

/// One decoder call over `prompts`, reading each one's last row, then each one's
/// continuations after its row of the cache.
fn after_prompt_pass<B: Decoder + ?Sized>(
    backend: &B,
    prompts: &[Prompt],
    continuations: &[Vec<Vec<u32>>],
) -> Result<Vec<Vec<Continuation>>> {
    let lens = prompts
        .iter()
        .map(|p| p.embeds.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?;
    if lens.contains(&0) {
        return Err(EngineError::Invalid("an empty prompt".into()));
    }
    let last: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n - 1]).collect();
    let mut cache = backend.new_cache()?;
    let firsts = prompt_pass(backend, prompts, Rows::At(&last), cache.as_mut())?;
    firsts
        .iter()
        .enumerate()
        .zip(continuations)
        .map(|((b, first), c)| {
            let row_cache = cache.select(b, lens[b])?;
            continue_from(backend, row_cache.as_ref(), &first.get(0)?, c)
        })
        .collect()
}

/// One decoder call over `prompts` after `cache`, at their own positions where they carry
/// them (all or none of one call do; such prompts start an empty cache).
pub(super) fn prompt_pass<B: Decoder + ?Sized>(
    backend: &B,
    prompts: &[Prompt],
    rows: Rows<'_>,
    cache: &mut dyn DecoderCache,
) -> Result<Vec<Tensor>> {
    if prompts.iter().all(|p| p.positions.is_some()) {
        return backend.decode_prompts(prompts, rows, cache);
    }
    if prompts
        .iter()
        .any(|p| p.positions.is_some() || !p.deepstack.is_empty())
    {
        return Err(EngineError::Invalid(
            "prompts with and without their own positions in one decoder call".into(),
        ));
    }
    let embeds: Vec<Tensor> = prompts.iter().map(|p| p.embeds.clone()).collect();
    backend.decode(&embeds, rows, Some(cache))
}

/// Scores `continuations` after a prompt whose cache (one sequence) is `cache` and whose
/// last row's log-softmax is `first`, as many per decoder call as copies of the cache fit.
pub(super) fn continue_from<B: Decoder + ?Sized>(
    backend: &B,
    cache: &dyn DecoderCache,
    first: &Tensor,
    continuations: &[Vec<u32>],
) -> Result<Vec<Continuation>> {
    let per_call = cache.copies_per_call().min(backend.limits().batch()).max(1);
    let mut out = Vec::with_capacity(continuations.len());
    for chunk in continuations.chunks(per_call) {
        out.extend(continue_together(backend, cache, first, chunk)?);
    }
    Ok(out)
}

/// All of `continuations` in one decoder call over copies of the prompt's cache,
/// right-padded (no real token sees the padding).
fn continue_together<B: Decoder + ?Sized>(
    backend: &B,
    cache: &dyn DecoderCache,
    first: &Tensor,
    continuations: &[Vec<u32>],
) -> Result<Vec<Continuation>> {
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
    let hidden = backend.text_config().hidden_size;
    let embeds = continuations
        .iter()
        .map(|c| {
            if c.is_empty() {
                Ok(Tensor::zeros((0, hidden), DType::F32, first.device())?)
            } else {
                backend.embed_tokens(c)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    let mut shared = cache.repeat(continuations.len())?;
    let rows = backend.decode(&embeds, Rows::All, Some(shared.as_mut()))?;
    let first = first.unsqueeze(0)?;
    continuations
        .iter()
        .zip(rows)
        .map(|(c, r)| Continuation::from_rows(c, &Tensor::cat(&[&first, &r], 0)?))
        .collect()
}

/// The prompt once, then one decoder call per generated token.
pub(super) fn generate<B: Decoder + ?Sized>(
    backend: &B,
    prompt: &Prompt,
    max_new: usize,
    stop: &[u32],
) -> Result<Vec<u32>> {
    let t = prompt.embeds.dim(0)?;
    if t == 0 {
        return Err(EngineError::Invalid("an empty prompt".into()));
    }
    let mut out = Vec::new();
    if max_new == 0 {
        return Ok(out);
    }
    let mut cache = backend.new_cache()?;
    let mut row = last_row(backend, prompt, t - 1, cache.as_mut())?;
    for step in 0..max_new {
        let next = row.argmax(0)?.to_scalar::<u32>()?;
        if stop.contains(&next) {
            break;
        }
        out.push(next);
        if step + 1 == max_new {
            break;
        }
        let token = Prompt::plain(backend.embed_tokens(&[next])?);
        row = last_row(backend, &token, 0, cache.as_mut())?;
    }
    Ok(out)
}

/// The log-softmax row at `at` of one sequence run after `cache` [vocab].
fn last_row<B: Decoder + ?Sized>(
    backend: &B,
    seq: &Prompt,
    at: usize,
    cache: &mut dyn DecoderCache,
) -> Result<Tensor> {
    let rows = prompt_pass(
        backend,
        std::slice::from_ref(seq),
        Rows::At(&[vec![at]]),
        cache,
    )?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Invalid("the decoder gave no row".into()))?;
    Ok(row.get(0)?)
}
