//! What a Qwen-VL decoder call needs whichever backend runs it (candle, ONNX Runtime): the
//! cache keeps each sequence's position offset beside its keys and values (transformers'
//! `rope_deltas`: what its prompt's M-RoPE positions put ahead of or behind its token count),
//! and the calls' positions [3, B, T] are laid out from the prompts' own, or from the cached
//! count plus the offset on all three axes for the tokens after a prompt.

use std::any::Any;

use candle_core::Tensor;
use unireward_models::decode::KvCache;
use unireward_models::qwen2_5_vl::RopePositions;

use super::ort::kv::PastKv;
use super::{own_cache, DecoderCache, Prompt};
use crate::error::{EngineError, Result};

/// The keys and values of a batch, as either backend holds them.
pub(crate) trait KvStore: Sized + Send + 'static {
    fn len(&self) -> usize;
    fn select(&self, b: usize, len: usize) -> Result<Self>;
    fn repeat_batch(&self, n: usize) -> Result<Self>;
    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Self>;
    fn append(&mut self, other: &Self) -> Result<()>;
    /// How many copies of a one-sequence cache one call may hold.
    fn copies_per_call(&self) -> usize;
}

impl KvStore for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }
    fn select(&self, b: usize, len: usize) -> Result<Self> {
        Ok(KvCache::select(self, b, len)?)
    }
    fn repeat_batch(&self, n: usize) -> Result<Self> {
        Ok(KvCache::repeat_batch(self, n)?)
    }
    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Self> {
        Ok(KvCache::gather(self, rows, slots)?)
    }
    fn append(&mut self, other: &Self) -> Result<()> {
        Ok(KvCache::append(self, other)?)
    }
    fn copies_per_call(&self) -> usize {
        usize::MAX
    }
}

impl KvStore for PastKv {
    fn len(&self) -> usize {
        PastKv::len(self)
    }
    fn select(&self, b: usize, len: usize) -> Result<Self> {
        PastKv::select(self, b, len)
    }
    fn repeat_batch(&self, n: usize) -> Result<Self> {
        PastKv::repeat_batch(self, n)
    }
    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Self> {
        PastKv::gather(self, rows, slots)
    }
    fn append(&mut self, other: &Self) -> Result<()> {
        PastKv::append(self, other)
    }
    fn copies_per_call(&self) -> usize {
        DecoderCache::copies_per_call(self)
    }
}

/// A Qwen-VL decoder's cache: the keys and values, and each sequence's position offset.
pub(crate) struct RopeCache<K> {
    pub kv: K,
    pub deltas: Vec<i64>,
}

impl<K: KvStore> RopeCache<K> {
    pub fn new(kv: K) -> Self {
        Self {
            kv,
            deltas: Vec::new(),
        }
    }

    /// The cached count and offsets the next call of `batch` sequences continues from (an
    /// empty cache: position 0, no offset).
    pub fn continued(&self, batch: usize) -> Result<(usize, Vec<i64>)> {
        if self.kv.len() == 0 {
            return Ok((0, vec![0; batch]));
        }
        if self.deltas.len() != batch {
            return Err(EngineError::Invalid(format!(
                "{batch} sequences after a cache of {}",
                self.deltas.len()
            )));
        }
        Ok((self.kv.len(), self.deltas.clone()))
    }
}

impl<K: KvStore> DecoderCache for RopeCache<K> {
    fn len(&self) -> usize {
        self.kv.len()
    }

    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>> {
        let delta = *self
            .deltas
            .get(b)
            .ok_or_else(|| EngineError::Invalid(format!("no sequence {b} in the cache")))?;
        Ok(Box::new(Self {
            kv: self.kv.select(b, len)?,
            deltas: vec![delta],
        }))
    }

    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>> {
        let delta = match self.deltas.as_slice() {
            [d] => *d,
            [] => 0,
            many => {
                return Err(EngineError::Invalid(format!(
                    "a cache of {} sequences repeated as one",
                    many.len()
                )))
            }
        };
        Ok(Box::new(Self {
            kv: self.kv.repeat_batch(n)?,
            deltas: vec![delta; n],
        }))
    }

