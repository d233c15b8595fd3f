//! Judge data from the world's ground truth, with the real UnifiedReward prompts
//! (`unireward_models::judge` templates, LLaVA family) and the verdict strings and score
//! formats fast judging reads:
//!
//! - training data in the LLaVA format `trainer reward` reads (`{"id", "image" | "video",
//!   "conversations": [human, gpt]}`), the answer being the verdict sentence (after the
//!   task's answer prefix) or `Final Score: N`;
//! - held-out score requests in the format `engine score --batch` reads, with the ground
//!   truth of each beside them.
//!
//! A pair shows two candidates of different quality in random order; the better one is the
//! one that gets more of the five attributes right. A point score is the quality on the
//! task's scale: 1-5 for image generation and video understanding, 2-10 for video
//! generation, 20-100 for image understanding.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use unireward_models::judge::{
    answer_prefix, pair_verdicts, user_turn, verdict_lead, Family, Media, Mode, Task, Verdict,
};

use crate::error::Result;
use crate::rng::Rng;
use crate::world::store::frame_paths;
use crate::world::store::World;
use crate::world::{GenerationPrompt, Medium, UnderstandingPrompt};

/// Control pairs of image generation: both candidates drawn cleanly.
pub const CONTROL_ALIGNMENT: &str = "image_generation, clean renderings";
/// Control pairs of image understanding: no answer leaves an attribute out.
pub const CONTROL_GROUNDING: &str = "image_understanding, nothing left out";

/// How many examples of a task in a mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCount {
    pub task: Task,
    pub mode: Mode,
    pub count: usize,
}

/// The ground truth of one held-out request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub id: String,
    pub task: Task,
    pub mode: Mode,
    /// Qualities of the candidates shown, in the order shown (one for a point request).
    pub qualities: Vec<usize>,
    /// The score on the task's scale (point requests).
    pub score: Option<f64>,
    /// The control set the request belongs to, if any (reported apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
}

/// The score a candidate of `quality` (1..=5) earns on `task`'s scale.
pub fn true_score(task: Task, quality: usize) -> f64 {
    let q = quality as f64;
    match task {
        Task::ImageGeneration | Task::VideoUnderstanding => q,
        Task::VideoGeneration => 2.0 * q,
        Task::ImageUnderstanding => 20.0 * q,
    }
}

/// What the judge is shown for one judgement: the prompt text, media and answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub task: Task,
    pub mode: Mode,
    pub prompt: String,
    pub medium: Medium,
    /// Absolute paths: images, or the videos' frame lists.
    pub images: Vec<String>,
    pub videos: Vec<Vec<String>>,
    pub answers: Vec<String>,
    pub qualities: Vec<usize>,
}

impl Shown {
    fn media(&self) -> Media {
        match self.medium {
            Medium::Image => Media::Images(self.images.len()),
            Medium::Video => Media::Videos(self.videos.len()),
        }
    }

    /// The user turn of the reference prompt.
    pub fn user_turn(&self) -> Result<String> {
        Ok(user_turn(
            Family::Llava,
            self.task,
            self.mode,
            &self.prompt,
            &self.answers,
            self.media(),
        )?)
    }

    /// The answer the judge is trained to give.
    pub fn target(&self) -> String {
        let prefix = answer_prefix(self.task, self.mode);
        match self.mode {
            Mode::Point => format!(
                "{prefix}{}",
                fmt_score(true_score(self.task, self.qualities[0]))
            ),
            Mode::Pair => {
                let first_better = self.qualities[0] > self.qualities[1];
                format!(
                    "{prefix}{}{}",
                    verdict_lead(self.task),
                    verdict_sentence(self.task, first_better)
                )
            }
        }
    }

    /// A `trainer reward` record.
    pub fn llava_record(&self, id: &str) -> Result<Value> {
        let mut rec = json!({
            "id": id,
            "conversations": [
                {"from": "human", "value": self.user_turn()?},
                {"from": "gpt", "value": self.target()},
            ],
        });
        match self.medium {
            Medium::Image => rec["image"] = json!(self.images),
            Medium::Video => rec["video"] = json!(self.videos),
        }
        Ok(rec)
    }

    /// An `engine score --batch` request.
    pub fn score_request(&self, id: &str) -> Value {
        let mut req = json!({
            "id": id,
            "task": self.task,
            "mode": self.mode,
            "prompt": self.prompt,
        });
        match self.medium {
            Medium::Image => req["images"] = json!(self.images),
            Medium::Video => req["videos"] = json!(self.videos),
        }
        if !self.answers.is_empty() {
            req["answers"] = json!(self.answers);
        }
        req
    }

    pub fn truth(&self, id: &str) -> Truth {
        Truth {
            id: id.to_string(),
            task: self.task,
            mode: self.mode,
            qualities: self.qualities.clone(),
            score: (self.mode == Mode::Point).then(|| true_score(self.task, self.qualities[0])),
            control: None,
        }
    }
}

fn fmt_score(s: f64) -> String {
    format!("{}", s.round() as i64)
}

