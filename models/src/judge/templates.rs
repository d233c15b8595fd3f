//! The UnifiedReward prompt templates, text for text, and the chat wrapping around them.
//!
//! Every built-in template reproduces the prompt string of one script in the UnifiedReward
//! repository (github.com/CodeGoat24/UnifiedReward); the script is named on each constant and is
//! returned by [`PromptTemplate::source`]. The texts are files under `prompts/` (included at
//! compile time) so that they can be diffed against the scripts' prompt strings. The 1.0
//! families word their prompts differently for the repository's two model lines:
//!
//! - [`Family::Llava`] (default): the LLaVA-OneVision checkpoints (UnifiedReward-7b), scripts
//!   under `inference_llava/`. Those scripts put `<image>\n` before the text once per image
//!   (video frames are passed as images, one marker per frame), and the image-generation pair
//!   script writes its two markers as `<image>\n <image>\n` (a space before the second one),
//!   which is kept.
//! - [`Family::Qwen`]: the Qwen2.5-VL checkpoints, scripts under `inference_qwen/`. There the
//!   media are chat-message content items before the text; rendered here as one marker line per
//!   item before the text, which is what a LLaVA-OneVision chat template makes of such content
//!   and what a Qwen-VL model family expands to its own `<|vision_start|>...` placeholders.
//!
//! The newer families ([`Family::LlavaAcs`], [`Family::QwenAcs`], [`Family::V2`], the Think
//! ones) follow the ACS, `UnifiedReward-2.0-inference/` and `UnifiedReward-Think/` scripts
//! (UnifiedReward ff6f520) the same way; where a family's scripts have no prompt for a task or
//! mode (2.0: understanding; Think: points) asking for one is an error, not a guess.
//!
//! Two pairwise understanding prompts are not taken from the current `inference_*` scripts,
//! because those ask for no verdict wording a judge can be read by ("choose which response is
//! better", "The first response: [...]"), while the checkpoints' pairwise understanding verdicts
//! are "Answer 1 is better" / "Answer 2 is better":
//! - image understanding pair (LLaVA): `benchmark_evaluation/LLaVA_evaluation/test_llava_vlrewardbench.py`,
//!   the repository's own VL-RewardBench evaluation of UnifiedReward-7b, whose text is also
//!   `inference_qwen/image_understanding/qwen_pair_rank_image_understanding.py`;
//! - video understanding pair (both families): the `Answer 1` / `Answer 2` revision of
//!   `inference_llava/video_understanding/pair_rank_video_understanding.py` and
//!   `inference_qwen/video_understanding/qwen_pair_rank_video_understanding.py` (commit
//!   ed52f98c), the prompt of the repository's video-understanding evaluation and DPO data scripts.
//!
//! # Template files
//! A user template is a plain text file with brace placeholders (not Jinja, so that prompt text
//! with Jinja-like syntax needs no escaping): `{caption}`, `{question}` and `{prompt}` (all three
//! the request's prompt), `{answer1}`, `{answer2}`, `{answer}` (= `{answer1}`), and `{media}`
//! (the `<image>`/`<video>` marker lines; where a template has no `{media}` they are put before
//! the text, as the LLaVA scripts do). `{{` and `}}` write literal braces. Values are inserted
//! as given and never scanned for placeholders. An unknown placeholder or an unmatched brace is
//! an error when the file is read.
//!
//! # Chat wrapping
//! [`ChatTemplate::ChatMl`] writes what the LLaVA scripts' `qwen_1_5` conversation writes:
//! `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
//! [`ChatTemplate::Jinja`] renders a checkpoint's own chat template (minijinja, with the
//! `trim_blocks` / `lstrip_blocks` settings transformers uses) over the messages
//! `[{"role": "system", ...}, {"role": "user", "content": user}]` with `add_generation_prompt`.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::task::{Mode, Task};
use crate::tokenize::quote_user_text;
use crate::{Error, Result};

