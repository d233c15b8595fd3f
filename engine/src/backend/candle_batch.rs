//! The batch around a candle decoder call, the same for every family's candle backend: the
//! sequences right-padded into one input, the rows asked of each as one index, and each
//! sequence's rows cut back out of the result.

use candle_core::{DType, Device, Tensor};

use super::Rows;
use crate::error::{EngineError, Result};

/// Each sequence's length (its first dimension).
pub(crate) fn lengths(seqs: &[Tensor]) -> Result<Vec<usize>> {
    Ok(seqs
        .iter()
        .map(|s| s.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?)
}

/// `seqs` ([T_i, hidden]) right-padded to the longest and stacked [B, T, hidden], in `dtype`
/// on `device`. Under the causal mask no real token attends to a pad after it.
pub(crate) fn right_padded(seqs: &[Tensor], dtype: DType, device: &Device) -> Result<Tensor> {
    let lens = lengths(seqs)?;
    let longest = lens.iter().copied().max().unwrap_or(0);
    let padded = seqs
        .iter()
        .zip(&lens)
        .map(|(s, &n)| {
            let s = s.to_dtype(dtype)?.to_device(device)?;
            if n == longest {
                Ok(s)
            } else {
                s.pad_with_zeros(0, 0, longest - n)
            }
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&padded, 0)?)
}

/// What a decoder call reads of its `n` sequences.
pub(crate) enum Wanted {
    /// Every row.
    All,
    /// These rows: one index [n, width] (every sequence asks for as many rows as the longest
    /// list; shorter lists repeat row 0, whose result is dropped) and each list's length.
    At { index: Tensor, counts: Vec<usize> },
    /// No row at all.
    Nothing,
}

pub(crate) fn wanted(rows: Rows<'_>, n: usize, device: &Device) -> Result<Wanted> {
    let positions = match rows {
        Rows::All => return Ok(Wanted::All),
        Rows::At(positions) => positions,
    };
    if positions.len() != n {
        return Err(EngineError::Invalid(
            "one position list per sequence".into(),
        ));
    }
    let width = positions.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 {
        return Ok(Wanted::Nothing);
    }
    let index: Vec<u32> = positions
        .iter()
        .flat_map(|pos| {
            pos.iter()
                .map(|&p| p as u32)
                .chain(std::iter::repeat_n(0, width - pos.len()))
        })
        .collect();
    Ok(Wanted::At {
        index: Tensor::from_vec(index, (n, width), device)?,
        counts: positions.iter().map(Vec::len).collect(),
    })
}

/// Sequence b's first `counts[b]` rows of `batched` [B, ≥counts[b], ..], each through `f`.
pub(crate) fn per_sequence(
    batched: &Tensor,
    counts: &[usize],
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    counts
        .iter()
        .enumerate()
        .map(|(b, &n)| f(&batched.get(b)?.narrow(0, 0, n)?))
        .collect()
}

/// The additive mask [B, 1, 1, past + 1] of one new token per sequence over a cache with
/// holes: each token sees its own sequence's slots (`seen[b]`) and itself. f32's lowest
/// rather than −inf, as the decoder's own masks.
pub(crate) fn next_token_mask(seen: &[&[bool]], past: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = seen
        .iter()
        .flat_map(|s| {
            s.iter()
                .map(|&own| if own { 0.0 } else { f32::MIN })
                .chain([0.0])
        })
        .collect();
    Ok(Tensor::from_vec(
        mask,
        (seen.len(), 1, 1, past + 1),
        device,
    )?)
}

/// What a call that asks for no row returns: an empty [0, vocab] per sequence.
pub(crate) fn no_rows(n: usize, vocab: usize, device: &Device) -> Result<Vec<Tensor>> {
    let none = Tensor::zeros((0, vocab), DType::F32, device)?;
    Ok(vec![none; n])
}
