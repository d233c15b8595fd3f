//! `GenerationBatch` on the candle backend over the golden checkpoint: sequences joining and
//! leaving a running batch generate what they generate alone, with one decoder call per step
//! for all of them (split only by the backend's batch limit), with or without a KV cache.

#[path = "support/generation_scenario.rs"]
mod scenario;

use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use unireward_engine::backend::{
    Backend, CandleBackend, Decoder, DecoderCache, Decoding, Limits, Recomputing, Rows,
};
use unireward_engine::decoding::GenerationBatch;
use unireward_engine::error::Result;
use unireward_engine::EngineError;
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_tests::golden_model_dir;

fn candle() -> CandleBackend {
    CandleBackend::load(&golden_model_dir().unwrap(), DType::F32, &Device::Cpu).unwrap()
}

/// A backend counting its decoder calls, optionally with a batch limit of its own.
struct Counting<'a> {
    inner: &'a dyn Backend,
    max_batch: Option<usize>,
    /// Whole-sequence calls (prompt passes; every step without a cache).
    decodes: AtomicUsize,
    /// One-token calls over a running batch.
    nexts: AtomicUsize,
    /// The most sequences one call was given.
    widest: AtomicUsize,
    /// A whole-sequence call with a sequence of this many tokens fails.
    refuse: Option<usize>,
    /// Its caches refuse to drop sequences while this is set.
    stuck: Option<Arc<AtomicBool>>,
}

impl<'a> Counting<'a> {
    fn new(inner: &'a dyn Backend, max_batch: Option<usize>) -> Self {
        Self {
            inner,
            max_batch,
            decodes: AtomicUsize::new(0),
            nexts: AtomicUsize::new(0),
            widest: AtomicUsize::new(0),
            refuse: None,
            stuck: None,
        }
    }

    /// (whole-sequence calls, one-token calls) so far.
    fn calls(&self) -> (usize, usize) {
        (
            self.decodes.load(Ordering::SeqCst),
            self.nexts.load(Ordering::SeqCst),
        )
    }

    fn seen(&self, n: usize) {
        if let Some(max) = self.max_batch {
            assert!(n <= max, "{n} sequences in one call, the limit is {max}");
        }
        self.widest.fetch_max(n, Ordering::SeqCst);
    }
}

impl Decoder for Counting<'_> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn text_config(&self) -> &TextConfig {
        self.inner.text_config()
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        self.inner.embed_tokens(ids)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: self.max_batch,
            ..self.inner.limits()
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        let inner = self.inner.new_cache()?;
        Ok(match &self.stuck {
            Some(stuck) => Box::new(Stuck {
                inner,
                stuck: stuck.clone(),
            }),
            None => inner,
        })
    }

    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        self.seen(seqs.len());
        self.decodes.fetch_add(1, Ordering::SeqCst);
        if let Some(n) = self.refuse {
            if seqs.iter().any(|s| s.dim(0).unwrap() == n) {
                return Err(EngineError::Invalid(format!("{n} tokens refused")));
            }
        }
        self.inner.decode(seqs, rows, cache.map(unwrap_stuck))
    }

    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        self.seen(positions.len());
        self.nexts.fetch_add(1, Ordering::SeqCst);
        self.inner
            .decode_next(embeds, positions, seen, unwrap_stuck(cache))
    }
}

impl Backend for Counting<'_> {
    fn config(&self) -> &LlavaConfig {
        self.inner.config()
    }

    fn image_newline(&self) -> &Tensor {
        self.inner.image_newline()
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        self.inner.encode_tiles(tiles)
    }
}

/// A cache that cannot drop sequences while `stuck` is set.
struct Stuck {
    inner: Box<dyn DecoderCache>,
    stuck: Arc<AtomicBool>,
}

impl DecoderCache for Stuck {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>> {
        self.inner.select(b, len)
    }

    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>> {
        self.inner.repeat(n)
    }

    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Box<dyn DecoderCache>> {
        if self.stuck.load(Ordering::SeqCst) {
            return Err(EngineError::Invalid("stuck".into()));
        }
        Ok(Box::new(Stuck {
            inner: self.inner.gather(rows, slots)?,
            stuck: self.stuck.clone(),
        }))
    }

    fn append(&mut self, other: &mut dyn DecoderCache) -> Result<()> {
        self.inner.append(unwrap_stuck(other))
    }

