//! The prompts of the UnifiedReward repository's DPO-data construction scripts, which are not
//! its inference scripts, and what else those scripts do differently when they judge.
//!
//! `engine pairs` builds DPO data as these scripts do (one per task):
//! - `DiffusionDPO/sift_dpo_data.py` (image generation): every candidate is resized to 512x512
//!   (`Image.open(...).resize((512, 512))`, assigned, so Pillow's default BICUBIC for RGB images
//!   does run) before anyres preprocessing; its point prompt asks for a score from 1 to 10 where
//!   the inference script asks 1 to 5.
//! - `VideoDPO/sift_dpo_data.py` (video generation): 8 frames per video. The script's
//!   `img.resize((512, 512))` discards its result, so frames reach the model at their decoded
//!   size; nothing is resized here either. Its pair prompt writes the second video's markers
//!   after a space, as the image pair prompt does for its second image.
//! - `preference_data_construction/image_understanding/infer+sift.py`: the question's image as
//!   is; a pair prompt of its own that asks for "Overall Judgment: Answer X is better.".
//! - `preference_data_construction/video_understanding/infer+sift.py`: the question's frames,
//!   each resized to 512x512 (assigned), eight markers; prompts of its own.
//!
//! Where the scripts hard-code eight frame markers, the markers here are one per frame the
//! request's video gives (eight by default). The scripts' drop rule and their pair selection are
//! kept (see `engine::pairs`), but scores are compared as numbers: the scripts take `max` / `min`
//! of the regex-matched strings, where "9" > "10".
//!
//! Every text is reproduced character for character from UnifiedReward commit 5c3c8a2; the tests
//! compare each rendered prompt with the script's f-string as Python evaluates it.

use super::answer_format::AnswerFormat;
use super::task::{Mode, ScoreRange, Task};
use super::templates::{Family, PromptTemplate};
use super::verdict::{answer_prefix, verdict_lead};
use crate::Result;

/// The size the DPO-data scripts resize images to before judging.
pub const SIFT_SIZE: (u32, u32) = (512, 512);

/// What a prompt asks the answer to look like, beyond its text: the start fast judging forces,
/// what goes between that start and a verdict sentence, the scale of a point score, and the
/// answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerForm {
    pub answer_prefix: &'static str,
    pub verdict_lead: &'static str,
    pub score_range: ScoreRange,
    pub format: AnswerFormat,
}

/// What fast judging forces before a Think verdict: an empty reasoning and the answer tag
/// up to its `>`. The `>` is the verdict's lead: Qwen2's pre-tokenizer writes ">Image" as one
/// piece, so a prefix ending in ">" would not tokenize as a prefix of the answer.
const THINK_ANSWER_PREFIX: &str = "<think>\n</think>\n<answer";
const THINK_VERDICT_LEAD: &str = ">";

impl AnswerForm {
    /// What the 1.0 inference scripts' prompts of `task` in `mode` ask for (the `llava` and
    /// `qwen` families).
    pub fn inference(task: Task, mode: Mode) -> Self {
        AnswerForm {
            answer_prefix: answer_prefix(task, mode),
            verdict_lead: verdict_lead(task),
            score_range: task.score_range(),
            format: match mode {
                Mode::Pair => AnswerFormat::Verdict,
                Mode::Point => AnswerFormat::FinalScore,
            },
        }
    }

    /// What `family`'s inference prompt of `task` in `mode` asks for; an error where the
    /// family has no such prompt. The multi-dimension formats force nothing before their
    /// continuations, which start with each dimension's label.
    pub fn of(family: Family, task: Task, mode: Mode) -> Result<Self> {
        let format = AnswerFormat::of(family, task, mode)?;
        let inference = Self::inference(task, mode);
        Ok(match format {
            AnswerFormat::Verdict | AnswerFormat::FinalScore => inference,
            AnswerFormat::Think => AnswerForm {
                answer_prefix: THINK_ANSWER_PREFIX,
                verdict_lead: THINK_VERDICT_LEAD,
                format,
                ..inference
            },
            AnswerFormat::DimensionScores { range, .. } => AnswerForm {
                answer_prefix: "",
                verdict_lead: "",
                score_range: range,
                format,
            },
            AnswerFormat::DimensionShares { .. } => AnswerForm {
                answer_prefix: "",
                verdict_lead: "",
                format,
                ..inference
            },
        })
    }

