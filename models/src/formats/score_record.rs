//! `engine score` answers (DESIGN.md "Request formats"): `{"verdict", "probs"}` for a pair,
//! `{"score", "score_argmax"}` for a point, each with `"text"` (the rationale) in generate
//! mode, and `"scores"` (per dimension) where the template family's answer has dimensions:
//! `{"alignment": 3.2, "coherence": 4.0, "style": 2.9}` for a point (the overall `score` is
//! their mean), `{"alignment": {"first": 0.44, "second": 0.56}, ...}` for a pair (the overall
//! `probs` are the mean of the normalised shares). A line of the output is a [`Record`] over
//! them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::Record;
use crate::judge::{PairProbs, Verdict};

pub type ScoreRecord = Record<ScoreAnswer>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ScoreAnswer {
    Pair(PairAnswer),
    Point(PointAnswer),
}

impl ScoreAnswer {
    /// The rationale, in generate mode.
    pub fn text(&self) -> Option<&str> {
        match self {
            ScoreAnswer::Pair(p) => p.text.as_deref(),
            ScoreAnswer::Point(p) => p.text.as_deref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairAnswer {
    pub verdict: Verdict,
    pub probs: PairProbs,
    /// Each dimension's shares, where the answer format has dimensions (2.0 pairs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<PairScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// One dimension's scores of the two candidates, in the order shown (they sum to 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairShare {
    pub first: f64,
    pub second: f64,
}

/// Per-dimension shares of a pair, keyed by dimension (`alignment`, `coherence`, `style`).
pub type PairScores = BTreeMap<String, PairShare>;

/// Per-dimension scores of a point, keyed by dimension (`alignment`, `coherence` or
/// `physics`, `style`).
pub type PointScores = BTreeMap<String, f64>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointAnswer {
    /// Expected score under the candidate scores' probabilities.
    pub score: f64,
    /// The most probable score.
    pub score_argmax: f64,
    /// Each dimension's score, where the answer format has dimensions (ACS, APS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<PointScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records() -> Vec<ScoreRecord> {
        vec![
            Record::Answer {
                id: json!("pair-1"),
                answer: ScoreAnswer::Pair(PairAnswer {
                    verdict: Verdict::First,
                    probs: PairProbs {
                        first: 0.75,
                        second: 0.25,
                        tie: 0.0,
                    },
                    scores: None,
                    text: None,
                }),
            },
            Record::Answer {
                id: json!(2),
                answer: ScoreAnswer::Point(PointAnswer {
                    score: 3.5,
                    score_argmax: 4.0,
                    scores: None,
                    text: Some("Final Score: 4".into()),
                }),
            },
            Record::Answer {
                id: json!("acs"),
                answer: ScoreAnswer::Point(PointAnswer {
                    score: 3.0,
                    score_argmax: 3.0,
                    scores: Some(PointScores::from([
                        ("alignment".to_string(), 2.5),
                        ("coherence".to_string(), 3.5),
                        ("style".to_string(), 3.0),
                    ])),
                    text: None,
                }),
            },
            Record::Answer {
                id: json!("v2-pair"),
                answer: ScoreAnswer::Pair(PairAnswer {
                    verdict: Verdict::Second,
                    probs: PairProbs {
                        first: 0.25,
                        second: 0.75,
                        tie: 0.0,
                    },
                    scores: Some(PairScores::from([(
                        "alignment".to_string(),
                        PairShare {
                            first: 0.25,
                            second: 0.75,
                        },
                    )])),
                    text: None,
                }),
            },
            Record::Error {
                id: json!("line 3"),
                error: "line 3: malformed JSON".into(),
            },
        ]
    }

    #[test]
    fn records_are_written_as_before() {
        // The text `engine score` wrote when its answers were built as JSON values.
        let texts: Vec<String> = records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                r#"{"id":"pair-1","verdict":"first","probs":{"first":0.75,"second":0.25,"tie":0.0}}"#,
                r#"{"id":2,"score":3.5,"score_argmax":4.0,"text":"Final Score: 4"}"#,
                r#"{"id":"acs","score":3.0,"score_argmax":3.0,"scores":{"alignment":2.5,"coherence":3.5,"style":3.0}}"#,
                r#"{"id":"v2-pair","verdict":"second","probs":{"first":0.25,"second":0.75,"tie":0.0},"scores":{"alignment":{"first":0.25,"second":0.75}}}"#,
                r#"{"id":"line 3","error":"line 3: malformed JSON"}"#,
            ]
        );
    }

    #[test]
    fn records_read_back_equal() {
        for r in records() {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ScoreRecord>(&text).unwrap(), r);
        }
    }
}
