//! Pair construction driven by scripted judges: disjoint-pair ranking, ties, odd n, round robin
//! with Bradley-Terry, swap averaging and point sifting.

use unireward_engine::pairs::bradley_terry::{self, BtOptions};
use unireward_engine::pairs::{
    construct, ranking, sifting, Dropped, InvalidJudgement, Judgement, PairJudge, PairOptions,
    PairProbs, RankingMode, SiftedPair, Verdict,
};

/// A judge made of two closures, recording every call.
struct Scripted<C, S> {
    compare: C,
    score: S,
    compared: Vec<(usize, usize)>,
    scored: Vec<usize>,
}

fn scripted<C, S>(compare: C, score: S) -> Scripted<C, S>
where
    C: FnMut(usize, usize) -> Judgement,
    S: FnMut(usize) -> f64,
{
    Scripted {
        compare,
        score,
        compared: Vec::new(),
        scored: Vec::new(),
    }
}

impl<C, S> PairJudge for Scripted<C, S>
where
    C: FnMut(usize, usize) -> Judgement,
    S: FnMut(usize) -> f64,
{
    type Error = InvalidJudgement;

    fn compare(&mut self, first: usize, second: usize) -> Result<Judgement, InvalidJudgement> {
        self.compared.push((first, second));
        Ok((self.compare)(first, second))
    }

    fn score(&mut self, candidate: usize) -> Result<f64, InvalidJudgement> {
        self.scored.push(candidate);
        Ok((self.score)(candidate))
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Probabilities from latent log-strengths, with `bias` extra logit for whoever is shown first.
fn latent(strength: &[f64], bias: f64, first: usize, second: usize) -> Judgement {
    let p = sigmoid(strength[first] - strength[second] + bias);
    Judgement::Probs(PairProbs {
        first: p,
        second: 1.0 - p,
        tie: 0.0,
    })
}

fn disjoint() -> PairOptions {
    PairOptions {
        ranking: RankingMode::Disjoint,
        swap: false,
        ..PairOptions::default()
    }
}

#[test]
fn disjoint_pairs_split_winners_and_losers() {
    // The higher index wins in pairs (0,1) and (4,5), the lower in (2,3), (6,7), (8,9).
    let verdicts = [
        Verdict::Second,
        Verdict::First,
        Verdict::Second,
        Verdict::First,
        Verdict::First,
    ];
    let scores = [3.0, 4.0, 5.0, 1.0, 2.0, 9.0, 10.0, 2.0, 7.0, 3.0];
    let mut judge = scripted(|a, _| Judgement::Verdict(verdicts[a / 2]), |c| scores[c]);
    let built = construct(&mut judge, 10, disjoint()).unwrap();
    assert_eq!(judge.compared, vec![(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]);
    assert_eq!(built.ranking.chosen, vec![1, 2, 5, 6, 8]);
    assert_eq!(built.ranking.rejected, vec![0, 3, 4, 7, 9]);
    assert!(built.ranking.unranked.is_empty());
    // Numbers, not strings: 10 beats 9 (as strings "9" > "10").
    assert_eq!(
        built.outcome().unwrap(),
        &SiftedPair {
            chosen: 6,
            rejected: 3,
            chosen_score: 10.0,
            rejected_score: 1.0,
        }
    );
    assert_eq!(judge.scored, vec![1, 2, 5, 6, 8, 0, 3, 4, 7, 9]);
}

#[test]
fn a_tie_goes_to_the_first_shown() {
    let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::Tie), |c| 5.0 - c as f64);
    let built = construct(&mut judge, 4, disjoint()).unwrap();
    assert_eq!(built.ranking.chosen, vec![0, 2]);
    assert_eq!(built.ranking.rejected, vec![1, 3]);
    assert!(built.ranking.comparisons.iter().all(|c| c.tie));
    let pair = built.outcome().unwrap();
    assert_eq!((pair.chosen, pair.rejected), (0, 3));
    // Tied probabilities behave the same.
    let mut judge = scripted(
        |_, _| {
            Judgement::Probs(PairProbs {
                first: 0.3,
                second: 0.3,
                tie: 0.4,
            })
        },
        |_| 1.0,
    );
    let c = ranking::judge_pair(&mut judge, 7, 3, false).unwrap();
    assert_eq!((c.winner, c.loser, c.tie), (7, 3, true));
    // A likely tie still goes to the side that is more likely to win.
    let mut judge = scripted(
        |_, _| {
            Judgement::Probs(PairProbs {
                first: 0.1,
                second: 0.3,
                tie: 0.6,
            })
        },
        |_| 1.0,
    );
    let c = ranking::judge_pair(&mut judge, 7, 3, false).unwrap();
    assert_eq!((c.winner, c.loser, c.tie), (3, 7, true));
}

#[test]
fn prompt_is_dropped_when_chosen_is_not_better() {
    // Every chosen candidate scores 4, the worst rejected one 4 too: equal is dropped.
    let scores = [4.0, 4.0, 4.0, 5.0];
    let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::First), |c| scores[c]);
    let built = construct(&mut judge, 4, disjoint()).unwrap();
    assert_eq!(
        built.outcome().unwrap_err(),
        &Dropped::NotBetter {
            chosen: 0,
            rejected: 1,
            chosen_score: 4.0,
            rejected_score: 4.0,
        }
    );
    let msg = built.outcome().unwrap_err().to_string();
    assert!(msg.contains("not above"), "{msg}");
    // Rejected scoring higher: dropped as well.
    let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::First), |c| c as f64);
    let built = construct(&mut judge, 2, disjoint()).unwrap();
    assert!(matches!(built.outcome(), Err(Dropped::NotBetter { .. })));
}