    fn copies_per_call(&self) -> usize {
        self.inner.copies_per_call()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The backend's own cache inside a [`Stuck`] one.
fn unwrap_stuck(cache: &mut dyn DecoderCache) -> &mut dyn DecoderCache {
    if !cache.as_any_mut().is::<Stuck>() {
        return cache;
    }
    match cache.as_any_mut().downcast_mut::<Stuck>() {
        Some(s) => s.inner.as_mut(),
        None => unreachable!("a Stuck cache"),
    }
}

#[test]
fn joining_and_leaving_sequences_generate_what_they_generate_alone() {
    let backend = candle();
    let steps = scenario::joins_and_leaves(&backend);
    assert!(steps > 5, "{steps} steps");
}

#[test]
fn a_backend_without_a_cache_recomputes_the_running_sequences_together() {
    let backend = candle();
    let recomputing = Recomputing(&backend);
    scenario::joins_and_leaves(&recomputing);
}

#[test]
fn a_batch_limit_splits_the_steps_and_changes_no_tokens() {
    let backend = candle();
    let capped = Counting::new(&backend, Some(2));
    scenario::joins_and_leaves(&capped);
    assert_eq!(capped.widest.load(Ordering::SeqCst), 2);
    let recomputing = Recomputing(&backend);
    let capped = Counting::new(&recomputing, Some(2));
    scenario::joins_and_leaves(&capped);
    assert_eq!(capped.widest.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failed_prompt_pass_fails_only_its_sequence() {
    let backend = candle();
    let mut refusing = Counting::new(&backend, None);
    refusing.refuse = Some(13);
    let prompts: Vec<Tensor> = [4usize, 13, 6]
        .iter()
        .map(|&n| backend.embed_tokens(&vec![9; n]).unwrap())
        .collect();
    let mut batch = GenerationBatch::new(&refusing);
    let asks = prompts
        .iter()
        .enumerate()
        .map(|(k, p)| (k, p.clone(), 5, Vec::new()))
        .collect();
    let answers = batch.admit(asks);
    assert!(matches!(answers[0], (0, Ok(None))));
    match &answers[1] {
        (1, Err(e)) => assert!(e.to_string().contains("13 tokens refused"), "{e}"),
        (k, other) => panic!("{k}: {:?}", other.as_ref().map(|_| ())),
    }
    assert!(matches!(answers[2], (2, Ok(None))));
    assert_eq!(batch.len(), 2);
    let mut done = Vec::new();
    while !batch.is_empty() {
        done.extend(batch.step().unwrap());
    }
    done.sort_by_key(|g| g.key);
    assert_eq!(done.len(), 2);
    for g in done {
        assert_eq!(g.tokens, backend.generate(&prompts[g.key], 5, &[]).unwrap());
    }
}

#[test]
fn a_cancel_that_cannot_drop_its_row_at_once_drops_it_at_the_next_step() {
    let backend = candle();
    let stuck = Arc::new(AtomicBool::new(false));
    let mut counting = Counting::new(&backend, None);
    counting.stuck = Some(stuck.clone());
    let prompts: Vec<Tensor> = [5usize, 8, 3]
        .iter()
        .map(|&n| backend.embed_tokens(&vec![11; n]).unwrap())
        .collect();
    let asks = |batch: &mut GenerationBatch<usize>, max_new: fn(usize) -> usize| {
        let asks = prompts
            .iter()
            .enumerate()
            .map(|(k, p)| (k, p.clone(), max_new(k), Vec::new()))
            .collect();
        assert!(batch.admit(asks).iter().all(|(_, a)| matches!(a, Ok(None))));
    };
    let mut batch = GenerationBatch::new(&counting);
    asks(&mut batch, |_| 6);
    assert!(batch.step().unwrap().is_empty());
    stuck.store(true, Ordering::SeqCst);
    assert!(batch.cancel(1));
    assert_eq!(batch.len(), 2);
    assert!(!batch.cancel(1));
    stuck.store(false, Ordering::SeqCst);
    let mut done = Vec::new();
    while !batch.is_empty() {
        done.extend(batch.step().unwrap());
    }
    done.sort_by_key(|g| g.key);
    assert_eq!(done.iter().map(|g| g.key).collect::<Vec<_>>(), [0, 2]);
    for g in done {
        assert_eq!(g.tokens, backend.generate(&prompts[g.key], 6, &[]).unwrap());
    }

    // A step that fails (here: its first finished sequence cannot leave) ends every sequence.
    let mut batch = GenerationBatch::new(&counting);
    asks(&mut batch, |k| 4 + k);
    stuck.store(true, Ordering::SeqCst);
    let err = loop {
        match batch.step() {
            Ok(done) => assert!(done.is_empty()),
            Err(e) => break e,
        }
    };
    assert!(err.to_string().contains("stuck"), "{err}");
    assert!(batch.is_empty());
}

/// Every step is one decoder call for every running sequence, cache or not; more than the
/// batch limit take one call per limit's worth.
#[test]
fn a_step_is_one_decoder_call_for_every_running_sequence() {
    let backend = candle();
    let recomputing = Recomputing(&backend);
    for inner in [&backend as &dyn Backend, &recomputing] {
        let cached = inner.limits().kv_cache;
        for (max_batch, calls_per_step) in [(None, 1), (Some(3), 2)] {
            let counting = Counting::new(inner, max_batch);
            let prompts: Vec<Tensor> = [4usize, 9, 2, 6, 5]
                .iter()
                .map(|&n| counting.embed_tokens(&vec![3; n]).unwrap())
                .collect();
            let mut batch = GenerationBatch::new(&counting);
            // A server runs the batch on a thread of its own.
            send(&batch);
            let asks = prompts
                .iter()
                .enumerate()
                .map(|(k, p)| (k, p.clone(), 6, Vec::new()))
                .collect();
            assert!(batch.admit(asks).iter().all(|(_, a)| matches!(a, Ok(None))));
            // The prompt passes: one call per limit's worth of sequences.
            assert_eq!(counting.calls(), (calls_per_step, 0));
            for step in 1..=5 {
                assert_eq!(batch.len(), 5);
                let before = counting.calls();
                let done = batch.step().unwrap();
                let after = counting.calls();
                let calls = match cached {
                    true => (before.0, before.1 + calls_per_step),
                    false => (before.0 + calls_per_step, before.1),
                };
                assert_eq!(after, calls, "step {step}");
                assert_eq!(done.len(), if step == 5 { 5 } else { 0 });
            }
            assert!(batch.is_empty());
            assert_eq!(
                counting.widest.load(Ordering::SeqCst),
                max_batch.unwrap_or(5)
            );
        }
    }
}

fn send<T: Send>(_: &T) {}
