//! What a judge's answer looks like in each template family, and reading the newer formats:
//! per-dimension scores (ACS / APS points), per-dimension shares (2.0 pairs) and the verdict of
//! a chain of thought (Think).
//!
//! The reference scripts of these formats print the generated text and parse nothing, so the
//! reading rules are ours, written against the formats their prompts ask for:
//! - dimension scores ("Alignment Score (1-5): X"): for each dimension the number after the
//!   last `"<Label> (1-5):"` (or `"<Label>:"`), decimals read whole; the overall score is the
//!   mean of the dimensions (as the UnifiedReward-2.0 integrations average alignment,
//!   coherence and style).
//! - dimension shares ("Alignment Score:\n Image 1: X\n Image 2: Y"): for each dimension the
//!   numbers after `"Image 1:"` and `"Image 2:"` in the text from the last `"<Label>:"` to the
//!   next dimension's label; the overall verdict probabilities are the mean over dimensions of
//!   each dimension's shares normalised to sum to one.
//! - Think: the verdict sentence inside the last `<answer>...</answer>` after the reasoning
//!   (`</think>`); the reference benchmarks' `answer in output_text` would also match a verdict
//!   quoted in the reasoning.
//!
//! As with the 1.0 formats, nothing is guessed: a missing dimension, share or answer tag is a
//! [`ParseError`] naming what was looked for and showing the text.

use super::task::{Mode, ScoreRange, Task};
use super::templates::Family;
use super::verdict::{pair_verdicts, ParseError, Verdict};
use crate::{Error, Result};

/// One scored dimension of a multi-dimension answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dimension {
    /// The record's key (`"scores": {"alignment": ...}`).
    pub key: &'static str,
    /// The label the answer writes before the score.
    pub label: &'static str,
}

const fn dim(key: &'static str, label: &'static str) -> Dimension {
    Dimension { key, label }
}

/// Alignment, coherence, style: the image prompts' axes (ACS), and the 2.0 pair prompts'.
pub const ACS: [Dimension; 3] = [
    dim("alignment", "Alignment Score"),
    dim("coherence", "Coherence Score"),
    dim("style", "Style Score"),
];

/// Alignment, physics, style: the 2.0 video point prompt's axes (APS).
pub const APS: [Dimension; 3] = [
    dim("alignment", "Alignment Score"),
    dim("physics", "Physics Score"),
    dim("style", "Style Score"),
];

/// The form of a family's answer to one task and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerFormat {
    /// A verdict sentence ("Image 1 is better than Image 2.").
    Verdict,
    /// "Final Score: N".
    FinalScore,
    /// `"<Label> (min-max): X"` per dimension. `decimals`: the 2.0 checkpoints write scores
    /// such as 2.6947, the 1.0 ACS prompt's answers whole numbers.
    DimensionScores {
        dims: &'static [Dimension],
        range: ScoreRange,
        decimals: bool,
    },
    /// `"<Label>:\n <Item> 1: X\n <Item> 2: Y"` per dimension, X + Y = 1.
    DimensionShares {
        dims: &'static [Dimension],
        item: &'static str,
    },
    /// `<think>...</think>\n<answer>verdict</answer>`.
    Think,
}

