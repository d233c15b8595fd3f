//! `engine pairs`: reads prompts with their candidates, builds each prompt's preference pair
//! with the model as judge, and writes lines that `trainer dpo` and (with `--format trl`) TRL
//! read.
//!
//! Each candidate image or video is encoded once per prompt and its features reused by every
//! pair and point prompt it appears in. The judgements of the prompts the pipeline hands over
//! together run as few, full prompt passes ([`PairsJob::pairs_together`]): a prompt's
//! comparisons and point scores are known before they are judged (all but the point scores of
//! a round robin over an odd count), and prompts that begin alike run their beginning once. With the default recipe the prompts, resizing and score
//! ranges are those of the reference's DPO-data scripts (`unireward_models::judge::sift_templates`).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;
use unireward_models::formats::pair_record::{DroppedPair, PairRecord, PairsAnswer, Paths, Turns};
use unireward_models::formats::pairs_request::PairsRequestRecord;
use unireward_models::judge::sift_templates::{sift_prompt, sift_resize, AnswerForm};
use unireward_models::judge::{Family, Media, Mode, PromptTemplate, Task};
use unireward_models::pack::EncodedMedia;
use unireward_models::preprocess::{
    MediaLoader, MediaRequest, PreparedMedia, QwenVlProcessor, RawMedia, VideoSource,
};
use unireward_models::MediaFeatures;

use super::ranking::{self, Ranking};
use super::{
    construct, Construction, InvalidJudgement, Judgement, PairFormat, PairJudge, PairOptions,
    Recipe,
};
use super::{passes, sifting};
use crate::backend::QwenBackend;
use crate::encode_media::encode_request;
use crate::error::{EngineError, Result};
use crate::judge::request::check_question_media;
use crate::judge::{Judge, JudgeItem, Outcome, PromptStyle};
use crate::pipeline::{answer_each, run_pipeline, Prepared, RunSummary};
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};

impl From<InvalidJudgement> for EngineError {
    fn from(e: InvalidJudgement) -> Self {
        EngineError::Invalid(e.0)
    }
}

/// One prompt to build a pair for: a [`PairsRequestRecord`] (`{"id", "task", "prompt",
/// "candidates", "images" / "videos"}`) that passed the engine's checks.
pub struct PairsRequest {
    pub task: Task,
    pub prompt: String,
    pub candidates: Vec<String>,
    /// The question's media (understanding tasks).
    pub media: MediaRequest,
}

impl PairsRequest {
    /// Reads one input line (or `/v1/rank` body) through [`PairsRequestRecord`], then
    /// [`Self::from_record`]. The error names the field at fault.
    pub fn parse(v: &Value) -> std::result::Result<Self, String> {
        let record = PairsRequestRecord::deserialize(v).map_err(|e| e.to_string())?;
        Self::from_record(record)
    }

    /// The engine's checks on a record: at least two candidates; the question's media readable
    /// (`images` a path or a list of paths, `videos` a list of videos), none on a generation
    /// prompt (its candidates are the media), and those an understanding task asks about.
    pub fn from_record(record: PairsRequestRecord) -> std::result::Result<Self, String> {
        let PairsRequestRecord {
            task,
            prompt,
            candidates,
            images,
            videos,
            ..
        } = record;
        if candidates.len() < 2 {
            return Err(format!(
                "{} candidate(s): a pair needs at least 2",
                candidates.len()
            ));
        }
        let raw = |value: Option<Value>, key: &str| {
            value
                .map(RawMedia::deserialize)
                .transpose()
                .map_err(|e| format!("{key:?}: {e}"))
        };
        let media = MediaRequest::from_raw(
            raw(images, "images")?,
            "images",
            raw(videos, "videos")?,
            "videos",
        )?;
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

/// Padded tokens per batched prompt pass when the caller names none (`engine`'s
/// `--token-budget` default).
pub const DEFAULT_TOKEN_BUDGET: usize = 4096;

/// How a job's judgements reach the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// Each judgement its own prompt pass, one prompt at a time.
    OneByOne,
    /// The judgements of a stage (every comparison, then every point score) of all the prompts
    /// the pipeline hands over together, in prompt passes of at most `token_budget` padded
    /// tokens.
    Batched { token_budget: usize },
}

pub struct PairsJob<'a> {
    pub judge: &'a Judge<'a>,
    pub media: PairsMedia<'a>,
    pub options: PairOptions,
}

