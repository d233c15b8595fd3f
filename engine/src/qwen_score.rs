//! `engine score --batch` on a Qwen-VL checkpoint (Qwen2.5-VL, Qwen3-VL): the same records in and out as for
//! LLaVA ([`crate::score`]), the same judge (templates, fast verdicts, generation parsed as the
//! scripts do) over a [`QwenBackend`]. The media take the `inference_qwen` scripts' path
//! ([`QwenMedia`]), each one encoded by the model's vision transformer with its grid kept for
//! the prompt's M-RoPE positions.

use std::path::Path;

use serde_json::Value;
use unireward_models::formats::score_record::ScoreAnswer;
use unireward_models::preprocess::QwenVlProcessor;
use unireward_models::MediaFeatures;

use crate::backend::QwenBackend;
use crate::error::Result;
use crate::judge::{Judge, ScoreRequest};
use crate::pipeline::{decoded_image_bytes, run_pipeline_with, RunOptions, RunSummary};
use crate::score::judge_requests;
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};

pub struct QwenScoreJob<'a> {
    pub judge: &'a Judge<'a>,
    pub backend: &'a dyn QwenBackend,
    pub processor: &'a QwenVlProcessor,
    /// Padded prompt tokens per batched prompt pass (fast mode).
    pub token_budget: usize,
    /// How videos reach the model (the template family's scripts' way).
    pub videos: QwenVideos,
}

/// A record read and its media preprocessed.
struct Request {
    req: ScoreRequest,
    media: QwenMedia,
}

impl QwenScoreJob<'_> {
    pub fn run(&self, input: &Path, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        run_pipeline_with(
            opts,
            input,
            out,
            |v: &Value| {
                ScoreRequest::parse(v)
                    .map(|r| decoded_image_bytes(&r.media, &base))
                    .unwrap_or(0)
            },
            |v: &Value| {
                let req = ScoreRequest::parse(v)?;
                let media = QwenMedia::read(self.processor, &req.media, &base, self.videos)
                    .map_err(|e| e.to_string())?;
                Ok(Request { req, media })
            },
            |batch: Vec<(Value, Request)>| self.answer_batch(&batch),
        )
    }

    /// Answers a window of records: media encoded per record, prompt passes batched.
    fn answer_batch(&self, batch: &[(Value, Request)]) -> Vec<Result<ScoreAnswer>> {
        let prepared = batch
            .iter()
            .map(|(_, r)| (&r.req, self.inputs(r)))
            .collect();
        judge_requests(self.judge, self.token_budget, prepared)
    }

    /// The prompt text and encoded media of one request, in one vision pass.
    fn inputs(&self, r: &Request) -> Result<(String, MediaFeatures)> {
        let (features, marks) = r.media.encoded(self.backend.vision())?.all()?;
        let req = &r.req;
        let text = self
            .judge
            .prompt_text(req.task, req.mode, &req.prompt, &req.answers, marks)?;
        Ok((text, features))
    }
}
