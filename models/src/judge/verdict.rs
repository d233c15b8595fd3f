//! Verdicts: the strings the checkpoints answer with, the answer prefix fast judging forces,
//! reading generated answers the way the reference scripts do, and the fast-mode arithmetic.
//!
//! Generated answers are read as the UnifiedReward scripts read them:
//! - pair: substring match of the verdict sentences (without their final punctuation). For
//!   understanding tasks the text is first narrowed, as the repository's DPO data scripts do,
//!   to what follows the last "Overall Judgment" up to the next '.', when it has one. Where
//!   several verdicts occur the one written last wins (the conclusion follows the reasoning).
//! - point: the first number after the last "Final Score:". Decimals are read whole
//!   ("Final Score: 3.5" is 3.5, where the scripts' `\d+` would give 3).
//!
//! Unlike the scripts, nothing is guessed when the text does not say: the scripts fall back to
//! "the first candidate wins" for an unreadable pair and to the first number anywhere (or 0)
//! for a missing score; here both are a [`ParseError`] naming the text.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::task::{Mode, Task};
use super::templates::Family;
use crate::{Error, Result};

/// The outcome of one pairwise comparison, in the order the pair was shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    First,
    Second,
    Tie,
}

/// A verdict and the sentence a checkpoint writes for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerdictText {
    pub verdict: Verdict,
    pub text: &'static str,
}

const fn vt(verdict: Verdict, text: &'static str) -> VerdictText {
    VerdictText { verdict, text }
}

// The LLaVA generation prompts ask for "Image 1 is better than Image 2." and so on, the Qwen
// ones for the short "Image 1 is better." form.
const LLAVA_IMAGE: [VerdictText; 3] = [
    vt(Verdict::First, "Image 1 is better than Image 2."),
    vt(Verdict::Second, "Image 2 is better than Image 1."),
    vt(Verdict::Tie, "Both images are equally good."),
];
const LLAVA_VIDEO: [VerdictText; 3] = [
    vt(Verdict::First, "Video 1 is better than Video 2."),
    vt(Verdict::Second, "Video 2 is better than Video 1."),
    vt(Verdict::Tie, "Both videos are equally good."),
];
const QWEN_IMAGE: [VerdictText; 3] = [
    vt(Verdict::First, "Image 1 is better."),
    vt(Verdict::Second, "Image 2 is better."),
    vt(Verdict::Tie, "Both images are equally good."),
];
const QWEN_VIDEO: [VerdictText; 3] = [
    vt(Verdict::First, "Video 1 is better."),
    vt(Verdict::Second, "Video 2 is better."),
    vt(Verdict::Tie, "Both videos are equally good."),
];
// Understanding prompts forbid a tie ("can't say that both answers are equally good"). The
// video prompt's "Answer 1 is better than Answer 2." starts with these, so one pair of strings
// serves both media.
const UNDERSTANDING: [VerdictText; 2] = [
    vt(Verdict::First, "Answer 1 is better"),
    vt(Verdict::Second, "Answer 2 is better"),
];

// The Think prompts ask for exactly one of two strings in <answer>; no tie.
const THINK_IMAGE: [VerdictText; 2] = [
    vt(Verdict::First, "Image 1 is better"),
    vt(Verdict::Second, "Image 2 is better"),
];
const THINK_VIDEO: [VerdictText; 2] = [
    vt(Verdict::First, "Video 1 is better"),
    vt(Verdict::Second, "Video 2 is better"),
];

/// The verdict sentences of a pair prompt, first, second, then tie where the task allows one.
/// The 2.0 pair prompts ask for per-dimension shares, not a sentence: none.
pub fn pair_verdicts(family: Family, task: Task) -> &'static [VerdictText] {
    use Family as F;
    match (family, task) {
        (F::V2, _) => &[],
        (F::Think | F::ThinkQwen | F::ThinkQwen3vl, Task::ImageGeneration) => &THINK_IMAGE,
        (F::Think | F::ThinkQwen | F::ThinkQwen3vl, Task::VideoGeneration) => &THINK_VIDEO,
        (F::Llava | F::LlavaAcs, Task::ImageGeneration) => &LLAVA_IMAGE,
        (F::Llava | F::LlavaAcs, Task::VideoGeneration) => &LLAVA_VIDEO,
        (F::Qwen | F::QwenAcs, Task::ImageGeneration) => &QWEN_IMAGE,
        (F::Qwen | F::QwenAcs, Task::VideoGeneration) => &QWEN_VIDEO,
        (_, Task::ImageUnderstanding | Task::VideoUnderstanding) => &UNDERSTANDING,
    }
}

