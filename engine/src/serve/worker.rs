//! The model thread: it owns the judge and answers the queue's work, sharing decoder calls
//! across requests. Each round takes everything queued: the fast score records of every
//! request go into one batched judgement (prompt passes filling the token budget), new
//! generations (chat completions, generate-mode scores) join the running batch, and then the
//! running batch advances one token for all of its sequences in one decoder call. So a new
//! request waits at most one step to join, and a request whose client went away leaves the
//! batch at the next step.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use candle_core::Tensor;
use tokio::sync::oneshot;
use unireward_models::formats::score_record::ScoreAnswer;
use unireward_models::judge::{Mode, Task};
use unireward_models::pack::{EncodedMedia, VideoFeatures};
use unireward_models::preprocess::PreparedMedia;
use unireward_models::MediaFeatures;

use super::api_error::ApiError;
use super::chat::{ChatPrompt, FinishReason, Piece, VideoMarks};
use super::feature_cache::{CacheKey, CachedFeatures, FeatureCache};
use super::media::RequestMedia;
use super::media_inbox::MediaKeys;
use super::metrics::Metrics;
use crate::backend::QwenBackend;
use crate::decoding::{Finish, Generated, GenerationBatch, Prompt};
use crate::encode_media::encode_request;
use crate::error::{EngineError, Result};
use crate::judge::generate::{outcome_of_text, stop_tokens};
use crate::judge::{Judge, JudgeItem, JudgeMode, ScoreRequest};
use crate::pairs::job::{PairsJob, PairsRequest};
use crate::pairs::Ranking;

/// What the model thread holds.
pub struct ServeModel<'a> {
    /// Fast judging (`/v1/score` in fast mode); `rank` judges with the same one.
    pub fast: &'a Judge<'a>,
    /// Greedy decoding (chat completions, `/v1/score` in generate mode); its
    /// `max_new_tokens` caps every answer.
    pub generate: Judge<'a>,
    /// `/v1/rank`'s judge and options (every pair is judged, as `--ranking round-robin`).
    pub rank: PairsJob<'a>,
    /// Padded prompt tokens per batched prompt pass.
    pub token_budget: usize,
    /// Bytes of vision features kept for media seen again.
    pub feature_cache_bytes: usize,
    /// A Qwen-VL judge's model, which encodes its own media; `None` for LLaVA-OneVision,
    /// whose judge's backend encodes them.
    pub qwen: Option<&'a dyn QwenBackend>,
}

/// A request's media, preprocessed, with their content hashes.
pub struct PreparedInput {
    pub media: RequestMedia,
    pub keys: MediaKeys,
    /// The size images were resized to before preprocessing (part of the cache key).
    pub resized: Option<(u32, u32)>,
}

/// A chat completion's answer.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

pub type ScoreAnswers = Vec<std::result::Result<ScoreAnswer, String>>;

/// A score request's prepared records and where their answers go.
type ScoreWork = (
    Vec<(ScoreRequest, PreparedInput)>,
    oneshot::Sender<ScoreAnswers>,
);

pub enum Work {
    /// Score records that were prepared (the caller answers the others).
    Score {
        records: Vec<(ScoreRequest, PreparedInput)>,
        mode: JudgeMode,
        reply: oneshot::Sender<ScoreAnswers>,
    },
    Chat {
        prompt: Box<ChatPrompt>,
        input: PreparedInput,
        reply: oneshot::Sender<std::result::Result<ChatAnswer, ApiError>>,
    },
    Rank {
        req: Box<PairsRequest>,
        input: PreparedInput,
        reply: oneshot::Sender<std::result::Result<Ranking, ApiError>>,
    },
}

/// Who waits for a running generation.
enum Waiter {
    Chat {
        reply: oneshot::Sender<std::result::Result<ChatAnswer, ApiError>>,
        prompt_tokens: usize,
    },
    ScoreRecord {
        group: u64,
        index: usize,
        task: Task,
        mode: Mode,
    },
}

/// A generate-mode score request, answered when its last record's generation ends.
struct ScoreGroup {
    answers: Vec<Option<std::result::Result<ScoreAnswer, String>>>,
    reply: Option<oneshot::Sender<ScoreAnswers>>,
}

