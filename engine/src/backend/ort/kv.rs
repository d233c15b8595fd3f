//! The exported decoder's KV cache on the host: per layer the keys and values
//! [batch, kv_heads, len, head_dim] that a decoder call returned as `present.*`, ready to be
//! fed back as `past_key_values.*`, and the batch reshaping that scoring continuations needs
//! (one prompt's cache shared by every continuation, one row cut out of a padded batch).

use std::any::Any;

use half::f16;
use unireward_models::formats::export_manifest::{past_names, present_names};

use super::runtime::{InputTensor, OutputData, Outputs};
use crate::backend::{own_cache, DecoderCache};
use crate::error::{EngineError, Result};

/// Continuations of one prompt scored in one decoder call hold a copy of the prompt's cache
/// each; calls are split so the copies stay under this many bytes (a 7B model's cache of a
/// 2,000-token prompt is ~115 MB in fp16, and a 0-100 score has 101 continuations).
const CACHE_COPIES_BYTES: usize = 1 << 30;

/// The cache layout an export declares (manifest format 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The graph takes and returns the cache in fp16 (an fp16 export).
    pub half: bool,
}

impl KvLayout {
    /// `past_key_values.{i}.key`, `.value`, … for every layer, in the graph's input order.
    pub fn past_names(&self) -> Vec<String> {
        past_names(self.num_layers)
    }

    /// `present.{i}.key`, `.value`, … in the graph's output order.
    pub fn present_names(&self) -> Vec<String> {
        present_names(self.num_layers)
    }
}

/// Keys and values of every layer for `batch` sequences of `len` positions, as f32 (an fp16
/// export's halves convert exactly both ways).
#[derive(Debug, Clone)]
pub struct PastKv {
    layout: KvLayout,
    batch: usize,
    len: usize,
    /// Key, value, key, value, … per layer, each [batch, kv_heads, len, head_dim].
    tensors: Vec<Vec<f32>>,
}

/// One cache tensor as fed to the graph: borrowed f32, or converted to f16.
enum Feed<'a> {
    F32(&'a [f32]),
    F16(Vec<f16>),
}

/// The cache tensors as graph inputs; holds the f16 copies while the run borrows them.
pub struct PastFeeds<'a> {
    names: Vec<String>,
    shape: [usize; 4],
    feeds: Vec<Feed<'a>>,
}

impl PastFeeds<'_> {
    /// (name, tensor) pairs for `OrtSession::run`.
    pub fn inputs(&self) -> Vec<(&str, InputTensor<'_>)> {
        self.names
            .iter()
            .zip(&self.feeds)
            .map(|(name, feed)| {
                let t = match feed {
                    Feed::F32(data) => InputTensor::F32 {
                        shape: &self.shape,
                        data,
                    },
                    Feed::F16(data) => InputTensor::F16 {
                        shape: &self.shape,
                        data,
                    },
                };
                (name.as_str(), t)
            })
            .collect()
    }
}

impl PastKv {
    /// No cached positions: a decoder call over whole sequences.
    pub fn empty(layout: KvLayout, batch: usize) -> Self {
        Self {
            layout,
            batch,
            len: 0,
            tensors: vec![Vec::new(); 2 * layout.num_layers],
        }
    }

    /// The `present.*` outputs of a call over `batch` sequences, taken out of `outputs`.
    pub fn from_outputs(layout: KvLayout, batch: usize, outputs: &mut Outputs) -> Result<Self> {
        let mut tensors = Vec::with_capacity(2 * layout.num_layers);
        let mut len = None;
        for name in layout.present_names() {
            let idx = outputs
                .0
                .iter()
                .position(|(n, _)| *n == name)
                .ok_or_else(|| EngineError::Invalid(format!("the decoder gave no {name}")))?;
            let (_, t) = outputs.0.swap_remove(idx);
            let [b, h, l, d] = t.shape[..] else {
                return Err(EngineError::Invalid(format!(
                    "{name} of shape {:?}, expected 4 dims",
                    t.shape
                )));
            };
            if (b, h, d) != (batch, layout.kv_heads, layout.head_dim) || len.is_some_and(|n| n != l)
            {
                return Err(EngineError::Invalid(format!(
                    "{name} of shape {:?}, expected [{batch}, {}, {}, {}]",
                    t.shape,
                    layout.kv_heads,
                    len.unwrap_or(l),
                    layout.head_dim
                )));
            }
            len = Some(l);
            match t.data {
                OutputData::F32(v) => tensors.push(v),
                OutputData::I64(_) => {
                    return Err(EngineError::Invalid(format!(
                        "{name} is not a float tensor"
                    )))
                }
            }
        }
        Ok(Self {
            layout,
            batch,
            len: len.unwrap_or(0),
            tensors,
        })
    }

