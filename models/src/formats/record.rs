//! The line a batch command (`engine score`, `engine logprob`, `engine pairs`) writes for one
//! request: the request's id first, then the answer's fields; or `{"id", "error"}` when the
//! request got no answer (DESIGN.md "Records and errors"). Each command's line is this record
//! over its own answer type.

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Record<A> {
    Answer { id: Value, answer: A },
    Error { id: Value, error: String },
}

impl<A> Record<A> {
    /// The request's id: what it gave, or a stand-in naming its line when it gave none.
    pub fn id(&self) -> &Value {
        match self {
            Record::Answer { id, .. } | Record::Error { id, .. } => id,
        }
    }

    pub fn answer(&self) -> Option<&A> {
        match self {
            Record::Answer { answer, .. } => Some(answer),
            Record::Error { .. } => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Record::Error { error, .. } => Some(error),
            Record::Answer { .. } => None,
        }
    }
}

/// An answer's fields follow the id at the same level, as one object. A line without an id
/// (a dataset's row read as a pair file) reads as id `null`.
#[derive(Serialize, Deserialize)]
struct AnswerLine<I, A> {
    #[serde(default)]
    id: I,
    #[serde(flatten)]
    answer: A,
}

#[derive(Serialize, Deserialize)]
struct ErrorLine<I, E> {
    #[serde(default)]
    id: I,
    error: E,
}

impl<A: Serialize> Serialize for Record<A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Record::Answer { id, answer } => AnswerLine { id, answer }.serialize(s),
            Record::Error { id, error } => ErrorLine { id, error }.serialize(s),
        }
    }
}

impl<'de, A: DeserializeOwned> Deserialize<'de> for Record<A> {
    /// A line with an `"error"` is an error record whatever else it holds (as `--resume`
    /// and the failure count read it); any other line is read as an answer, so that a
    /// missing field of the answer is named.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        if v.get("error").is_some() {
            let line: ErrorLine<Value, String> =
                serde_json::from_value(v).map_err(D::Error::custom)?;
            Ok(Record::Error {
                id: line.id,
                error: line.error,
            })
        } else {
            let line: AnswerLine<Value, A> = serde_json::from_value(v).map_err(D::Error::custom)?;
            Ok(Record::Answer {
                id: line.id,
                answer: line.answer,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Answer {
        b: f64,
        a: usize,
    }

    #[test]
    fn the_id_comes_first_and_an_error_replaces_the_answer() {
        let answer = Record::Answer {
            id: Value::from("x"),
            answer: Answer { b: 1.0, a: 2 },
        };
        let error: Record<Answer> = Record::Error {
            id: Value::from(7),
            error: "broken".into(),
        };
        let texts = [&answer, &error].map(|r| serde_json::to_string(r).unwrap());
        assert_eq!(texts[0], r#"{"id":"x","b":1.0,"a":2}"#);
        assert_eq!(texts[1], r#"{"id":7,"error":"broken"}"#);
        assert_eq!(
            serde_json::from_str::<Record<Answer>>(&texts[0]).unwrap(),
            answer
        );
        assert_eq!(
            serde_json::from_str::<Record<Answer>>(&texts[1]).unwrap(),
            error
        );
    }

    #[test]
    fn a_missing_answer_field_is_named() {
        let err = serde_json::from_str::<Record<Answer>>(r#"{"id":1,"b":2.0}"#).unwrap_err();
        assert!(err.to_string().contains("missing field `a`"), "{err}");
    }
}