struct Worker<'m, 'a> {
    model: &'m ServeModel<'a>,
    metrics: Arc<Metrics>,
    cache: FeatureCache,
    batch: GenerationBatch<'m, u64>,
    waiters: HashMap<u64, Waiter>,
    groups: HashMap<u64, ScoreGroup>,
    next_key: u64,
    stop: Vec<u32>,
}

/// Answers `queue` until every sender is gone and nothing runs.
pub fn run(model: &ServeModel, queue: Receiver<Work>, metrics: Arc<Metrics>) {
    let mut worker = Worker {
        model,
        metrics,
        cache: FeatureCache::new(model.feature_cache_bytes),
        batch: GenerationBatch::new(model.generate.decoder),
        waiters: HashMap::new(),
        groups: HashMap::new(),
        next_key: 0,
        stop: stop_tokens(&model.generate),
    };
    loop {
        let mut round = Vec::new();
        if worker.batch.is_empty() {
            match queue.recv() {
                Ok(work) => round.push(work),
                Err(_) => return,
            }
        }
        round.extend(queue.try_iter());
        worker.round(round);
        if !worker.batch.is_empty() {
            worker.step();
        }
    }
}

impl Worker<'_, '_> {
    fn round(&mut self, works: Vec<Work>) {
        let mut fast = Vec::new();
        let mut new_generations = Vec::new();
        for work in works {
            match work {
                Work::Score { reply, .. } if reply.is_closed() => {}
                Work::Score {
                    records,
                    mode: JudgeMode::Fast,
                    reply,
                } => fast.push((records, reply)),
                Work::Score {
                    records,
                    mode: JudgeMode::Generate,
                    reply,
                } => self.start_score_group(records, reply, &mut new_generations),
                Work::Chat { reply, .. } if reply.is_closed() => {}
                Work::Chat {
                    prompt,
                    input,
                    reply,
                } => match self.chat_prompt(&prompt, &input) {
                    Ok((embeds, max_new)) => {
                        let key = self.key();
                        let prompt_tokens = embeds.embeds.dim(0).unwrap_or(0);
                        self.waiters.insert(
                            key,
                            Waiter::Chat {
                                reply,
                                prompt_tokens,
                            },
                        );
                        new_generations.push((key, embeds, max_new, self.stop.clone()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Work::Rank { reply, .. } if reply.is_closed() => {}
                Work::Rank { req, input, reply } => {
                    let answer = self
                        .encode(&input)
                        .and_then(|features| self.model.rank.round_robin_encoded(&req, features))
                        .map_err(ApiError::from);
                    let _ = reply.send(answer);
                }
            }
        }
        if !fast.is_empty() {
            self.judge_fast(fast);
        }
        if !new_generations.is_empty() {
            let prompt_tokens: usize = new_generations
                .iter()
                .map(|(_, p, _, _): &(u64, Prompt, usize, Vec<u32>)| p.embeds.dim(0).unwrap_or(0))
                .sum();
            self.metrics.batch(new_generations.len());
            self.metrics.tokens(prompt_tokens, 0);
            for (key, admitted) in self.batch.admit(new_generations) {
                match admitted {
                    Ok(Some(done)) => self.finish(done),
                    Ok(None) => {}
                    Err(e) => self.fail(key, e.to_string()),
                }
            }
        }
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    /// One decoder call for every running generation; the finished ones are answered.
    fn step(&mut self) {
        let gone: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| match w {
                Waiter::Chat { reply, .. } => reply.is_closed(),
                Waiter::ScoreRecord { group, .. } => self
                    .groups
                    .get(group)
                    .and_then(|g| g.reply.as_ref())
                    .is_none_or(|r| r.is_closed()),
            })
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            self.batch.cancel(key);
            if let Some(Waiter::ScoreRecord { group, .. }) = self.waiters.remove(&key) {
                self.groups.remove(&group);
            }
        }
        if self.batch.is_empty() {
            return;
        }
        self.metrics.batch(self.batch.len());
        let running = self.batch.len();
        match self.batch.step() {
            Ok(done) => {
                self.metrics.tokens(0, running);
                for d in done {
                    self.finish(d);
                }
            }
            Err(e) => {
                // The step's state is lost for all of them: every running sequence fails.
                let msg = e.to_string();
                tracing::warn!("a generation step failed: {msg}");
                let keys: Vec<u64> = self.waiters.keys().copied().collect();
                for key in keys {
                    self.fail(key, msg.clone());
                }
                self.batch = GenerationBatch::new(self.model.generate.decoder);
            }
        }
    }

    fn finish(&mut self, done: Generated<u64>) {
        let Some(waiter) = self.waiters.remove(&done.key) else {
            return;
        };
        let judge = &self.model.generate;
        let text = judge
            .tokenizer
            .decode(&done.tokens)
            .map_err(EngineError::from);
        match waiter {
            Waiter::Chat {
                reply,
                prompt_tokens,
            } => {
                let answer = text.map_err(ApiError::from).map(|text| ChatAnswer {
                    text,
                    finish: match done.finish {
                        Finish::Stop => FinishReason::Stop,
                        Finish::Length => FinishReason::Length,
                    },
                    prompt_tokens,
                    completion_tokens: done.tokens.len(),
                });
                let _ = reply.send(answer);
            }
            Waiter::ScoreRecord {
                group,
                index,
                task,
                mode,
            } => {
                let answer = text
                    .and_then(|t| outcome_of_text(judge, task, mode, t))
                    .map(|o| o.answer())
                    .map_err(|e| e.to_string());
                self.answer_record(group, index, answer);
            }
        }
    }

    fn fail(&mut self, key: u64, msg: String) {
        match self.waiters.remove(&key) {
            Some(Waiter::Chat { reply, .. }) => {
                let _ = reply.send(Err(ApiError::internal(msg)));
            }
            Some(Waiter::ScoreRecord { group, index, .. }) => {
                self.answer_record(group, index, Err(msg))
            }
            None => {}
        }
    }

    fn answer_record(
        &mut self,
        group: u64,
        index: usize,
        answer: std::result::Result<ScoreAnswer, String>,
    ) {
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if let Some(slot) = g.answers.get_mut(index) {
            *slot = Some(answer);
        }
        self.reply_if_complete(group);
    }

    /// Sends a score group's answers once every record has one.
    fn reply_if_complete(&mut self, group: u64) {
        let complete = self
            .groups
            .get(&group)
            .is_some_and(|g| g.answers.iter().all(Option::is_some));
        if !complete {
            return;
        }
        if let Some(g) = self.groups.remove(&group) {
            let answers = g.answers.into_iter().flatten().collect();
            if let Some(reply) = g.reply {
                let _ = reply.send(answers);
            }
        }
    }

    fn start_score_group(
        &mut self,
        records: Vec<(ScoreRequest, PreparedInput)>,
        reply: oneshot::Sender<ScoreAnswers>,
        new_generations: &mut Vec<(u64, Prompt, usize, Vec<u32>)>,
    ) {
        let group = self.key();
        let mut answers = Vec::with_capacity(records.len());
        let mut started = Vec::new();
        for (index, (req, input)) in records.iter().enumerate() {
            let judge = &self.model.generate;
            let prepared = self
                .score_inputs(judge, req, input)
                .and_then(|(text, features)| judge.prompt(&text, &features));
            match prepared {
                Ok(embeds) => {
                    answers.push(None);
                    started.push((index, req.task, req.mode, embeds));
                }
                Err(e) => answers.push(Some(Err(e.to_string()))),
            }
        }
        self.groups.insert(
            group,
            ScoreGroup {
                answers,
                reply: Some(reply),
            },
        );
        for (index, task, mode, embeds) in started {
            let key = self.key();
            self.waiters.insert(
                key,
                Waiter::ScoreRecord {
                    group,
                    index,
                    task,
                    mode,
                },
            );
            let max_new = self.model.generate.max_new_tokens;
            new_generations.push((key, embeds, max_new, self.stop.clone()));
        }
        // Every record failed before generating: nothing will complete the group later.
        self.reply_if_complete(group);
    }

    /// Fast judgement of every record of these requests together.
    fn judge_fast(&mut self, requests: Vec<ScoreWork>) {
        let judge = self.model.fast;
        let mut answers: Vec<ScoreAnswers> = Vec::with_capacity(requests.len());
        let mut inputs = Vec::new();
        for (r, (records, _)) in requests.iter().enumerate() {
            answers.push(Vec::with_capacity(records.len()));
            for (i, (req, input)) in records.iter().enumerate() {
                match self.score_inputs(judge, req, input) {
                    Ok((text, features)) => {
                        answers[r].push(Err(String::new()));
                        inputs.push((r, i, req.task, req.mode, text, features));
                    }
                    Err(e) => answers[r].push(Err(e.to_string())),
                }
            }
        }
        let items: Vec<JudgeItem> = inputs
            .iter()
            .map(|(_, _, task, mode, text, features)| JudgeItem {
                task: *task,
                mode: *mode,
                prompt_text: text.clone(),
                media: features,
            })
            .collect();
        self.metrics.batch(items.len());
        let outcomes = judge.judge_batch(&items, self.model.token_budget);
        for ((r, i, ..), outcome) in inputs.iter().zip(outcomes) {
            answers[*r][*i] = outcome.map(|o| o.answer()).map_err(|e| e.to_string());
        }
        for ((_, reply), a) in requests.into_iter().zip(answers) {
            let _ = reply.send(a);
        }
    }

    /// A score record's prompt text and media features, as `engine score` makes them.
    fn score_inputs(
        &mut self,
        judge: &Judge,
        req: &ScoreRequest,
        input: &PreparedInput,
    ) -> Result<(String, MediaFeatures)> {
        let (features, marks) = self.encode(input)?.all()?;
        let text = judge.prompt_text(req.task, req.mode, &req.prompt, &req.answers, marks)?;
        Ok((text, features))
    }

    /// The chat prompt as the decoder takes it and how many tokens it may add.
    fn chat_prompt(
        &mut self,
        prompt: &ChatPrompt,
        input: &PreparedInput,
    ) -> std::result::Result<(Prompt, usize), ApiError> {
        let encoded = self.encode(input)?;
        let marks: Vec<VideoMarks> = encoded
            .videos
            .iter()
            .map(|v| match v {
                VideoFeatures::Frames(f) => VideoMarks::Frames(f.len()),
                // A video item's one marker, whether it fills one run or one per patch.
                VideoFeatures::Pooled(_) | VideoFeatures::Timed { .. } => VideoMarks::Pooled,
            })
            .collect();
        // Features (and grids) in the order of their markers: the tokenizer fills the i-th
        // <image> with the i-th image feature, whatever the content order was.
        let mut features = MediaFeatures::default();
        for slot in prompt.media_order() {
            let (one, _) = match slot {
                Piece::Image(i) => encoded.select(&[i], &[]),
                Piece::Video(v) => encoded.select(&[], &[v]),
                Piece::Text(_) => continue,
            }
            .map_err(EngineError::from)?;
            features.append(one);
        }
        let judge = &self.model.generate;
        let messages = prompt.messages_with_markers(&marks)?;
        let text = judge
            .style
            .chat
            .render_conversation(&messages)
            .map_err(EngineError::from)?;
        let embeds = judge.prompt(&judge.style.markers.apply(&text), &features)?;
        let cap = judge.max_new_tokens;
        let max_new = prompt.max_tokens.map_or(cap, |m| m.min(cap));
        Ok((embeds, max_new))
    }

    /// A request's media encoded, each medium seen before taken from the feature cache.
    fn encode(&mut self, input: &PreparedInput) -> Result<EncodedMedia> {
        let key = |content: &Option<[u8; 32]>, video: bool| {
            content.map(|content| CacheKey {
                content,
                video,
                resized: input.resized,
            })
        };
        let (n_images, n_videos) = input.media.counts();
        let image_keys: Vec<Option<CacheKey>> =
            input.keys.images.iter().map(|k| key(k, false)).collect();
        let video_keys: Vec<Option<CacheKey>> =
            input.keys.videos.iter().map(|k| key(k, true)).collect();
        let mut images: Vec<Option<(Tensor, Vec<Tensor>)>> = vec![None; n_images];
        let mut videos: Vec<Option<(VideoFeatures, Vec<VideoFeatures>)>> = vec![None; n_videos];
        for (slot, k) in images.iter_mut().zip(&image_keys) {
            if let Some(CachedFeatures::Image(t, levels)) =
                k.as_ref().and_then(|k| self.cache.get(k))
            {
                *slot = Some((t, levels));
            }
        }
        for (slot, k) in videos.iter_mut().zip(&video_keys) {
            if let Some(CachedFeatures::Video(v, levels)) =
                k.as_ref().and_then(|k| self.cache.get(k))
            {
                *slot = Some((v, levels));
            }
        }
        let missing_images: Vec<usize> =
            (0..images.len()).filter(|&i| images[i].is_none()).collect();
        let missing_videos: Vec<usize> =
            (0..videos.len()).filter(|&i| videos[i].is_none()).collect();
        if !missing_images.is_empty() || !missing_videos.is_empty() {
            let encoded = self.encode_some(&input.media, &missing_images, &missing_videos)?;
            for (j, &i) in missing_images.iter().enumerate() {
                let (t, levels) = with_levels(&encoded, |m| &m.images, j)?;
                if let Some(k) = image_keys[i] {
                    self.cache
                        .insert(k, CachedFeatures::Image(t.clone(), levels.clone()));
                }
                images[i] = Some((t, levels));
            }
            for (j, &i) in missing_videos.iter().enumerate() {
                let (v, levels) = with_levels(&encoded, |m| &m.videos, j)?;
                if let Some(k) = video_keys[i] {
                    self.cache
                        .insert(k, CachedFeatures::Video(v.clone(), levels.clone()));
                }
                videos[i] = Some((v, levels));
            }
        }
        // Before any answer goes out, so that a client reading /metrics after it sees this.
        self.metrics
            .cache(self.cache.hits, self.cache.misses, self.cache.bytes());
        // Grids follow from the pixels, so cached features need none of their own.
        let (image_grids, video_grids) = match &input.media {
            RequestMedia::Llava(_) => Default::default(),
            RequestMedia::Qwen(media) => media.grids(self.qwen()?.vision())?,
        };
        let (images, image_levels): (Vec<_>, Vec<_>) = images.into_iter().flatten().unzip();
        let (videos, video_levels): (Vec<_>, Vec<_>) = videos.into_iter().flatten().unzip();
        let levels = image_levels
            .iter()
            .map(Vec::len)
            .chain(video_levels.iter().map(Vec::len))
            .max()
            .unwrap_or(0);
        let deepstack = (0..levels)
            .map(|l| {
                Ok(EncodedMedia {
                    images: image_levels
                        .iter()
                        .map(|d| d.get(l).cloned())
                        .collect::<Option<_>>()
                        .ok_or_else(|| missing_level(l))?,
                    videos: video_levels
                        .iter()
                        .map(|d| d.get(l).cloned())
                        .collect::<Option<_>>()
                        .ok_or_else(|| missing_level(l))?,
                    ..Default::default()
                })
            })
            .collect::<Result<_>>()?;
        Ok(EncodedMedia {
            images,
            videos,
            image_grids,
            video_grids,
            deepstack,
        })
    }

    /// The images at `images` and videos at `videos` of a request's media encoded, in that
    /// order, by the vision model of their family.
    fn encode_some(
        &self,
        media: &RequestMedia,
        images: &[usize],
        videos: &[usize],
    ) -> Result<EncodedMedia> {
        match media {
            RequestMedia::Llava(media) => {
                let sub = PreparedMedia {
                    images: images.iter().map(|&i| media.images[i].clone()).collect(),
                    videos: videos.iter().map(|&i| media.videos[i].clone()).collect(),
                    video_mode: media.video_mode,
                };
                encode_request(self.model.generate.backend("engine serve")?, &sub)
            }
            RequestMedia::Qwen(media) => Ok(media
                .subset(images, videos)
                .encoded(self.qwen()?.vision())?),
        }
    }

    /// The Qwen-VL model that encodes Qwen-VL media.
    fn qwen(&self) -> Result<&dyn QwenBackend> {
        self.model.qwen.ok_or_else(|| {
            EngineError::Invalid("Qwen-VL media reached a server without a Qwen-VL model".into())
        })
    }
}

/// Medium `j` of `encoded` as `pick` lays them out (its images or its videos), and its
/// features at each deep-stack level.
fn with_levels<T: Clone>(
    encoded: &EncodedMedia,
    pick: fn(&EncodedMedia) -> &Vec<T>,
    j: usize,
) -> Result<(T, Vec<T>)> {
    let at = |m: &EncodedMedia| {
        pick(m)
            .get(j)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("medium {j} was not encoded")))
    };
    let levels = encoded.deepstack.iter().map(at).collect::<Result<_>>()?;
    Ok((at(encoded)?, levels))
}

/// Media of one request with and without features at a deep-stack level: they came from
/// models of different families.
fn missing_level(level: usize) -> EngineError {
    EngineError::Invalid(format!(
        "a medium without deep-stack level {level} beside media with it"
    ))
}
