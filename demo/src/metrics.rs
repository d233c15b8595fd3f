//! The figures the demo reports, computed against the world's ground truth: pair accuracy
//! and point-score correlation of the judge per task, how often `engine pairs` chose the
//! truly better candidate, and the answer model's accuracy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use unireward_models::formats::score_record::{ScoreAnswer, ScoreRecord};
#[cfg(test)]
use unireward_models::judge::Task;
use unireward_models::judge::{Mode, Verdict};

use crate::judge_data::Truth;

/// Pair accuracy on a control set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlFigures {
    pub pairs: usize,
    pub accuracy: Option<f64>,
    pub failed: usize,
}

/// Pair accuracy per control set.
pub fn control_figures(
    answers: &[ScoreRecord],
    truth: &[Truth],
) -> BTreeMap<String, ControlFigures> {
    let by_id = answers_by_id(answers);
    let mut out: BTreeMap<String, (ControlFigures, usize)> = BTreeMap::new();
    for t in truth {
        let (Some(name), Some(answer)) = (&t.control, by_id.get(t.id.as_str())) else {
            continue;
        };
        let (fig, right) = out.entry(name.clone()).or_default();
        if answer.error().is_some() || t.mode != Mode::Pair {
            fig.failed += 1;
            continue;
        }
        let wanted = if t.qualities[0] > t.qualities[1] {
            Verdict::First
        } else {
            Verdict::Second
        };
        fig.pairs += 1;
        *right += usize::from(
            matches!(answer.answer(), Some(ScoreAnswer::Pair(p)) if p.verdict == wanted),
        );
    }
    out.into_iter()
        .map(|(k, (mut fig, right))| {
            fig.accuracy = (fig.pairs > 0).then(|| right as f64 / fig.pairs as f64);
            (k, fig)
        })
        .collect()
}

/// The answers by their string ids (the demo names every request with a string).
fn answers_by_id(answers: &[ScoreRecord]) -> BTreeMap<&str, &ScoreRecord> {
    answers
        .iter()
        .filter_map(|a| a.id().as_str().map(|id| (id, a)))
        .collect()
}