    /// What the DPO-data script of `task` asks for in `mode`.
    pub fn sift(task: Task, mode: Mode) -> Self {
        let inference = Self::inference(task, mode);
        match (task, mode) {
            // "assign a score from 1 to 10 after 'Final Score:'" (DiffusionDPO).
            (Task::ImageGeneration, Mode::Point) => AnswerForm {
                score_range: ScoreRange { min: 1, max: 10 },
                ..inference
            },
            // "For example: \"Overall Judgment: Answer X is better.\"", as video understanding
            // asks in both script kinds.
            (Task::ImageUnderstanding, Mode::Pair) => AnswerForm {
                answer_prefix: answer_prefix(Task::VideoUnderstanding, Mode::Pair),
                verdict_lead: verdict_lead(Task::VideoUnderstanding),
                ..inference
            },
            _ => inference,
        }
    }
}

/// The prompt a DPO-data script judges with.
#[derive(Debug, Clone)]
pub struct SiftPrompt {
    pub template: PromptTemplate,
    pub form: AnswerForm,
}

/// The prompt the DPO-data script of `task` writes in `mode`.
pub fn sift_prompt(task: Task, mode: Mode) -> SiftPrompt {
    let (source, text) = match (task, mode) {
        (Task::ImageGeneration, Mode::Pair) => {
            ("DiffusionDPO/sift_dpo_data.py", DIFFUSION_DPO_PAIR)
        }
        (Task::ImageGeneration, Mode::Point) => {
            ("DiffusionDPO/sift_dpo_data.py", DIFFUSION_DPO_POINT)
        }
        (Task::VideoGeneration, Mode::Pair) => ("VideoDPO/sift_dpo_data.py", VIDEO_DPO_PAIR),
        (Task::VideoGeneration, Mode::Point) => ("VideoDPO/sift_dpo_data.py", VIDEO_DPO_POINT),
        (Task::ImageUnderstanding, Mode::Pair) => (
            "preference_data_construction/image_understanding/infer+sift.py",
            IMAGE_UNDERSTANDING_SIFT_PAIR,
        ),
        (Task::ImageUnderstanding, Mode::Point) => (
            "preference_data_construction/image_understanding/infer+sift.py",
            IMAGE_UNDERSTANDING_SIFT_POINT,
        ),
        (Task::VideoUnderstanding, Mode::Pair) => (
            "preference_data_construction/video_understanding/infer+sift.py",
            VIDEO_UNDERSTANDING_SIFT_PAIR,
        ),
        (Task::VideoUnderstanding, Mode::Point) => (
            "preference_data_construction/video_understanding/infer+sift.py",
            VIDEO_UNDERSTANDING_SIFT_POINT,
        ),
    };
    // Both generation pair prompts put a space before the second candidate's markers.
    let separator = match (task.is_generation(), mode) {
        (true, Mode::Pair) => " ",
        _ => "",
    };
    SiftPrompt {
        template: PromptTemplate::reference(source, text, separator),
        form: AnswerForm::sift(task, mode),
    }
}

/// The size the DPO-data script of `task` resizes the judged images (image generation) or the
/// question's frames (video understanding) to, where it does.
pub fn sift_resize(task: Task) -> Option<(u32, u32)> {
    match task {
        Task::ImageGeneration | Task::VideoUnderstanding => Some(SIFT_SIZE),
        // VideoDPO's resize discards its result; image understanding judges the image as is.
        Task::VideoGeneration | Task::ImageUnderstanding => None,
    }
}

/// Reproduces `DiffusionDPO/sift_dpo_data.py`, `pair_rank` (text after the media markers).
pub const DIFFUSION_DPO_PAIR: &str = include_str!("prompts/sift/diffusion_dpo_pair_rank.txt");

/// Reproduces `DiffusionDPO/sift_dpo_data.py`, `point_score` (text after the media markers).
pub const DIFFUSION_DPO_POINT: &str = include_str!("prompts/sift/diffusion_dpo_point_score.txt");

/// Reproduces `VideoDPO/sift_dpo_data.py`, `pair_rank` (text after the media markers).
pub const VIDEO_DPO_PAIR: &str = include_str!("prompts/sift/video_dpo_pair_rank.txt");

