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
use super::{InvalidJudgement, Judgement, PairJudge, PairProbs, RankingMode, Verdict};

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
    let forward = judge.compare(first, second)?;
    let reversed = if swap {
        Some(judge.compare(second, first)?)
    } else {
        None
    };
    Ok(comparison(first, second, forward, reversed)?)
}

/// A comparison from its judgement(s), `reversed` being `second` shown first.
fn comparison(
    first: usize,
    second: usize,
    forward: Judgement,
    reversed: Option<Judgement>,
) -> Result<Comparison, InvalidJudgement> {
    let mut probs = checked_probs(first, second, forward)?;
    if let Some(r) = reversed {
        let reversed = checked_probs(second, first, r)?;
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

/// The pairs `mode` compares among `n` candidates: (0, 1), (2, 3), ... or every (i, j), i < j.
fn pairs(mode: RankingMode, n: usize) -> Vec<(usize, usize)> {
    match mode {
        RankingMode::Disjoint => (0..n / 2).map(|p| (2 * p, 2 * p + 1)).collect(),
        RankingMode::RoundRobin => (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .collect(),
    }
}

/// Every ordered comparison a ranking asks the judge for, in the order a judge sees them one
/// at a time: each pair, followed by its reverse when `swap`. All are known before any is
/// judged, so they can be judged together.
pub fn planned(mode: RankingMode, n: usize, swap: bool) -> Vec<(usize, usize)> {
    pairs(mode, n)
        .into_iter()
        .flat_map(|(i, j)| {
            let reverse = swap.then_some((j, i));
            std::iter::once((i, j)).chain(reverse)
        })
        .collect()
}

/// The ranking from the judgements of [`planned`]`(mode, n, swap)`, in its order.
pub fn from_judgements(
    mode: RankingMode,
    n: usize,
    swap: bool,
    judgements: &[Judgement],
) -> Result<Ranking, InvalidJudgement> {
    let pairs = pairs(mode, n);
    let per_pair = if swap { 2 } else { 1 };
    if judgements.len() != pairs.len() * per_pair {
        return Err(InvalidJudgement(format!(
            "{} judgements for {} comparisons",
            judgements.len(),
            pairs.len() * per_pair
        )));
    }
    let comparisons = pairs
        .iter()
        .zip(judgements.chunks(per_pair))
        .map(|(&(i, j), js)| comparison(i, j, js[0], js.get(1).copied()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match mode {
        RankingMode::Disjoint => disjoint_ranking(n, comparisons),
        RankingMode::RoundRobin => round_robin_ranking(n, comparisons),
    })
}

/// The reference ranking: (0, 1), (2, 3), ...
pub fn disjoint_pairs<J: PairJudge>(
    judge: &mut J,
    n: usize,
    swap: bool,
) -> Result<Ranking, J::Error> {
    ranked(judge, RankingMode::Disjoint, n, swap)
}

/// Every pair (i, j), i < j, with a Bradley-Terry fit in which a tie counts half a win for
/// each side and a comparison counts its probabilities as fractional wins.
pub fn round_robin<J: PairJudge>(judge: &mut J, n: usize, swap: bool) -> Result<Ranking, J::Error> {
    ranked(judge, RankingMode::RoundRobin, n, swap)
}

fn ranked<J: PairJudge>(
    judge: &mut J,
    mode: RankingMode,
    n: usize,
    swap: bool,
) -> Result<Ranking, J::Error> {
    let judgements = judge.compare_many(&planned(mode, n, swap))?;
    Ok(from_judgements(mode, n, swap, &judgements)?)
}

fn disjoint_ranking(n: usize, comparisons: Vec<Comparison>) -> Ranking {
    let mut ranking = Ranking {
        chosen: comparisons.iter().map(|c| c.winner).collect(),
        rejected: comparisons.iter().map(|c| c.loser).collect(),
        unranked: Vec::new(),
        comparisons,
        strengths: None,
    };
    if n % 2 == 1 {
        ranking.unranked.push(n - 1);
    }
    ranking
}

fn round_robin_ranking(n: usize, comparisons: Vec<Comparison>) -> Ranking {
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
    Ranking {
        chosen,
        rejected,
        unranked,
        comparisons,
        strengths: Some(fit),
    }
}