/// The system line of every UnifiedReward prompt.
pub const SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Which model line's reference scripts a template follows: the prompts, their media layout and
/// the answer format (see [`super::answer_format`]). The README lists which checkpoint takes
/// which; [`super::checkpoint_family`] picks one from a checkpoint's name and config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Family {
    /// UnifiedReward-7b / -0.5b / -7b-v1.5 (LLaVA-OneVision), `inference_llava/`.
    #[default]
    #[serde(rename = "llava")]
    Llava,
    /// As [`Family::Llava`], with the multi-dimension ACS point prompt for image generation
    /// (`inference_llava/image_generation/point_score_ACS_image_generation.py`, written for
    /// UnifiedReward-7b-v1.5).
    #[serde(rename = "llava-acs")]
    LlavaAcs,
    /// UnifiedReward-qwen-3b/7b/32b (Qwen2.5-VL), `inference_qwen/`.
    #[serde(rename = "qwen")]
    Qwen,
    /// As [`Family::Qwen`], with the ACS point prompt for image generation
    /// (`inference_qwen/image_generation/qwen_point_score_ACS_image_generation.py`).
    #[serde(rename = "qwen-acs")]
    QwenAcs,
    /// UnifiedReward-2.0-qwen-* and -2.0-qwen3vl-*, `inference_qwen/UnifiedReward-2.0-inference/`:
    /// per-dimension pair shares and per-dimension point scores, generation tasks only.
    #[serde(rename = "2.0")]
    V2,
    /// UnifiedReward-Think-7b (LLaVA-OneVision), `UnifiedReward-Think/inference_llava/`: a
    /// chain of thought, then the verdict in `<answer>`; pairs only.
    #[serde(rename = "think")]
    Think,
    /// UnifiedReward-Think-qwen-7b (Qwen2.5-VL), `UnifiedReward-Think/inference_qwen/*/`: the
    /// texts of [`Family::Think`] with the media as content items before the text.
    #[serde(rename = "think-qwen")]
    ThinkQwen,
    /// UnifiedReward-Think-qwen3vl-* (Qwen3-VL),
    /// `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/`: prompts of
    /// their own, videos as frame images.
    #[serde(rename = "think-qwen3vl")]
    ThinkQwen3vl,
}

impl Family {
    pub const ALL: [Family; 8] = [
        Family::Llava,
        Family::LlavaAcs,
        Family::Qwen,
        Family::QwenAcs,
        Family::V2,
        Family::Think,
        Family::ThinkQwen,
        Family::ThinkQwen3vl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Llava => "llava",
            Family::LlavaAcs => "llava-acs",
            Family::Qwen => "qwen",
            Family::QwenAcs => "qwen-acs",
            Family::V2 => "2.0",
            Family::Think => "think",
            Family::ThinkQwen => "think-qwen",
            Family::ThinkQwen3vl => "think-qwen3vl",
        }
    }

    /// Whether the family's scripts give a video as sampled frames, each its own image (the
    /// LLaVA scripts, the 2.0 and the Think-qwen3vl scripts), rather than as one video item.
    pub fn video_as_frames(self) -> bool {
        match self {
            Family::Llava
            | Family::LlavaAcs
            | Family::V2
            | Family::Think
            | Family::ThinkQwen3vl => true,
            Family::Qwen | Family::QwenAcs | Family::ThinkQwen => false,
        }
    }

    /// Whether the verdict follows a chain of thought (`<think>...</think><answer>...</answer>`).
    pub fn thinks(self) -> bool {
        matches!(
            self,
            Family::Think | Family::ThinkQwen | Family::ThinkQwen3vl
        )
    }

    /// The 1.0 family whose prompts and verdict strings this one shares where it has no
    /// prompt of its own (the ACS families outside image-generation points).
    fn base(self) -> Family {
        match self {
            Family::LlavaAcs => Family::Llava,
            Family::QwenAcs => Family::Qwen,
            f => f,
        }
    }
}

impl FromStr for Family {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let alias = match s {
            "v2" | "2" | "v2.0" => "2.0",
            "think-llava" => "think",
            other => other,
        };
        Family::ALL
            .into_iter()
            .find(|f| f.as_str() == alias)
            .ok_or_else(|| {
                let names: Vec<&str> = Family::ALL.iter().map(|f| f.as_str()).collect();
                Error::Input(format!(
                    "unknown template family {s:?}; expected one of {}",
                    names.join(", ")
                ))
            })
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The media markers a prompt carries, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// `n` images, or `n` video frames passed as images (the LLaVA scripts' way with video).
    Images(usize),
    /// `n` videos, each one `<video>` marker.
    Videos(usize),
}

impl Media {
    /// The marker lines, `separator` before the second half: the second candidate's markers
    /// in a pair of judged media, which some scripts write after a space.
    fn markers(self, separator: &str) -> String {
        let (marker, n) = match self {
            Media::Images(n) => ("<image>\n", n),
            Media::Videos(n) => ("<video>\n", n),
        };
        if n < 2 {
            return marker.repeat(n);
        }
        format!(
            "{}{separator}{}",
            marker.repeat(n / 2),
            marker.repeat(n - n / 2)
        )
    }
}

/// Reproduces `inference_llava/image_generation/pair_rank_image_generation.py` (text after the media markers).
const LLAVA_IMAGE_GENERATION_PAIR: &str =
    include_str!("prompts/llava/image_generation_pair_rank.txt");

/// Reproduces `inference_llava/image_generation/point_score_image_generation.py` (text after the media markers).
const LLAVA_IMAGE_GENERATION_POINT: &str =
    include_str!("prompts/llava/image_generation_point_score.txt");

/// Reproduces `inference_llava/video_generation/pair_rank_video_generation.py` (text after the media markers).
const LLAVA_VIDEO_GENERATION_PAIR: &str =
    include_str!("prompts/llava/video_generation_pair_rank.txt");

