//! The exported decoder's calls: sequences of embeddings right-padded into one batch (mask 0
//! on the padding, which no real token sees) after the cached positions, and the
//! log-probabilities at the rows asked, with the grown cache when one is kept. One decoder
//! graph serves both families: LLaVA's takes 1-D positions [batch, len], Qwen-VL's M-RoPE
//! positions [3, batch, len] and, for Qwen3-VL, the deep-stack levels.

use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};
use unireward_models::formats::export_manifest::{
    deepstack_name, ATTENTION_MASK, INPUTS_EMBEDS, LOG_PROBS, POSITIONS, POSITION_IDS,
};

use super::kv::{KvLayout, PastKv};
use super::runtime::{InputTensor, OrtSession, OutputData};
use crate::backend::Rows;
use crate::error::{EngineError, Result};

/// Where a call's tokens sit.
pub(super) enum CallPositions {
    /// 1-D: every sequence's tokens at past, past + 1, … (LLaVA).
    Plain,
    /// 1-D: [batch, len] row-major, every slot given.
    Given(Vec<i64>),
    /// M-RoPE: [3, batch, len] row-major, every slot of the padded batch given.
    Rope(Vec<i64>),
}

/// The exported decoder graph, opened.
pub(super) struct DecoderGraph {
    session: Mutex<OrtSession>,
    /// The cache, `None` for a format-1 export.
    pub kv: Option<KvLayout>,
    pub hidden: usize,
    pub vocab: usize,
    /// Deep-stack levels the graph takes (Qwen3-VL); 0 for the others.
    pub deepstack: usize,
}

/// One decoder call's inputs, row-major: `embeds` [batch, len, hidden], `mask`
/// [batch, past + len], `position_ids` [batch, len] or [3, batch, len], `rows`
/// [batch, rows_per_seq], each deep-stack level [batch, len, hidden].
struct DecoderCall {
    batch: usize,
    len: usize,
    hidden: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    position_ids: Vec<i64>,
    rope: bool,
    rows: Vec<i64>,
    rows_per_seq: usize,
    deepstack: Vec<Vec<f32>>,
}

impl DecoderCall {
    /// Sequences of `lens` tokens after `past` cached positions, right-padded to the longest
    /// with mask 0; row lists padded with row 0.
    fn new(
        seqs: &[Tensor],
        lens: &[usize],
        past: usize,
        rows: &[Vec<usize>],
        hidden: usize,
        positions: CallPositions,
    ) -> Result<Self> {
        let batch = seqs.len();
        let len = lens.iter().copied().max().unwrap_or(0);
        let rows_per_seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let (position_ids, rope) = match positions {
            CallPositions::Plain => (
                (0..batch)
                    .flat_map(|_| (past..past + len).map(|p| p as i64))
                    .collect(),
                false,
            ),
            CallPositions::Given(ids) if ids.len() == batch * len => (ids, false),
            CallPositions::Rope(ids) if ids.len() == 3 * batch * len => (ids, true),
            CallPositions::Given(ids) | CallPositions::Rope(ids) => {
                return Err(EngineError::Invalid(format!(
                    "{} positions for {batch} x {len} tokens",
                    ids.len()
                )))
            }
        };
        let mut call = Self {
            batch,
            len,
            hidden,
            embeds: vec![0f32; batch * len * hidden],
            mask: vec![0i64; batch * (past + len)],
            position_ids,
            rope,
            rows: vec![0i64; batch * rows_per_seq],
            rows_per_seq,
            deepstack: Vec::new(),
        };
        for (b, (s, pos)) in seqs.iter().zip(rows).enumerate() {
            let n = lens[b];
            let values = flat_f32(s)?;
            call.embeds[b * len * hidden..][..n * hidden].copy_from_slice(&values);
            call.mask[b * (past + len)..][..past + n].fill(1);
            for (k, &p) in pos.iter().enumerate() {
                call.rows[b * rows_per_seq + k] = p as i64;
            }
        }
        Ok(call)
    }

    /// Each level [batch, len, hidden]: sequence b's `levels[b][l]` [T_b, hidden] right-padded
    /// with zeros, zeros where b has none (text, or a call after the prompt).
    fn set_deepstack(&mut self, count: usize, levels: &[&[Tensor]], lens: &[usize]) -> Result<()> {
        let (len, hidden) = (self.len, self.hidden);
        self.deepstack = vec![vec![0f32; self.batch * len * hidden]; count];
        for (b, seq_levels) in levels.iter().enumerate() {
            if !seq_levels.is_empty() && seq_levels.len() != count {
                return Err(EngineError::Invalid(format!(
                    "{} deep-stack levels for a decoder of {count}",
                    seq_levels.len()
                )));
            }
            for (l, t) in seq_levels.iter().enumerate() {
                if t.dims() != [lens[b], hidden] {
                    return Err(EngineError::Invalid(format!(
                        "deep-stack features {:?} for a prompt of {} tokens",
                        t.dims(),
                        lens[b]
                    )));
                }
                self.deepstack[l][b * len * hidden..][..lens[b] * hidden]
                    .copy_from_slice(&flat_f32(t)?);
            }
        }
        Ok(())
    }
}

fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

impl DecoderGraph {
    pub fn new(
        session: OrtSession,
        kv: Option<KvLayout>,
        hidden: usize,
        vocab: usize,
        deepstack: usize,
    ) -> Self {
        Self {
            session: Mutex::new(session),
            kv,
            hidden,
            vocab,
            deepstack,
        }
    }

    fn lock(&self) -> MutexGuard<'_, OrtSession> {
        // A panic during an earlier run leaves the session itself intact.
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`crate::backend::Decoder::decode`] on the exported decoder, the tokens at
    /// `positions` (`rope` gives them for the padded batch of the longest sequence), with
    /// each sequence's deep-stack levels (`deepstack[b]`, or none).
    pub fn decode_seqs(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut PastKv>,
        positions: impl FnOnce(usize) -> Result<CallPositions>,
        deepstack: &[&[Tensor]],
    ) -> Result<Vec<Tensor>> {
        let (hidden, vocab) = (self.hidden, self.vocab);
        let mut lens = Vec::with_capacity(seqs.len());
        for s in seqs {
            let (n, d) = s.dims2()?;
            if d != hidden {
                return Err(EngineError::Invalid(format!(
                    "embeddings of width {d}; the decoder takes {hidden}"
                )));
            }
            lens.push(n);
        }
        let longest = lens.iter().copied().max().unwrap_or(0);
        // The rows the graph reads, and how many of them each sequence keeps: every row of
        // the padded batch keeps the sequence's own.
        let (asked, kept): (Vec<Vec<usize>>, Vec<usize>) = match rows {
            Rows::All => (
                lens.iter().map(|_| (0..longest).collect()).collect(),
                lens.clone(),
            ),
            Rows::At(rows) if rows.len() == seqs.len() => {
                (rows.to_vec(), rows.iter().map(Vec::len).collect())
            }
            Rows::At(_) => {
                return Err(EngineError::Invalid(
                    "one position list per sequence".into(),
                ))
            }
        };
        let batch = seqs.len();
        let rows_per_seq = asked.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || longest == 0 || rows_per_seq == 0 {
            return Ok(kept
                .iter()
                .map(|_| Tensor::zeros((0, vocab), DType::F32, &Device::Cpu))
                .collect::<candle_core::Result<_>>()?);
        }
        let past_len = cache.as_deref().map_or(0, PastKv::len);
        let mut call =
            DecoderCall::new(seqs, &lens, past_len, &asked, hidden, positions(longest)?)?;
        call.set_deepstack(self.deepstack, deepstack, &lens)?;
        let values = match cache {
            Some(cache) => {
                let empty;
                let past = match self.kv {
                    // A fresh cache takes its batch from its first call.
                    Some(kv) if cache.is_empty() => {
                        empty = PastKv::empty(kv, batch);
                        &empty
                    }
                    _ => &*cache,
                };
                let (values, presents) = self.run(&call, Some(past), true)?;
                *cache =
                    presents.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
                values
            }
            None => self.run(&call, None, false)?.0,
        };
        kept.iter()
            .enumerate()
            .map(|(b, &n)| {
                let start = b * rows_per_seq * vocab;
                let slice = &values[start..start + n * vocab];
                Ok(Tensor::from_slice(slice, (n, vocab), &Device::Cpu)?)
            })
            .collect()
    }

    /// [`crate::backend::Decoder::decode_next`] on the exported decoder: the graph's
    /// `attention_mask` hides each sequence's padding slots, `positions` gives each token
    /// its own position ([batch], or [3, batch] with M-RoPE).
    pub fn decode_next_seqs(
        &self,
        embeds: &Tensor,
        positions: CallPositions,
        seen: &[&[bool]],
        cache: &mut PastKv,
    ) -> Result<Tensor> {
        let vocab = self.vocab;
        let (batch, hidden) = embeds.dims2()?;
        if batch == 0 {
            return Ok(Tensor::zeros((0, vocab), DType::F32, &Device::Cpu)?);
        }
        if cache.batch() != batch {
            return Err(EngineError::Invalid(format!(
                "{batch} tokens after a cache of {} sequences",
                cache.batch()
            )));
        }
        let (position_ids, rope) = match positions {
            CallPositions::Given(ids) if ids.len() == batch => (ids, false),
            CallPositions::Rope(ids) if ids.len() == 3 * batch => (ids, true),
            CallPositions::Given(_) | CallPositions::Rope(_) | CallPositions::Plain => {
                return Err(EngineError::Invalid(
                    "a next-token call takes one position per token (three with M-RoPE)".into(),
                ))
            }
        };
        let mut call = DecoderCall {
            batch,
            len: 1,
            hidden,
            embeds: flat_f32(embeds)?,
            mask: seen
                .iter()
                .flat_map(|s| s.iter().map(|&own| own as i64).chain([1]))
                .collect(),
            position_ids,
            rope,
            rows: vec![0; batch],
            rows_per_seq: 1,
            deepstack: Vec::new(),
        };
        call.set_deepstack(self.deepstack, &[], &[])?;
        let (values, presents) = self.run(&call, Some(cache), true)?;
        *cache = presents.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
        Ok(Tensor::from_vec(values, (batch, vocab), &Device::Cpu)?)
    }

    /// Runs the decoder over `call` after `past` (required by a cached decoder, whose
    /// `attention_mask` then spans past + new positions; `None` for a format-1 one). Returns
    /// the log-probs [batch, rows_per_seq, vocab] and, with a cache and `want_cache`, the grown
    /// cache.
    fn run(
        &self,
        call: &DecoderCall,
        past: Option<&PastKv>,
        want_cache: bool,
    ) -> Result<(Vec<f32>, Option<PastKv>)> {
        let (batch, len, hidden) = (call.batch, call.len, call.hidden);
        let vocab = self.vocab;
        let empty;
        let past = match (self.kv, past) {
            (Some(kv), None) => {
                empty = PastKv::empty(kv, batch);
                Some(&empty)
            }
            (None, Some(_)) => {
                return Err(EngineError::Invalid(
                    "a cache given to a decoder without one".into(),
                ))
            }
            (_, p) => p,
        };
        let past_len = past.map(PastKv::len).unwrap_or(0);
        if past.is_some_and(|p| p.batch() != batch) || call.mask.len() != batch * (past_len + len) {
            return Err(EngineError::Invalid(format!(
                "a decoder call of {batch} x {len} tokens after {past_len} cached with a mask of \
                 {} values",
                call.mask.len()
            )));
        }
        let feeds = past.map(PastKv::feeds);
        let mask_shape = [batch, past_len + len];
        let embeds_shape = [batch, len, hidden];
        let ids_shape: &[usize] = if call.rope {
            &[3, batch, len]
        } else {
            &[batch, len]
        };
        let rows_shape = [batch, call.rows_per_seq];
        let names: Vec<String> = (0..call.deepstack.len()).map(deepstack_name).collect();
        let mut inputs = vec![
            (
                INPUTS_EMBEDS,
                InputTensor::F32 {
                    shape: &embeds_shape,
                    data: &call.embeds,
                },
            ),
            (
                ATTENTION_MASK,
                InputTensor::I64 {
                    shape: &mask_shape,
                    data: &call.mask,
                },
            ),
            (
                POSITION_IDS,
                InputTensor::I64 {
                    shape: ids_shape,
                    data: &call.position_ids,
                },
            ),
            (
                POSITIONS,
                InputTensor::I64 {
                    shape: &rows_shape,
                    data: &call.rows,
                },
            ),
        ];
        for (name, level) in names.iter().zip(&call.deepstack) {
            inputs.push((
                name.as_str(),
                InputTensor::F32 {
                    shape: &embeds_shape,
                    data: level,
                },
            ));
        }
        if let Some(f) = &feeds {
            inputs.extend(f.inputs());
        }
        // A caller that keeps no cache (`log_probs_at`) does not take the presents out of
        // ONNX Runtime: at 7B they are tens of MB per sequence.
        let mut outputs = match self.kv.filter(|_| want_cache) {
            Some(_) => self.lock().run(&inputs)?,
            None => self.lock().run_for(&inputs, &[LOG_PROBS])?,
        };
        let idx = outputs
            .0
            .iter()
            .position(|(n, _)| n == LOG_PROBS)
            .ok_or_else(|| EngineError::Invalid(format!("no {LOG_PROBS} output")))?;
        let (_, out) = outputs.0.swap_remove(idx);
        let want = [batch, call.rows_per_seq, vocab];
        if out.shape != want {
            return Err(EngineError::Invalid(format!(
                "{LOG_PROBS} of shape {:?}, expected {want:?}",
                out.shape
            )));
        }
        let values = match out.data {
            OutputData::F32(v) => v,
            OutputData::I64(_) => {
                return Err(EngineError::Invalid(format!(
                    "{LOG_PROBS} is not a float tensor"
                )))
            }
        };
        let presents = match self.kv.filter(|_| want_cache) {
            Some(kv) => Some(PastKv::from_outputs(kv, batch, &mut outputs)?),
            None => None,
        };
        Ok((values, presents))
    }
}
