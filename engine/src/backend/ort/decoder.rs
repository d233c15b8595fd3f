//! The exported decoder's calls: sequences of embeddings right-padded into one batch (mask 0
//! on the padding, which no real token sees) after the cached positions, and the
//! log-probabilities at the rows asked, with the grown cache when one is kept.

use candle_core::{DType, Device, Tensor};
use unireward_models::formats::export_manifest::{
    ATTENTION_MASK, INPUTS_EMBEDS, LOG_PROBS, POSITIONS, POSITION_IDS,
};

use super::kv::PastKv;
use super::runtime::{InputTensor, OutputData};
use super::OrtBackend;
use crate::backend::Rows;
use crate::error::{EngineError, Result};

/// One decoder call's inputs, row-major: `embeds` [batch, len, hidden], `mask`
/// [batch, past + len], `position_ids` [batch, len], `rows` [batch, rows_per_seq].
struct DecoderCall {
    batch: usize,
    len: usize,
    hidden: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    position_ids: Vec<i64>,
    rows: Vec<i64>,
    rows_per_seq: usize,
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
    ) -> Result<Self> {
        let batch = seqs.len();
        let len = lens.iter().copied().max().unwrap_or(0);
        let rows_per_seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut call = Self {
            batch,
            len,
            hidden,
            embeds: vec![0f32; batch * len * hidden],
            mask: vec![0i64; batch * (past + len)],
            position_ids: (0..batch)
                .flat_map(|_| (past..past + len).map(|p| p as i64))
                .collect(),
            rows: vec![0i64; batch * rows_per_seq],
            rows_per_seq,
        };
        for (b, (s, pos)) in seqs.iter().zip(rows).enumerate() {
            let n = lens[b];
            let values = s
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            call.embeds[b * len * hidden..][..n * hidden].copy_from_slice(&values);
            call.mask[b * (past + len)..][..past + n].fill(1);
            for (k, &p) in pos.iter().enumerate() {
                call.rows[b * rows_per_seq + k] = p as i64;
            }
        }
        Ok(call)
    }
}

impl OrtBackend {
    /// [`crate::backend::Backend::decode`] on the exported decoder.
    pub(super) fn decode_seqs(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut PastKv>,
    ) -> Result<Vec<Tensor>> {
        let hidden = self.cfg.text.hidden_size;
        let vocab = self.cfg.text.vocab_size;
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
        let call = DecoderCall::new(seqs, &lens, past_len, &asked, hidden)?;
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
                let (values, presents) = self.run_decoder(&call, Some(past), true)?;
                *cache =
                    presents.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
                values
            }
            None => self.run_decoder(&call, None, false)?.0,
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

    /// [`crate::backend::Backend::decode_next`] on the exported decoder: the graph's
    /// `attention_mask` hides each sequence's padding slots, its `position_ids` give each
    /// token its own position.
    pub(super) fn decode_next_seqs(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut PastKv,
    ) -> Result<Tensor> {
        let vocab = self.cfg.text.vocab_size;
        let (batch, hidden) = embeds.dims2()?;
        let past = cache.len();
        crate::backend::check_next(batch, hidden, positions, seen, past, &self.cfg.text)?;
        if batch == 0 {
            return Ok(Tensor::zeros((0, vocab), DType::F32, &Device::Cpu)?);
        }
        if cache.batch() != batch {
            return Err(EngineError::Invalid(format!(
                "{batch} tokens after a cache of {} sequences",
                cache.batch()
            )));
        }
        let call = DecoderCall {
            batch,
            len: 1,
            hidden,
            embeds: embeds
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?,
            mask: seen
                .iter()
                .flat_map(|s| s.iter().map(|&own| own as i64).chain([1]))
                .collect(),
            position_ids: positions.iter().map(|&p| p as i64).collect(),
            rows: vec![0; batch],
            rows_per_seq: 1,
        };
        let (values, presents) = self.run_decoder(&call, Some(cache), true)?;
        *cache = presents.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
        Ok(Tensor::from_vec(values, (batch, vocab), &Device::Cpu)?)
    }

    /// Runs the decoder over `call` after `past` (required by a cached decoder, whose
    /// `attention_mask` then spans past + new positions; `None` for a format-1 one). Returns
    /// the log-probs [batch, rows_per_seq, vocab] and, with a cache and `want_cache`, the grown
    /// cache.
    fn run_decoder(
        &self,
        call: &DecoderCall,
        past: Option<&PastKv>,
        want_cache: bool,
    ) -> Result<(Vec<f32>, Option<PastKv>)> {
        let (batch, len, hidden) = (call.batch, call.len, call.hidden);
        let vocab = self.cfg.text.vocab_size;
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
        let (embeds_shape, ids_shape) = ([batch, len, hidden], [batch, len]);
        let rows_shape = [batch, call.rows_per_seq];
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
                    shape: &ids_shape,
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
        if let Some(f) = &feeds {
            inputs.extend(f.inputs());
        }
        // A caller that keeps no cache (`log_probs_at`) does not take the presents out of
        // ONNX Runtime: at 7B they are tens of MB per sequence.
        let mut outputs = match self.kv.filter(|_| want_cache) {
            Some(_) => self.lock(&self.decoder).run(&inputs)?,
            None => self.lock(&self.decoder).run_for(&inputs, &[LOG_PROBS])?,
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