/// Reproduces `inference_llava/video_generation/point_score_video_generation.py` (text after the media markers).
const LLAVA_VIDEO_GENERATION_POINT: &str =
    include_str!("prompts/llava/video_generation_point_score.txt");

/// Reproduces `inference_llava/image_understanding/point_score_image_understanding.py` (text after the media markers).
const LLAVA_IMAGE_UNDERSTANDING_POINT: &str =
    include_str!("prompts/llava/image_understanding_point_score.txt");

/// Reproduces `inference_llava/video_understanding/pair_rank_video_understanding.py (commit ed52f98c)` (text after the media markers).
const LLAVA_VIDEO_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/llava/video_understanding_pair_rank.txt");

/// Reproduces `inference_llava/video_understanding/point_score_video_understanding.py` (text after the media markers).
const LLAVA_VIDEO_UNDERSTANDING_POINT: &str =
    include_str!("prompts/llava/video_understanding_point_score.txt");

/// Reproduces `benchmark_evaluation/LLaVA_evaluation/test_llava_vlrewardbench.py` (text after the media markers).
const LLAVA_IMAGE_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/llava/image_understanding_pair_rank.txt");

/// Reproduces `inference_qwen/image_generation/qwen_pair_rank_image_generation.py` (text after the media markers).
const QWEN_IMAGE_GENERATION_PAIR: &str =
    include_str!("prompts/qwen/image_generation_pair_rank.txt");

/// Reproduces `inference_qwen/image_generation/qwen_point_score_image_generation.py` (text after the media markers).
const QWEN_IMAGE_GENERATION_POINT: &str =
    include_str!("prompts/qwen/image_generation_point_score.txt");

/// Reproduces `inference_qwen/video_generation/qwen_pair_rank_video_generation.py` (text after the media markers).
const QWEN_VIDEO_GENERATION_PAIR: &str =
    include_str!("prompts/qwen/video_generation_pair_rank.txt");

/// Reproduces `inference_qwen/video_generation/qwen_point_score_video_generation.py` (text after the media markers).
const QWEN_VIDEO_GENERATION_POINT: &str =
    include_str!("prompts/qwen/video_generation_point_score.txt");

/// Reproduces `inference_qwen/image_understanding/qwen_pair_rank_image_understanding.py` (text after the media markers).
const QWEN_IMAGE_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/qwen/image_understanding_pair_rank.txt");

/// Reproduces `inference_qwen/image_understanding/qwen_point_score_image_understanding.py` (text after the media markers).
const QWEN_IMAGE_UNDERSTANDING_POINT: &str =
    include_str!("prompts/qwen/image_understanding_point_score.txt");

/// Reproduces `inference_qwen/video_understanding/qwen_pair_rank_video_understanding.py (commit ed52f98c)` (text after the media markers).
const QWEN_VIDEO_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/qwen/video_understanding_pair_rank.txt");

/// Reproduces `inference_qwen/video_understanding/qwen_point_score_video_understanding.py` (text after the media markers).
const QWEN_VIDEO_UNDERSTANDING_POINT: &str =
    include_str!("prompts/qwen/video_understanding_point_score.txt");

/// Reproduces `inference_llava/image_generation/point_score_ACS_image_generation.py` and
/// `inference_qwen/image_generation/qwen_point_score_ACS_image_generation.py`, whose texts after
/// the media are the same (UnifiedReward ff6f520).
const ACS_IMAGE_GENERATION_POINT: &str =
    include_str!("prompts/acs/image_generation_point_score.txt");

/// Reproduces `inference_qwen/UnifiedReward-2.0-inference/pair_score_image_generation.py`.
const V2_IMAGE_GENERATION_PAIR: &str = include_str!("prompts/v2/image_generation_pair_score.txt");

/// Reproduces `inference_qwen/UnifiedReward-2.0-inference/pair_score_video_generation.py`.
const V2_VIDEO_GENERATION_PAIR: &str = include_str!("prompts/v2/video_generation_pair_score.txt");

/// Reproduces `inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py`.
const V2_IMAGE_GENERATION_POINT: &str =
    include_str!("prompts/v2/image_generation_point_score_acs.txt");

/// Reproduces `inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py`.
const V2_VIDEO_GENERATION_POINT: &str =
    include_str!("prompts/v2/video_generation_point_score_aps.txt");

