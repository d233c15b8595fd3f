//! Greedy generation of many sequences in one running batch (continuous batching): each step
//! is one decoder call advancing every running sequence by one token, and new sequences join
//! between steps, so concurrent requests share their decoder calls.
//!
//! Sequences that joined at different times have cached different numbers of positions. Each
//! decoder call's worth of sequences keeps one cache with holes: a right-padded prompt pass
//! leaves padding after the shorter prompts, and a joining batch's cache is appended with the
//! shorter history padded at its end ([`DecoderCache::append`]). Every step masks each
//! sequence's holes and gives its token its own position ([`Backend::decode_next`]), so each
//! sequence computes what it computes alone ([`super::Decoding::generate`]). A sequence
//! leaving takes its row out of the cache, with the slots that no remaining sequence uses
//! ([`DecoderCache::gather`]): memory stays that of the running sequences.
//!
//! Without a KV cache (a format-1 export, [`crate::backend::Recomputing`]) a step is one
//! whole-sequence call over every running sequence's prompt and tokens so far, right-padded.

use candle_core::{Tensor, D};

use super::{cached, positions_need_cache, Prompt};
use crate::backend::{Decoder, DecoderCache, Rows};
use crate::error::{EngineError, Result};

/// Why a sequence's generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A stop token came (it is not in the tokens).
    Stop,
    /// `max_new` tokens came.
    Length,
}

/// A finished sequence's generated tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated<K> {
    pub key: K,
    pub tokens: Vec<u32>,
    pub finish: Finish,
}

/// The running sequences of a greedy generation, keyed by the caller's `K`, at most
/// `backend.limits().batch()` of them per decoder call.
pub struct GenerationBatch<'b, K> {
    backend: &'b dyn Decoder,
    groups: Vec<Group<K>>,
}

/// The sequences of one decoder call and their cache (`None` without a KV cache); row b of
/// the cache is `seqs[b]`.
struct Group<K> {
    cache: Option<Box<dyn DecoderCache>>,
    seqs: Vec<Running<K>>,
}

struct Running<K> {
    key: K,
    max_new: usize,
    stop: Vec<u32>,
    /// Generated so far; the last one is not yet fed to the decoder.
    tokens: Vec<u32>,
    /// Which slots of the group's cache are this sequence's tokens.
    seen: Vec<bool>,
    /// Its tokens in the cache: the position of its next one.
    cached: usize,
    /// Without a KV cache: the embeddings of the prompt and the fed tokens [T, hidden].
    history: Option<Tensor>,
    /// Cancelled while its row could not be taken out: dropped at the next step, unreported.
    cancelled: bool,
}

impl<K> Running<K> {
    /// Takes the greedy token `next`; `Some` when the sequence ends with it.
    fn take(&mut self, next: u32) -> Option<Finish> {
        if self.stop.contains(&next) {
            return Some(Finish::Stop);
        }
        self.tokens.push(next);
        (self.tokens.len() >= self.max_new).then_some(Finish::Length)
    }

    fn pending(&self) -> u32 {
        // Only a sequence with a token to feed runs (`take` ended the others).
        self.tokens.last().copied().unwrap_or_default()
    }
}

/// A cache cut to some of its rows, and the slots of the original it kept (`None`: no cache).
type Picked = Option<(Box<dyn DecoderCache>, Vec<usize>)>;

/// A sequence waiting for its prompt pass.
struct Joining<K> {
    index: usize,
    key: K,
    prompt: Prompt,
    max_new: usize,
    stop: Vec<u32>,
}

impl<'b, K: Copy + Eq + std::fmt::Debug> GenerationBatch<'b, K> {
    pub fn new(backend: &'b dyn Decoder) -> Self {
        Self {
            backend,
            groups: Vec::new(),
        }
    }