/// What marks the score in a point answer.
pub const SCORE_MARKER: &str = "Final Score:";

/// The text fast judging puts at the start of the assistant's answer, after which the verdict
/// sentences (pair) or the score's digits (point) are scored. A point prefix ends in the space
/// that comes before a score, because Qwen2's tokenizer writes "Final Score: 4" as `:`, ` `,
/// `4`, so the digits are then whole tokens of their own.
pub fn answer_prefix(task: Task, mode: Mode) -> &'static str {
    match (task, mode) {
        (_, Mode::Point) => "Final Score: ",
        // The video understanding prompt asks for "Overall Judgment: Answer 1 is better than
        // Answer 2."; the other pair prompts ask for the verdict sentence alone.
        (Task::VideoUnderstanding, Mode::Pair) => "Overall Judgment:",
        (_, Mode::Pair) => "",
    }
}

/// What goes between [`answer_prefix`] and a verdict sentence. Unlike the space before a
/// score's digits, the space before a word belongs to the word's token (" Answer"), so it is
/// part of the scored continuation: a prefix that ended in it would not tokenize as a prefix
/// of "Overall Judgment: Answer 1 is better".
pub fn verdict_lead(task: Task) -> &'static str {
    match task {
        Task::VideoUnderstanding => " ",
        _ => "",
    }
}

/// A generated answer that says no verdict or no score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// What was looked for.
    pub expected: String,
    /// The whole answer.
    pub text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        let chars = self.text.chars().count();
        let excerpt: String = if chars > SHOWN {
            let tail: String = self.text.chars().skip(chars - SHOWN).collect();
            format!("...{tail}")
        } else {
            self.text.clone()
        };
        write!(f, "no {} in the judge's answer {excerpt:?}", self.expected)
    }
}

impl std::error::Error for ParseError {}

/// Reads the verdict of a generated pair answer.
pub fn parse_pair(
    family: Family,
    task: Task,
    text: &str,
) -> std::result::Result<Verdict, ParseError> {
    let scope = if task.is_generation() {
        text
    } else {
        judgment_sentence(text)
    };
    let options = pair_verdicts(family, task);
    let mut found: Option<(usize, Verdict)> = None;
    for option in options {
        let phrase = option.text.trim_end_matches(['.', ',']);
        if let Some(pos) = scope.rfind(phrase) {
            if found.is_none_or(|(best, _)| pos > best) {
                found = Some((pos, option.verdict));
            }
        }
    }
    found.map(|(_, v)| v).ok_or_else(|| ParseError {
        expected: format!(
            "verdict ({})",
            options
                .iter()
                .map(|o| format!("{:?}", o.text))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        text: text.to_string(),
    })
}

/// What follows the last "Overall Judgment" up to the next '.', or the whole text without one.
fn judgment_sentence(text: &str) -> &str {
    const MARKER: &str = "Overall Judgment";
    match text.rfind(MARKER) {
        Some(pos) => {
            let after = text[pos + MARKER.len()..].trim();
            after.split('.').next().unwrap_or(after).trim()
        }
        None => text,
    }
}

/// Reads the score of a generated point answer: the first number after the last
/// "Final Score:".
pub fn parse_score(text: &str) -> std::result::Result<f64, ParseError> {
    let missing = || ParseError {
        expected: format!("number after {SCORE_MARKER:?}"),
        text: text.to_string(),
    };
    let pos = text.rfind(SCORE_MARKER).ok_or_else(missing)?;
    let after = &text[pos + SCORE_MARKER.len()..];
    let start = after
        .find(|c: char| c.is_ascii_digit())
        .ok_or_else(missing)?;
    let digits = &after[start..];
    let int_len = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    let mut end = int_len;
    if let Some(frac) = digits[int_len..].strip_prefix('.') {
        let frac_len = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        if frac_len > 0 {
            end = int_len + 1 + frac_len;
        }
    }
    digits[..end].parse::<f64>().map_err(|_| missing())
}

/// Probabilities of the verdicts of one comparison, in the order the pair was shown.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairProbs {
    pub first: f64,
    pub second: f64,
    pub tie: f64,
}