/// Where a pairs job's media are prepared and encoded.
#[derive(Clone, Copy)]
pub enum PairsMedia<'a> {
    /// LLaVA-OneVision: the loader's tiles, encoded by the judge's backend.
    Llava(&'a MediaLoader),
    /// Qwen-VL (Qwen2.5-VL, Qwen3-VL): its processor's patches, encoded by its vision
    /// transformer.
    Qwen {
        backend: &'a dyn QwenBackend,
        processor: &'a QwenVlProcessor,
        videos: QwenVideos,
    },
}

impl PairsJob<'_> {
    /// [`Self::run_grouped`] with batched prompt passes of [`DEFAULT_TOKEN_BUDGET`] tokens.
    pub fn run(&self, input: &Path, out: &Path, resume: bool) -> Result<RunSummary> {
        let grouping = Grouping::Batched {
            token_budget: DEFAULT_TOKEN_BUDGET,
        };
        self.run_grouped(input, out, resume, grouping)
    }

    pub fn run_grouped(
        &self,
        input: &Path,
        out: &Path,
        resume: bool,
        grouping: Grouping,
    ) -> Result<RunSummary> {
        if self.options.recipe == Recipe::Sift
            && !matches!(self.judge.style.family, Family::Llava | Family::LlavaAcs)
        {
            return Err(EngineError::Invalid(format!(
                "the DPO-data scripts (--recipe sift) judge with the LLaVA family's prompts; \
                 with --template-family {} use --recipe inference",
                self.judge.style.family
            )));
        }
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        let loader = match self.media {
            PairsMedia::Llava(loader) => loader,
            PairsMedia::Qwen {
                backend,
                processor,
                videos,
            } => return self.run_qwen(input, out, resume, backend, processor, videos),
        };
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
                let media = loader
                    .load_resized(&req.media_to_load(), &base, size)
                    .map_err(|e| e.to_string())?;
                Ok((req, media))
            },
            |batch| match grouping {
                Grouping::OneByOne => answer_each(batch, |req, media| self.pair(req, media)),
                Grouping::Batched { token_budget } => self.pairs_together(batch, token_budget),
            },
        )
    }

    /// [`Self::run_grouped`] with a Qwen2.5-VL judge: each judgement its own prompt pass, at
    /// its M-RoPE positions (the shared-prefix batching of [`Self::pairs_together`] passes
    /// prompts without them).
    fn run_qwen(
        &self,
        input: &Path,
        out: &Path,
        resume: bool,
        backend: &dyn QwenBackend,
        processor: &QwenVlProcessor,
        videos: QwenVideos,
    ) -> Result<RunSummary> {
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        run_pipeline(
            input,
            out,
            resume,
            |v: &Value| {
                let req = PairsRequest::parse(v)?;
                let media = QwenMedia::read(processor, &req.media_to_load(), &base, videos)
                    .map_err(|e| e.to_string())?;
                Ok((req, media))
            },
            |batch: Vec<(Value, (PairsRequest, QwenMedia))>| {
                batch
                    .into_iter()
                    .map(|(_, (req, media))| {
                        let features = media.encoded(backend.vision())?;
                        let built = self.construct_encoded(&req, features)?;
                        self.answer(&req, &built)
                    })
                    .collect()
            },
        )
    }

    /// The answers of several prompts, their judgements together: every comparison of every
    /// prompt and the point scores known to be needed before ranking
    /// ([`sifting::known_before_ranking`]), then the point scores that ranking decides. So the
    /// prompt passes fill the token budget across prompts, and a pair prompt and the point
    /// prompt of the candidate it shows first, which begin alike, are judged side by side
    /// (their shared beginning runs once). A prompt that fails fails alone (unless its
    /// judgements shared a failing decoder call with another's).
    pub fn pairs_together(
        &self,
        batch: Vec<Prepared<PairsRequest>>,
        token_budget: usize,
    ) -> Vec<Result<PairsAnswer>> {
        let options = self.options;
        let mut failed: Vec<Option<EngineError>> = batch.iter().map(|_| None).collect();
        let mut judges: Vec<Option<ModelJudge>> = Vec::with_capacity(batch.len());
        for ((_, (req, media)), failure) in batch.iter().zip(&mut failed) {
            match self
                .judge
                .backend("engine pairs")
                .and_then(|b| encode_request(b, media))
            {
                Ok(features) => judges.push(Some(ModelJudge {
                    judge: self.judge,
                    req,
                    features,
                    recipe: options.recipe,
                })),
                Err(e) => {
                    judges.push(None);
                    *failure = Some(e);
                }
            }
        }
        let n = |p: usize| batch[p].1 .0.candidates.len();

        // Stage 1: the comparisons, with the point scores already known to be needed.
        let planned: Vec<Vec<(usize, usize)>> = (0..batch.len())
            .map(|p| ranking::planned(options.ranking, n(p), options.swap))
            .collect();
        let early: Vec<Option<Vec<usize>>> = (0..batch.len())
            .map(|p| sifting::known_before_ranking(options.ranking, n(p)))
            .collect();
        let asked: Vec<Vec<Shown>> = planned
            .iter()
            .zip(&early)
            .map(|(pairs, points)| side_by_side(pairs, points.as_deref().unwrap_or(&[])))
            .collect();
        let judged = judge_together(self.judge, &judges, &asked, token_budget);
        let mut rankings: Vec<Option<Ranking>> = Vec::with_capacity(batch.len());
        let mut early_scores: Vec<Vec<f64>> = Vec::with_capacity(batch.len());
        for (p, outcomes) in judged.into_iter().enumerate() {
            let stage = outcomes.and_then(|outcomes| {
                let outcome_of = |want: Shown| {
                    asked[p]
                        .iter()
                        .position(|&s| s == want)
                        .map(|at| outcomes[at].clone())
                        .ok_or_else(|| EngineError::Invalid(format!("{want:?} was not judged")))
                };
                let judgements = planned[p]
                    .iter()
                    .map(|&(i, k)| pair_judgement(outcome_of(Shown::Pair(i, k))?))
                    .collect::<Result<Vec<_>>>()?;
                let scores = early[p]
                    .iter()
                    .flatten()
                    .map(|&c| point_score(outcome_of(Shown::Point(c))?))
                    .collect::<Result<Vec<_>>>()?;
                let ranking =
                    ranking::from_judgements(options.ranking, n(p), options.swap, &judgements)?;
                Ok((ranking, scores))
            });
            match keep(&mut judges[p], &mut failed[p], stage) {
                Some((ranking, scores)) => {
                    rankings.push(Some(ranking));
                    early_scores.push(scores);
                }
                None => {
                    rankings.push(None);
                    early_scores.push(Vec::new());
                }
            }
        }

        // Stage 2: the point scores that ranking decided.
        let wanted: Vec<Vec<usize>> = rankings
            .iter()
            .zip(&early)
            .map(|(r, early)| match (r, early) {
                (Some(r), None) => sifting::to_score(&r.chosen, &r.rejected),
                _ => Vec::new(),
            })
            .collect();
        let asked: Vec<Vec<Shown>> = wanted
            .iter()
            .map(|cs| cs.iter().map(|&c| Shown::Point(c)).collect())
            .collect();
        let judged = judge_together(self.judge, &judges, &asked, token_budget);
        let mut answers = Vec::with_capacity(batch.len());
        for (p, outcomes) in judged.into_iter().enumerate() {
            if let Some(e) = failed[p].take() {
                answers.push(Err(e));
                continue;
            }
            let req = &batch[p].1 .0;
            let answer = rankings[p]
                .take()
                .ok_or_else(|| EngineError::Invalid("not ranked".into()))
                .and_then(|ranking| {
                    let (scored, scores) = match &early[p] {
                        Some(early) => (early.clone(), std::mem::take(&mut early_scores[p])),
                        None => {
                            let scores = outcomes?
                                .into_iter()
                                .map(point_score)
                                .collect::<Result<Vec<_>>>()?;
                            (wanted[p].clone(), scores)
                        }
                    };
                    let sifting =
                        sifting::from_scores(&ranking.chosen, &ranking.rejected, &scored, &scores)?;
                    self.answer(req, &Construction { ranking, sifting })
                });
            answers.push(answer);
        }
        answers
    }

    /// The preference pair of one prompt, or why it was dropped.
    pub fn pair(&self, req: &PairsRequest, media: &PreparedMedia) -> Result<PairsAnswer> {
        let features = encode_request(self.judge.backend("engine pairs")?, media)?;
        let built = self.construct_encoded(req, features)?;
        self.answer(req, &built)
    }

    /// The record of one prompt's construction.
    fn answer(&self, req: &PairsRequest, built: &Construction) -> Result<PairsAnswer> {
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
        ranking::round_robin(&mut judge, req.candidates.len(), self.options.swap)
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
/// `--template` replaces the prompt's text only. An error where the family has no prompt for
/// `task` in `mode` (the Think families judge pairs only).
pub fn recipe_prompt(
    recipe: Recipe,
    style: &PromptStyle,
    task: Task,
    mode: Mode,
) -> Result<(PromptTemplate, AnswerForm)> {
    let (template, form) = match recipe {
        Recipe::Sift => {
            let p = sift_prompt(task, mode);
            (p.template, p.form)
        }
        Recipe::Inference => (
            PromptTemplate::builtin(style.family, task, mode)?,
            AnswerForm::of(style.family, task, mode)?,
        ),
    };
    Ok((style.user_template.clone().unwrap_or(template), form))
}

/// The value of a prompt's stage, or its failure recorded (and the prompt left out of later
/// stages).
fn keep<T>(
    judge: &mut Option<ModelJudge>,
    failed: &mut Option<EngineError>,
    value: Result<T>,
) -> Option<T> {
    match value {
        Ok(v) => Some(v),
        Err(e) => {
            if failed.is_none() {
                *failed = Some(e);
            }
            *judge = None;
            None
        }
    }
}

/// What one judgement shows: two candidates in this order, or one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shown {
    Pair(usize, usize),
    Point(usize),
}