/// The verdict sentence the checkpoints answer with. Generation pairs use the template's
/// own sentences ("Image 1 is better than Image 2."); the image understanding prompt asks
/// for "Answer 1 is better" (closed with a full stop here), the video one for "Answer 1 is
/// better than Answer 2.".
fn verdict_sentence(task: Task, first_better: bool) -> String {
    let wanted = if first_better {
        Verdict::First
    } else {
        Verdict::Second
    };
    let text = pair_verdicts(Family::Llava, task)
        .iter()
        .find(|v| v.verdict == wanted)
        .map(|v| v.text)
        .unwrap_or_default();
    match task {
        Task::ImageGeneration | Task::VideoGeneration => text.to_string(),
        Task::ImageUnderstanding => format!("{text}."),
        Task::VideoUnderstanding => {
            let other = if first_better { 2 } else { 1 };
            format!("{text} than Answer {other}.")
        }
    }
}

fn abs(run: &Path, rel: &str) -> String {
    run.join(rel).display().to_string()
}

fn video(run: &Path, rel: &str) -> Vec<String> {
    frame_paths(run, rel)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

/// Two positions of `qualities` whose values differ, in random order.
fn distinct_pair(qualities: &[usize], rng: &mut Rng) -> Option<(usize, usize)> {
    let mut pairs = Vec::new();
    for i in 0..qualities.len() {
        for j in 0..qualities.len() {
            if i != j && qualities[i] != qualities[j] {
                pairs.push((i, j));
            }
        }
    }
    (!pairs.is_empty()).then(|| *rng.pick(&pairs))
}

fn shown_generation(run: &Path, p: &GenerationPrompt, mode: Mode, rng: &mut Rng) -> Option<Shown> {
    let qualities: Vec<usize> = p.candidates.iter().map(|c| c.quality).collect();
    let picked = match mode {
        Mode::Pair => {
            let (i, j) = distinct_pair(&qualities, rng)?;
            vec![i, j]
        }
        Mode::Point => vec![rng.below(p.candidates.len())],
    };
    let task = match p.medium {
        Medium::Image => Task::ImageGeneration,
        Medium::Video => Task::VideoGeneration,
    };
    let mut shown = Shown {
        task,
        mode,
        prompt: p.caption.clone(),
        medium: p.medium,
        images: Vec::new(),
        videos: Vec::new(),
        answers: Vec::new(),
        qualities: picked.iter().map(|&i| qualities[i]).collect(),
    };
    for &i in &picked {
        match p.medium {
            Medium::Image => shown.images.push(abs(run, &p.candidates[i].media)),
            Medium::Video => shown.videos.push(video(run, &p.candidates[i].media)),
        }
    }
    Some(shown)
}

fn shown_understanding(
    run: &Path,
    p: &UnderstandingPrompt,
    mode: Mode,
    rng: &mut Rng,
) -> Option<Shown> {
    let qualities: Vec<usize> = p.answers.iter().map(|a| a.quality).collect();
    let picked = match mode {
        Mode::Pair => {
            let (i, j) = distinct_pair(&qualities, rng)?;
            vec![i, j]
        }
        Mode::Point => vec![rng.below(p.answers.len())],
    };
    let (task, images, videos) = match p.medium {
        Medium::Image => (
            Task::ImageUnderstanding,
            vec![abs(run, &p.media)],
            Vec::new(),
        ),
        Medium::Video => (
            Task::VideoUnderstanding,
            Vec::new(),
            vec![video(run, &p.media)],
        ),
    };
    Some(Shown {
        task,
        mode,
        prompt: p.question.clone(),
        medium: p.medium,
        images,
        videos,
        answers: picked.iter().map(|&i| p.answers[i].text.clone()).collect(),
        qualities: picked.iter().map(|&i| qualities[i]).collect(),
    })
}

/// `count` judgements of `task` in `mode` over `world`'s prompts (cycling through them,
/// a fresh random pick each time); over its control prompts only when `controls`.
pub fn judgements(
    run: &Path,
    world: &World,
    tc: TaskCount,
    controls: bool,
    rng: &mut Rng,
) -> Vec<Shown> {
    let mut out = Vec::with_capacity(tc.count);
    let gen_medium = match tc.task {
        Task::ImageGeneration | Task::ImageUnderstanding => Medium::Image,
        Task::VideoGeneration | Task::VideoUnderstanding => Medium::Video,
    };
    if tc.task.is_generation() {
        let prompts: Vec<&GenerationPrompt> = world
            .generation
            .iter()
            .filter(|p| p.medium == gen_medium && p.control == controls)
            .collect();
        for k in 0..tc.count {
            if prompts.is_empty() {
                break;
            }
            if let Some(s) = shown_generation(run, prompts[k % prompts.len()], tc.mode, rng) {
                out.push(s);
            }
        }
    } else {
        let prompts: Vec<&UnderstandingPrompt> = world
            .understanding
            .iter()
            .filter(|p| p.medium == gen_medium && p.control == controls)
            .collect();
        for k in 0..tc.count {
            if prompts.is_empty() {
                break;
            }
            if let Some(s) = shown_understanding(run, prompts[k % prompts.len()], tc.mode, rng) {
                out.push(s);
            }
        }
    }
    out
}

/// A short id for a task and mode: `igen-pair`, `vund-point`, ...
pub fn task_tag(task: Task, mode: Mode) -> String {
    let t = match task {
        Task::ImageGeneration => "igen",
        Task::VideoGeneration => "vgen",
        Task::ImageUnderstanding => "iund",
        Task::VideoUnderstanding => "vund",
    };
    format!("{t}-{mode}")
}

/// Judgements of every task and mode in `counts`, ids `PREFIX-TAG-N`, interleaved so that
/// any prefix of the list mixes all tasks.
pub fn all_judgements(
    run: &Path,
    world: &World,
    counts: &[TaskCount],
    prefix: &str,
    rng: &mut Rng,
) -> Vec<(String, Shown)> {
    let lists: Vec<Vec<(String, Shown)>> = counts
        .iter()
        .map(|&tc| {
            judgements(run, world, tc, false, rng)
                .into_iter()
                .enumerate()
                .map(|(n, s)| (format!("{prefix}-{}-{n:05}", task_tag(tc.task, tc.mode)), s))
                .collect()
        })
        .collect();
    let total: usize = lists.iter().map(Vec::len).sum();
    // Interleave by position in each list, scaled to the list's length.
    let mut keyed: Vec<(f64, usize, (String, Shown))> = Vec::with_capacity(total);
    for (l, list) in lists.into_iter().enumerate() {
        let n = list.len().max(1) as f64;
        for (k, item) in list.into_iter().enumerate() {
            keyed.push(((k as f64 + 0.5) / n, l, item));
        }
    }
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, item)| item).collect()
}