impl PairProbs {
    /// A generated verdict as certain probabilities.
    pub fn certain(verdict: Verdict) -> Self {
        let mut p = PairProbs {
            first: 0.0,
            second: 0.0,
            tie: 0.0,
        };
        match verdict {
            Verdict::First => p.first = 1.0,
            Verdict::Second => p.second = 1.0,
            Verdict::Tie => p.tie = 1.0,
        }
        p
    }

    /// The most probable verdict; a tie where the tie is at least as probable as either side
    /// or the two sides are equally probable.
    pub fn verdict(&self) -> Verdict {
        if self.tie >= self.first && self.tie >= self.second {
            Verdict::Tie
        } else if self.first > self.second {
            Verdict::First
        } else if self.second > self.first {
            Verdict::Second
        } else {
            Verdict::Tie
        }
    }

    /// The same judgement seen from the other order.
    pub fn swapped(&self) -> Self {
        PairProbs {
            first: self.second,
            second: self.first,
            tie: self.tie,
        }
    }

    pub fn mean(&self, other: &PairProbs) -> Self {
        PairProbs {
            first: 0.5 * (self.first + other.first),
            second: 0.5 * (self.second + other.second),
            tie: 0.5 * (self.tie + other.tie),
        }
    }
}

/// Softmax weights of `logprobs`, with their log-sum-exp taken stably.
fn normalise(logprobs: impl Iterator<Item = f64> + Clone, what: &str) -> Result<Vec<f64>> {
    let mut max = f64::NEG_INFINITY;
    for lp in logprobs.clone() {
        if lp.is_nan() || lp == f64::INFINITY {
            return Err(Error::Input(format!(
                "{what}: log-probability {lp} is not a log-probability"
            )));
        }
        max = max.max(lp);
    }
    if max == f64::NEG_INFINITY {
        return Err(Error::Input(format!(
            "{what}: no candidate has a finite log-probability"
        )));
    }
    let weights: Vec<f64> = logprobs.map(|lp| (lp - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    Ok(weights.into_iter().map(|w| w / total).collect())
}

/// Fast pair judging: each verdict's probability from the summed log-probabilities of its
/// sentence's tokens, normalised over the verdicts given. A verdict not given (the tie of an
/// understanding pair) gets 0; one given twice adds up.
pub fn pair_probs(logprobs: &[(Verdict, f64)]) -> Result<PairProbs> {
    let weights = normalise(logprobs.iter().map(|(_, lp)| *lp), "pair verdicts")?;
    let mut p = PairProbs {
        first: 0.0,
        second: 0.0,
        tie: 0.0,
    };
    for ((verdict, _), w) in logprobs.iter().zip(weights) {
        match verdict {
            Verdict::First => p.first += w,
            Verdict::Second => p.second += w,
            Verdict::Tie => p.tie += w,
        }
    }
    Ok(p)
}

/// A fast point score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PointScore {
    /// Expected score under the normalised candidate probabilities.
    pub expected: f64,
    /// The most probable candidate (the lowest score among equally probable ones).
    pub argmax: f64,
}

/// Fast point judging from `(score, log-probability)` of each candidate score written after
/// "Final Score: ". The log-probability of a candidate should be that of its digits followed by
/// a non-digit, so that "1" does not also count the mass of "10".
pub fn point_score(candidates: &[(f64, f64)]) -> Result<PointScore> {
    let weights = normalise(candidates.iter().map(|(_, lp)| *lp), "score candidates")?;
    let expected = candidates
        .iter()
        .zip(&weights)
        .map(|((score, _), w)| score * w)
        .sum();
    let mut best: Option<(f64, f64)> = None;
    for &(score, lp) in candidates {
        let better = match best {
            None => true,
            Some((best_score, best_lp)) => lp > best_lp || (lp == best_lp && score < best_score),
        };
        if better {
            best = Some((score, lp));
        }
    }
    let argmax = best.map(|(s, _)| s).unwrap_or(f64::NAN);
    Ok(PointScore { expected, argmax })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_verdicts_match_as_substrings() {
        use Family::*;
        use Task::*;
        let cases = [
            (
                Llava,
                ImageGeneration,
                "Image 1 is better than Image 2.",
                Verdict::First,
            ),
            (
                Llava,
                ImageGeneration,
                "After comparing, Image 2 is better than Image 1",
                Verdict::Second,
            ),
            (
                Llava,
                ImageGeneration,
                "Both images are equally good.",
                Verdict::Tie,
            ),
            (
                Llava,
                VideoGeneration,
                "Video 2 is better than Video 1.",
                Verdict::Second,
            ),
            (
                Llava,
                VideoGeneration,
                "Both videos are equally good.",
                Verdict::Tie,
            ),
            (Qwen, ImageGeneration, "Image 1 is better.", Verdict::First),
            (
                Qwen,
                VideoGeneration,
                "Overall, Video 2 is better, because ...",
                Verdict::Second,
            ),
        ];
        for (family, task, text, want) in cases {
            assert_eq!(parse_pair(family, task, text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn the_last_verdict_written_wins() {
        let text =
            "Image 1 is better than Image 2 in colour, but overall Both images are equally good.";
        assert_eq!(
            parse_pair(Family::Llava, Task::ImageGeneration, text).unwrap(),
            Verdict::Tie
        );
    }

    #[test]
    fn understanding_verdicts_follow_overall_judgment() {
        let text = "1. Accuracy: Answer 2 is better at naming objects.\n\
                    Overall Judgment: Answer 1 is better than Answer 2.";
        assert_eq!(
            parse_pair(Family::Llava, Task::VideoUnderstanding, text).unwrap(),
            Verdict::First
        );
        let plain = "Both are fluent, but Answer 2 is better.";
        assert_eq!(
            parse_pair(Family::Llava, Task::ImageUnderstanding, plain).unwrap(),
            Verdict::Second
        );
        // As in the reference scripts, only the sentence after "Overall Judgment" counts.
        let vague =
            "Answer 1 is better on accuracy. Overall Judgment: it depends. Answer 2 is better.";
        assert!(parse_pair(Family::Llava, Task::VideoUnderstanding, vague).is_err());
    }

    #[test]
    fn unreadable_pair_is_an_error_naming_the_text() {
        let err = parse_pair(Family::Llava, Task::ImageGeneration, "I cannot decide.").unwrap_err();
        assert_eq!(err.text, "I cannot decide.");
        let msg = err.to_string();
        assert!(
            msg.contains("I cannot decide.") && msg.contains("Image 1 is better than Image 2."),
            "{msg}"
        );
        // Understanding prompts allow no tie.
        assert!(parse_pair(
            Family::Llava,
            Task::ImageUnderstanding,
            "Both answers are equally good."
        )
        .is_err());
    }

    #[test]
    fn scores_are_the_first_number_after_the_last_marker() {
        let cases = [
            (
                "visual quality: 4\ntemporal consistency: 3\nFinal Score: 7",
                7.0,
            ),
            ("Final Score: 3.5", 3.5),
            ("Final Score: 4.", 4.0),
            ("Final Score:**85**/100", 85.0),
            ("Final Score: 2\nOn reflection... Final Score: 3", 3.0),
            ("element (object): 1\nFinal Score:\n\n 5 out of 5", 5.0),
        ];
        for (text, want) in cases {
            assert_eq!(parse_score(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn missing_score_is_an_error() {
        for text in [
            "visual quality: 4\ntemporal consistency: 4",
            "Final Score: N/A",
            "",
        ] {
            let err = parse_score(text).unwrap_err();
            assert!(err.to_string().contains("Final Score:"), "{err}");
        }
        let long = format!("{}Final Score: none", "x".repeat(500));
        let msg = parse_score(&long).unwrap_err().to_string();
        assert!(
            msg.len() < 400 && msg.contains("Final Score: none"),
            "{msg}"
        );
    }

    #[test]
    fn answer_prefixes() {
        assert_eq!(
            answer_prefix(Task::ImageGeneration, Mode::Point),
            "Final Score: "
        );
        assert_eq!(
            answer_prefix(Task::VideoUnderstanding, Mode::Point),
            "Final Score: "
        );
        assert_eq!(answer_prefix(Task::ImageGeneration, Mode::Pair), "");
        assert_eq!(
            answer_prefix(Task::VideoUnderstanding, Mode::Pair),
            "Overall Judgment:"
        );
        assert_eq!(
            format!(
                "{}{}",
                verdict_lead(Task::VideoUnderstanding),
                pair_verdicts(Family::Qwen, Task::VideoUnderstanding)[0].text
            ),
            " Answer 1 is better"
        );
        assert_eq!(
            pair_verdicts(Family::Llava, Task::ImageUnderstanding).len(),
            2
        );
        assert_eq!(
            pair_verdicts(Family::Qwen, Task::VideoGeneration)[2].verdict,
            Verdict::Tie
        );
    }

    #[test]
    fn pair_probabilities_are_a_softmax_over_verdicts() {
        let lp = [
            (Verdict::First, (0.6f64).ln() - 7.0),
            (Verdict::Second, (0.3f64).ln() - 7.0),
            (Verdict::Tie, (0.1f64).ln() - 7.0),
        ];
        let p = pair_probs(&lp).unwrap();
        assert!(
            (p.first - 0.6).abs() < 1e-12
                && (p.second - 0.3).abs() < 1e-12
                && (p.tie - 0.1).abs() < 1e-12
        );
        assert_eq!(p.verdict(), Verdict::First);
        // Very negative log-probs do not underflow.
        let p = pair_probs(&[
            (Verdict::First, -2000.0),
            (Verdict::Second, -2000.0 + 2f64.ln()),
        ])
        .unwrap();
        assert!((p.first - 1.0 / 3.0).abs() < 1e-12 && p.tie == 0.0);
        assert_eq!(p.verdict(), Verdict::Second);
        let p =
            pair_probs(&[(Verdict::First, f64::NEG_INFINITY), (Verdict::Second, -1.0)]).unwrap();
        assert_eq!((p.first, p.second), (0.0, 1.0));
        assert!(pair_probs(&[]).is_err());
        assert!(pair_probs(&[(Verdict::First, f64::NAN)]).is_err());
        assert!(pair_probs(&[(Verdict::First, f64::NEG_INFINITY)]).is_err());
    }

    #[test]
    fn probs_swap_mean_and_verdict() {
        let p = PairProbs {
            first: 0.7,
            second: 0.2,
            tie: 0.1,
        };
        let s = p.swapped();
        assert_eq!((s.first, s.second, s.tie), (0.2, 0.7, 0.1));
        let m = p.mean(&s);
        assert!((m.first - 0.45).abs() < 1e-12 && (m.second - 0.45).abs() < 1e-12);
        assert_eq!(m.verdict(), Verdict::Tie);
        assert_eq!(PairProbs::certain(Verdict::Tie).verdict(), Verdict::Tie);
        assert_eq!(
            PairProbs::certain(Verdict::Second).verdict(),
            Verdict::Second
        );
        assert_eq!(
            PairProbs {
                first: 0.3,
                second: 0.3,
                tie: 0.4
            }
            .verdict(),
            Verdict::Tie
        );
    }

    #[test]
    fn point_score_expectation_and_argmax() {
        // p = 0.1, 0.2, 0.4, 0.2, 0.1 over 1..=5: expected 3, argmax 3.
        let probs = [0.1f64, 0.2, 0.4, 0.2, 0.1];
        let candidates: Vec<(f64, f64)> = probs
            .iter()
            .enumerate()
            .map(|(i, p)| ((i + 1) as f64, p.ln() - 3.0))
            .collect();
        let s = point_score(&candidates).unwrap();
        assert!((s.expected - 3.0).abs() < 1e-12);
        assert_eq!(s.argmax, 3.0);
        let skewed = [(1.0, 0.5f64.ln()), (10.0, 0.5f64.ln()), (5.0, 0.0f64.ln())];
        let s = point_score(&skewed).unwrap();
        assert!((s.expected - 5.5).abs() < 1e-12);
        assert_eq!(s.argmax, 1.0, "equal probabilities: the lower score");
        assert!(point_score(&[]).is_err());
    }
}