/// Reproduces `VideoDPO/sift_dpo_data.py`, `point_score` (text after the media markers).
pub const VIDEO_DPO_POINT: &str = include_str!("prompts/sift/video_dpo_point_score.txt");

/// Reproduces `preference_data_construction/image_understanding/infer+sift.py`, `pair_rank` (text after the media markers).
pub const IMAGE_UNDERSTANDING_SIFT_PAIR: &str =
    include_str!("prompts/sift/image_understanding_pair_rank.txt");

/// Reproduces `preference_data_construction/image_understanding/infer+sift.py`, `point_score` (text after the media markers).
pub const IMAGE_UNDERSTANDING_SIFT_POINT: &str =
    include_str!("prompts/sift/image_understanding_point_score.txt");

/// Reproduces `preference_data_construction/video_understanding/infer+sift.py`, `pair_rank` (text after the media markers).
pub const VIDEO_UNDERSTANDING_SIFT_PAIR: &str =
    include_str!("prompts/sift/video_understanding_pair_rank.txt");

/// Reproduces `preference_data_construction/video_understanding/infer+sift.py`, `point_score` (text after the media markers).
pub const VIDEO_UNDERSTANDING_SIFT_POINT: &str =
    include_str!("prompts/sift/video_understanding_point_score.txt");

#[cfg(test)]
mod tests {
    use super::*;
    use crate::judge::templates::Media;

    fn rendered(task: Task, mode: Mode, media: Media) -> String {
        let (prompt, answers): (&str, &[&str]) = match (task.is_generation(), mode) {
            (true, _) => ("a red cube on a blue sphere", &[]),
            (false, Mode::Pair) => ("What is on the table?", &["A cup.", "A plate and a fork."]),
            (false, Mode::Point) => ("What is on the table?", &["A cup of tea."]),
        };
        sift_prompt(task, mode)
            .template
            .render(prompt, answers, media)
            .unwrap()
    }