/// `items` reordered into runs of `batch` items of one task and mode, the runs in random
/// order; a task's last incomplete run is left out. Trained in file order (the trainer's
/// `--no-shuffle`), every micro-batch then holds one prompt template: no padding is spent
/// on a short template batched with a long one (they range from about 180 to 460 tokens).
pub fn batch_grouped(
    items: Vec<(String, Shown)>,
    batch: usize,
    rng: &mut Rng,
) -> Vec<(String, Shown)> {
    let batch = batch.max(1);
    type Group = ((Task, Mode), Vec<(String, Shown)>);
    let mut by_task: Vec<Group> = Vec::new();
    for item in items {
        let key = (item.1.task, item.1.mode);
        match by_task.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(item),
            None => by_task.push((key, vec![item])),
        }
    }
    let mut runs: Vec<Vec<(String, Shown)>> = Vec::new();
    for (_, mut list) in by_task {
        rng.shuffle(&mut list);
        let whole = list.len() / batch * batch;
        list.truncate(whole);
        let mut rest = list.into_iter();
        loop {
            let run: Vec<_> = rest.by_ref().take(batch).collect();
            if run.is_empty() {
                break;
            }
            runs.push(run);
        }
    }
    rng.shuffle(&mut runs);
    runs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_template() {
        let item = |n: usize, task| {
            (
                format!("{n}"),
                Shown {
                    task,
                    mode: Mode::Pair,
                    prompt: String::new(),
                    medium: Medium::Image,
                    images: vec![],
                    videos: vec![],
                    answers: vec![],
                    qualities: vec![2, 1],
                },
            )
        };
        let items: Vec<_> = (0..10)
            .map(|n| item(n, Task::ImageGeneration))
            .chain((10..17).map(|n| item(n, Task::ImageUnderstanding)))
            .collect();
        let grouped = batch_grouped(items, 4, &mut Rng::new(1));
        assert_eq!(grouped.len(), 8 + 4);
        for run in grouped.chunks(4) {
            assert!(run.iter().all(|(_, s)| s.task == run[0].1.task));
        }
    }

    #[test]
    fn targets_are_what_fast_judging_scores() {
        let shown = |task, mode, qualities: Vec<usize>| Shown {
            task,
            mode,
            prompt: "p".into(),
            medium: Medium::Image,
            images: vec![],
            videos: vec![],
            answers: vec![],
            qualities,
        };
        assert_eq!(
            shown(Task::ImageGeneration, Mode::Pair, vec![2, 4]).target(),
            "Image 2 is better than Image 1."
        );
        assert_eq!(
            shown(Task::VideoUnderstanding, Mode::Pair, vec![5, 1]).target(),
            "Overall Judgment: Answer 1 is better than Answer 2."
        );
        assert_eq!(
            shown(Task::ImageUnderstanding, Mode::Pair, vec![1, 3]).target(),
            "Answer 2 is better."
        );
        assert_eq!(
            shown(Task::ImageUnderstanding, Mode::Point, vec![4]).target(),
            "Final Score: 80"
        );
        assert_eq!(
            shown(Task::VideoGeneration, Mode::Point, vec![3]).target(),
            "Final Score: 6"
        );
    }
}
