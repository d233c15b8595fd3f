//! `engine pairs`: reads prompts with their candidates, builds each prompt's preference pair
//! with the model as judge, and writes lines that `trainer dpo` and (with `--format trl`) TRL
//! read.
//!
//! Each candidate image or video is encoded once per prompt and its features reused by every
//! pair and point prompt it appears in. With the default recipe the prompts, resizing and score
//! ranges are those of the reference's DPO-data scripts (`unireward_models::judge::sift_templates`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward_models::formats::pair_record::{DroppedPair, PairRecord, PairsAnswer, Paths, Turns};
use unireward_models::judge::sift_templates::{sift_prompt, sift_resize, AnswerForm};
use unireward_models::judge::{Family, Media, Mode, PromptTemplate, Task};
use unireward_models::pack::EncodedMedia;
use unireward_models::preprocess::{MediaLoader, MediaRequest, PreparedMedia, VideoSource};
use unireward_models::MediaFeatures;

use super::{
    construct, ranking::round_robin, Construction, InvalidJudgement, Judgement, PairFormat,
    PairJudge, PairOptions, Ranking, Recipe,
};
use crate::encode_media::encode_request;
use crate::error::{EngineError, Result};
use crate::judge::request::check_question_media;
use crate::judge::{Judge, Outcome, PromptStyle};
use crate::pipeline::{answer_each, run_pipeline, RunSummary};

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
        check_question_media(task, &media)?;
        Ok(Self {
            task,
            prompt,
            candidates,
            media,
        })
    }

    /// The media to load: the candidates for generation tasks, else the question's.
    pub fn media_to_load(&self) -> MediaRequest {
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
        if self.options.recipe == Recipe::Sift && self.judge.style.family != Family::Llava {
            return Err(EngineError::Invalid(format!(
                "the DPO-data scripts (--recipe sift) judge with the LLaVA family's prompts; \
                 with --template-family {} use --recipe inference",
                self.judge.style.family
            )));
        }
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        run_pipeline(
            input,
            out,
            resume,
            |v: &Value| {
                let req = PairsRequest::parse(v)?;
                let size = match self.options.recipe {
                    Recipe::Sift => sift_resize(req.task),
                    Recipe::Inference => None,
                };
                let media = self
                    .media
                    .load_resized(&req.media_to_load(), &base, size)
                    .map_err(|e| e.to_string())?;
                Ok((req, media))
            },
            |batch| answer_each(batch, |req, media| self.pair(req, media)),
        )
    }

    /// The preference pair of one prompt, or why it was dropped.
    pub fn pair(&self, req: &PairsRequest, media: &PreparedMedia) -> Result<PairsAnswer> {
        let features = encode_request(self.judge.backend, media)?;
        let built = self.construct_encoded(req, features)?;
        let unranked = built.ranking.unranked.clone();
        let pair = match built.outcome() {
            Ok(p) => p,
            Err(dropped) => {
                return Ok(PairsAnswer::Dropped(DroppedPair {
                    prompt: req.prompt.clone(),
                    dropped: dropped.to_string(),
                    unranked,
                }))
            }
        };
        let (chosen, rejected) = (&req.candidates[pair.chosen], &req.candidates[pair.rejected]);
        // Only understanding prompts carry media (parsing refuses them on generation prompts).
        let (images, videos) = (req.media.images.len(), req.media.videos.len());
        let (prompt, chosen, rejected) = match (self.options.format, req.task.is_generation()) {
            (PairFormat::Trl, false) => (
                Turns::user(&req.prompt, images, videos),
                Turns::assistant(chosen),
                Turns::assistant(rejected),
            ),
            _ => (
                Turns::Text(req.prompt.clone()),
                Turns::Text(chosen.clone()),
                Turns::Text(rejected.clone()),
            ),
        };
        Ok(PairsAnswer::Pair(PairRecord {
            prompt,
            chosen,
            rejected,
            chosen_score: Some(pair.chosen_score),
            rejected_score: Some(pair.rejected_score),
            images: (images > 0).then(|| {
                Paths::Many(
                    req.media
                        .images
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect(),
                )
            }),
            video: req.media.videos.first().map(video_path),
            unranked,
        }))
    }
}

impl PairsJob<'_> {
    /// Ranking and sifting of one prompt whose media (`media_to_load`) are already encoded.
    pub fn construct_encoded(
        &self,
        req: &PairsRequest,
        features: EncodedMedia,
    ) -> Result<Construction> {
        let mut judge = self.model_judge(req, features);
        construct(&mut judge, req.candidates.len(), self.options)
    }

    /// Every pair of one prompt's candidates judged, with the Bradley-Terry fit (what
    /// `--ranking round-robin` ranks by), its media already encoded.
    pub fn round_robin_encoded(
        &self,
        req: &PairsRequest,
        features: EncodedMedia,
    ) -> Result<Ranking> {
        let mut judge = self.model_judge(req, features);
        round_robin(&mut judge, req.candidates.len(), self.options.swap)
    }

    fn model_judge<'r>(&'r self, req: &'r PairsRequest, features: EncodedMedia) -> ModelJudge<'r> {
        ModelJudge {
            judge: self.judge,
            req,
            features,
            recipe: self.options.recipe,
        }
    }
}