impl Shown {
    fn shown_first(self) -> usize {
        match self {
            Shown::Pair(first, _) => first,
            Shown::Point(c) => c,
        }
    }
}

/// The comparisons `pairs` and point scores `points`, each point score right after the
/// comparisons showing its candidate first: for a generation task their prompts begin alike
/// (the system turn, then that candidate's image or video).
fn side_by_side(pairs: &[(usize, usize)], points: &[usize]) -> Vec<Shown> {
    let mut all: Vec<Shown> = pairs.iter().map(|&(i, k)| Shown::Pair(i, k)).collect();
    all.extend(points.iter().map(|&c| Shown::Point(c)));
    // Stable: comparisons keep their order, and come before the point score of their first.
    all.sort_by_key(|s| s.shown_first());
    all
}

/// One judgement's prompt, rendered.
struct Rendered {
    task: Task,
    mode: Mode,
    form: AnswerForm,
    text: String,
    features: MediaFeatures,
}

/// The judgements `asked` of each prompt (none of a prompt without a judge), all through one
/// [`passes::judge_all`]: one result per prompt, its outcomes in the order asked, or
/// its first failure.
fn judge_together(
    judge: &Judge,
    judges: &[Option<ModelJudge>],
    asked: &[Vec<Shown>],
    token_budget: usize,
) -> Vec<Result<Vec<Outcome>>> {
    let mut rendered: Vec<Result<Vec<Rendered>>> = judges
        .iter()
        .zip(asked)
        .map(|(j, shown)| match j {
            Some(j) => shown.iter().map(|&s| j.render(s)).collect(),
            None => Ok(Vec::new()),
        })
        .collect();
    let mut items = Vec::new();
    let mut forms = Vec::new();
    for r in rendered.iter().flatten() {
        for one in r {
            items.push(JudgeItem {
                task: one.task,
                mode: one.mode,
                prompt_text: one.text.clone(),
                media: &one.features,
            });
            forms.push(one.form);
        }
    }
    let mut outcomes = passes::judge_all(judge, &items, &forms, token_budget).into_iter();
    rendered
        .iter_mut()
        .map(|r| {
            let count = r.as_ref().map_or(0, Vec::len);
            let mine: Vec<Result<Outcome>> = outcomes.by_ref().take(count).collect();
            let r = std::mem::replace(r, Ok(Vec::new()));
            r?;
            mine.into_iter().collect()
        })
        .collect()
}

