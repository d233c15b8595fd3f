//! `engine pairs`: reads prompts with their candidates, builds each prompt's preference pair
//! with the model as judge, and writes lines that `trainer dpo` and TRL read.
//!
//! Each candidate image or video is encoded once per prompt and its features reused by every
//! pair and point prompt it appears in.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use unireward_models::judge::{Media, Mode, Task};
use unireward_models::preprocess::VideoSource;
use unireward_models::MediaFeatures;

use super::{construct, InvalidJudgement, Judgement, PairJudge, PairOptions};
use crate::error::{EngineError, Result};
use crate::judge::{Judge, Outcome};
use crate::media::{encode_request, EncodedMedia, MediaLoader, MediaRequest, PreparedMedia};
use crate::pipeline::{answer_each, run_media_pipeline, RunSummary};

impl From<InvalidJudgement> for EngineError {
    fn from(e: InvalidJudgement) -> Self {
        EngineError::Invalid(e.0)
    }
}

/// `{"id", "task", "prompt", "candidates", "images" / "videos"}`.
pub struct PairsRequest {
    pub task: Task,
    pub prompt: String,
    pub candidates: Vec<String>,
    /// The question's media (understanding tasks).
    pub media: MediaRequest,
}

impl PairsRequest {
    pub fn parse(v: &Value) -> std::result::Result<Self, String> {
        let task: Task = v
            .get("task")
            .and_then(Value::as_str)
            .ok_or("missing string field \"task\"")?
            .parse()
            .map_err(|e: unireward_models::Error| e.to_string())?;
        let prompt = v
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or("missing string field \"prompt\"")?
            .to_string();
        let candidates: Vec<String> = v
            .get("candidates")
            .and_then(Value::as_array)
            .ok_or("missing list field \"candidates\"")?
            .iter()
            .map(|c| {
                c.as_str()
                    .map(str::to_string)
                    .ok_or("candidates must be strings")
            })
            .collect::<std::result::Result<_, _>>()?;
        if candidates.len() < 2 {
            return Err(format!(
                "{} candidate(s): a pair needs at least 2",
                candidates.len()
            ));
        }
        let media = MediaRequest::parse(v, "images", "videos")?;
        if task.is_generation() && !(media.images.is_empty() && media.videos.is_empty()) {
            return Err(format!(
                "{task} judges its candidates; the prompt carries no media"
            ));
        }
        Ok(Self {
            task,
            prompt,
            candidates,
            media,
        })
    }

    /// The media to load: the candidates for generation tasks, else the question's.
    fn media_to_load(&self) -> MediaRequest {
        match self.task {
            Task::ImageGeneration => MediaRequest {
                images: self.candidates.iter().map(PathBuf::from).collect(),
                videos: Vec::new(),
            },
            Task::VideoGeneration => MediaRequest {
                images: Vec::new(),
                videos: self.candidates.iter().map(VideoSource::from_path).collect(),
            },
            _ => self.media.clone(),
        }
    }
}

pub struct PairsJob<'a> {
    pub judge: &'a Judge<'a>,
    pub media: &'a MediaLoader,
    pub options: PairOptions,
}

impl PairsJob<'_> {
    pub fn run(&self, input: &Path, out: &Path, resume: bool) -> Result<RunSummary> {
        run_media_pipeline(
            input,
            out,
            resume,
            self.media,
            |v: &Value| {
                let req = PairsRequest::parse(v)?;
                let media = req.media_to_load();
                Ok((req, media))
            },
            |batch| answer_each(batch, |req, media| self.pair(req, media)),
        )
    }

    /// The preference pair of one prompt, or why it was dropped.
    pub fn pair(&self, req: &PairsRequest, media: &PreparedMedia) -> Result<Value> {
        let features = encode_request(self.judge.backend, media)?;
        let mut judge = ModelJudge {
            judge: self.judge,
            req,
            features,
        };
        let built = construct(&mut judge, req.candidates.len(), self.options)?;
        let pair = match built.outcome() {
            Ok(p) => p,
            Err(dropped) => {
                return Ok(json!({"prompt": req.prompt, "dropped": dropped.to_string()}))
            }
        };
        let mut out = json!({
            "prompt": req.prompt,
            "chosen": req.candidates[pair.chosen],
            "rejected": req.candidates[pair.rejected],
            "chosen_score": pair.chosen_score,
            "rejected_score": pair.rejected_score,
        });
        if !req.task.is_generation() {
            if !req.media.images.is_empty() {
                out["images"] = json!(req.media.images);
            }
            if let Some(v) = req.media.videos.first() {
                out["video"] = json!(video_path(v));
            }
        }
        Ok(out)
    }
}

fn video_path(v: &VideoSource) -> Value {
    match v {
        VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => json!(p),
        VideoSource::FrameFiles(fs) => json!(fs),
    }
}

/// The model as pair construction's judge, over one prompt's encoded media.
struct ModelJudge<'a> {
    judge: &'a Judge<'a>,
    req: &'a PairsRequest,
    /// Candidates' features (generation) or the question's (understanding).
    features: EncodedMedia,
}

impl ModelJudge<'_> {
    /// Media and answers of a prompt showing `shown` candidates in that order; a video shows
    /// as the video mode makes it (its frames' `<image>` markers, or one `<video>`).
    fn inputs(&self, shown: &[usize]) -> Result<(MediaFeatures, Media, Vec<String>)> {
        match self.req.task {
            Task::ImageGeneration => {
                let (features, marks) = self.features.select(shown, &[])?;
                Ok((features, marks, Vec::new()))
            }
            Task::VideoGeneration => {
                let (features, marks) = self.features.select(&[], shown)?;
                Ok((features, marks, Vec::new()))
            }
            _ => {
                let (features, marks) = self.features.all()?;
                let answers = shown
                    .iter()
                    .map(|&i| self.req.candidates[i].clone())
                    .collect();
                Ok((features, marks, answers))
            }
        }
    }

    fn outcome(&self, mode: Mode, shown: &[usize]) -> Result<Outcome> {
        let (features, marks, answers) = self.inputs(shown)?;
        let text =
            self.judge
                .prompt_text(self.req.task, mode, &self.req.prompt, &answers, marks)?;
        self.judge.judge(self.req.task, mode, &text, &features)
    }
}

impl PairJudge for ModelJudge<'_> {
    type Error = EngineError;

    fn compare(&mut self, first: usize, second: usize) -> Result<Judgement> {
        match self.outcome(Mode::Pair, &[first, second])? {
            Outcome::Pair { probs, .. } => Ok(Judgement::Probs(probs)),
            Outcome::Point { .. } => Err(EngineError::Invalid("a pair prompt gave a score".into())),
        }
    }

    fn score(&mut self, candidate: usize) -> Result<f64> {
        match self.outcome(Mode::Point, &[candidate])? {
            Outcome::Point { score, .. } => Ok(score.expected),
            Outcome::Pair { .. } => {
                Err(EngineError::Invalid("a point prompt gave a verdict".into()))
            }
        }
    }
}
