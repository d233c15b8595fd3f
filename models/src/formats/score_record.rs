//! `engine score` answers (DESIGN.md "Request formats"): `{"verdict", "probs"}` for a pair,
//! `{"score", "score_argmax"}` for a point, each with `"text"` (the rationale) in generate
//! mode. A line of the output is a [`Record`] over them.

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointAnswer {
    /// Expected score under the candidate scores' probabilities.
    pub score: f64,
    /// The most probable score.
    pub score_argmax: f64,
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
                    text: None,
                }),
            },
            Record::Answer {
                id: json!(2),
                answer: ScoreAnswer::Point(PointAnswer {
                    score: 3.5,
                    score_argmax: 4.0,
                    text: Some("Final Score: 4".into()),
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
