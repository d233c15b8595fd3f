//! A continuous-batching scenario for any backend (shared by the engine's and the export's
//! tests): sequences of different prompt lengths join a running `GenerationBatch` at
//! different steps, some end at once, one is cancelled, and every sequence's tokens must be
//! what `Decoding::generate` gives it alone.

use std::collections::HashMap;

use candle_core::Tensor;
use unireward_engine::backend::{Backend, Decoding};
use unireward_engine::decoding::{Finish, Generated, GenerationBatch};

/// What one sequence asks for, and what it generates alone.
pub struct Request {
    pub key: usize,
    pub prompt: Tensor,
    pub max_new: usize,
    pub stop: Vec<u32>,
    pub alone: Vec<u32>,
}

impl Request {
    /// A prompt of `len` token ids (different for every `key`); `stop_at`: the stop token is
    /// the one it generates alone at that index, when it gets that far.
    pub fn new(
        backend: &dyn Backend,
        key: usize,
        len: usize,
        max_new: usize,
        stop_at: Option<usize>,
    ) -> Self {
        let vocab = backend.config().text.vocab_size as u32;
        let ids: Vec<u32> = (0..len as u32)
            .map(|i| (7 + 31 * key as u32 + 13 * i * i) % vocab)
            .collect();
        let prompt = backend.embed_tokens(&ids).unwrap();
        let free = backend.generate(&prompt, max_new.max(1), &[]).unwrap();
        let stop: Vec<u32> = stop_at
            .and_then(|i| free.get(i))
            .copied()
            .into_iter()
            .collect();
        let alone = backend.generate(&prompt, max_new, &stop).unwrap();
        Self {
            key,
            prompt,
            max_new,
            stop,
            alone,
        }
    }

    fn ask(&self) -> (usize, Tensor, usize, Vec<u32>) {
        (
            self.key,
            self.prompt.clone(),
            self.max_new,
            self.stop.clone(),
        )
    }

    fn check(&self, got: &Generated<usize>) {
        assert_eq!(got.key, self.key);
        assert_eq!(got.tokens, self.alone, "sequence {}", self.key);
        let finish = match self.alone.len() == self.max_new {
            true => Finish::Length,
            false => Finish::Stop,
        };
        assert_eq!(got.finish, finish, "sequence {}", self.key);
    }
}

/// Admits 2, steps 3 times, admits 5 more of other lengths (one longer than the running
/// history, one of no tokens, one whose first token is its stop, one of one token), steps
/// twice, cancels one, then steps until every sequence is done. Returns the number of steps.
pub fn joins_and_leaves(backend: &dyn Backend) -> usize {
    let a = Request::new(backend, 0, 5, 12, None);
    let b = Request::new(backend, 1, 9, 7, Some(3));
    let c = Request::new(backend, 2, 14, 10, None);
    let d = Request::new(backend, 3, 3, 8, None);
    let e = Request::new(backend, 4, 7, 0, None);
    let f = Request::new(backend, 5, 4, 6, Some(0));
    let g = Request::new(backend, 6, 11, 9, None);
    let h = Request::new(backend, 7, 6, 1, None);
    assert!(b.alone.len() < b.max_new, "b ends at its stop token");
    assert!(f.alone.is_empty(), "f's first token is its stop");
    let all = [&a, &b, &c, &d, &e, &f, &g, &h];

    let mut batch = GenerationBatch::new(backend);
    let mut done: HashMap<usize, Generated<usize>> = HashMap::new();
    for (key, answer) in batch.admit(vec![a.ask(), b.ask()]) {
        assert!(answer.unwrap().is_none(), "{key} runs");
    }
    assert_eq!(batch.len(), 2);
    let mut steps = 0;
    for _ in 0..3 {
        done.extend(batch.step().unwrap().into_iter().map(|g| (g.key, g)));
        steps += 1;
    }

    let hidden = backend.config().text.hidden_size;
    let empty = Tensor::zeros((0, hidden), candle_core::DType::F32, a.prompt.device()).unwrap();
    let mut asks = vec![c.ask(), d.ask(), e.ask(), f.ask(), g.ask(), h.ask()];
    asks.push((8, empty, 4, Vec::new()));
    asks.push((0, a.prompt.clone(), 4, Vec::new()));
    let before = batch.len();
    let answers = batch.admit(asks);
    assert_eq!(
        answers.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        [2, 3, 4, 5, 6, 7, 8, 0]
    );
    for (key, answer) in answers {
        match key {
            2 | 3 | 6 => assert!(answer.unwrap().is_none(), "{key} runs"),
            4 | 5 | 7 => {
                let g = answer.unwrap().expect("ends at once");
                done.insert(key, g);
            }
            8 => {
                let err = answer.unwrap_err();
                assert!(err.to_string().contains("an empty prompt"), "{err}");
            }
            _ => {
                let err = answer.unwrap_err();
                assert!(err.to_string().contains("already generating"), "{err}");
            }
        }
    }
    assert_eq!(batch.len(), before + 3);
    for _ in 0..2 {
        done.extend(batch.step().unwrap().into_iter().map(|g| (g.key, g)));
        steps += 1;
    }
    assert!(batch.cancel(6));
    assert!(!batch.cancel(6));
    assert!(!batch.cancel(42));
    while !batch.is_empty() {
        done.extend(batch.step().unwrap().into_iter().map(|g| (g.key, g)));
        steps += 1;
        assert!(steps < 100, "generation does not end");
    }
    assert!(batch.step().unwrap().is_empty());
    assert!(
        !done.contains_key(&6),
        "a cancelled sequence is not reported"
    );
    for r in all.iter().filter(|r| r.key != 6) {
        r.check(
            done.get(&r.key)
                .unwrap_or_else(|| panic!("{} not done", r.key)),
        );
    }
    steps
}