fn pair_judgement(outcome: Outcome) -> Result<Judgement> {
    match outcome {
        Outcome::Pair { probs, .. } => Ok(Judgement::Probs(probs)),
        Outcome::Point { .. } => Err(EngineError::Invalid("a pair prompt gave a score".into())),
    }
}

fn point_score(outcome: Outcome) -> Result<f64> {
    match outcome {
        Outcome::Point { score, .. } => Ok(score.expected),
        Outcome::Pair { .. } => Err(EngineError::Invalid("a point prompt gave a verdict".into())),
    }
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

    fn render(&self, shown: Shown) -> Result<Rendered> {
        let (mode, shown) = match shown {
            Shown::Pair(i, k) => (Mode::Pair, vec![i, k]),
            Shown::Point(c) => (Mode::Point, vec![c]),
        };
        let (features, marks, answers) = self.inputs(&shown)?;
        let task = self.req.task;
        let (template, form) = recipe_prompt(self.recipe, &self.judge.style, task, mode)?;
        let text = self.judge.prompt_text_with(
            &template,
            &form,
            task,
            mode,
            &self.req.prompt,
            &answers,
            marks,
        )?;
        Ok(Rendered {
            task,
            mode,
            form,
            text,
            features,
        })
    }

    fn outcome(&self, shown: Shown) -> Result<Outcome> {
        let r = self.render(shown)?;
        self.judge
            .judge_with(&r.form, r.task, r.mode, &r.text, &r.features)
    }
}