/// Reproduces `UnifiedReward-Think/inference_{llava,qwen}/image_generation/*infer_cot_image_generation.py`
/// (the LLaVA and the Qwen2.5-VL scripts' texts after the media are the same).
const THINK_IMAGE_GENERATION_PAIR: &str =
    include_str!("prompts/think/image_generation_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_{llava,qwen}/video_generation/*infer_cot_video_generation.py`.
const THINK_VIDEO_GENERATION_PAIR: &str =
    include_str!("prompts/think/video_generation_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_{llava,qwen}/image_understanding/*infer_cot_image_understanding.py`.
const THINK_IMAGE_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/think/image_understanding_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_{llava,qwen}/video_understanding/*infer_cot_video_understanding.py`.
const THINK_VIDEO_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/think/video_understanding_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_generation.py`.
const THINK_QWEN3VL_IMAGE_GENERATION_PAIR: &str =
    include_str!("prompts/think_qwen3vl/image_generation_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py`.
const THINK_QWEN3VL_VIDEO_GENERATION_PAIR: &str =
    include_str!("prompts/think_qwen3vl/video_generation_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_understanding.py`.
const THINK_QWEN3VL_IMAGE_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/think_qwen3vl/image_understanding_pair_rank.txt");

/// Reproduces `UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_understanding.py`.
const THINK_QWEN3VL_VIDEO_UNDERSTANDING_PAIR: &str =
    include_str!("prompts/think_qwen3vl/video_understanding_pair_rank.txt");

struct Builtin {
    source: &'static str,
    text: &'static str,
    marker_separator: &'static str,
}

/// The built-in prompt of `family` for `task` in `mode`; an error for the combinations the
/// family's scripts have no prompt for.
fn builtin(family: Family, task: Task, mode: Mode) -> Result<Builtin> {
    if let Some(b) = newer_builtin(family, task, mode)? {
        return Ok(b);
    }
    let (source, text) = match (family.base(), task, mode) {
        (Family::Llava, Task::ImageGeneration, Mode::Pair) => (
            "inference_llava/image_generation/pair_rank_image_generation.py",
            LLAVA_IMAGE_GENERATION_PAIR,
        ),
        (Family::Llava, Task::ImageGeneration, Mode::Point) => (
            "inference_llava/image_generation/point_score_image_generation.py",
            LLAVA_IMAGE_GENERATION_POINT,
        ),
        (Family::Llava, Task::VideoGeneration, Mode::Pair) => (
            "inference_llava/video_generation/pair_rank_video_generation.py",
            LLAVA_VIDEO_GENERATION_PAIR,
        ),
        (Family::Llava, Task::VideoGeneration, Mode::Point) => (
            "inference_llava/video_generation/point_score_video_generation.py",
            LLAVA_VIDEO_GENERATION_POINT,
        ),
        (Family::Llava, Task::ImageUnderstanding, Mode::Pair) => (
            "benchmark_evaluation/LLaVA_evaluation/test_llava_vlrewardbench.py",
            LLAVA_IMAGE_UNDERSTANDING_PAIR,
        ),
        (Family::Llava, Task::ImageUnderstanding, Mode::Point) => (
            "inference_llava/image_understanding/point_score_image_understanding.py",
            LLAVA_IMAGE_UNDERSTANDING_POINT,
        ),
        (Family::Llava, Task::VideoUnderstanding, Mode::Pair) => (
            "inference_llava/video_understanding/pair_rank_video_understanding.py@ed52f98c",
            LLAVA_VIDEO_UNDERSTANDING_PAIR,
        ),
        (Family::Llava, Task::VideoUnderstanding, Mode::Point) => (
            "inference_llava/video_understanding/point_score_video_understanding.py",
            LLAVA_VIDEO_UNDERSTANDING_POINT,
        ),
        (Family::Qwen, Task::ImageGeneration, Mode::Pair) => (
            "inference_qwen/image_generation/qwen_pair_rank_image_generation.py",
            QWEN_IMAGE_GENERATION_PAIR,
        ),
        (Family::Qwen, Task::ImageGeneration, Mode::Point) => (
            "inference_qwen/image_generation/qwen_point_score_image_generation.py",
            QWEN_IMAGE_GENERATION_POINT,
        ),
        (Family::Qwen, Task::VideoGeneration, Mode::Pair) => (
            "inference_qwen/video_generation/qwen_pair_rank_video_generation.py",
            QWEN_VIDEO_GENERATION_PAIR,
        ),
        (Family::Qwen, Task::VideoGeneration, Mode::Point) => (
            "inference_qwen/video_generation/qwen_point_score_video_generation.py",
            QWEN_VIDEO_GENERATION_POINT,
        ),
        (Family::Qwen, Task::ImageUnderstanding, Mode::Pair) => (
            "inference_qwen/image_understanding/qwen_pair_rank_image_understanding.py",
            QWEN_IMAGE_UNDERSTANDING_PAIR,
        ),
        (Family::Qwen, Task::ImageUnderstanding, Mode::Point) => (
            "inference_qwen/image_understanding/qwen_point_score_image_understanding.py",
            QWEN_IMAGE_UNDERSTANDING_POINT,
        ),
        (Family::Qwen, Task::VideoUnderstanding, Mode::Pair) => (
            "inference_qwen/video_understanding/qwen_pair_rank_video_understanding.py@ed52f98c",
            QWEN_VIDEO_UNDERSTANDING_PAIR,
        ),
        (Family::Qwen, Task::VideoUnderstanding, Mode::Point) => (
            "inference_qwen/video_understanding/qwen_point_score_video_understanding.py",
            QWEN_VIDEO_UNDERSTANDING_POINT,
        ),
        (f, _, _) => {
            return Err(Error::Input(format!(
                "template family {f} has no built-in {task} {mode} prompt"
            )))
        }
    };
    let marker_separator = match (family.base(), task, mode) {
        (Family::Llava, Task::ImageGeneration, Mode::Pair) => " ",
        _ => "",
    };
    Ok(Builtin {
        source,
        text,
        marker_separator,
    })
}

/// The prompts of the ACS, 2.0 and Think scripts; `None` where a family falls back on its 1.0
/// base (the ACS families outside image-generation points).
fn newer_builtin(family: Family, task: Task, mode: Mode) -> Result<Option<Builtin>> {
    use Family as F;
    use Mode::{Pair, Point};
    use Task::VideoUnderstanding as VU;
    use Task::{ImageGeneration as IG, ImageUnderstanding as IU, VideoGeneration as VG};
    let refuse = |why: &str| -> Result<Option<Builtin>> {
        Err(Error::Input(format!(
            "template family {family} has no {task} {mode} prompt: {why}"
        )))
    };
    let (source, text) = match (family, task, mode) {
        (F::Llava | F::Qwen, _, _) | (F::LlavaAcs | F::QwenAcs, _, Pair) => return Ok(None),
        (F::LlavaAcs | F::QwenAcs, IU | VG | VU, Point) => return Ok(None),
        (F::LlavaAcs, IG, Point) => (
            "inference_llava/image_generation/point_score_ACS_image_generation.py",
            ACS_IMAGE_GENERATION_POINT,
        ),
        (F::QwenAcs, IG, Point) => (
            "inference_qwen/image_generation/qwen_point_score_ACS_image_generation.py",
            ACS_IMAGE_GENERATION_POINT,
        ),
        (F::V2, IG, Pair) => (
            "inference_qwen/UnifiedReward-2.0-inference/pair_score_image_generation.py",
            V2_IMAGE_GENERATION_PAIR,
        ),
        (F::V2, VG, Pair) => (
            "inference_qwen/UnifiedReward-2.0-inference/pair_score_video_generation.py",
            V2_VIDEO_GENERATION_PAIR,
        ),
        (F::V2, IG, Point) => (
            "inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py",
            V2_IMAGE_GENERATION_POINT,
        ),
        (F::V2, VG, Point) => (
            "inference_qwen/UnifiedReward-2.0-inference/point_score_APS_video_generation.py",
            V2_VIDEO_GENERATION_POINT,
        ),
        (F::V2, IU | VU, _) => {
            return refuse(
                "the UnifiedReward 2.0 scripts judge image and video generation only; \
                 --template-family qwen has the understanding prompts",
            )
        }
        (F::Think | F::ThinkQwen | F::ThinkQwen3vl, _, Point) => {
            return refuse("the UnifiedReward-Think scripts judge pairs only")
        }
        (F::Think, IG, Pair) => (
            "UnifiedReward-Think/inference_llava/image_generation/infer_cot_image_generation.py",
            THINK_IMAGE_GENERATION_PAIR,
        ),
        (F::Think, VG, Pair) => (
            "UnifiedReward-Think/inference_llava/video_generation/infer_cot_video_generation.py",
            THINK_VIDEO_GENERATION_PAIR,
        ),
        (F::Think, IU, Pair) => (
            "UnifiedReward-Think/inference_llava/image_understanding/infer_cot_image_understanding.py",
            THINK_IMAGE_UNDERSTANDING_PAIR,
        ),
        (F::Think, VU, Pair) => (
            "UnifiedReward-Think/inference_llava/video_understanding/infer_cot_video_understanding.py",
            THINK_VIDEO_UNDERSTANDING_PAIR,
        ),
        (F::ThinkQwen, IG, Pair) => (
            "UnifiedReward-Think/inference_qwen/image_generation/qwen_infer_cot_image_generation.py",
            THINK_IMAGE_GENERATION_PAIR,
        ),
        (F::ThinkQwen, VG, Pair) => (
            "UnifiedReward-Think/inference_qwen/video_generation/qwen_infer_cot_video_generation.py",
            THINK_VIDEO_GENERATION_PAIR,
        ),
        (F::ThinkQwen, IU, Pair) => (
            "UnifiedReward-Think/inference_qwen/image_understanding/qwen_infer_cot_image_understanding.py",
            THINK_IMAGE_UNDERSTANDING_PAIR,
        ),
        (F::ThinkQwen, VU, Pair) => (
            "UnifiedReward-Think/inference_qwen/video_understanding/qwen_infer_cot_video_understanding.py",
            THINK_VIDEO_UNDERSTANDING_PAIR,
        ),
        (F::ThinkQwen3vl, IG, Pair) => (
            "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_generation.py",
            THINK_QWEN3VL_IMAGE_GENERATION_PAIR,
        ),
        (F::ThinkQwen3vl, VG, Pair) => (
            "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_generation.py",
            THINK_QWEN3VL_VIDEO_GENERATION_PAIR,
        ),
        (F::ThinkQwen3vl, IU, Pair) => (
            "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_image_understanding.py",
            THINK_QWEN3VL_IMAGE_UNDERSTANDING_PAIR,
        ),
        (F::ThinkQwen3vl, VU, Pair) => (
            "UnifiedReward-Think/inference_qwen/UnifiedReward-Think-qwen3-inference/qwen3_infer_cot_video_understanding.py",
            THINK_QWEN3VL_VIDEO_UNDERSTANDING_PAIR,
        ),
    };
    // The LLaVA Think image pair script writes its second marker after a space, as the 1.0
    // one does; its video script writes one marker per frame of both videos, without.
    let marker_separator = match (family, task, mode) {
        (F::Think, IG, Pair) => " ",
        _ => "",
    };
    Ok(Some(Builtin {
        source,
        text,
        marker_separator,
    }))
}

/// A field a template can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Prompt,
    Answer(usize),
    Media,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Field(Field),
}

fn field_named(name: &str) -> Option<Field> {
    match name {
        "prompt" | "caption" | "question" => Some(Field::Prompt),
        "answer" | "answer1" => Some(Field::Answer(0)),
        "answer2" => Some(Field::Answer(1)),
        "media" => Some(Field::Media),
        _ => None,
    }
}

/// Splits template text into literal text and fields; `source` names the template in errors.
fn parse_segments(source: &str, text: &str) -> Result<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(pos) = rest.find(['{', '}']) {
        literal.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if tail.starts_with("{{") || tail.starts_with("}}") {
            literal.push_str(&tail[..1]);
            rest = &tail[2..];
            continue;
        }
        if tail.starts_with('}') {
            return Err(Error::Config(format!(
                "template {source}: unmatched '}}' at byte {}; write '}}}}' for a literal brace",
                text.len() - tail.len()
            )));
        }
        let close = tail.find('}').ok_or_else(|| {
            Error::Config(format!(
                "template {source}: unclosed '{{' at byte {}; write '{{{{' for a literal brace",
                text.len() - tail.len()
            ))
        })?;
        let name = &tail[1..close];
        let field = field_named(name).ok_or_else(|| {
            Error::Config(format!(
                "template {source}: unknown placeholder {{{name}}}; known: {{caption}}, \
                 {{question}}, {{prompt}}, {{answer1}}, {{answer2}}, {{answer}}, {{media}}"
            ))
        })?;
        if !literal.is_empty() {
            segments.push(Segment::Text(std::mem::take(&mut literal)));
        }
        segments.push(Segment::Field(field));
        rest = &tail[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        segments.push(Segment::Text(literal));
    }
    Ok(segments)
}

/// A prompt template: a built-in UnifiedReward prompt or a user's template file.
#[derive(Debug, Clone)]
pub struct PromptTemplate {
    source: Cow<'static, str>,
    text: Cow<'static, str>,
    marker_separator: &'static str,
}

impl PromptTemplate {
    /// The reference prompt of `family` for `task` in `mode`.
    pub fn builtin(family: Family, task: Task, mode: Mode) -> Result<Self> {
        let b = builtin(family, task, mode)?;
        Ok(PromptTemplate {
            source: Cow::Borrowed(b.source),
            text: Cow::Borrowed(b.text),
            marker_separator: b.marker_separator,
        })
    }

    /// A reference script's prompt kept outside this file (`sift_templates`).
    pub(crate) fn reference(
        source: &'static str,
        text: &'static str,
        marker_separator: &'static str,
    ) -> Self {
        PromptTemplate {
            source: Cow::Borrowed(source),
            text: Cow::Borrowed(text),
            marker_separator,
        }
    }

    /// A template from text, checked now so that a bad placeholder fails before any record.
    pub fn parse(source: impl Into<String>, text: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let text = text.into();
        parse_segments(&source, &text)?;
        Ok(PromptTemplate {
            source: Cow::Owned(source),
            text: Cow::Owned(text),
            marker_separator: "",
        })
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path.display().to_string(), text)
    }

    /// Where the template comes from: the reference script or the file it was read from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The user turn: media markers (at `{media}`, else before the text) and the template with
    /// its fields filled in. Every answer given must have its placeholder: a template that
    /// would leave an answer out is an error, not a judgement of the rest.
    pub fn render<S: AsRef<str>>(
        &self,
        prompt: &str,
        answers: &[S],
        media: Media,
    ) -> Result<String> {
        self.render_with(prompt, answers, media, false)
    }

    /// [`render`](Self::render) with the prompt and answers quoted as user text
    /// ([`quote_user_text`]): for the tokenizer, only the template's markers are markers.
    pub fn render_quoted<S: AsRef<str>>(
        &self,
        prompt: &str,
        answers: &[S],
        media: Media,
    ) -> Result<String> {
        self.render_with(prompt, answers, media, true)
    }

    fn render_with<S: AsRef<str>>(
        &self,
        prompt: &str,
        answers: &[S],
        media: Media,
        quote: bool,
    ) -> Result<String> {
        let value = |v: &str| -> String {
            if quote {
                quote_user_text(v)
            } else {
                v.to_string()
            }
        };
        let segments = parse_segments(&self.source, &self.text)?;
        let markers = media.markers(self.marker_separator);
        let has_media_field = segments
            .iter()
            .any(|s| matches!(s, Segment::Field(Field::Media)));
        let mut out = String::with_capacity(self.text.len() + prompt.len() + markers.len());
        if !has_media_field {
            out.push_str(&markers);
        }
        for segment in &segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Field(Field::Prompt) => out.push_str(&value(prompt)),
                Segment::Field(Field::Media) => out.push_str(&markers),
                Segment::Field(Field::Answer(i)) => {
                    let answer = answers.get(*i).ok_or_else(|| {
                        Error::Input(format!(
                            "template {} needs answer {} but the request has {} answer(s)",
                            self.source,
                            i + 1,
                            answers.len()
                        ))
                    })?;
                    out.push_str(&value(answer.as_ref()));
                }
            }
        }
        if let Some(missing) =
            (0..answers.len()).find(|i| !segments.contains(&Segment::Field(Field::Answer(*i))))
        {
            let name = if missing == 0 {
                "{answer1} or {answer}".to_string()
            } else {
                format!("{{answer{}}}", missing + 1)
            };
            return Err(Error::Input(format!(
                "template {} has no {name} placeholder, so answer {} of the request would be left out",
                self.source,
                missing + 1
            )));
        }
        Ok(out)
    }
}

/// The user turn of a built-in prompt, after checking that the request carries as many answers
/// as `task` in `mode` judges.
pub fn user_turn<S: AsRef<str>>(
    family: Family,
    task: Task,
    mode: Mode,
    prompt: &str,
    answers: &[S],
    media: Media,
) -> Result<String> {
    let needed = task.answers_needed(mode);
    if answers.len() != needed {
        return Err(Error::Input(format!(
            "{task} {mode} judges {needed} answer(s), the request has {}",
            answers.len()
        )));
    }
    PromptTemplate::builtin(family, task, mode)?.render(prompt, answers, media)
}

/// How the user turn becomes the model's full prompt.
#[derive(Debug, Clone, Default)]
pub enum ChatTemplate {
    /// The `qwen_1_5` conversation of the LLaVA scripts.
    #[default]
    ChatMl,
    /// A checkpoint's own Jinja chat template.
    Jinja(Box<JinjaChat>),
}

/// A compiled Jinja chat template.
#[derive(Debug, Clone)]
pub struct JinjaChat {
    source: String,
    env: minijinja::Environment<'static>,
}

const JINJA_NAME: &str = "chat";

impl ChatTemplate {
    /// Compiles `template`; `source` names it in errors.
    pub fn jinja(source: impl Into<String>, template: impl Into<String>) -> Result<Self> {
        let source = source.into();
        let mut env = minijinja::Environment::new();
        // transformers renders chat templates with these two settings; without them block tags
        // leave newlines and indentation behind.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| jinja_error(&source, &e))?;
        env.set_syntax(syntax);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template_owned(JINJA_NAME, template.into())
            .map_err(|e| jinja_error(&source, &e))?;
        Ok(ChatTemplate::Jinja(Box::new(JinjaChat { source, env })))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::jinja(path.display().to_string(), text)
    }

    /// The chat template a checkpoint directory ships: `chat_template.jinja`, else the
    /// `chat_template` string of `chat_template.json` or `tokenizer_config.json`; ChatML when
    /// it has none.
    pub fn from_checkpoint_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            return Self::from_file(&jinja);
        }
        for name in ["chat_template.json", "tokenizer_config.json"] {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: path.clone(),
                    source,
                })?;
            if let Some(template) = json.get("chat_template").and_then(|t| t.as_str()) {
                return Self::jinja(path.display().to_string(), template);
            }
        }
        Ok(ChatTemplate::ChatMl)
    }

    /// The full prompt for one user turn, ending where the assistant's answer begins.
    pub fn render(&self, user: &str) -> Result<String> {
        self.render_conversation(&[ChatMessage::new("user", user)])
    }

    /// The full prompt of a conversation, ending where the assistant's next answer begins.
    /// Without a system message first, the default one ([`SYSTEM_PROMPT`]) opens it, as the
    /// LLaVA scripts' `qwen_1_5` conversation and Qwen2's chat template both do.
    pub fn render_conversation(&self, messages: &[ChatMessage]) -> Result<String> {
        let default_system = ChatMessage::new("system", SYSTEM_PROMPT);
        let with_system: Vec<&ChatMessage> = match messages.first() {
            Some(m) if m.role == "system" => messages.iter().collect(),
            _ => std::iter::once(&default_system).chain(messages).collect(),
        };
        match self {
            ChatTemplate::ChatMl => {
                let mut out = String::new();
                for m in with_system {
                    out.push_str(&format!(
                        "<|im_start|>{}\n{}<|im_end|>\n",
                        m.role, m.content
                    ));
                }
                out.push_str("<|im_start|>assistant\n");
                Ok(out)
            }
            ChatTemplate::Jinja(chat) => {
                let template = chat
                    .env
                    .get_template(JINJA_NAME)
                    .map_err(|e| jinja_error(&chat.source, &e))?;
                let messages: Vec<minijinja::Value> = with_system
                    .iter()
                    .map(|m| message(&m.role, &m.content))
                    .collect();
                template
                    .render(minijinja::context! {
                        messages => messages,
                        add_generation_prompt => true,
                    })
                    .map_err(|e| jinja_error(&chat.source, &e))
            }
        }
    }
}

/// One message of a conversation, its content already holding its media markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

fn message(role: &str, content: &str) -> minijinja::Value {
    let mut map = std::collections::BTreeMap::new();
    map.insert("role".to_string(), minijinja::Value::from(role));
    map.insert("content".to_string(), minijinja::Value::from(content));
    minijinja::Value::from(map)
}

fn jinja_error(source: &str, e: &minijinja::Error) -> Error {
    let mut msg = format!("chat template {source}: {e}");
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    Error::Config(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::{unquote_user_text, USER_TEXT_START};

    #[test]
    fn a_conversation_gets_the_default_system_message_unless_it_has_one() {
        let chat = ChatTemplate::ChatMl;
        let user = ChatMessage::new("user", "<image>\nRate it.");
        assert_eq!(
            chat.render_conversation(std::slice::from_ref(&user))
                .unwrap(),
            chat.render("<image>\nRate it.").unwrap()
        );
        let own = chat
            .render_conversation(&[ChatMessage::new("system", "Be terse."), user.clone()])
            .unwrap();
        assert_eq!(
            own,
            "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\n<image>\nRate it.<|im_end|>\n<|im_start|>assistant\n"
        );
        let jinja = ChatTemplate::jinja(
            "t",
            "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}",
        )
        .unwrap();
        assert_eq!(
            jinja
                .render_conversation(&[user, ChatMessage::new("assistant", "9")])
                .unwrap(),
            format!("[system:{SYSTEM_PROMPT}][user:<image>\nRate it.][assistant:9]>")
        );
    }

    #[test]
    fn a_template_that_leaves_an_answer_out_is_refused() {
        let no_answers = PromptTemplate::parse("mine.txt", "Rate [{question}]").unwrap();
        let err = no_answers
            .render("q", &["a1", "a2"], Media::Images(1))
            .unwrap_err();
        assert!(
            matches!(err, Error::Input(ref m) if m.contains("mine.txt") && m.contains("answer 1")),
            "{err}"
        );
        let only_first = PromptTemplate::parse("mine.txt", "{question} {answer1}").unwrap();
        let err = only_first
            .render_quoted("q", &["a1", "a2"], Media::Images(1))
            .unwrap_err();
        assert!(
            matches!(err, Error::Input(ref m) if m.contains("{answer2}")),
            "{err}"
        );
        assert!(no_answers
            .render::<&str>("q", &[], Media::Images(1))
            .is_ok());
    }

    /// A prompt file no constant includes would be a text that silently stopped being used.
    #[test]
    fn every_prompt_file_is_included() {
        let sources = [
            include_str!("templates.rs"),
            include_str!("sift_templates.rs"),
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/judge/prompts");
        let mut dirs = vec![root.clone()];
        let mut files = 0;
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&root).unwrap().to_str().unwrap();
                let include = format!("include_str!(\"prompts/{rel}\")");
                assert!(
                    sources.iter().any(|s| s.contains(&include)),
                    "prompts/{rel} is included by no template"
                );
                files += 1;
            }
        }
        assert_eq!(files, 37);
    }

    #[test]
    fn quoted_rendering_quotes_only_the_request_text() {
        let t =
            PromptTemplate::builtin(Family::Llava, Task::ImageUnderstanding, Mode::Pair).unwrap();
        let answers = ["see <image>", "no"];
        let quoted = t
            .render_quoted("what <video>?", &answers, Media::Images(1))
            .unwrap();
        assert_eq!(quoted.matches(USER_TEXT_START).count(), 3);
        assert!(quoted.starts_with("<image>\n"));
        assert_eq!(
            unquote_user_text(&quoted),
            t.render("what <video>?", &answers, Media::Images(1))
                .unwrap()
        );
    }
}