    /// Prompt passes of the new sequences (embeddings [T, hidden] f32 each, at their own
    /// positions where they carry them, at most `limits().batch()` per decoder call,
    /// right-padded), then they join the running batch.
    /// Answers each in the order given: an error for a sequence whose prompt pass failed (the
    /// others go on), the finished sequence for one that ended at once (`max_new` 0, or a
    /// stop token first), else `None` (it runs; [`Self::step`] returns it when it ends).
    pub fn admit<P: Into<Prompt>>(
        &mut self,
        seqs: Vec<(K, P, usize, Vec<u32>)>,
    ) -> Vec<(K, Result<Option<Generated<K>>>)> {
        let mut answers: Vec<Option<Result<Option<Generated<K>>>>> =
            seqs.iter().map(|_| None).collect();
        let keys: Vec<K> = seqs.iter().map(|s| s.0).collect();
        let mut waiting = Vec::new();
        for (index, (key, prompt, max_new, stop)) in seqs.into_iter().enumerate() {
            let prompt: Prompt = prompt.into();
            let checked = if self.contains(key) || keys[..index].contains(&key) {
                Err(EngineError::Invalid(format!(
                    "{key:?} is already generating"
                )))
            } else {
                self.check_prompt(&prompt)
            };
            answers[index] = match checked {
                Err(e) => Some(Err(e)),
                Ok(()) if max_new == 0 => Some(Ok(Some(Generated {
                    key,
                    tokens: Vec::new(),
                    finish: Finish::Length,
                }))),
                Ok(()) => {
                    waiting.push(Joining {
                        index,
                        key,
                        prompt,
                        max_new,
                        stop,
                    });
                    None
                }
            };
        }
        let per_call = self.backend.limits().batch();
        let mut waiting = waiting.into_iter().peekable();
        while waiting.peek().is_some() {
            let chunk: Vec<Joining<K>> = waiting.by_ref().take(per_call).collect();
            let indices: Vec<usize> = chunk.iter().map(|j| j.index).collect();
            match self.prompt_pass(&chunk) {
                Ok(group) => self.join(group, &indices, &mut answers),
                Err(e) if chunk.len() > 1 => {
                    // Which prompt broke the call is unknown: each alone, so only it fails.
                    tracing::warn!(
                        "a batched prompt pass of {} sequences failed ({e}); one at a time",
                        chunk.len()
                    );
                    for one in chunk {
                        let index = one.index;
                        match self.prompt_pass(std::slice::from_ref(&one)) {
                            Ok(group) => self.join(group, &[index], &mut answers),
                            Err(e) => answers[index] = Some(Err(e)),
                        }
                    }
                }
                Err(e) => answers[indices[0]] = Some(Err(e)),
            }
        }
        tracing::debug!(running = self.len(), "sequences admitted");
        keys.into_iter()
            .zip(answers)
            .map(|(key, a)| (key, a.unwrap_or(Ok(None))))
            .collect()
    }