    fn copies_per_call(&self) -> usize {
        self.kv.copies_per_call()
    }

    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Box<dyn DecoderCache>> {
        let deltas =
            rows.iter()
                .map(|&b| {
                    self.deltas.get(b).copied().ok_or_else(|| {
                        EngineError::Invalid(format!("no sequence {b} in the cache"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        Ok(Box::new(Self {
            kv: self.kv.gather(rows, slots)?,
            deltas,
        }))
    }

    fn append(&mut self, other: &mut dyn DecoderCache) -> Result<()> {
        let other = own_cache::<RopeCache<K>>(other)?;
        self.kv.append(&other.kv)?;
        self.deltas.extend_from_slice(&other.deltas);
        Ok(())
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Positions [3, B, t] (row-major) of `t` tokens after `past` cached ones: sequence b's at
/// past + deltas[b] + i on every axis.
pub(crate) fn continuing(deltas: &[i64], past: usize, t: usize) -> Result<Vec<u32>> {
    let mut flat = Vec::with_capacity(3 * deltas.len() * t);
    for _ in 0..3 {
        for &delta in deltas {
            let start = past as i64 + delta;
            if start < 0 {
                return Err(EngineError::Invalid(format!(
                    "position offset {delta} puts token {past} before position 0"
                )));
            }
            flat.extend((0..t).map(|i| (start as usize + i) as u32));
        }
    }
    Ok(flat)
}

/// Positions [3, B, longest] (row-major) of prompts of `lens` tokens: each prompt's own, its
/// padding continuing after them (never attended by its real tokens).
fn prompt_positions(positions: &[&RopePositions], lens: &[usize]) -> Result<Vec<u32>> {
    let batch = lens.len();
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut flat = vec![0u32; 3 * batch * longest];
    for (b, (p, &n)) in positions.iter().zip(lens).enumerate() {
        if p.axes[0].len() != n {
            return Err(EngineError::Invalid(format!(
                "a prompt of {n} tokens with {} positions",
                p.axes[0].len()
            )));
        }
        for (a, axis) in p.axes.iter().enumerate() {
            let row = &mut flat[(a * batch + b) * longest..][..longest];
            row[..n].copy_from_slice(axis);
            let next = axis.iter().copied().max().map_or(0, |m| m + 1);
            for (k, slot) in row[n..].iter_mut().enumerate() {
                *slot = next + k as u32;
            }
        }
    }
    Ok(flat)
}

/// Positions [3, B, 1] (row-major) of one new token per sequence: token b at its count of real
/// cached tokens `positions[b]` plus its offset, on all three axes.
pub(crate) fn next_positions(positions: &[usize], deltas: &[i64]) -> Result<Vec<u32>> {
    if positions.len() != deltas.len() {
        return Err(EngineError::Invalid(format!(
            "{} tokens after a cache of {} sequences",
            positions.len(),
            deltas.len()
        )));
    }
    let mut flat = Vec::with_capacity(3 * positions.len());
    for _ in 0..3 {
        for (&p, &delta) in positions.iter().zip(deltas) {
            let at = p as i64 + delta;
            let at = u32::try_from(at).map_err(|_| {
                EngineError::Invalid(format!(
                    "position offset {delta} puts token {p} at position {at}"
                ))
            })?;
            flat.push(at);
        }
    }
    Ok(flat)
}

/// A prompt pass laid out: the prompts' embeddings, the longest one's length, their positions
/// [3, B, longest] (row-major), their deep-stack levels, and the offsets the cache keeps after
/// it.
pub(crate) struct PromptPass<'a> {
    pub seqs: Vec<Tensor>,
    pub longest: usize,
    pub positions: Vec<u32>,
    pub deepstack: Vec<&'a [Tensor]>,
    pub deltas: Vec<i64>,
}

impl<'a> PromptPass<'a> {
    /// The prompts of a [`super::Decoder::decode_prompts`] call (each must have its
    /// positions), into `cache`, which must be empty: prompts start at their own positions.
    pub fn new<K: KvStore>(prompts: &'a [Prompt], cache: &RopeCache<K>) -> Result<Self> {
        if cache.kv.len() != 0 {
            return Err(EngineError::Invalid(
                "prompts with their own positions start an empty cache".into(),
            ));
        }
        let positions = prompts
            .iter()
            .map(|p| {
                p.positions
                    .as_ref()
                    .ok_or_else(|| EngineError::Invalid("a prompt without its positions".into()))
            })
            .collect::<Result<Vec<&RopePositions>>>()?;
        let seqs: Vec<Tensor> = prompts.iter().map(|p| p.embeds.clone()).collect();
        let lens = seqs
            .iter()
            .map(|s| s.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            longest: lens.iter().copied().max().unwrap_or(0),
            positions: prompt_positions(&positions, &lens)?,
            deltas: positions.iter().map(|p| p.delta).collect(),
            deepstack: prompts.iter().map(|p| p.deepstack.as_slice()).collect(),
            seqs,
        })
    }
}
