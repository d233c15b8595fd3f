//! Pair ranking: which candidates are chosen and which rejected.
//!
//! A comparison is won by the side with the higher win probability. A tie (a tie verdict, or
//! equal probabilities) goes to the candidate shown first, as in the reference scripts, whose
//! verdict check falls through to "the first is chosen". With an odd number of candidates the
//! last one has no partner in disjoint pairs and is neither chosen nor rejected (the reference
//! always has ten); it is then not scored in sifting either, which scores only the two lists.
//! It is left out rather than paired again, because a second comparison of an already judged
//! candidate would weigh that one twice; [`Ranking::unranked`] names it, and so does the record.

use super::bradley_terry::{self, BtFit, BtOptions};
use super::{InvalidJudgement, Judgement, PairJudge, PairProbs, Verdict};

/// One judged pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Shown first (in the first order, when swapped).
    pub first: usize,
    pub second: usize,
    /// Probabilities in (first, second) order; the mean of both orders when swapped.
    pub probs: PairProbs,
    pub winner: usize,
    pub loser: usize,
    /// The judge found the two equally good; the winner is then the first shown.
    pub tie: bool,
}

/// The outcome of pair ranking for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Disjoint pairs: winners in pair order. Round robin: top half, strongest first.
    pub chosen: Vec<usize>,
    /// Disjoint pairs: losers in pair order. Round robin: bottom half, weakest first.
    pub rejected: Vec<usize>,
    /// Candidates in neither list (odd n).
    pub unranked: Vec<usize>,
    pub comparisons: Vec<Comparison>,
    /// Round robin only: the Bradley-Terry fit.
    pub strengths: Option<BtFit>,
}

fn checked_probs(
    first: usize,
    second: usize,
    judgement: Judgement,
) -> Result<PairProbs, InvalidJudgement> {
    let p = match judgement {
        Judgement::Probs(p) => p,
        Judgement::Verdict(v) => PairProbs::certain(v),
    };
    let parts = [p.first, p.second, p.tie];
    let total: f64 = parts.iter().sum();
    if parts.iter().any(|x| !x.is_finite() || *x < 0.0) || total <= 0.0 {
        return Err(InvalidJudgement(format!(
            "comparison of candidates {first} and {second}: probabilities first {}, second {}, \
             tie {} are not a distribution",
            p.first, p.second, p.tie
        )));
    }
    Ok(PairProbs {
        first: p.first / total,
        second: p.second / total,
        tie: p.tie / total,
    })
}

/// Judges `first` against `second`; with `swap` also `second` against `first`, averaging the
/// two so that a preference for a position cancels out.
pub fn judge_pair<J: PairJudge>(
    judge: &mut J,
    first: usize,
    second: usize,
    swap: bool,
) -> Result<Comparison, J::Error> {
    let mut probs = checked_probs(first, second, judge.compare(first, second)?)?;
    if swap {
        let reversed = checked_probs(second, first, judge.compare(second, first)?)?;
        probs = probs.mean(&reversed.swapped());
    }
    let (winner, loser) = if probs.second > probs.first {
        (second, first)
    } else {
        (first, second)
    };
    Ok(Comparison {
        first,
        second,
        probs,
        winner,
        loser,
        tie: probs.verdict() == Verdict::Tie,
    })
}

/// The reference ranking: (0, 1), (2, 3), ...
pub fn disjoint_pairs<J: PairJudge>(
    judge: &mut J,
    n: usize,
    swap: bool,
) -> Result<Ranking, J::Error> {
    let mut ranking = Ranking {
        chosen: Vec::with_capacity(n / 2),
        rejected: Vec::with_capacity(n / 2),
        unranked: Vec::new(),
        comparisons: Vec::with_capacity(n / 2),
        strengths: None,
    };
    for pair in 0..n / 2 {
        let c = judge_pair(judge, 2 * pair, 2 * pair + 1, swap)?;
        ranking.chosen.push(c.winner);
        ranking.rejected.push(c.loser);
        ranking.comparisons.push(c);
    }
    if n % 2 == 1 {
        ranking.unranked.push(n - 1);
    }
    Ok(ranking)
}

/// Every pair (i, j), i < j, with a Bradley-Terry fit in which a tie counts half a win for
/// each side and a comparison counts its probabilities as fractional wins.
pub fn round_robin<J: PairJudge>(judge: &mut J, n: usize, swap: bool) -> Result<Ranking, J::Error> {
    let mut comparisons = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            comparisons.push(judge_pair(judge, i, j, swap)?);
        }
    }
    let mut wins = vec![vec![0.0; n]; n];
    for c in &comparisons {
        wins[c.first][c.second] += c.probs.first + 0.5 * c.probs.tie;
        wins[c.second][c.first] += c.probs.second + 0.5 * c.probs.tie;
    }
    let fit = bradley_terry::fit(&wins, BtOptions::default());
    let order = fit.order();
    let half = n / 2;
    let chosen = order[..half].to_vec();
    let rejected = order[n - half..].iter().rev().copied().collect();
    let unranked = order[half..n - half].to_vec();
    Ok(Ranking {
        chosen,
        rejected,
        unranked,
        comparisons,
        strengths: Some(fit),
    })
}
