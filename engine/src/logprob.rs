//! `engine logprob`: for each `{"id", "prompt", "completion", "images", "video"}` the summed
//! log-probability of the completion given the prompt and media — the primitive that judging
//! and DPO are built on. The prompt is raw text (no chat template); markers are expanded.
//!
//! The markers also say how a video is given: a text with a `<video>` marker takes the video
//! through the pooled `<video>` path (its documented meaning); a text with none takes it as
//! the UnifiedReward LLaVA scripts write it, each sampled frame filling one `<image>` marker
//! after the request's images ([`VideoMode`]).

use std::path::Path;

use serde_json::Value;
use unireward_models::formats::logprob_record::LogprobAnswer;
use unireward_models::preprocess::{MediaLoader, MediaRequest, PreparedMedia, VideoMode};
use unireward_models::tokenize::{PromptTokenizer, Tokenized, IMAGE_MARKER, VIDEO_MARKER};
use unireward_models::MediaFeatures;

use crate::backend::Backend;
use crate::batching::batches_by_budget;
use crate::decoding::Decoding;
use crate::encode_media::encode_media;
use crate::error::{EngineError, Result};
use crate::pipeline::{decoded_image_bytes, run_pipeline_with, Prepared, RunOptions, RunSummary};

pub struct LogprobRequest {
    pub prompt: String,
    pub completion: String,
    pub media: MediaRequest,
    /// Pooled when the text has a `<video>` marker, else frames.
    pub video_mode: VideoMode,
}

impl LogprobRequest {
    pub fn parse(v: &Value) -> std::result::Result<Self, String> {
        let text = |k: &str| -> std::result::Result<String, String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("missing string field {k:?}"))
        };
        let (prompt, completion) = (text("prompt")?, text("completion")?);
        let video_mode = if prompt.contains(VIDEO_MARKER) || completion.contains(VIDEO_MARKER) {
            VideoMode::Pooled
        } else {
            VideoMode::Frames
        };
        Ok(Self {
            prompt,
            completion,
            media: MediaRequest::parse(v, "images", "video")?,
            video_mode,
        })
    }
}

/// A record ready for the decoder.
struct Embedded {
    tokens: Tokenized,
    prompt_len: usize,
    features: MediaFeatures,
}

pub struct LogprobJob<'a> {
    pub backend: &'a dyn Backend,
    pub tokenizer: &'a PromptTokenizer,
    pub media: &'a MediaLoader,
    /// Padded tokens per decoder call.
    pub token_budget: usize,
}

