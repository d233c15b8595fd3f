//! Point sifting: the preference pair from the scores of the chosen and rejected candidates.
//!
//! Scores are compared as numbers (the reference scripts compare the regex-extracted strings in
//! places, where "9" > "10"). Among equal scores the candidate earlier in its list is taken, as
//! Python's `list.index(max(...))` does.

use std::fmt;

use super::{InvalidJudgement, PairJudge, RankingMode};

/// The preference pair of one prompt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SiftedPair {
    pub chosen: usize,
    pub rejected: usize,
    pub chosen_score: f64,
    pub rejected_score: f64,
}

/// Why a prompt yields no pair.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dropped {
    /// Fewer than two candidates (or, with ranking done elsewhere, an empty list).
    TooFewCandidates { chosen: usize, rejected: usize },
    /// The best chosen candidate scored no higher than the worst rejected one.
    NotBetter {
        chosen: usize,
        rejected: usize,
        chosen_score: f64,
        rejected_score: f64,
    },
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dropped::TooFewCandidates { chosen, rejected } => write!(
                f,
                "too few candidates: {chosen} chosen and {rejected} rejected, a pair needs one of each"
            ),
            Dropped::NotBetter {
                chosen,
                rejected,
                chosen_score,
                rejected_score,
            } => write!(
                f,
                "best chosen candidate {chosen} scored {chosen_score}, not above the worst \
                 rejected candidate {rejected} ({rejected_score})"
            ),
        }
    }
}

/// The scores sifting collected and what it made of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Sifting {
    /// `(candidate, score)` for every candidate scored, chosen list first.
    pub scores: Vec<(usize, f64)>,
    pub outcome: Result<SiftedPair, Dropped>,
}

/// The candidates sifting scores: the chosen list, then the rejected one, each once; none
/// when either list is empty (the prompt is then dropped unscored). All are known before any
/// is scored, so they can be scored together.
pub fn to_score(chosen: &[usize], rejected: &[usize]) -> Vec<usize> {
    if chosen.is_empty() || rejected.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<usize> = Vec::with_capacity(chosen.len() + rejected.len());
    for &c in chosen.iter().chain(rejected) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The candidates sifting will score whatever the ranking says, when that is known before
/// ranking: every candidate in a pair of disjoint pairs, and with round robin every candidate
/// when their count is even (with an odd count the unranked one is known only after). So
/// they can be scored together with the comparisons.
pub fn known_before_ranking(mode: RankingMode, n: usize) -> Option<Vec<usize>> {
    if n < 2 {
        return None;
    }
    match mode {
        RankingMode::Disjoint => Some((0..n / 2 * 2).collect()),
        RankingMode::RoundRobin => n.is_multiple_of(2).then(|| (0..n).collect()),
    }
}

/// Scores every candidate of both lists and pairs the best chosen with the worst rejected.
pub fn sift<J: PairJudge>(
    judge: &mut J,
    chosen: &[usize],
    rejected: &[usize],
) -> Result<Sifting, J::Error> {
    let wanted = to_score(chosen, rejected);
    let scores = judge.score_many(&wanted)?;
    Ok(from_scores(chosen, rejected, &wanted, &scores)?)
}

/// Sifting from the `scores` of the candidates `scored` (in its order), which include those
/// [`to_score`] names (they may include more: scored before the lists were known).
pub fn from_scores(
    chosen: &[usize],
    rejected: &[usize],
    scored: &[usize],
    scores: &[f64],
) -> Result<Sifting, InvalidJudgement> {
    if chosen.is_empty() || rejected.is_empty() {
        return Ok(Sifting {
            scores: Vec::new(),
            outcome: Err(Dropped::TooFewCandidates {
                chosen: chosen.len(),
                rejected: rejected.len(),
            }),
        });
    }
    if scored.len() != scores.len() {
        return Err(InvalidJudgement(format!(
            "{} scores for {} candidates",
            scores.len(),
            scored.len()
        )));
    }
    let score_of = |c: usize| {
        let s = scored
            .iter()
            .position(|&k| k == c)
            .map(|at| scores[at])
            .ok_or_else(|| InvalidJudgement(format!("candidate {c} was not scored")))?;
        if !s.is_finite() {
            return Err(InvalidJudgement(format!(
                "candidate {c}: score {s} is not a number"
            )));
        }
        Ok(s)
    };
    let scores = to_score(chosen, rejected)
        .into_iter()
        .map(|c| Ok((c, score_of(c)?)))
        .collect::<Result<Vec<(usize, f64)>, InvalidJudgement>>()?;
    let listed = |list: &[usize]| {
        list.iter()
            .map(|&c| score_of(c))
            .collect::<Result<Vec<_>, _>>()
    };
    let chosen_scores = listed(chosen)?;
    let rejected_scores = listed(rejected)?;
    let mut best = 0;
    for (k, s) in chosen_scores.iter().enumerate() {
        if *s > chosen_scores[best] {
            best = k;
        }
    }
    let mut worst = 0;
    for (k, s) in rejected_scores.iter().enumerate() {
        if *s < rejected_scores[worst] {
            worst = k;
        }
    }
    let pair = SiftedPair {
        chosen: chosen[best],
        rejected: rejected[worst],
        chosen_score: chosen_scores[best],
        rejected_score: rejected_scores[worst],
    };
    let outcome = if pair.chosen_score > pair.rejected_score {
        Ok(pair)
    } else {
        Err(Dropped::NotBetter {
            chosen: pair.chosen,
            rejected: pair.rejected,
            chosen_score: pair.chosen_score,
            rejected_score: pair.rejected_score,
        })
    };
    Ok(Sifting { scores, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::ranking::{from_judgements, planned};
    use crate::pairs::{Judgement, PairProbs};

    /// Whatever the verdicts, the candidates scored early are those sifting asks for.
    #[test]
    fn the_early_scores_are_those_sifting_asks_for() {
        for mode in [RankingMode::Disjoint, RankingMode::RoundRobin] {
            for n in 2..8 {
                for seed in 0..5usize {
                    let judgements: Vec<Judgement> = planned(mode, n, false)
                        .iter()
                        .map(|&(i, j)| {
                            let x = ((i * 7 + j * 13 + seed * 5) % 11) as f64 / 10.0;
                            Judgement::Probs(PairProbs {
                                first: x,
                                second: 1.0 - x,
                                tie: 0.0,
                            })
                        })
                        .collect();
                    let ranking = from_judgements(mode, n, false, &judgements).unwrap();
                    let mut asked = to_score(&ranking.chosen, &ranking.rejected);
                    asked.sort_unstable();
                    match known_before_ranking(mode, n) {
                        Some(early) => assert_eq!(early, asked, "{mode} n={n}"),
                        None => {
                            assert!(mode == RankingMode::RoundRobin && n % 2 == 1);
                            assert_eq!(asked.len(), n - 1);
                        }
                    }
                }
            }
        }
    }
}