impl AnswerFormat {
    /// What `family`'s prompt for `task` in `mode` asks the answer to look like; an error
    /// where the family has no such prompt.
    pub fn of(family: Family, task: Task, mode: Mode) -> Result<Self> {
        let five = ScoreRange { min: 1, max: 5 };
        let format = match (family, task, mode) {
            (Family::Think | Family::ThinkQwen | Family::ThinkQwen3vl, _, Mode::Pair) => {
                AnswerFormat::Think
            }
            (Family::LlavaAcs | Family::QwenAcs, Task::ImageGeneration, Mode::Point) => {
                AnswerFormat::DimensionScores {
                    dims: &ACS,
                    range: five,
                    decimals: false,
                }
            }
            (Family::V2, Task::ImageGeneration, Mode::Point) => AnswerFormat::DimensionScores {
                dims: &ACS,
                range: five,
                decimals: true,
            },
            (Family::V2, Task::VideoGeneration, Mode::Point) => AnswerFormat::DimensionScores {
                dims: &APS,
                range: five,
                decimals: true,
            },
            (Family::V2, Task::ImageGeneration, Mode::Pair) => AnswerFormat::DimensionShares {
                dims: &ACS,
                item: "Image",
            },
            (Family::V2, Task::VideoGeneration, Mode::Pair) => AnswerFormat::DimensionShares {
                dims: &ACS,
                item: "Video",
            },
            (Family::V2, _, _)
            | (Family::Think | Family::ThinkQwen | Family::ThinkQwen3vl, _, _) => {
                // The same refusal the prompt gives.
                super::templates::PromptTemplate::builtin(family, task, mode)?;
                return Err(Error::Input(format!(
                    "template family {family} has no {task} {mode} answer format"
                )));
            }
            (_, _, Mode::Pair) => AnswerFormat::Verdict,
            (_, _, Mode::Point) => AnswerFormat::FinalScore,
        };
        Ok(format)
    }

    /// The dimensions the answer scores, if any.
    pub fn dimensions(&self) -> &'static [Dimension] {
        match self {
            AnswerFormat::DimensionScores { dims, .. }
            | AnswerFormat::DimensionShares { dims, .. } => dims,
            _ => &[],
        }
    }
}

/// The start of the line that carries a dimension's score in a point answer:
/// `"Alignment Score (1-5): "`.
pub fn score_line(d: &Dimension, range: ScoreRange) -> String {
    format!("{} ({}-{}): ", d.label, range.min, range.max)
}

/// The start of the line that carries the first candidate's share of a dimension in a pair
/// answer: `"Alignment Score:\n Image 1: "`.
pub fn share_line(d: &Dimension, item: &str) -> String {
    format!("{}:\n {item} 1: ", d.label)
}

/// The number at the start of `s` after spaces and Markdown emphasis: digits with an
/// optional decimal part ("3", "2.6947", "4." is 4).
fn leading_number(s: &str) -> Option<f64> {
    let s = s.trim_start_matches([' ', '\t', '*']);
    let int_len = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if int_len == 0 {
        // ".5" is not a score the prompts ask for; "0.5" is.
        return None;
    }
    let mut end = int_len;
    if let Some(frac) = s[int_len..].strip_prefix('.') {
        let frac_len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if frac_len > 0 {
            end = int_len + 1 + frac_len;
        }
    }
    s[..end].parse().ok()
}

/// The value after the last `label` in `text` that is followed by an optional parenthesis
/// ("(1-5)"), a colon and a number.
fn labelled_number(text: &str, label: &str) -> Option<f64> {
    text.rmatch_indices(label).find_map(|(pos, _)| {
        let after = text[pos + label.len()..].trim_start_matches([' ', '*']);
        let after = match after.strip_prefix('(') {
            Some(rest) => rest.split_once(')')?.1,
            None => after,
        };
        let after = after.trim_start_matches([' ', '*']).strip_prefix(':')?;
        leading_number(after.trim_start_matches(|c: char| c.is_whitespace() || c == '*'))
    })
}

/// Reads the per-dimension scores of a point answer, in the order of `dims`.
pub fn parse_dimension_scores(
    dims: &[Dimension],
    text: &str,
) -> std::result::Result<Vec<(&'static str, f64)>, ParseError> {
    dims.iter()
        .map(|d| {
            labelled_number(text, d.label)
                .map(|v| (d.key, v))
                .ok_or_else(|| ParseError {
                    expected: format!("number after {:?}", format!("{} (1-5):", d.label)),
                    text: text.to_string(),
                })
        })
        .collect()
}