    /// Cached positions per sequence.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The same history for `n` sequences: one prompt's cache shared by `n` continuations.
    pub fn repeat_batch(&self, n: usize) -> Result<Self> {
        if self.batch != 1 {
            return Err(EngineError::Invalid(format!(
                "a cache can be shared only from one sequence, it holds {}",
                self.batch
            )));
        }
        Ok(Self {
            layout: self.layout,
            batch: n,
            len: self.len,
            tensors: self.tensors.iter().map(|t| t.repeat(n)).collect(),
        })
    }

    /// Sequence `b`, cut to its first `len` positions (its real tokens when the batch was
    /// right-padded).
    pub fn select(&self, b: usize, len: usize) -> Result<Self> {
        if b >= self.batch || len > self.len {
            return Err(EngineError::Invalid(format!(
                "row {b} / {len} positions of a cache of {} x {}",
                self.batch, self.len
            )));
        }
        let (h, d) = (self.layout.kv_heads, self.layout.head_dim);
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                let mut out = Vec::with_capacity(h * len * d);
                for head in 0..h {
                    let start = ((b * h + head) * self.len) * d;
                    out.extend_from_slice(&t[start..start + len * d]);
                }
                out
            })
            .collect();
        Ok(Self {
            layout: self.layout,
            batch: 1,
            len,
            tensors,
        })
    }

    /// The sequences `rows`, each keeping only the positions `slots` (in order).
    pub fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Self> {
        if let Some(bad) = rows.iter().find(|&&b| b >= self.batch) {
            return Err(EngineError::Invalid(format!(
                "row {bad} of a cache of {} sequences",
                self.batch
            )));
        }
        if let Some(bad) = slots.iter().find(|&&s| s >= self.len) {
            return Err(EngineError::Invalid(format!(
                "position {bad} of a cache of {}",
                self.len
            )));
        }
        let (h, d) = (self.layout.kv_heads, self.layout.head_dim);
        let tensors = self
            .tensors
            .iter()
            .map(|t| {
                let mut out = Vec::with_capacity(rows.len() * h * slots.len() * d);
                for &b in rows {
                    for head in 0..h {
                        let start = (b * h + head) * self.len * d;
                        for &s in slots {
                            out.extend_from_slice(&t[start + s * d..][..d]);
                        }
                    }
                }
                out
            })
            .collect();
        Ok(Self {
            layout: self.layout,
            batch: rows.len(),
            len: slots.len(),
            tensors,
        })
    }

    /// `other`'s sequences after this batch's, the shorter history padded with zeros at its
    /// end to the longer's length.
    pub fn append(&mut self, other: &PastKv) -> Result<()> {
        if self.layout != other.layout {
            return Err(EngineError::Invalid(
                "a cache of another layout joins this one".into(),
            ));
        }
        if other.batch == 0 {
            return Ok(());
        }
        if self.batch == 0 {
            *self = other.clone();
            return Ok(());
        }
        let len = self.len.max(other.len);
        let (h, d) = (self.layout.kv_heads, self.layout.head_dim);
        let padded = |t: &[f32], batch: usize, n: usize, out: &mut Vec<f32>| {
            for run in t.chunks_exact(n * d).take(batch * h) {
                out.extend_from_slice(run);
                out.resize(out.len() + (len - n) * d, 0.0);
            }
        };
        for (mine, theirs) in self.tensors.iter_mut().zip(&other.tensors) {
            let mut out = Vec::with_capacity((self.batch + other.batch) * h * len * d);
            padded(mine, self.batch, self.len, &mut out);
            padded(theirs, other.batch, other.len, &mut out);
            *mine = out;
        }
        self.batch += other.batch;
        self.len = len;
        Ok(())
    }

    /// The cache as the graph's `past_key_values.*` inputs.
    pub fn feeds(&self) -> PastFeeds<'_> {
        let feeds = self
            .tensors
            .iter()
            .map(|t| {
                if self.layout.half {
                    Feed::F16(t.iter().map(|&v| f16::from_f32(v)).collect())
                } else {
                    Feed::F32(t)
                }
            })
            .collect();
        PastFeeds {
            names: self.layout.past_names(),
            shape: [
                self.batch,
                self.layout.kv_heads,
                self.len,
                self.layout.head_dim,
            ],
            feeds,
        }
    }
}

