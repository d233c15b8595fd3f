//! `engine logprob` answers: the summed log-probability of the completion given the prompt,
//! and the token counts it is over. A line of the output is a [`Record`] over them.

use serde::{Deserialize, Serialize};

use super::record::Record;

pub type LogprobRecord = Record<LogprobAnswer>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogprobAnswer {
    pub logprob: f64,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_are_written_as_before_and_read_back_equal() {
        let answer: LogprobRecord = Record::Answer {
            id: json!("a#0"),
            answer: LogprobAnswer {
                logprob: -12.5,
                prompt_tokens: 30,
                completion_tokens: 4,
            },
        };
        let error: LogprobRecord = Record::Error {
            id: json!(5),
            error: "the completion adds no tokens after a non-empty prompt".into(),
        };
        let texts = [&answer, &error].map(|r| serde_json::to_string(r).unwrap());
        // The text `engine logprob` wrote when its answers were built as JSON values.
        assert_eq!(
            texts[0],
            r#"{"id":"a#0","logprob":-12.5,"prompt_tokens":30,"completion_tokens":4}"#
        );
        assert_eq!(
            texts[1],
            r#"{"id":5,"error":"the completion adds no tokens after a non-empty prompt"}"#
        );
        assert_eq!(
            serde_json::from_str::<LogprobRecord>(&texts[0]).unwrap(),
            answer
        );
        assert_eq!(
            serde_json::from_str::<LogprobRecord>(&texts[1]).unwrap(),
            error
        );
    }
}