impl PairJudge for ModelJudge<'_> {
    type Error = EngineError;

    fn compare(&mut self, first: usize, second: usize) -> Result<Judgement> {
        pair_judgement(self.outcome(Shown::Pair(first, second))?)
    }

    fn score(&mut self, candidate: usize) -> Result<f64> {
        point_score(self.outcome(Shown::Point(candidate))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use unireward_models::judge::ScoreRange;

    fn user_turn(recipe: Recipe, task: Task, mode: Mode, media: Media) -> (String, AnswerForm) {
        let (template, form) = recipe_prompt(recipe, &PromptStyle::default(), task, mode).unwrap();
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
            recipe_prompt(Recipe::Sift, &style, Task::ImageGeneration, Mode::Point).unwrap();
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

    #[test]
    fn a_trainer_sample_line_is_read_as_written() {
        // As `trainer sample` writes its candidates.jsonl: the record, serialized.
        let written = PairsRequestRecord {
            id: Value::from("p1"),
            task: Task::ImageGeneration,
            prompt: "a cat".into(),
            candidates: vec!["images/p1_0.png".into(), "images/p1_1.png".into()],
            images: None,
            videos: None,
        };
        let line = serde_json::to_string(&written).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        let req = PairsRequest::parse(&v).unwrap();
        assert_eq!(req.task, Task::ImageGeneration);
        assert_eq!(req.prompt, "a cat");
        assert_eq!(req.candidates, written.candidates);
        assert_eq!(req.media, MediaRequest::default());
        assert_eq!(
            req.media_to_load().images,
            vec![
                PathBuf::from("images/p1_0.png"),
                PathBuf::from("images/p1_1.png")
            ]
        );

        // An understanding record with its question's media, and a number as its id.
        let written = PairsRequestRecord {
            id: Value::from(3),
            task: Task::VideoUnderstanding,
            prompt: "What happens?".into(),
            candidates: vec!["It rolls.".into(), "Nothing.".into(), "It falls.".into()],
            images: None,
            videos: Some(json!([["f0.png", "f1.png"]])),
        };
        let v = serde_json::to_value(&written).unwrap();
        let req = PairsRequest::parse(&v).unwrap();
        assert_eq!(req.candidates.len(), 3);
        assert_eq!(
            req.media.videos,
            vec![VideoSource::FrameFiles(vec![
                PathBuf::from("f0.png"),
                PathBuf::from("f1.png")
            ])]
        );
        assert_eq!(req.media_to_load(), req.media);
    }

    #[test]
    fn malformed_lines_are_refused_naming_the_cause() {
        let base = json!({"id": "p1", "task": "image_generation", "prompt": "a cat",
                          "candidates": ["a.png", "b.png"]});
        assert!(PairsRequest::parse(&base).is_ok());
        let err = |v: Value| PairsRequest::parse(&v).err().unwrap();
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            err(v)
        };
        let without = |key: &str| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(key);
            err(v)
        };
        assert_eq!(without("task"), "missing string field \"task\"");
        assert_eq!(with("task", Value::Null), "missing string field \"task\"");
        let unknown = with("task", json!("audio_generation"));
        assert!(
            unknown.contains("unknown task \"audio_generation\""),
            "{unknown}"
        );
        assert_eq!(with("prompt", json!(3)), "missing string field \"prompt\"");
        assert_eq!(without("candidates"), "missing list field \"candidates\"");
        assert_eq!(
            with("candidates", json!({"a": 1})),
            "missing list field \"candidates\""
        );
        assert_eq!(
            with("candidates", json!(["a.png", null])),
            "candidates must be strings"
        );
        assert_eq!(
            with("candidates", json!(["a.png"])),
            "1 candidate(s): a pair needs at least 2"
        );
        assert_eq!(
            with("images", json!(["q.png"])),
            "image_generation judges its candidates; the prompt carries no media"
        );
        let not_object = err(json!([
            "p1",
            "image_generation",
            "a cat",
            ["a.png", "b.png"]
        ]));
        assert!(
            not_object.contains("expected a pairs line: a JSON object"),
            "{not_object}"
        );

        let question = json!({"task": "image_understanding", "prompt": "What is it?",
                              "candidates": ["a", "b"]});
        let mut bad_images = question.clone();
        bad_images["images"] = json!([1]);
        assert_eq!(err(bad_images), "\"images\" must list paths, found 1");
        let mut bad_videos = question.clone();
        bad_videos["task"] = json!("video_understanding");
        bad_videos["videos"] = json!(5);
        assert_eq!(err(bad_videos), "\"videos\": not a video: 5");
    }
}