impl DecoderCache for PastKv {
    fn len(&self) -> usize {
        self.len
    }

    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(PastKv::select(self, b, len)?))
    }

    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(self.repeat_batch(n)?))
    }

    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(PastKv::gather(self, rows, slots)?))
    }

    fn append(&mut self, other: &mut dyn DecoderCache) -> Result<()> {
        let other = own_cache::<PastKv>(other)?;
        PastKv::append(self, other)
    }

    fn copies_per_call(&self) -> usize {
        let kv = self.layout;
        let elem = if kv.half { 2 } else { 4 };
        let copy = self.len * kv.num_layers * 2 * kv.kv_heads * kv.head_dim * elem;
        CACHE_COPIES_BYTES / copy.max(1)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::ort::runtime::OutputTensor;

    fn layout() -> KvLayout {
        KvLayout {
            num_layers: 1,
            kv_heads: 2,
            head_dim: 1,
            half: false,
        }
    }

    /// A cache of 2 sequences x 3 positions whose values encode (row, head, position).
    fn cache() -> PastKv {
        let values: Vec<f32> = (0..2)
            .flat_map(|b| {
                (0..2).flat_map(move |h| (0..3).map(move |p| (100 * b + 10 * h + p) as f32))
            })
            .collect();
        let tensor = |v: Vec<f32>| OutputTensor {
            shape: vec![2, 2, 3, 1],
            data: OutputData::F32(v),
        };
        let mut outputs = Outputs(vec![
            ("present.0.key".into(), tensor(values.clone())),
            (
                "present.0.value".into(),
                tensor(values.iter().map(|v| -v).collect()),
            ),
        ]);
        PastKv::from_outputs(layout(), 2, &mut outputs).unwrap()
    }

    #[test]
    fn select_cuts_one_row_to_its_length_and_repeat_shares_it() {
        let c = cache();
        assert_eq!((c.batch(), c.len()), (2, 3));
        let row = c.select(1, 2).unwrap();
        assert_eq!((row.batch(), row.len()), (1, 2));
        assert_eq!(row.tensors[0], vec![100.0, 101.0, 110.0, 111.0]);
        assert_eq!(row.tensors[1], vec![-100.0, -101.0, -110.0, -111.0]);
        let shared = row.repeat_batch(3).unwrap();
        assert_eq!(shared.batch(), 3);
        assert_eq!(shared.tensors[0][8..], row.tensors[0][..]);
        assert!(c.repeat_batch(2).is_err());
        assert!(c.select(2, 1).is_err());
        assert!(c.select(0, 4).is_err());
        let feeds = shared.feeds();
        let inputs = feeds.inputs();
        assert_eq!(inputs.len(), 2);
        assert_eq!(inputs[1].0, "past_key_values.0.value");
    }

    #[test]
    fn append_pads_the_shorter_history_and_gather_keeps_rows_and_positions() {
        let mut running = cache().select(1, 2).unwrap();
        running.append(&cache()).unwrap();
        assert_eq!((running.batch(), running.len()), (3, 3));
        // Row 0 (the 2-position one) padded with a zero slot per head.
        assert_eq!(
            running.tensors[0],
            [
                100.0, 101.0, 0.0, 110.0, 111.0, 0.0, //
                0.0, 1.0, 2.0, 10.0, 11.0, 12.0, //
                100.0, 101.0, 102.0, 110.0, 111.0, 112.0,
            ]
        );
        let kept = running.gather(&[2, 0], &[0, 2]).unwrap();
        assert_eq!((kept.batch(), kept.len()), (2, 2));
        assert_eq!(
            kept.tensors[0],
            [100.0, 102.0, 110.0, 112.0, 100.0, 0.0, 110.0, 0.0]
        );
        assert_eq!(kept.tensors[1][..2], [-100.0, -102.0]);
        assert!(running.gather(&[3], &[0]).is_err());
        assert!(running.gather(&[0], &[3]).is_err());
        let mut empty = PastKv::empty(layout(), 0);
        empty.append(&kept).unwrap();
        assert_eq!(empty.tensors, kept.tensors);
    }

    #[test]
    fn missing_or_misshapen_presents_are_errors() {
        let mut outputs = Outputs(vec![(
            "present.0.key".into(),
            OutputTensor {
                shape: vec![2, 2, 3, 1],
                data: OutputData::F32(vec![0.0; 12]),
            },
        )]);
        let err = PastKv::from_outputs(layout(), 2, &mut outputs).unwrap_err();
        assert!(err.to_string().contains("present.0.value"), "{err}");
        let mut outputs = Outputs(vec![(
            "present.0.key".into(),
            OutputTensor {
                shape: vec![1, 2, 3, 1],
                data: OutputData::F32(vec![0.0; 6]),
            },
        )]);
        assert!(PastKv::from_outputs(layout(), 2, &mut outputs).is_err());
    }
}
