//! The algorithms over a toy backend whose decoder reads a whole prefix: a cache cut at the
//! wrong length, padding that leaks into a real row, or a split that mixes up sequences
//! changes its answers.

use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor, D};
use unireward_models::config::{LlavaConfig, TextConfig};

use super::{Continuation, Decoding};
use crate::backend::{own_cache, Backend, Decoder, DecoderCache, Limits, Recomputing, Rows};
use crate::error::{EngineError, Result};

const HIDDEN: usize = 4;
const VOCAB: usize = 16;
/// What padding holds in the toy decoder: far from any real embedding.
const PAD: f32 = 1000.0;

struct Toy {
    cfg: LlavaConfig,
    newline: Tensor,
    max_batch: Option<usize>,
    copies_per_call: usize,
    /// The most sequences one decoder call was given.
    widest_call: AtomicUsize,
}

impl Toy {
    fn new(max_batch: Option<usize>, copies_per_call: usize) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/golden/llava_ov_tiny/model/config.json");
        let mut cfg = LlavaConfig::from_file(&dir).unwrap();
        cfg.text.hidden_size = HIDDEN;
        cfg.text.vocab_size = VOCAB;
        Self {
            cfg,
            newline: Tensor::zeros(HIDDEN, candle_core::DType::F32, &Device::Cpu).unwrap(),
            max_batch,
            copies_per_call,
            widest_call: AtomicUsize::new(0),
        }
    }

    /// The log-softmax row after a prefix: it depends on every position, in order.
    fn row(prefix: &[[f32; HIDDEN]]) -> Vec<f32> {
        let mut state = [0f32; HIDDEN];
        for (p, e) in prefix.iter().enumerate() {
            for (s, x) in state.iter_mut().zip(e) {
                *s = 0.5 * *s + x * (p as f32 + 1.0).sqrt();
            }
        }
        (0..VOCAB)
            .map(|v| (state[0] * 0.3 * (v as f32 + 1.0) + state[1] * 0.1 * v as f32).sin())
            .collect()
    }
}

/// Every sequence's embeddings so far, padding included.
struct ToyCache {
    seqs: Vec<Vec<[f32; HIDDEN]>>,
    copies_per_call: usize,
}

impl DecoderCache for ToyCache {
    fn len(&self) -> usize {
        self.seqs.first().map_or(0, Vec::len)
    }

    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(ToyCache {
            seqs: vec![self.seqs[b][..len].to_vec()],
            copies_per_call: self.copies_per_call,
        }))
    }

    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>> {
        assert_eq!(self.seqs.len(), 1, "only one sequence's cache is shared");
        Ok(Box::new(ToyCache {
            seqs: vec![self.seqs[0].clone(); n],
            copies_per_call: self.copies_per_call,
        }))
    }

    fn copies_per_call(&self) -> usize {
        self.copies_per_call
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Decoder for Toy {
    fn name(&self) -> String {
        "toy".into()
    }

    fn text_config(&self) -> &TextConfig {
        &self.cfg.text
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let rows: Vec<f32> = ids
            .iter()
            .flat_map(|&t| [t as f32 * 0.1, 1.0, -(t as f32), 0.5])
            .collect();
        Ok(Tensor::from_vec(rows, (ids.len(), HIDDEN), &Device::Cpu)?)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: self.max_batch,
            max_length: None,
            kv_cache: true,
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        Ok(Box::new(ToyCache {
            seqs: Vec::new(),
            copies_per_call: self.copies_per_call,
        }))
    }

    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        self.widest_call.fetch_max(seqs.len(), Ordering::SeqCst);
        if let Some(max) = self.max_batch {
            assert!(seqs.len() <= max, "{} sequences in one call", seqs.len());
        }
        let new: Vec<Vec<[f32; HIDDEN]>> = seqs
            .iter()
            .map(|s| {
                Ok(s.to_vec2::<f32>()?
                    .into_iter()
                    .map(|r| [r[0], r[1], r[2], r[3]])
                    .collect())
            })
            .collect::<Result<_>>()?;
        let longest = new.iter().map(Vec::len).max().unwrap_or(0);
        let mut fresh = ToyCache {
            seqs: vec![Vec::new(); seqs.len()],
            copies_per_call: 0,
        };
        let cache = match cache {
            Some(c) => own_cache::<ToyCache>(c)?,
            None => &mut fresh,
        };
        if cache.seqs.is_empty() {
            cache.seqs = vec![Vec::new(); seqs.len()];
        }
        assert_eq!(cache.seqs.len(), seqs.len(), "a cache of another batch");
        let past = cache.len();
        for (history, s) in cache.seqs.iter_mut().zip(&new) {
            history.extend(s);
            history.resize(past + longest, [PAD; HIDDEN]);
        }
        let wanted = |b: usize| -> Vec<usize> {
            match rows {
                Rows::All => (0..new[b].len()).collect(),
                Rows::At(r) => r[b].clone(),
            }
        };
        (0..seqs.len())
            .map(|b| {
                let values: Vec<f32> = wanted(b)
                    .iter()
                    .flat_map(|&r| Toy::row(&cache.seqs[b][..past + r + 1]))
                    .collect();
                let n = values.len() / VOCAB;
                let logits = Tensor::from_vec(values, (n, VOCAB), &Device::Cpu)?;
                if n == 0 {
                    return Ok(logits);
                }
                Ok(candle_nn::ops::log_softmax(&logits, D::Minus1)?)
            })
            .collect()
    }
}

