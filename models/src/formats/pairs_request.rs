//! One line of `engine pairs` input (DESIGN.md "Request formats", pairs): a prompt and its
//! candidates, `{"id", "task", "prompt", "candidates", "images" / "videos"}`. `trainer sample`
//! writes these lines for the images it draws; `engine pairs` reads them through this type
//! (its `PairsRequest` then checks the candidates' count and the question's media against the
//! task).
//!
//! Reading is strict about what each field is and says so in the engine's words: a line must
//! be a JSON object; `task` a known task name, `prompt` a string and `candidates` a list of
//! strings, each refused by name otherwise ([`PairsRequestError`]). `id` is any JSON value
//! (`null` when the line gives none), and fields no one reads are passed over.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::judge::Task;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPairsRequest")]
pub struct PairsRequestRecord {
    /// Any JSON value; `null` when the line gives none.
    pub id: Value,
    pub task: Task,
    /// The caption (generation tasks) or the question (understanding tasks).
    pub prompt: String,
    /// Image or video paths (generation tasks; relative ones are taken from the file's
    /// directory) or answer texts (understanding tasks).
    pub candidates: Vec<String>,
    /// The question's images (understanding tasks): a path or a list of paths. `null` reads
    /// as none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    /// The question's videos (understanding tasks): each a path or a list of frame paths.
    /// `null` reads as none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub videos: Option<Value>,
}

/// Why a line is not a [`PairsRequestRecord`]. (A line that is not a JSON object is refused
/// by the deserializer, as "invalid type: ..., expected a pairs line: ...".)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairsRequestError {
    /// The field is absent, `null`, or not a string.
    #[error("missing string field \"{0}\"")]
    MissingString(&'static str),
    /// `task` names no task; the message lists the known ones.
    #[error("{0}")]
    UnknownTask(String),
    /// `candidates` is absent, `null`, or not a list.
    #[error("missing list field \"candidates\"")]
    MissingCandidates,
    /// `candidates` is a list with an entry that is not a string.
    #[error("candidates must be strings")]
    CandidatesNotStrings,
}

/// A field's value when it is a `T`, else the value as found (so that the conversion can
/// refuse it in its own words).
#[derive(Deserialize)]
#[serde(untagged)]
enum Found<T> {
    Is(T),
    Other(Value),
}

/// The fields of a line as written; see [`PairsRequestRecord`]'s `TryFrom`.
#[derive(Deserialize)]
struct RawFields {
    #[serde(default)]
    id: Value,
    #[serde(default)]
    task: Option<Found<String>>,
    #[serde(default)]
    prompt: Option<Found<String>>,
    #[serde(default)]
    candidates: Option<Found<Vec<String>>>,
    #[serde(default)]
    images: Option<Value>,
    #[serde(default)]
    videos: Option<Value>,
}

/// [`RawFields`] read from a JSON object only (a derived struct would also take a list of
/// its fields in order).
struct RawPairsRequest(RawFields);

impl<'de> Deserialize<'de> for RawPairsRequest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = RawFields;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a pairs line: a JSON object with \"task\", \"prompt\" and \"candidates\"",
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawFields, A::Error> {
                RawFields::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Object).map(RawPairsRequest)
    }
}

impl TryFrom<RawPairsRequest> for PairsRequestRecord {
    type Error = PairsRequestError;

    fn try_from(RawPairsRequest(raw): RawPairsRequest) -> Result<Self, PairsRequestError> {
        let task: Task = match raw.task {
            Some(Found::Is(name)) => name
                .parse()
                .map_err(|e: crate::Error| PairsRequestError::UnknownTask(e.to_string()))?,
            _ => return Err(PairsRequestError::MissingString("task")),
        };
        let prompt = match raw.prompt {
            Some(Found::Is(prompt)) => prompt,
            _ => return Err(PairsRequestError::MissingString("prompt")),
        };
        let candidates = match raw.candidates {
            Some(Found::Is(candidates)) => candidates,
            Some(Found::Other(Value::Array(_))) => {
                return Err(PairsRequestError::CandidatesNotStrings)
            }
            _ => return Err(PairsRequestError::MissingCandidates),
        };
        Ok(Self {
            id: raw.id,
            task,
            prompt,
            candidates,
            images: raw.images,
            videos: raw.videos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_generation_line_round_trips_with_the_id_first() {
        let line = PairsRequestRecord {
            id: Value::from("p1"),
            task: Task::ImageGeneration,
            prompt: "a cat".into(),
            candidates: vec!["images/p1_0.png".into(), "images/p1_1.png".into()],
            images: None,
            videos: None,
        };
        let text = serde_json::to_string(&line).unwrap();
        assert_eq!(
            text,
            r#"{"id":"p1","task":"image_generation","prompt":"a cat","candidates":["images/p1_0.png","images/p1_1.png"]}"#
        );
        assert_eq!(
            serde_json::from_str::<PairsRequestRecord>(&text).unwrap(),
            line
        );
    }

    #[test]
    fn an_understanding_line_keeps_its_media_and_any_id() {
        let v = json!({"id": 7, "task": "video_understanding", "prompt": "What happens?",
                       "candidates": ["a", "b"], "videos": [["f0.png", "f1.png"]],
                       "images": null, "note": "passed over"});
        let rec = PairsRequestRecord::deserialize(&v).unwrap();
        assert_eq!(rec.id, json!(7));
        assert_eq!(rec.task, Task::VideoUnderstanding);
        assert_eq!(rec.videos, Some(json!([["f0.png", "f1.png"]])));
        assert_eq!(rec.images, None);
        let back = serde_json::to_value(&rec).unwrap();
        assert_eq!(
            back,
            json!({"id": 7, "task": "video_understanding", "prompt": "What happens?",
                   "candidates": ["a", "b"], "videos": [["f0.png", "f1.png"]]})
        );
        let no_id = json!({"task": "image_generation", "prompt": "p", "candidates": ["a", "b"]});
        assert_eq!(
            PairsRequestRecord::deserialize(&no_id).unwrap().id,
            Value::Null
        );
    }

    #[test]
    fn malformed_lines_are_refused_naming_the_field() {
        let base = json!({"id": "x", "task": "image_generation", "prompt": "a cat",
                          "candidates": ["a.png", "b.png"]});
        let err = |v: Value| PairsRequestRecord::deserialize(&v).unwrap_err().to_string();
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            err(v)
        };
        let without = |key: &str| {
            let mut v = base.clone();
            v.as_object_mut().unwrap().remove(key);
            err(v)
        };
        assert_eq!(without("task"), "missing string field \"task\"");
        assert_eq!(with("task", json!(3)), "missing string field \"task\"");
        assert!(with("task", json!("audio_generation")).starts_with(
            "input: unknown task \"audio_generation\"; expected one of image_generation"
        ));
        assert_eq!(without("prompt"), "missing string field \"prompt\"");
        assert_eq!(
            with("prompt", json!(["a"])),
            "missing string field \"prompt\""
        );
        assert_eq!(without("candidates"), "missing list field \"candidates\"");
        assert_eq!(
            with("candidates", json!("a.png")),
            "missing list field \"candidates\""
        );
        assert_eq!(
            with("candidates", json!(["a.png", 2])),
            "candidates must be strings"
        );
        for not_object in [json!(["x", "image_generation"]), json!("a cat"), json!(3)] {
            let e = err(not_object);
            assert!(e.contains("expected a pairs line: a JSON object"), "{e}");
        }
        // From text, serde_json adds where the line went wrong.
        let e = serde_json::from_str::<PairsRequestRecord>(r#"{"task": "image_generation"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("missing string field \"prompt\""), "{e}");
    }
}