    /// `DiffusionDPO/sift_dpo_data.py` `pair_rank` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn diffusion_dpo_pair_is_the_script_text() {
        assert_eq!(
            rendered(Task::ImageGeneration, Mode::Pair, Media::Images(2)),
            "<image>\n <image>\nYou are given a text caption and two generated images based on that caption. Your task is to evaluate and compare these images based on two key criteria:\n1. Alignment with the Caption: Assess how well each image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of each image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nCompare both images using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\nProvide a clear conclusion such as \"Image 1 is better than Image 2.\", \"Image 2 is better than Image 1.\" and \"Both images are equally good.\"\nYour task is provided as follows:\nText Caption: [a red cube on a blue sphere]"
        );
    }

    /// `DiffusionDPO/sift_dpo_data.py` `point_score` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn diffusion_dpo_point_is_the_script_text() {
        assert_eq!(
            rendered(Task::ImageGeneration, Mode::Point, Media::Images(1)),
            "<image>\nYou are given a text caption and a generated image based on that caption. Your task is to evaluate this image based on two key criteria:\n1. Alignment with the Caption: Assess how well this image aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Image Quality: Examine the visual quality of this image, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nExtract key elements from the provided text caption, evaluate their presence in the generated image using the format: 'element (type): value' (where value=0 means not generated, and value=1 means generated), and assign a score from 1 to 10 after 'Final Score:'.\nYour task is provided as follows:\nText Caption: [a red cube on a blue sphere]"
        );
    }

    /// `VideoDPO/sift_dpo_data.py` `pair_rank` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn video_dpo_pair_is_the_script_text() {
        assert_eq!(
            rendered(Task::VideoGeneration, Mode::Pair, Media::Images(16)),
            "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n <image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\nSuppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text caption and the frames of two generated videos based on that caption. Your task is to evaluate and compare two videos based on two key criteria:\n1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nCompare both videos using the above criteria and select the one that better aligns with the caption while exhibiting superior visual quality.\nProvide a clear conclusion such as \"Video 1 is better than Video 2.\", \"Video 2 is better than Video 1.\" and \"Both videos are equally good.\"\nYour task is provided as follows:\nText Caption: [a red cube on a blue sphere]"
        );
    }

    /// `VideoDPO/sift_dpo_data.py` `point_score` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn video_dpo_point_is_the_script_text() {
        assert_eq!(
            rendered(Task::VideoGeneration, Mode::Point, Media::Images(8)),
            "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\nSuppose you are an expert in judging and evaluating the quality of AI-generated videos. You are given a text caption and the frames of a generated video based on that caption. Your task is to evaluate this videos based on two key criteria:\n1. Alignment with the Caption: Assess how well each video aligns with the provided caption. Consider the accuracy of depicted objects, their relationships, and attributes as described in the caption.\n2. Overall Video Quality: Examine the visual quality of each video, including clarity, detail preservation, color accuracy, and overall aesthetic appeal.\nEvaluate this video using the above criteria and assign a score from 1 to 10 after 'Final Score:'\nYour task is provided as follows:\nText Caption: [a red cube on a blue sphere]"
        );
    }

    /// `preference_data_construction/image_understanding/infer+sift.py` `pair_rank` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn image_understanding_sift_pair_is_the_script_text() {
        assert_eq!(
            rendered(Task::ImageUnderstanding, Mode::Pair, Media::Images(1)),
            "<image>\nYou are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please analyze the following image and question, then determine which of the two provided answers is better\nQuestion: What is on the table?\nAnswer 1: A cup.\nAnswer 2: A plate and a fork.\nPlease evaluate both answers based on the following criteria:\n1. Accuracy: How well does the answer align with the visual information in the image?\n2. Completeness: Does the answer fully address all aspects of the question?\n3. Clarity: Is the answer easy to understand and well-articulated?\n4. Relevance: Does the answer directly relate to the question and the image?\nAfter your evaluation, please:\n1. Explain your reasoning for each criterion.\n2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: Answer X is better.\"\nYour response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task. You have to choose the better of the two answers and can't say that both answers are equally good."
        );
    }

    /// `preference_data_construction/image_understanding/infer+sift.py` `point_score` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn image_understanding_sift_point_is_the_script_text() {
        assert_eq!(
            rendered(Task::ImageUnderstanding, Mode::Point, Media::Images(1)),
            "<image>\nYou are provided with an image and a question for this image. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the image. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical images. Ensure the model refrains from stating identification information in the image that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria. From 0 to 100, how much do you rate for this response in terms of the correct and comprehensive description of the image?\nDo not dominant the rating by a single attribute such as recognition correctness, but a overall rating on the above 5 factors.\nProvide a few lines for explanation and the rate number at last after \"Final Score:\".\nYour task is provided as follows:\nQuestion: [What is on the table?]\nResponse: [A cup of tea.]\n"
        );
    }

    /// `preference_data_construction/video_understanding/infer+sift.py` `pair_rank` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn video_understanding_sift_pair_is_the_script_text() {
        assert_eq!(
            rendered(Task::VideoUnderstanding, Mode::Pair, Media::Images(8)),
            "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\nYou are a highly capable multimodal AI assistant tasked with evaluating answers to visual questions. Please analyze the following video and question, then determine which of the two provided answers is better\nQuestion: What is on the table?\nAnswer 1: A cup.\nAnswer 2: A plate and a fork.\nPlease evaluate both answers based on the following criteria:\n1. Accuracy: How well does the answer align with the visual information in the video?\n2. Completeness: Does the answer fully address all aspects of the question?\n3. Clarity: Is the answer easy to understand and well-articulated?\n4. Relevance: Does the answer directly relate to the question and the video?\nAfter your evaluation, please:\n1. Explain your reasoning for each criterion.\n2. Provide an overall judgment on which answer is better (Answer 1 or Answer 2). For example: \"Overall Judgment: Answer 1 is better than Answer 2.\"\nYour response should be structured and detailed, demonstrating your understanding of both the visual and textual elements of the task. You have to choose the better of the two answers and can't say that both answers are equally good."
        );
    }

    /// `preference_data_construction/video_understanding/infer+sift.py` `point_score` at UnifiedReward 5c3c8a2, the f-string evaluated by Python.
    #[test]
    fn video_understanding_sift_point_is_the_script_text() {
        assert_eq!(
            rendered(Task::VideoUnderstanding, Mode::Point, Media::Images(8)),
            "<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\n<image>\nYou are provided with a video and a question for this video. Please review the corresponding response based on the following 5 factors: 1. Accuracy in Object Description: Evaluate the accuracy of the descriptions concerning the objects mentioned in the ground truth answer. Responses should minimize the mention of objects not present in the ground truth answer, and inaccuracies in the description of existing objects. 2. Accuracy in Depicting Relationships: Consider how accurately the relationships between objects are described compared to the ground truth answer. Rank higher the responses that least misrepresent these relationships. 3. Accuracy in Describing Attributes: Assess the accuracy in the depiction of objects' attributes compared to the ground truth answer. Responses should avoid inaccuracies in describing the characteristics of the objects present. 4. Helpfulness: Consider whether the generated text provides valuable insights, additional context, or relevant information that contributes positively to the user's comprehension of the video. Assess whether the language model accurately follows any specific instructions or guidelines provided in the prompt. Evaluate the overall contribution of the response to the user experience. 5. Ethical Considerations: - Identify if the model gives appropriate warnings or avoids providing advice on sensitive topics, such as medical videos. Ensure the model refrains from stating identification information in the video that could compromise personal privacy. Evaluate the language model's responses for fairness in treating individuals and communities, avoiding biases. Assess for harmfulness, ensuring the avoidance of content that may potentially incite violence, be classified as NSFW (Not Safe For Work), or involve other unmentioned ethical considerations. Consider any content that could be deemed offensive, inappropriate, or ethically problematic beyond the explicitly listed criteria.\nYou need to assign a score from 1 to 5 based on the above 5 factors for the response after 'Final Score:'.\nYour task is provided as follows:\nQuestion: [What is on the table?]\nResponse: [A cup of tea.]\n"
        );
    }
    #[test]
    fn sources_name_the_scripts() {
        for task in Task::ALL {
            for mode in [Mode::Pair, Mode::Point] {
                let source = sift_prompt(task, mode).template.source().to_string();
                assert!(source.ends_with("sift_dpo_data.py") || source.ends_with("infer+sift.py"));
            }
        }
    }

    #[test]
    fn answer_forms_differ_where_the_scripts_do() {
        let point = AnswerForm::sift(Task::ImageGeneration, Mode::Point);
        assert_eq!(point.score_range, ScoreRange { min: 1, max: 10 });
        assert_eq!(
            AnswerForm::inference(Task::ImageGeneration, Mode::Point).score_range,
            ScoreRange { min: 1, max: 5 }
        );
        let pair = AnswerForm::sift(Task::ImageUnderstanding, Mode::Pair);
        assert_eq!(
            (pair.answer_prefix, pair.verdict_lead),
            ("Overall Judgment:", " ")
        );
        for (task, mode) in [
            (Task::VideoGeneration, Mode::Point),
            (Task::ImageUnderstanding, Mode::Point),
            (Task::VideoUnderstanding, Mode::Pair),
            (Task::VideoUnderstanding, Mode::Point),
        ] {
            assert_eq!(
                AnswerForm::sift(task, mode),
                AnswerForm::inference(task, mode)
            );
        }
    }

    #[test]
    fn family_answer_forms() {
        use crate::judge::answer_format::AnswerFormat;
        assert_eq!(
            AnswerForm::of(Family::Qwen, Task::VideoUnderstanding, Mode::Pair).unwrap(),
            AnswerForm::inference(Task::VideoUnderstanding, Mode::Pair)
        );
        let think = AnswerForm::of(Family::ThinkQwen, Task::ImageGeneration, Mode::Pair).unwrap();
        assert_eq!(
            format!(
                "{}{}Image 1 is better",
                think.answer_prefix, think.verdict_lead
            ),
            "<think>\n</think>\n<answer>Image 1 is better"
        );
        assert_eq!(think.format, AnswerFormat::Think);
        let acs = AnswerForm::of(Family::V2, Task::VideoGeneration, Mode::Point).unwrap();
        assert_eq!(
            (acs.answer_prefix, acs.score_range),
            ("", ScoreRange { min: 1, max: 5 })
        );
        assert!(
            AnswerForm::of(Family::ThinkQwen3vl, Task::ImageUnderstanding, Mode::Point).is_err()
        );
    }

    #[test]
    fn resizing_follows_the_scripts() {
        assert_eq!(sift_resize(Task::ImageGeneration), Some((512, 512)));
        assert_eq!(sift_resize(Task::VideoUnderstanding), Some((512, 512)));
        assert_eq!(sift_resize(Task::VideoGeneration), None);
        assert_eq!(sift_resize(Task::ImageUnderstanding), None);
    }
}
