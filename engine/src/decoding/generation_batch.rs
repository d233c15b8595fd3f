//! Greedy generation of many sequences that join and leave between steps (stand-in: each
//! sequence decodes on its own cache; the batched version replaces it).

use candle_core::Tensor;

use crate::backend::{Backend, DecoderCache, Rows};
use crate::error::{EngineError, Result};

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token came (it is not part of the tokens).
    Stop,
    /// `max_new` tokens were generated.
    Length,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated<K> {
    pub key: K,
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

struct Running<K> {
    key: K,
    cache: Box<dyn DecoderCache>,
    row: Tensor,
    tokens: Vec<u32>,
    max_new: usize,
    stop: Vec<u32>,
}

pub struct GenerationBatch<'b, K> {
    backend: &'b dyn Backend,
    running: Vec<Running<K>>,
}

impl<'b, K: Copy + Eq + std::fmt::Debug> GenerationBatch<'b, K> {
    pub fn new(backend: &'b dyn Backend) -> Self {
        Self {
            backend,
            running: Vec::new(),
        }
    }

    pub fn admit(
        &mut self,
        seqs: Vec<(K, Tensor, usize, Vec<u32>)>,
    ) -> Vec<(K, Result<Option<Generated<K>>>)> {
        let mut out = Vec::new();
        for (key, prompt, max_new, stop) in seqs {
            let admitted = self.prefill(key, &prompt, max_new, stop);
            out.push((key, admitted));
        }
        out
    }

    fn prefill(
        &mut self,
        key: K,
        prompt: &Tensor,
        max_new: usize,
        stop: Vec<u32>,
    ) -> Result<Option<Generated<K>>> {
        let t = prompt.dim(0)?;
        if t == 0 {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        if max_new == 0 {
            return Ok(Some(Generated {
                key,
                tokens: Vec::new(),
                finish: Finish::Length,
            }));
        }
        let mut cache = self.backend.new_cache()?;
        let row = last_row(self.backend, prompt, t - 1, cache.as_mut())?;
        let mut seq = Running {
            key,
            cache,
            row,
            tokens: Vec::new(),
            max_new,
            stop,
        };
        match advance(&mut seq)? {
            Some(finish) => Ok(Some(Generated {
                key,
                tokens: seq.tokens,
                finish,
            })),
            None => {
                self.running.push(seq);
                Ok(None)
            }
        }
    }

    pub fn step(&mut self) -> Result<Vec<Generated<K>>> {
        let mut done = Vec::new();
        let mut kept = Vec::new();
        for mut seq in std::mem::take(&mut self.running) {
            let last = *seq
                .tokens
                .last()
                .ok_or_else(|| EngineError::Invalid("a running sequence with no token".into()))?;
            let embed = self.backend.embed_tokens(&[last])?;
            seq.row = last_row(self.backend, &embed, 0, seq.cache.as_mut())?;
            match advance(&mut seq)? {
                Some(finish) => done.push(Generated {
                    key: seq.key,
                    tokens: seq.tokens,
                    finish,
                }),
                None => kept.push(seq),
            }
        }
        self.running = kept;
        Ok(done)
    }

    pub fn cancel(&mut self, key: K) -> bool {
        let before = self.running.len();
        self.running.retain(|s| s.key != key);
        self.running.len() != before
    }

    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }
}

/// Takes the argmax of the sequence's row: `Some` when the sequence is finished.
fn advance<K>(seq: &mut Running<K>) -> Result<Option<Finish>> {
    let next = seq.row.argmax(0)?.to_scalar::<u32>()?;
    if seq.stop.contains(&next) {
        return Ok(Some(Finish::Stop));
    }
    seq.tokens.push(next);
    if seq.tokens.len() >= seq.max_new {
        return Ok(Some(Finish::Length));
    }
    Ok(None)
}

fn last_row(
    backend: &dyn Backend,
    seq: &Tensor,
    at: usize,
    cache: &mut dyn DecoderCache,
) -> Result<Tensor> {
    let rows = backend.decode(
        std::slice::from_ref(seq),
        Rows::At(&[vec![at]]),
        Some(cache),
    )?;
    let row = rows
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Invalid("the decoder gave no row".into()))?;
    Ok(row.get(0)?)
}