/// The mean of the dimension scores: the overall score of a multi-dimension point answer.
pub fn mean_score(scores: &[(&'static str, f64)]) -> f64 {
    if scores.is_empty() {
        return f64::NAN;
    }
    scores.iter().map(|(_, v)| v).sum::<f64>() / scores.len() as f64
}

/// One dimension's shares of a pair answer, in the order the pair was shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shares {
    pub key: &'static str,
    pub first: f64,
    pub second: f64,
}

/// Reads the per-dimension shares of a 2.0 pair answer, in the order of `dims`.
pub fn parse_dimension_shares(
    dims: &[Dimension],
    item: &str,
    text: &str,
) -> std::result::Result<Vec<Shares>, ParseError> {
    let missing = |what: String| ParseError {
        expected: what,
        text: text.to_string(),
    };
    dims.iter()
        .map(|d| {
            let head = format!("{}:", d.label);
            let start = text
                .rfind(&head)
                .ok_or_else(|| missing(format!("{head:?} section")))?
                + head.len();
            let rest = &text[start..];
            // The section ends where another dimension's label begins.
            let end = dims
                .iter()
                .filter(|o| o.label != d.label)
                .filter_map(|o| rest.find(o.label))
                .min()
                .unwrap_or(rest.len());
            let section = &rest[..end];
            let share = |n: u32| {
                let tag = format!("{item} {n}:");
                section
                    .find(&tag)
                    .and_then(|p| leading_number(section[p + tag.len()..].trim_start()))
                    .ok_or_else(|| missing(format!("number after {tag:?} under {head:?}")))
            };
            Ok(Shares {
                key: d.key,
                first: share(1)?,
                second: share(2)?,
            })
        })
        .collect()
}

/// The overall `(first, second)` probabilities of a pair answer's shares: each dimension's
/// shares normalised to sum to one, then averaged over the dimensions.
pub fn shares_probs(shares: &[Shares]) -> Result<(f64, f64)> {
    if shares.is_empty() {
        return Err(Error::Input("a pair answer with no dimensions".into()));
    }
    let mut first = 0.0;
    for s in shares {
        let total = s.first + s.second;
        if total.is_nan() || total <= 0.0 || s.first < 0.0 || s.second < 0.0 {
            return Err(Error::Input(format!(
                "{} shares {} and {} are not a split of 1",
                s.key, s.first, s.second
            )));
        }
        first += s.first / total;
    }
    let first = first / shares.len() as f64;
    Ok((first, 1.0 - first))
}

/// Reads the verdict of a Think answer from its last `<answer>` after the reasoning.
pub fn parse_think(
    family: Family,
    task: Task,
    text: &str,
) -> std::result::Result<Verdict, ParseError> {
    let options = pair_verdicts(family, task);
    let missing = |what: &str| ParseError {
        expected: format!(
            "{what} ({})",
            options
                .iter()
                .map(|o| format!("{:?}", o.text))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        text: text.to_string(),
    };
    let after_thought = match text.rfind("</think>") {
        Some(p) => &text[p + "</think>".len()..],
        None => text,
    };
    let open = after_thought
        .rfind("<answer>")
        .ok_or_else(|| missing("<answer> tag after the reasoning, with a verdict"))?;
    let inner = &after_thought[open + "<answer>".len()..];
    let inner = inner.split("</answer>").next().unwrap_or(inner);
    let mut found: Option<(usize, Verdict)> = None;
    for option in options {
        if let Some(pos) = inner.rfind(option.text) {
            if found.is_none_or(|(best, _)| pos > best) {
                found = Some((pos, option.verdict));
            }
        }
    }
    found
        .map(|(_, v)| v)
        .ok_or_else(|| missing("verdict inside <answer>...</answer>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_families() {
        use AnswerFormat as A;
        assert_eq!(
            AnswerFormat::of(Family::Llava, Task::ImageGeneration, Mode::Point).unwrap(),
            A::FinalScore
        );
        assert_eq!(
            AnswerFormat::of(Family::LlavaAcs, Task::VideoGeneration, Mode::Point).unwrap(),
            A::FinalScore
        );
        assert!(matches!(
            AnswerFormat::of(Family::QwenAcs, Task::ImageGeneration, Mode::Point).unwrap(),
            A::DimensionScores {
                decimals: false,
                ..
            }
        ));
        assert_eq!(
            AnswerFormat::of(Family::V2, Task::VideoGeneration, Mode::Point)
                .unwrap()
                .dimensions()
                .iter()
                .map(|d| d.key)
                .collect::<Vec<_>>(),
            ["alignment", "physics", "style"]
        );
        assert_eq!(
            AnswerFormat::of(Family::ThinkQwen3vl, Task::VideoUnderstanding, Mode::Pair).unwrap(),
            A::Think
        );
        let err = AnswerFormat::of(Family::Think, Task::ImageGeneration, Mode::Point).unwrap_err();
        assert!(err.to_string().contains("pairs only"), "{err}");
        let err = AnswerFormat::of(Family::V2, Task::ImageUnderstanding, Mode::Pair).unwrap_err();
        assert!(err.to_string().contains("generation only"), "{err}");
    }

    #[test]
    fn dimension_scores_of_2_0_and_acs_answers() {
        // The example output of inference_qwen/UnifiedReward-2.0-inference/point_score_ACS_image_generation.py.
        let v2 = "Alignment Score (1-5): 2.694700002670288\nCoherence Score (1-5): 2.371500015258789\nStyle Score (1-5): 2.802500009536743";
        let s = parse_dimension_scores(&ACS, v2).unwrap();
        assert_eq!(
            s,
            [
                ("alignment", 2.694700002670288),
                ("coherence", 2.371500015258789),
                ("style", 2.802500009536743)
            ]
        );
        assert!(
            (mean_score(&s) - (2.694700002670288 + 2.371500015258789 + 2.802500009536743) / 3.0)
                .abs()
                < 1e-12
        );
        // The example output of point_score_APS_video_generation.py.
        let aps = "Alignment Score (1-5): 2.4036\nPhysics Score (1-5): 3.0987\nStyle Score (1-5): 3.3889\n";
        let s = parse_dimension_scores(&APS, aps).unwrap();
        assert_eq!(s[1], ("physics", 3.0987));
        // A 1.0 ACS answer: word-wise scores first, the template's "X" placeholders never
        // reach the answer, Markdown bold tolerated.
        let acs = "---\n\nWord-wise Scores: [[\"a\", 0], [\"red\", 1], [\"cube\", 0], [\"[No_mistakes]\", 4]]\n\n**Alignment Score (1-5):** 4\nCoherence Score (1-5): 5\nStyle Score (1-5): 3.";
        let s = parse_dimension_scores(&ACS, acs).unwrap();
        assert_eq!(s, [("alignment", 4.0), ("coherence", 5.0), ("style", 3.0)]);
    }

    #[test]
    fn a_missing_dimension_is_an_error_naming_it() {
        let text = "Alignment Score (1-5): 3\nCoherence Score (1-5): \nStyle Score (1-5): 4";
        let err = parse_dimension_scores(&ACS, text).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("Coherence Score (1-5):") && msg.contains("Style Score (1-5): 4"),
            "{msg}"
        );
        let err = parse_dimension_scores(
            &APS,
            "Alignment Score (1-5): 3\nCoherence Score (1-5): 4\nStyle Score (1-5): 2",
        )
        .unwrap_err();
        assert!(err.to_string().contains("Physics Score"), "{err}");
    }

    #[test]
    fn shares_of_2_0_pair_answers() {
        // The example output of pair_score_image_generation.py.
        let text = "Alignment Score:\n Image 1: 0.435699999332428\n Image 2: 0.564300000667572\n\nCoherence Score:\n Image 1: 0.4180000126361847\n Image 2: 0.5820000171661377\n\nStyle Score:\n Image 1: 0.40790000557899475\n Image 2: 0.5921000242233276\n";
        let s = parse_dimension_shares(&ACS, "Image", text).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            Shares {
                key: "alignment",
                first: 0.435699999332428,
                second: 0.564300000667572
            }
        );
        let (first, second) = shares_probs(&s).unwrap();
        let want = (0.435699999332428 / (0.435699999332428 + 0.564300000667572)
            + 0.4180000126361847 / (0.4180000126361847 + 0.5820000171661377)
            + 0.40790000557899475 / (0.40790000557899475 + 0.5921000242233276))
            / 3.0;
        assert!((first - want).abs() < 1e-12 && (first + second - 1.0).abs() < 1e-12);
        // The example output of pair_score_video_generation.py.
        let video = "Alignment Score:\n Video 1: 0.4736\n Video 2: 0.5264\n\nCoherence Score:\n Video 1: 0.5981\n Video 2: 0.4019\n\nStyle Score:\n Video 1: 0.3484\n Video 2: 0.6516\n";
        let s = parse_dimension_shares(&ACS, "Video", video).unwrap();
        assert_eq!((s[1].first, s[1].second), (0.5981, 0.4019));
    }

    #[test]
    fn a_section_without_its_shares_is_an_error() {
        // Coherence lacks Image 2; its section must not borrow Style's.
        let text = "Alignment Score:\n Image 1: 0.6\n Image 2: 0.4\n\nCoherence Score:\n Image 1: 0.5\n\nStyle Score:\n Image 1: 0.3\n Image 2: 0.7";
        let err = parse_dimension_shares(&ACS, "Image", text).unwrap_err();
        assert!(
            err.to_string()
                .contains("\"Image 2:\" under \"Coherence Score:\""),
            "{err}"
        );
        let err = parse_dimension_shares(&ACS, "Image", "Image 1 is better.").unwrap_err();
        assert!(
            err.to_string().contains("\"Alignment Score:\" section"),
            "{err}"
        );
        assert!(shares_probs(&[Shares {
            key: "style",
            first: 0.0,
            second: 0.0
        }])
        .is_err());
    }

    #[test]
    fn think_verdicts_come_from_the_answer_after_the_reasoning() {
        let text = "<think>\n1. Semantic consistency: Image 1 (9/10) - ...; Image 2 (7/10) - ...\nIf Image 2 is better lit, it still loses.\nTotal score:\nImage 1: 9+8+8=25\nImage 2: 7+8+5=20\n</think>\n<answer>Image 1 is better</answer>";
        assert_eq!(
            parse_think(Family::ThinkQwen, Task::ImageGeneration, text).unwrap(),
            Verdict::First
        );
        let video = "<think>\n...\n</think>\n<answer>Video 2 is better</answer>";
        assert_eq!(
            parse_think(Family::Think, Task::VideoGeneration, video).unwrap(),
            Verdict::Second
        );
        let qa = "<think>\n1. Semantic accuracy: \n    Answer 1 (9/10) - ...; \n    Answer 2 (7/10) - ...\n</think>\n<answer>Answer 2 is better</answer>";
        assert_eq!(
            parse_think(Family::ThinkQwen3vl, Task::VideoUnderstanding, qa).unwrap(),
            Verdict::Second
        );
        // Cut off at the token limit inside the answer: the verdict is there.
        let cut = "<think>\nshort\n</think>\n<answer>Image 2 is better";
        assert_eq!(
            parse_think(Family::Think, Task::ImageGeneration, cut).unwrap(),
            Verdict::Second
        );
    }

    #[test]
    fn malformed_think_answers_are_errors() {
        // Cut off in the reasoning: a verdict quoted in it is not the answer.
        let cut = "<think>\n1. Aesthetics: so far Image 1 is better";
        let err = parse_think(Family::Think, Task::ImageGeneration, cut).unwrap_err();
        assert!(
            err.to_string().contains("<answer> tag")
                && err.to_string().contains("Image 1 is better"),
            "{err}"
        );
        let empty = "<think>\n...\n</think>\n<answer>Both are good</answer>";
        let err = parse_think(Family::Think, Task::ImageGeneration, empty).unwrap_err();
        assert!(err.to_string().contains("inside <answer>"), "{err}");
        // An <answer> written inside the reasoning does not count.
        let early = "<think>\n<answer>Image 1 is better</answer> no, wait\n</think>\nI am unsure.";
        assert!(parse_think(Family::Think, Task::ImageGeneration, early).is_err());
    }
}
