//! `engine score --batch`: judges JSONL score requests with the pipeline of `pipeline.rs`
//! (media prepared on worker threads, answers in input order, per-record errors, resume).

use std::path::Path;

use serde_json::Value;
use unireward_models::formats::score_record::ScoreAnswer;
use unireward_models::preprocess::{MediaLoader, PreparedMedia};
use unireward_models::MediaFeatures;

use crate::encode_media::encode_request;
use crate::error::{EngineError, Result};
use crate::judge::{Judge, JudgeItem, ScoreRequest};
use crate::pipeline::{run_media_pipeline_with, Prepared, RunOptions, RunSummary};

pub struct ScoreJob<'a> {
    pub judge: &'a Judge<'a>,
    pub media: &'a MediaLoader,
    /// Padded prompt tokens per batched prompt pass (fast mode).
    pub token_budget: usize,
}

impl ScoreJob<'_> {
    pub fn run(&self, input: &Path, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
        run_media_pipeline_with(
            opts,
            input,
            out,
            self.media,
            |v: &Value| {
                let req = ScoreRequest::parse(v)?;
                let media = req.media.clone();
                Ok((req, media))
            },
            |batch| self.answer_batch(batch),
        )
    }

    /// Answers a window of records: media encoded per record, prompt passes batched.
    fn answer_batch(&self, batch: Vec<Prepared<ScoreRequest>>) -> Vec<Result<ScoreAnswer>> {
        let prepared = batch
            .iter()
            .map(|(_, (req, media))| (req, self.inputs(req, media)))
            .collect();
        judge_requests(self.judge, self.token_budget, prepared)
    }

    /// The prompt text and encoded media of one request: a video shows as its frames'
    /// `<image>` markers or as one `<video>` marker, as the loader's video mode prepared it.
    fn inputs(&self, req: &ScoreRequest, media: &PreparedMedia) -> Result<(String, MediaFeatures)> {
        let (features, marks) =
            encode_request(self.judge.backend("engine score")?, media)?.all()?;
        let text = self
            .judge
            .prompt_text(req.task, req.mode, &req.prompt, &req.answers, marks)?;
        Ok((text, features))
    }
}

/// Judges a window of score requests, each with its prompt text and encoded media (or the
/// error that kept it from them), prompt passes batched by `token_budget`; answers in order.
pub(crate) fn judge_requests(
    judge: &Judge,
    token_budget: usize,
    prepared: Vec<(&ScoreRequest, Result<(String, MediaFeatures)>)>,
) -> Vec<Result<ScoreAnswer>> {
    let mut answers: Vec<Option<Result<ScoreAnswer>>> = prepared.iter().map(|_| None).collect();
    let mut inputs = Vec::new();
    for (i, (req, input)) in prepared.into_iter().enumerate() {
        match input {
            Ok((text, features)) => inputs.push((i, req, text, features)),
            Err(e) => answers[i] = Some(Err(e)),
        }
    }
    let items: Vec<JudgeItem> = inputs
        .iter()
        .map(|(_, req, text, features)| JudgeItem {
            task: req.task,
            mode: req.mode,
            prompt_text: text.clone(),
            media: features,
        })
        .collect();
    let outcomes = judge.judge_batch(&items, token_budget);
    for ((i, _, _, _), outcome) in inputs.iter().zip(outcomes) {
        answers[*i] = Some(outcome.map(|o| o.answer()));
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(EngineError::Invalid("not answered".into()))))
        .collect()
}