/// A video as the request named it: a path, or its frames' paths.
fn video_path(v: &VideoSource) -> Value {
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    match v {
        VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => path(p),
        VideoSource::FrameFiles(fs) => Value::Array(fs.iter().map(|p| path(p)).collect()),
    }
}

/// The prompt `recipe` judges `task` in `mode` with, and the answer it asks for; a
/// `--template` replaces the prompt's text only.
pub fn recipe_prompt(
    recipe: Recipe,
    style: &PromptStyle,
    task: Task,
    mode: Mode,
) -> (PromptTemplate, AnswerForm) {
    let (template, form) = match recipe {
        Recipe::Sift => {
            let p = sift_prompt(task, mode);
            (p.template, p.form)
        }
        Recipe::Inference => (
            PromptTemplate::builtin(style.family, task, mode),
            AnswerForm::inference(task, mode),
        ),
    };
    (style.user_template.clone().unwrap_or(template), form)
}

/// The model as pair construction's judge, over one prompt's encoded media.
struct ModelJudge<'a> {
    judge: &'a Judge<'a>,
    req: &'a PairsRequest,
    /// Candidates' features (generation) or the question's (understanding).
    features: EncodedMedia,
    recipe: Recipe,
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
        let task = self.req.task;
        let (template, form) = recipe_prompt(self.recipe, &self.judge.style, task, mode);
        let text = self.judge.prompt_text_with(
            &template,
            &form,
            task,
            mode,
            &self.req.prompt,
            &answers,
            marks,
        )?;
        self.judge.judge_with(&form, task, mode, &text, &features)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use unireward_models::judge::ScoreRange;

    fn user_turn(recipe: Recipe, task: Task, mode: Mode, media: Media) -> (String, AnswerForm) {
        let (template, form) = recipe_prompt(recipe, &PromptStyle::default(), task, mode);
        let answers: &[&str] = match (task.is_generation(), mode) {
            (true, _) => &[],
            (false, Mode::Pair) => &["a", "b"],
            (false, Mode::Point) => &["a"],
        };
        (template.render("q", answers, media).unwrap(), form)
    }

    #[test]
    fn sift_is_the_default_recipe_and_asks_as_the_scripts() {
        assert_eq!(PairOptions::default().recipe, Recipe::Sift);
        let (sift, form) = user_turn(
            Recipe::Sift,
            Task::ImageGeneration,
            Mode::Point,
            Media::Images(1),
        );
        assert!(sift.contains("assign a score from 1 to 10 after 'Final Score:'"));
        assert_eq!(form.score_range, ScoreRange { min: 1, max: 10 });
        let (inference, form) = user_turn(
            Recipe::Inference,
            Task::ImageGeneration,
            Mode::Point,
            Media::Images(1),
        );
        assert!(inference.contains("assign a score from 1 to 5 after 'Final Score:'"));
        assert_eq!(form.score_range, ScoreRange { min: 1, max: 5 });

        let (sift, form) = user_turn(
            Recipe::Sift,
            Task::ImageUnderstanding,
            Mode::Pair,
            Media::Images(1),
        );
        assert!(sift.starts_with("<image>\nYou are a highly capable multimodal AI assistant"));
        assert_eq!(form.answer_prefix, "Overall Judgment:");
    }

    #[test]
    fn a_template_file_replaces_the_text_but_not_the_answer_form() {
        let style = PromptStyle {
            user_template: Some(PromptTemplate::parse("mine", "Rate {caption}.").unwrap()),
            ..PromptStyle::default()
        };
        let (template, form) =
            recipe_prompt(Recipe::Sift, &style, Task::ImageGeneration, Mode::Point);
        assert_eq!(template.source(), "mine");
        assert_eq!(form.score_range, ScoreRange { min: 1, max: 10 });
    }

    #[test]
    fn understanding_pairs_need_the_question_media_as_score_requests_do() {
        let blind = json!({"task": "image_understanding", "prompt": "What is it?",
                           "candidates": ["a", "b"]});
        let pairs_err = PairsRequest::parse(&blind).err().unwrap();
        let score = json!({"task": "image_understanding", "mode": "pair", "prompt": "What is it?",
                           "answers": ["a", "b"]});
        let score_err = crate::judge::ScoreRequest::parse(&score).unwrap_err();
        assert_eq!(pairs_err, score_err);
        let video_blind = json!({"task": "video_understanding", "prompt": "What happens?",
                                 "images": ["a.png"], "candidates": ["a", "b"]});
        assert!(PairsRequest::parse(&video_blind)
            .err()
            .unwrap()
            .contains("asks about one video"));
        let seen = json!({"task": "image_understanding", "prompt": "What is it?",
                          "images": ["a.png"], "candidates": ["a", "b"]});
        assert!(PairsRequest::parse(&seen).is_ok());
    }
}