impl Backend for Toy {
    fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    fn image_newline(&self) -> &Tensor {
        &self.newline
    }

    fn encode_tiles(&self, _tiles: &Tensor) -> Result<Tensor> {
        Err(EngineError::Invalid("the toy sees no images".into()))
    }
}

fn prompts(toy: &Toy) -> Vec<Tensor> {
    [
        &[1u32, 2, 3][..],
        &[4],
        &[5, 6, 7, 8, 9],
        &[10, 11],
        &[12, 13, 14, 15],
    ]
    .iter()
    .map(|ids| toy.embed_tokens(ids).unwrap())
    .collect()
}

fn continuation_sets() -> Vec<Vec<Vec<u32>>> {
    let set = |k: u32| vec![vec![k], vec![], vec![k, 3, 1], vec![2, k], vec![7]];
    (0..5).map(set).collect()
}

fn same(a: &[Vec<Continuation>], b: &[Vec<Continuation>]) {
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(a.token_logprobs, b.token_logprobs);
            assert_eq!(
                a.next.to_vec1::<f32>().unwrap(),
                b.next.to_vec1::<f32>().unwrap()
            );
        }
    }
}

#[test]
fn the_cached_algorithms_answer_as_the_recomputing_ones() {
    let toy = Toy::new(None, usize::MAX);
    let sets = continuation_sets();
    let cached = toy.continuations_batch(&prompts(&toy), &sets).unwrap();
    let recomputed = Recomputing(&toy)
        .continuations_batch(&prompts(&toy), &sets)
        .unwrap();
    same(&cached, &recomputed);
    let one = toy.continuations(&prompts(&toy)[2], &sets[2]).unwrap();
    same(&[one], &cached[2..3]);

    let prompt = &prompts(&toy)[2];
    let generated = toy.generate(prompt, 6, &[]).unwrap();
    assert_eq!(generated.len(), 6);
    assert_eq!(
        generated,
        Recomputing(&toy).generate(prompt, 6, &[]).unwrap()
    );
    let stop = generated[3];
    let first = generated.iter().position(|&t| t == stop).unwrap();
    assert_eq!(
        toy.generate(prompt, 6, &[stop]).unwrap(),
        generated[..first]
    );
    assert!(toy.generate(prompt, 0, &[]).unwrap().is_empty());
}

#[test]
fn a_batch_limit_splits_the_calls_and_changes_no_answer() {
    let unlimited = Toy::new(None, usize::MAX);
    let capped = Toy::new(Some(2), usize::MAX);
    let sets = continuation_sets();
    let scored = unlimited
        .continuations_batch(&prompts(&unlimited), &sets)
        .unwrap();
    assert_eq!(unlimited.widest_call.load(Ordering::SeqCst), 5);
    let split = capped
        .continuations_batch(&prompts(&capped), &sets)
        .unwrap();
    same(&split, &scored);
    assert_eq!(capped.widest_call.load(Ordering::SeqCst), 2);

    let rows: Vec<Vec<usize>> = prompts(&unlimited)
        .iter()
        .map(|p| (0..p.dim(0).unwrap()).rev().collect())
        .collect();
    let whole = unlimited.log_probs_at(&prompts(&unlimited), &rows).unwrap();
    let split = capped.log_probs_at(&prompts(&capped), &rows).unwrap();
    assert_eq!(whole.len(), 5);
    for (a, b) in whole.iter().zip(&split) {
        assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
    // The recomputing fallback splits its whole-sequence calls the same way.
    let recomputed = Recomputing(&capped)
        .continuations_batch(&prompts(&capped), &sets)
        .unwrap();
    same(&recomputed, &scored);
}

#[test]
fn continuations_run_as_many_per_call_as_copies_of_the_cache_fit() {
    let toy = Toy::new(None, 3);
    let unlimited = Toy::new(None, usize::MAX);
    let set: Vec<Vec<u32>> = (0..7).map(|k| vec![k, k + 1]).collect();
    let prompt = &prompts(&toy)[0];
    let split = toy.continuations(prompt, &set).unwrap();
    // The prompt pass is one sequence; the continuations come three at a time.
    assert_eq!(toy.widest_call.load(Ordering::SeqCst), 3);
    let whole = unlimited.continuations(prompt, &set).unwrap();
    assert_eq!(unlimited.widest_call.load(Ordering::SeqCst), 7);
    same(&[split], &[whole]);
}

#[test]
fn bad_requests_are_errors() {
    let toy = Toy::new(None, usize::MAX);
    let p = prompts(&toy);
    let err = toy.log_probs_at(&p[..1], &[vec![3]]).unwrap_err();
    assert!(err.to_string().contains("position 3 is past"), "{err}");
    assert!(toy.log_probs_at(&p[..1], &[]).is_err());
    assert!(toy.continuations_batch(&p[..2], &[vec![]]).is_err());
    let empty = Tensor::zeros((0, HIDDEN), candle_core::DType::F32, &Device::Cpu).unwrap();
    for backend in [&toy as &dyn Backend, &Recomputing(&toy)] {
        let err = backend.continuations(&empty, &[vec![1]]).unwrap_err();
        assert!(err.to_string().contains("an empty prompt"), "{err}");
        assert!(backend.generate(&empty, 3, &[]).is_err());
    }
}