    /// One decoder call per `limits().batch()` running sequences advancing each by one
    /// token; returns those that finished in it. An error ends every running sequence (the
    /// batch is empty after it).
    pub fn step(&mut self) -> Result<Vec<Generated<K>>> {
        let mut finished = Vec::new();
        let mut failed = None;
        for group in &mut self.groups {
            match group.step(self.backend) {
                Ok(done) => finished.extend(done),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.groups.clear();
            return Err(e);
        }
        self.groups.retain(|g| !g.seqs.is_empty());
        tracing::trace!(
            running = self.len(),
            finished = finished.len(),
            "generation step"
        );
        Ok(finished)
    }

    /// Drops a running sequence (its client went away); false when `key` is not running.
    pub fn cancel(&mut self, key: K) -> bool {
        let found = self.groups.iter().enumerate().find_map(|(g, group)| {
            let b = group
                .seqs
                .iter()
                .position(|q| q.key == key && !q.cancelled)?;
            Some((g, b))
        });
        let Some((g, b)) = found else {
            return false;
        };
        let group = &mut self.groups[g];
        let mut gone = vec![false; group.seqs.len()];
        gone[b] = true;
        if let Err(e) = group.leave(&gone) {
            tracing::warn!("cancelling {key:?}: {e}; its row goes at the next step");
            group.seqs[b].cancelled = true;
        }
        self.groups.retain(|g| !g.seqs.is_empty());
        true
    }

    /// Running sequences.
    pub fn len(&self) -> usize {
        self.groups
            .iter()
            .flat_map(|g| &g.seqs)
            .filter(|q| !q.cancelled)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn contains(&self, key: K) -> bool {
        self.groups
            .iter()
            .flat_map(|g| &g.seqs)
            .any(|q| q.key == key && !q.cancelled)
    }

    fn check_prompt(&self, prompt: &Prompt) -> Result<()> {
        let (t, hidden) = prompt.embeds.dims2()?;
        if t == 0 {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        let want = self.backend.text_config().hidden_size;
        if hidden != want {
            return Err(EngineError::Invalid(format!(
                "embeddings of width {hidden}; the decoder takes {want}"
            )));
        }
        Ok(())
    }

    /// One decoder call over the prompts; each sequence takes its first token. The group
    /// holds all of them, finished ones too (`Running::take` said which).
    fn prompt_pass(&self, chunk: &[Joining<K>]) -> Result<(Group<K>, Vec<Option<Finish>>)> {
        let prompts: Vec<Prompt> = chunk.iter().map(|j| j.prompt.clone()).collect();
        let lens = prompts
            .iter()
            .map(|p| p.embeds.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n - 1]).collect();
        let mut cache = match self.backend.limits().kv_cache {
            true => Some(self.backend.new_cache()?),
            false => None,
        };
        let rows = match cache.as_mut() {
            Some(c) => cached::prompt_pass(self.backend, &prompts, Rows::At(&last), c.as_mut())?,
            None if prompts.iter().any(|p| p.positions.is_some()) => {
                return Err(positions_need_cache(self.backend))
            }
            None => {
                let embeds: Vec<Tensor> = prompts.iter().map(|p| p.embeds.clone()).collect();
                self.backend.decode(&embeds, Rows::At(&last), None)?
            }
        };
        let slots = cache.as_ref().map_or(0, |c| c.len());
        let mut finishes = Vec::with_capacity(chunk.len());
        let mut seqs = Vec::with_capacity(chunk.len());
        for ((j, row), &n) in chunk.iter().zip(&rows).zip(&lens) {
            let first = row.get(0)?.argmax(0)?.to_scalar::<u32>()?;
            let mut seq = Running {
                key: j.key,
                max_new: j.max_new,
                stop: j.stop.clone(),
                tokens: Vec::new(),
                seen: (0..slots).map(|s| s < n).collect(),
                cached: n,
                history: cache.is_none().then(|| j.prompt.embeds.clone()),
                cancelled: false,
            };
            finishes.push(seq.take(first));
            seqs.push(seq);
        }
        Ok((Group { cache, seqs }, finishes))
    }

    /// The sequences of a prompt pass (those at `indices` of `answers`): the finished ones
    /// answered, the others joining groups with room.
    fn join(
        &mut self,
        (mut group, finishes): (Group<K>, Vec<Option<Finish>>),
        indices: &[usize],
        answers: &mut [Option<Result<Option<Generated<K>>>>],
    ) {
        let gone: Vec<bool> = finishes.iter().map(Option::is_some).collect();
        let left = match group.leave(&gone) {
            Ok(left) => left,
            Err(e) => {
                for &i in indices {
                    answers[i] = Some(Err(EngineError::Invalid(format!(
                        "after the prompt pass: {e}"
                    ))));
                }
                return;
            }
        };
        let mut left = left.into_iter();
        for (&i, finish) in indices.iter().zip(&finishes) {
            answers[i] = Some(Ok(match finish {
                Some(f) => left.next().map(|q| q.finished(*f)),
                None => None,
            }));
        }
        let joining: Vec<(usize, K)> = indices
            .iter()
            .zip(&finishes)
            .filter(|(_, f)| f.is_none())
            .map(|(&i, _)| i)
            .zip(group.seqs.iter().map(|q| q.key))
            .collect();
        if let Err(e) = self.place(group) {
            // Those placed before the error run on; the others are lost.
            for (i, key) in joining {
                if !self.contains(key) {
                    answers[i] = Some(Err(EngineError::Invalid(format!(
                        "joining the running batch: {e}"
                    ))));
                }
            }
        }
    }

    /// `joining` into the groups with room, split where one has less room than it needs.
    fn place(&mut self, mut joining: Group<K>) -> Result<()> {
        let per_call = self.backend.limits().batch();
        while !joining.seqs.is_empty() {
            let Some(g) = self.groups.iter().position(|g| g.seqs.len() < per_call) else {
                if joining.seqs.len() <= per_call {
                    self.groups.push(joining);
                    return Ok(());
                }
                let rest = joining.split_off(per_call)?;
                self.groups.push(joining);
                joining = rest;
                continue;
            };
            let room = per_call - self.groups[g].seqs.len();
            let rest = match joining.seqs.len() > room {
                true => Some(joining.split_off(room)?),
                false => None,
            };
            self.groups[g].append(joining)?;
            match rest {
                Some(rest) => joining = rest,
                None => return Ok(()),
            }
        }
        Ok(())
    }
}

impl<K> Group<K> {
    /// One decoder call advancing every sequence by one token; the finished ones leave.
    fn step(&mut self, backend: &dyn Decoder) -> Result<Vec<Generated<K>>> {
        let cancelled: Vec<bool> = self.seqs.iter().map(|q| q.cancelled).collect();
        if cancelled.contains(&true) {
            self.leave(&cancelled)?;
        }
        if self.seqs.is_empty() {
            return Ok(Vec::new());
        }
        let pending: Vec<u32> = self.seqs.iter().map(Running::pending).collect();
        let embeds = backend.embed_tokens(&pending)?;
        let nexts = match self.cache.as_mut() {
            Some(cache) => {
                let positions: Vec<usize> = self.seqs.iter().map(|q| q.cached).collect();
                let seen: Vec<&[bool]> = self.seqs.iter().map(|q| q.seen.as_slice()).collect();
                let rows = backend.decode_next(&embeds, &positions, &seen, cache.as_mut())?;
                for q in &mut self.seqs {
                    q.seen.push(true);
                    q.cached += 1;
                }
                rows.argmax(D::Minus1)?.to_vec1::<u32>()?
            }
            None => self.recompute(backend, &embeds)?,
        };
        let finishes: Vec<Option<Finish>> = self
            .seqs
            .iter_mut()
            .zip(nexts)
            .map(|(q, next)| q.take(next))
            .collect();
        let gone: Vec<bool> = finishes.iter().map(Option::is_some).collect();
        let left = self.leave(&gone)?;
        Ok(left
            .into_iter()
            .zip(finishes.into_iter().flatten())
            .map(|(q, f)| q.finished(f))
            .collect())
    }

    /// Without a cache: each sequence's history grows by its pending token (`embeds`
    /// [B, hidden]) and runs whole; the greedy token after each.
    fn recompute(&mut self, backend: &dyn Decoder, embeds: &Tensor) -> Result<Vec<u32>> {
        let mut seqs = Vec::with_capacity(self.seqs.len());
        for (b, q) in self.seqs.iter_mut().enumerate() {
            let history = q
                .history
                .take()
                .ok_or_else(|| EngineError::Invalid("a sequence without its history".into()))?;
            let token = embeds.narrow(0, b, 1)?.to_device(history.device())?;
            let grown = Tensor::cat(&[&history, &token], 0)?;
            q.history = Some(grown.clone());
            seqs.push(grown);
        }
        let last = seqs
            .iter()
            .map(|s| Ok(vec![s.dim(0)? - 1]))
            .collect::<Result<Vec<_>>>()?;
        let rows = backend.decode(&seqs, Rows::At(&last), None)?;
        rows.iter()
            .map(|r| Ok(r.get(0)?.argmax(0)?.to_scalar::<u32>()?))
            .collect()
    }

    /// The sequences marked `gone` leave (returned in order); the cache keeps the others'
    /// rows and the slots they use. Nothing changes on an error.
    fn leave(&mut self, gone: &[bool]) -> Result<Vec<Running<K>>> {
        if !gone.contains(&true) {
            return Ok(Vec::new());
        }
        let rows: Vec<usize> = (0..self.seqs.len()).filter(|&b| !gone[b]).collect();
        let picked = self.pick(&rows)?;
        let (mut kept, mut left) = (Vec::new(), Vec::new());
        for (q, &g) in std::mem::take(&mut self.seqs).into_iter().zip(gone) {
            match g {
                true => left.push(q),
                false => kept.push(q),
            }
        }
        self.seqs = kept;
        self.repick(picked);
        Ok(left)
    }

    /// The sequences from `at` on, as a group of their own.
    fn split_off(&mut self, at: usize) -> Result<Group<K>> {
        let n = self.seqs.len();
        let theirs = self.pick(&(at..n).collect::<Vec<_>>())?;
        let mine = self.pick(&(0..at).collect::<Vec<_>>())?;
        let mut rest = Group {
            cache: None,
            seqs: self.seqs.split_off(at),
        };
        rest.repick(theirs);
        self.repick(mine);
        Ok(rest)
    }

    /// The cache of the sequences `rows` with the slots any of them uses, and those slots;
    /// `None` when there is no cache.
    fn pick(&self, rows: &[usize]) -> Result<Picked> {
        let Some(cache) = self.cache.as_ref().filter(|_| !rows.is_empty()) else {
            return Ok(None);
        };
        let slots: Vec<usize> = (0..cache.len())
            .filter(|&s| rows.iter().any(|&b| self.seqs[b].seen[s]))
            .collect();
        Ok(Some((cache.gather(rows, &slots)?, slots)))
    }

    /// Takes the cache `pick` made for the group's (now) sequences.
    fn repick(&mut self, picked: Picked) {
        let Some((cache, slots)) = picked else {
            self.cache = None;
            return;
        };
        for q in &mut self.seqs {
            q.seen = slots.iter().map(|&s| q.seen[s]).collect();
        }
        self.cache = Some(cache);
    }

    /// `other`'s sequences after this group's, their histories padded to one length.
    fn append(&mut self, mut other: Group<K>) -> Result<()> {
        match (self.cache.as_mut(), other.cache.take()) {
            (Some(mine), Some(mut theirs)) => mine.append(theirs.as_mut())?,
            (None, theirs) if self.seqs.is_empty() => self.cache = theirs,
            (None, None) => {}
            _ => {
                return Err(EngineError::Invalid(
                    "sequences with and without a cache in one batch".into(),
                ))
            }
        }
        let slots = self.cache.as_ref().map_or(0, |c| c.len());
        self.seqs.extend(other.seqs);
        for q in &mut self.seqs {
            q.seen.resize(slots, false);
        }
        Ok(())
    }
}

impl<K> Running<K> {
    fn finished(self, finish: Finish) -> Generated<K> {
        Generated {
            key: self.key,
            tokens: self.tokens,
            finish,
        }
    }
}