#[test]
fn odd_n_leaves_the_last_candidate_out() {
    let mut judge = scripted(
        |_, _| Judgement::Verdict(Verdict::Second),
        |c| 10.0 - c as f64,
    );
    let built = construct(&mut judge, 5, disjoint()).unwrap();
    assert_eq!(judge.compared, vec![(0, 1), (2, 3)]);
    assert_eq!(built.ranking.chosen, vec![1, 3]);
    assert_eq!(built.ranking.rejected, vec![0, 2]);
    assert_eq!(built.ranking.unranked, vec![4]);
    assert!(
        !judge.scored.contains(&4),
        "the unpaired candidate is not scored"
    );
    let pair = built.outcome().unwrap();
    assert_eq!((pair.chosen, pair.rejected), (1, 2));
}

#[test]
fn two_candidates_make_one_pair() {
    let mut judge = scripted(
        |_, _| Judgement::Verdict(Verdict::Second),
        |c| [2.0, 4.5][c],
    );
    let built = construct(&mut judge, 2, disjoint()).unwrap();
    assert_eq!(judge.compared, vec![(0, 1)]);
    assert_eq!(
        built.outcome().unwrap(),
        &SiftedPair {
            chosen: 1,
            rejected: 0,
            chosen_score: 4.5,
            rejected_score: 2.0,
        }
    );
}

#[test]
fn fewer_than_two_candidates_is_dropped_without_judging() {
    for n in [0, 1] {
        for ranking in [RankingMode::Disjoint, RankingMode::RoundRobin] {
            let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::First), |_| 1.0);
            let built = construct(
                &mut judge,
                n,
                PairOptions {
                    ranking,
                    swap: true,
                    ..PairOptions::default()
                },
            )
            .unwrap();
            assert!(judge.compared.is_empty() && judge.scored.is_empty());
            assert_eq!(
                built.outcome().unwrap_err(),
                &Dropped::TooFewCandidates {
                    chosen: 0,
                    rejected: 0,
                }
            );
        }
    }
}

#[test]
fn round_robin_recovers_a_known_strength_order() {
    // Latent log-strengths in a scrambled order; candidate 3 is strongest, 6 weakest.
    let strength = [0.4, -1.2, 1.5, 2.1, -0.3, 0.9, -2.0, 0.0, 1.1, -0.8];
    let mut judge = scripted(|a, b| latent(&strength, 0.0, a, b), |c| strength[c]);
    let options = PairOptions {
        ranking: RankingMode::RoundRobin,
        swap: false,
        ..PairOptions::default()
    };
    let built = construct(&mut judge, 10, options).unwrap();
    assert_eq!(judge.compared.len(), 45);
    let fit = built.ranking.strengths.as_ref().unwrap();
    assert!(fit.converged, "{} iterations", fit.iterations);
    let mut expected: Vec<usize> = (0..10).collect();
    expected.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]));
    assert_eq!(fit.order(), expected);
    assert_eq!(built.ranking.chosen, expected[..5].to_vec());
    let mut worst_first = expected[5..].to_vec();
    worst_first.reverse();
    assert_eq!(built.ranking.rejected, worst_first);
    // Soft wins from exact BT probabilities give back the latent strengths, up to the shrinkage
    // of the small prior.
    for i in 0..10 {
        for j in 0..10 {
            let want = sigmoid(strength[i] - strength[j]);
            assert!(
                (fit.win_probability(i, j) - want).abs() < 0.02,
                "{i} vs {j}"
            );
        }
    }
    let pair = built.outcome().unwrap();
    assert_eq!((pair.chosen, pair.rejected), (3, 6));
}

#[test]
fn round_robin_with_odd_n_leaves_the_middle_unranked() {
    let strength = [0.0, 3.0, -3.0, 1.0, -1.0];
    let mut judge = scripted(
        |a, b| {
            Judgement::Verdict(if strength[a] > strength[b] {
                Verdict::First
            } else {
                Verdict::Second
            })
        },
        |c| strength[c],
    );
    let options = PairOptions {
        ranking: RankingMode::RoundRobin,
        swap: false,
        ..PairOptions::default()
    };
    let built = construct(&mut judge, 5, options).unwrap();
    assert_eq!(built.ranking.chosen, vec![1, 3]);
    assert_eq!(built.ranking.rejected, vec![2, 4]);
    assert_eq!(built.ranking.unranked, vec![0]);
    // Hard verdicts: the undefeated candidate still has a finite strength.
    let fit = built.ranking.strengths.as_ref().unwrap();
    assert!(fit.converged && fit.strengths.iter().all(|s| s.is_finite() && *s > 0.0));
}