impl LogprobJob<'_> {
    pub fn run(&self, input: &Path, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
        // Media paths are relative to the input file; each record's markers pick its video mode.
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        run_pipeline_with(
            opts,
            input,
            out,
            |v: &Value| {
                LogprobRequest::parse(v)
                    .map(|req| decoded_image_bytes(&req.media, &base))
                    .unwrap_or(0)
            },
            |v: &Value| {
                let req = LogprobRequest::parse(v)?;
                let media = self
                    .media
                    .load_as(&req.media, &base, req.video_mode)
                    .map_err(|e| e.to_string())?;
                Ok((req, media))
            },
            |batch: Vec<Prepared<LogprobRequest>>| self.score(batch),
        )
    }

    fn prepare(&self, req: &LogprobRequest, media: &PreparedMedia) -> Result<Embedded> {
        if media.video_mode == VideoMode::Frames && !media.videos.is_empty() {
            let markers = req.prompt.matches(IMAGE_MARKER).count()
                + req.completion.matches(IMAGE_MARKER).count();
            let frames: usize = media
                .videos
                .iter()
                .map(|v| v.dim(0))
                .sum::<candle_core::Result<_>>()?;
            let needed = media.images.len() + frames;
            if markers != needed {
                return Err(EngineError::Invalid(format!(
                    "the text has {markers} {IMAGE_MARKER} marker(s) and no {VIDEO_MARKER}: its \
                     {} image(s) and the video's {frames} sampled frame(s) need {needed}, one \
                     {IMAGE_MARKER} a frame after the images (or write one {VIDEO_MARKER} for the \
                     pooled video path)",
                    media.images.len()
                )));
            }
        }
        let features = encode_media(self.backend, media)?;
        let lens = |ts: &[candle_core::Tensor]| {
            ts.iter()
                .map(|t| t.dim(0))
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let (il, vl) = (lens(&features.images)?, lens(&features.videos)?);
        let full = format!("{}{}", req.prompt, req.completion);
        let tokens = self.tokenizer.encode(&full, &il, &vl)?;
        let prompt_len = self.tokenizer.encode(&req.prompt, &il, &vl)?.ids.len();
        let max = self.backend.text_config().max_position_embeddings;
        if tokens.ids.len() > max {
            return Err(EngineError::Invalid(format!(
                "prompt and completion are {} tokens, over the context length {max}",
                tokens.ids.len()
            )));
        }
        if prompt_len == 0 || prompt_len >= tokens.ids.len() {
            return Err(EngineError::Invalid(
                "the completion adds no tokens after a non-empty prompt".into(),
            ));
        }
        Ok(Embedded {
            tokens,
            prompt_len,
            features,
        })
    }

    /// Answers a window of records, one answer or error per record in order.
    fn score(&self, batch: Vec<Prepared<LogprobRequest>>) -> Vec<Result<LogprobAnswer>> {
        let mut answers: Vec<Option<Result<LogprobAnswer>>> = batch.iter().map(|_| None).collect();
        let mut ready: Vec<(usize, Embedded)> = Vec::new();
        for (i, (_, (req, media))) in batch.iter().enumerate() {
            match self.prepare(req, media) {
                Ok(e) => ready.push((i, e)),
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let lens: Vec<usize> = ready.iter().map(|(_, e)| e.tokens.ids.len()).collect();
        let per_call = self.backend.limits().batch();
        for range in batches_by_budget(&lens, self.token_budget, per_call) {
            let group = &ready[range];
            match self.decode_group(group) {
                Ok(vals) => {
                    for ((i, _), v) in group.iter().zip(vals) {
                        answers[*i] = Some(v);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (i, _) in group {
                        answers[*i] = Some(Err(EngineError::Invalid(msg.clone())));
                    }
                }
            }
        }
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(EngineError::Invalid("not answered".into()))))
            .collect()
    }

    fn decode_group(&self, group: &[(usize, Embedded)]) -> Result<Vec<Result<LogprobAnswer>>> {
        let mut seqs = Vec::with_capacity(group.len());
        let mut positions = Vec::with_capacity(group.len());
        for (_, e) in group {
            let text = self.backend.embed_tokens(&e.tokens.ids)?;
            seqs.push(unireward_models::pack::merge_media(
                &text,
                &e.tokens,
                &e.features,
            )?);
            positions.push((e.prompt_len - 1..e.tokens.ids.len() - 1).collect::<Vec<_>>());
        }
        let rows = self.backend.log_probs_at(&seqs, &positions)?;
        group
            .iter()
            .zip(rows)
            .map(|((_, e), lp)| {
                let targets = &e.tokens.ids[e.prompt_len..];
                let lp = lp.to_vec2::<f32>()?;
                let total: f64 = targets
                    .iter()
                    .zip(&lp)
                    .map(|(&t, row)| row[t as usize] as f64)
                    .sum();
                if !total.is_finite() {
                    return Ok(Err(EngineError::Invalid(format!(
                        "the model's log-probability is {total}: its outputs are not finite \
                         (broken weights, or an overflow at this precision)"
                    ))));
                }
                Ok(Ok(LogprobAnswer {
                    logprob: total,
                    prompt_tokens: e.prompt_len,
                    completion_tokens: targets.len(),
                }))
            })
            .collect()
    }
}