/// Pearson correlation; `None` when either side is constant or there are fewer than 3 points.
pub fn pearson(xs: &[f64], ys: &[f64]) -> Option<f64> {
    let n = xs.len().min(ys.len());
    if n < 3 {
        return None;
    }
    let mx = xs[..n].iter().sum::<f64>() / n as f64;
    let my = ys[..n].iter().sum::<f64>() / n as f64;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (dx, dy) = (xs[i] - mx, ys[i] - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

/// The judge's figures on one task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskFigures {
    pub pairs: usize,
    /// Share of pairs whose most probable verdict names the better candidate.
    pub pair_accuracy: Option<f64>,
    /// Mean probability given to the better candidate.
    pub pair_mean_p_correct: Option<f64>,
    pub points: usize,
    /// Pearson correlation of the expected score with the true score.
    pub point_pearson: Option<f64>,
    /// Records the engine answered with an error, by mode.
    pub pair_errors: usize,
    pub point_errors: usize,
    /// The first error message, to say why.
    pub first_error: Option<String>,
}

/// Judge figures per task from the engine's answers and the ground truth.
pub fn judge_figures(answers: &[ScoreRecord], truth: &[Truth]) -> BTreeMap<String, TaskFigures> {
    let by_id = answers_by_id(answers);
    let mut out: BTreeMap<String, TaskFigures> = BTreeMap::new();
    let mut hits: BTreeMap<&'static str, (usize, f64)> = BTreeMap::new();
    let mut points: BTreeMap<&'static str, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for t in truth.iter().filter(|t| t.control.is_none()) {
        let fig = out.entry(t.task.to_string()).or_default();
        let Some(answer) = by_id.get(t.id.as_str()) else {
            continue;
        };
        if let Some(err) = answer.error() {
            match t.mode {
                Mode::Pair => fig.pair_errors += 1,
                Mode::Point => fig.point_errors += 1,
            }
            fig.first_error.get_or_insert_with(|| err.to_string());
            continue;
        }
        match t.mode {
            Mode::Pair => {
                let first_better = t.qualities[0] > t.qualities[1];
                let (right, p) = match answer.answer() {
                    Some(ScoreAnswer::Pair(a)) => {
                        let right = if first_better {
                            Verdict::First
                        } else {
                            Verdict::Second
                        };
                        let p = if first_better {
                            a.probs.first
                        } else {
                            a.probs.second
                        };
                        (a.verdict == right, p)
                    }
                    _ => (false, 0.0),
                };
                let h = hits.entry(t.task.as_str()).or_default();
                h.0 += usize::from(right);
                h.1 += p;
                fig.pairs += 1;
            }
            Mode::Point => {
                if let (Some(ScoreAnswer::Point(a)), Some(truth_score)) = (answer.answer(), t.score)
                {
                    let score = a.score;
                    let e = points.entry(t.task.as_str()).or_default();
                    e.0.push(score);
                    e.1.push(truth_score);
                    fig.points += 1;
                }
            }
        }
    }
    for (task, (n_right, p_sum)) in hits {
        let fig = out.entry(task.to_string()).or_default();
        if fig.pairs > 0 {
            fig.pair_accuracy = Some(n_right as f64 / fig.pairs as f64);
            fig.pair_mean_p_correct = Some(p_sum / fig.pairs as f64);
        }
    }
    for (task, (pred, gold)) in points {
        out.entry(task.to_string()).or_default().point_pearson = pearson(&pred, &gold);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn figures_count_right_verdicts_and_correlate_scores() {
        let truth = vec![
            Truth {
                id: "a".into(),
                task: Task::ImageGeneration,
                mode: Mode::Pair,
                qualities: vec![5, 2],
                score: None,
                control: None,
            },
            Truth {
                id: "b".into(),
                task: Task::ImageGeneration,
                mode: Mode::Pair,
                qualities: vec![1, 3],
                score: None,
                control: None,
            },
            Truth {
                id: "c".into(),
                task: Task::ImageGeneration,
                mode: Mode::Pair,
                qualities: vec![1, 3],
                score: None,
                control: None,
            },
        ];
        let mut truth = truth;
        for (i, q) in [1usize, 3, 5].iter().enumerate() {
            truth.push(Truth {
                id: format!("p{i}"),
                task: Task::ImageGeneration,
                mode: Mode::Point,
                qualities: vec![*q],
                score: Some(*q as f64),
                control: None,
            });
        }
        // As `engine score` writes them.
        let answers: Vec<ScoreRecord> = [
            json!({"id": "a", "verdict": "first", "probs": {"first": 0.9, "second": 0.1, "tie": 0.0}}),
            json!({"id": "b", "verdict": "first", "probs": {"first": 0.6, "second": 0.4, "tie": 0.0}}),
            json!({"id": "c", "error": "broken"}),
            json!({"id": "p0", "score": 1.5, "score_argmax": 1.0}),
            json!({"id": "p1", "score": 2.5, "score_argmax": 3.0}),
            json!({"id": "p2", "score": 4.5, "score_argmax": 5.0}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let figs = judge_figures(&answers, &truth);
        let f = &figs["image_generation"];
        assert_eq!(f.pairs, 2);
        assert_eq!(f.pair_errors, 1);
        assert_eq!(f.pair_accuracy, Some(0.5));
        assert!((f.pair_mean_p_correct.unwrap() - 0.65).abs() < 1e-12);
        assert!(f.point_pearson.unwrap() > 0.95);
        assert_eq!(f.first_error.as_deref(), Some("broken"));
    }

    #[test]
    fn pearson_of_constant_is_undefined() {
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]).unwrap() - 1.0).abs() < 1e-12);
    }
}
