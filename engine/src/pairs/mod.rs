//! `engine pairs`: DPO preference pairs from the judge's verdicts on a prompt's candidates,
//! as UnifiedReward builds its DPO data (the `infer+sift.py` / `sift_dpo_data.py` scripts of
//! the UnifiedReward repository):
//!
//! 1. pair ranking ([`ranking`]): candidates (0, 1), (2, 3), ... are compared; each winner
//!    joins the chosen list and each loser the rejected list. With `--ranking round-robin`
//!    every pair is compared instead and a Bradley-Terry fit ([`bradley_terry`]) ranks them;
//!    the top half is chosen, the bottom half rejected.
//! 2. point sifting ([`sifting`]): every chosen and rejected candidate is scored; the pair is
//!    (highest-scored chosen, lowest-scored rejected), and the prompt is dropped when
//!    chosen_score <= rejected_score.
//!
//! The judge is behind [`PairJudge`], so that the construction can be driven by a script.
//!
//! Candidates in neither list ([`Ranking::unranked`]) are named in the output record
//! (`"unranked"`): with disjoint pairs and an odd count, the last one, which is never judged
//! (the reference always has ten candidates, so it never has one); with round robin, the
//! middle one.
//!
//! `engine pairs` prompts as the reference's DPO-data scripts do by default ([`Recipe::Sift`]):
//! their prompt texts, their score ranges (1 to 10 for image generation points) and their
//! resizing (image-generation candidates and video-understanding frames to 512x512 before
//! judging). Where it differs from them on purpose: scores are compared as numbers (the
//! scripts compare the matched strings, so "9" beats "10"), an unreadable verdict or score is
//! an error (the scripts take the first candidate or a score of 0), and a video's markers are
//! one per frame it gives (the scripts write eight).

pub mod bradley_terry;
pub mod job;
mod passes;
pub mod ranking;
pub mod sifting;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use unireward_models::judge::{PairProbs, Verdict};

pub use ranking::{Comparison, Ranking};
pub use sifting::{Dropped, SiftedPair, Sifting};

/// What a judge says about one ordered pair: probabilities (fast mode) or a parsed verdict
/// (generate mode).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Judgement {
    Probs(PairProbs),
    Verdict(Verdict),
}

/// A judge output that cannot be used: probabilities that are negative, not finite or all zero,
/// or a score that is not a finite number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidJudgement(pub String);

/// The judge as pair construction sees it. Candidates are indices into the prompt's candidate
/// list; `compare(i, j)` shows `i` first and `j` second.
pub trait PairJudge {
    /// The judge's own failures, which also carry the unusable outputs construction detects.
    type Error: From<InvalidJudgement>;

    fn compare(&mut self, first: usize, second: usize) -> Result<Judgement, Self::Error>;

    /// The point score of one candidate, on the task's scale.
    fn score(&mut self, candidate: usize) -> Result<f64, Self::Error>;

    /// [`Self::compare`] of each ordered pair, in order: what a judge that batches its
    /// prompt passes overrides.
    fn compare_many(&mut self, pairs: &[(usize, usize)]) -> Result<Vec<Judgement>, Self::Error> {
        pairs.iter().map(|&(i, j)| self.compare(i, j)).collect()
    }

    /// [`Self::score`] of each candidate, in order.
    fn score_many(&mut self, candidates: &[usize]) -> Result<Vec<f64>, Self::Error> {
        candidates.iter().map(|&c| self.score(c)).collect()
    }
}

/// How the chosen and rejected lists are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RankingMode {
    /// Fixed disjoint pairs (0, 1), (2, 3), ...: the reference behaviour.
    #[default]
    Disjoint,
    /// Every pair, ranked by a Bradley-Terry fit.
    RoundRobin,
}

impl FromStr for RankingMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disjoint" => Ok(RankingMode::Disjoint),
            "round-robin" => Ok(RankingMode::RoundRobin),
            _ => Err(format!(
                "unknown ranking {s:?}; expected disjoint or round-robin"
            )),
        }
    }
}

impl fmt::Display for RankingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RankingMode::Disjoint => "disjoint",
            RankingMode::RoundRobin => "round-robin",
        })
    }
}

/// Which reference scripts the judge's prompts, resizing and score ranges follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recipe {
    /// The DPO-data scripts (`DiffusionDPO/sift_dpo_data.py`, `VideoDPO/sift_dpo_data.py`,
    /// `preference_data_construction/*/infer+sift.py`): what the reference builds its DPO data
    /// with. They exist for the LLaVA family only.
    #[default]
    Sift,
    /// The inference scripts, as `engine score` prompts (the only prompts of the Qwen family).
    Inference,
}

impl FromStr for Recipe {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sift" => Ok(Recipe::Sift),
            "inference" => Ok(Recipe::Inference),
            _ => Err(format!("unknown recipe {s:?}; expected sift or inference")),
        }
    }
}

impl fmt::Display for Recipe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Recipe::Sift => "sift",
            Recipe::Inference => "inference",
        })
    }
}

/// The layout of an understanding task's pair lines (generation tasks' chosen and rejected are
/// media paths, for diffusion DPO, and always plain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PairFormat {
    /// Strings, as the reference's (LLaVA) DPO training reads them.
    #[default]
    Llava,
    /// TRL's conversational preference layout with `{"type": "image"}` items, which TRL's
    /// `DPOTrainer` takes for a vision model.
    Trl,
}

impl FromStr for PairFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llava" => Ok(PairFormat::Llava),
            "trl" => Ok(PairFormat::Trl),
            _ => Err(format!("unknown format {s:?}; expected llava or trl")),
        }
    }
}

impl fmt::Display for PairFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PairFormat::Llava => "llava",
            PairFormat::Trl => "trl",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairOptions {
    pub ranking: RankingMode,
    /// Judge each pair in both orders and average, against position bias.
    pub swap: bool,
    /// Prompts, resizing and score ranges (`engine pairs` only; [`construct`] takes the judge
    /// as given).
    pub recipe: Recipe,
    /// How `engine pairs` writes its lines.
    pub format: PairFormat,
}

/// Everything pair construction found for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Construction {
    pub ranking: Ranking,
    pub sifting: Sifting,
}

impl Construction {
    /// The preference pair, or why the prompt was dropped.
    pub fn outcome(&self) -> Result<&SiftedPair, &Dropped> {
        self.sifting.outcome.as_ref()
    }
}

/// Builds the preference pair of one prompt with `n` candidates.
pub fn construct<J: PairJudge>(
    judge: &mut J,
    n: usize,
    options: PairOptions,
) -> Result<Construction, J::Error> {
    let judgements = judge.compare_many(&ranking::planned(options.ranking, n, options.swap))?;
    let ranking = ranking::from_judgements(options.ranking, n, options.swap, &judgements)?;
    let sifting = sifting::sift(judge, &ranking.chosen, &ranking.rejected)?;
    Ok(Construction { ranking, sifting })
}