#[test]
fn swap_averaging_cancels_a_position_bias() {
    // Candidate 1 is better (by 1 logit), but the judge adds 2 logits for the first position.
    let strength = [0.0, 1.0];
    let biased = |swap| {
        let mut judge = scripted(|a, b| latent(&strength, 2.0, a, b), |c| strength[c]);
        let c = ranking::judge_pair(&mut judge, 0, 1, swap).unwrap();
        (c, judge.compared)
    };
    let (plain, calls) = biased(false);
    assert_eq!(calls, vec![(0, 1)]);
    assert_eq!(plain.winner, 0, "without swap the position bias decides");
    let (swapped, calls) = biased(true);
    assert_eq!(calls, vec![(0, 1), (1, 0)]);
    assert_eq!(swapped.winner, 1);
    // The averaged probability is symmetric in the bias: (s(-1+2) + s(-1-2)) / 2.
    let want = 0.5 * (sigmoid(1.0) + sigmoid(-3.0));
    assert!((swapped.probs.first - want).abs() < 1e-12);
    assert!((swapped.probs.first + swapped.probs.second - 1.0).abs() < 1e-12);

    // Over a whole round robin, swapping recovers the order a biased judge would scramble.
    let strength = [0.0, 0.5, 1.0, 1.5];
    let mut judge = scripted(|a, b| latent(&strength, 2.0, a, b), |c| strength[c]);
    let options = PairOptions {
        ranking: RankingMode::RoundRobin,
        swap: true,
        ..PairOptions::default()
    };
    let built = construct(&mut judge, 4, options).unwrap();
    assert_eq!(judge.compared.len(), 12);
    assert_eq!(
        built.ranking.strengths.as_ref().unwrap().order(),
        vec![3, 2, 1, 0]
    );
}

#[test]
fn sifting_breaks_equal_scores_by_list_order() {
    let scores = [7.0, 7.0, 1.0, 1.0];
    let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::First), |c| scores[c]);
    let s = sifting::sift(&mut judge, &[1, 0], &[3, 2]).unwrap();
    let pair = s.outcome.unwrap();
    assert_eq!((pair.chosen, pair.rejected), (1, 3));
    assert_eq!(s.scores, vec![(1, 7.0), (0, 7.0), (3, 1.0), (2, 1.0)]);
}

#[test]
fn unusable_judge_outputs_are_errors() {
    let mut judge = scripted(
        |_, _| {
            Judgement::Probs(PairProbs {
                first: f64::NAN,
                second: 0.5,
                tie: 0.0,
            })
        },
        |_| 1.0,
    );
    let err = construct(&mut judge, 2, disjoint()).unwrap_err();
    assert!(err.0.contains("candidates 0 and 1"), "{err}");
    let mut judge = scripted(|_, _| Judgement::Verdict(Verdict::First), |_| f64::NAN);
    let err = construct(&mut judge, 2, disjoint()).unwrap_err();
    assert!(err.0.contains("score"), "{err}");
}

#[test]
fn bradley_terry_fit_on_counts() {
    // 0 beats 1 three times out of four, 1 beats 2 three times out of four, 0 always beats 2.
    let wins = vec![
        vec![0.0, 3.0, 4.0],
        vec![1.0, 0.0, 3.0],
        vec![0.0, 1.0, 0.0],
    ];
    let fit = bradley_terry::fit(&wins, BtOptions::default());
    assert!(fit.converged);
    assert_eq!(fit.order(), vec![0, 1, 2]);
    let geo_mean = fit.strengths.iter().map(|s| s.ln()).sum::<f64>() / 3.0;
    assert!(geo_mean.abs() < 1e-9);
    // The MM fixed point: each candidate's wins equal its expected wins.
    let prior = BtOptions::default().prior;
    for (i, row) in wins.iter().enumerate() {
        let others = || (0..3).filter(move |&j| j != i);
        let observed: f64 = others().map(|j| row[j] + prior).sum();
        let expected: f64 = others()
            .map(|j| (row[j] + wins[j][i] + 2.0 * prior) * fit.win_probability(i, j))
            .sum();
        assert!(
            (observed - expected).abs() < 1e-6,
            "{i}: {observed} vs {expected}"
        );
    }
    assert_eq!(
        "round-robin".parse::<RankingMode>().unwrap(),
        RankingMode::RoundRobin
    );
    assert_eq!(RankingMode::default().to_string(), "disjoint");
    assert!("roundrobin".parse::<RankingMode>().is_err());
}
