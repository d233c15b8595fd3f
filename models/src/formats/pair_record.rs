//! One preference pair, as `engine pairs` writes it and `trainer dpo` reads it, in two layouts:
//!
//! - plain (the LLaVA DPO layout): `prompt`, `chosen` and `rejected` are strings;
//! - conversational (TRL's vision preference layout, as in `HuggingFaceH4/rlaif-v_formatted`):
//!   `prompt` is `[{"role": "user", "content": [{"type": "image"}, ..., {"type": "text",
//!   "text": ...}]}]`, `chosen` and `rejected` are `[{"role": "assistant", "content":
//!   [{"type": "text", "text": ...}]}]`, and `images` lists the images the image items stand
//!   for, in order. TRL's `DPOTrainer` counts those items against `images`; a plain prompt has
//!   none, which it refuses for a vision model.
//!
//! Both carry the optional `chosen_score` / `rejected_score`, the question's media
//! (`images`, or `image`; `video`, or `videos`) and `unranked`, the candidates that pair
//! construction put in neither list.
//!
//! A line of `engine pairs` output is a [`Record`] over [`PairsAnswer`]: the pair, or why the
//! prompt gave none ([`DroppedPair`]).

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::record::Record;

/// One item of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    // Struct variants, so that the `"text": null` datasets give every item is accepted.
    Image {},
    Video {},
    Text { text: String },
}

/// A message's content: TRL accepts a bare string for text-only messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Items(Vec<Content>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: MessageContent,
}

/// A prompt or an answer: a string, or messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Turns {
    Text(String),
    Messages(Vec<Message>),
}

impl Turns {
    /// A user turn showing `images` images and `videos` videos before `text`.
    pub fn user(text: &str, images: usize, videos: usize) -> Self {
        let mut content = vec![Content::Image {}; images];
        content.extend(vec![Content::Video {}; videos]);
        content.push(Content::Text { text: text.into() });
        Turns::Messages(vec![Message {
            role: "user".into(),
            content: MessageContent::Items(content),
        }])
    }

    /// An assistant turn saying `text`.
    pub fn assistant(text: &str) -> Self {
        Turns::Messages(vec![Message {
            role: "assistant".into(),
            content: MessageContent::Items(vec![Content::Text { text: text.into() }]),
        }])
    }

    /// The text: the string, or the messages' text items joined by newlines.
    pub fn text(&self) -> String {
        match self {
            Turns::Text(t) => t.clone(),
            Turns::Messages(messages) => {
                let mut parts: Vec<&str> = Vec::new();
                for m in messages {
                    match &m.content {
                        MessageContent::Text(t) => parts.push(t),
                        MessageContent::Items(items) => {
                            parts.extend(items.iter().filter_map(|c| match c {
                                Content::Text { text } => Some(text.as_str()),
                                _ => None,
                            }))
                        }
                    }
                }
                parts.join("\n")
            }
        }
    }

    /// How many image and video items the messages hold; `None` for a plain string, whose
    /// media markers (if any) are in its text.
    pub fn media_items(&self) -> Option<(usize, usize)> {
        let Turns::Messages(messages) = self else {
            return None;
        };
        let mut counts = (0, 0);
        for m in messages {
            if let MessageContent::Items(items) = &m.content {
                for c in items {
                    match c {
                        Content::Image {} => counts.0 += 1,
                        Content::Video {} => counts.1 += 1,
                        Content::Text { .. } => {}
                    }
                }
            }
        }
        Some(counts)
    }
}

/// Image paths: a list, or one path (`"image": "a.png"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Paths::One(p) => vec![p.clone()],
            Paths::Many(ps) => ps.clone(),
        }
    }
}

/// One line of a preference-pair file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub prompt: Turns,
    pub chosen: Turns,
    pub rejected: Turns,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_score: Option<f64>,
    /// The question's images (understanding tasks).
    #[serde(default, alias = "image", skip_serializing_if = "Option::is_none")]
    pub images: Option<Paths>,
    /// The question's video: a path, a list of frame paths, or a list of such videos.
    #[serde(default, alias = "videos", skip_serializing_if = "Option::is_none")]
    pub video: Option<Value>,
    /// Candidates (by index) in neither the chosen nor the rejected list of pair ranking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unranked: Vec<usize>,
}

/// A prompt that gave no pair, and why (DESIGN.md "Pair construction").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DroppedPair {
    pub prompt: String,
    pub dropped: String,
    /// Candidates (by index) in neither the chosen nor the rejected list of pair ranking.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unranked: Vec<usize>,
}

/// What `engine pairs` answers a prompt with.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum PairsAnswer {
    Pair(PairRecord),
    Dropped(DroppedPair),
}

impl<'de> Deserialize<'de> for PairsAnswer {
    /// A line with `"dropped"` is a dropped prompt; any other is read as a pair, so that a
    /// missing field of the pair is named.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let answer = if v.get("dropped").is_some() {
            serde_json::from_value(v).map(PairsAnswer::Dropped)
        } else {
            serde_json::from_value(v).map(PairsAnswer::Pair)
        };
        answer.map_err(D::Error::custom)
    }
}

pub type PairsRecord = Record<PairsAnswer>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversational_turns_are_trl_messages() {
        let prompt = serde_json::to_value(Turns::user("What is it?", 2, 0)).unwrap();
        assert_eq!(
            prompt,
            json!([{"role": "user", "content": [
                {"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is it?"}
            ]}])
        );
        let chosen = serde_json::to_value(Turns::assistant("A cat.")).unwrap();
        assert_eq!(
            chosen,
            json!([{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}])
        );
    }

    #[test]
    fn dataset_rows_with_null_fields_are_read() {
        // What `datasets` writes for rlaif-v_formatted: every item has both keys.
        let v = json!({
            "prompt": [{"role": "user", "content": [
                {"type": "image", "text": null}, {"type": "text", "text": "Describe."}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}],
            "rejected": [{"role": "assistant", "content": "A cat."}],
            "images": ["a.png"]
        });
        let rec: PairRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.prompt.text(), "Describe.");
        assert_eq!(rec.prompt.media_items(), Some((1, 0)));
        assert_eq!(rec.chosen.text(), "A dog.");
        assert_eq!(rec.rejected.text(), "A cat.");
        assert_eq!(rec.images.unwrap().to_vec(), vec!["a.png".to_string()]);
    }

    #[test]
    fn plain_records_round_trip() {
        let v = json!({"prompt": "q", "chosen": "a", "rejected": "b", "chosen_score": 4.0,
                       "rejected_score": 2.5, "image": "x.png", "unranked": [4]});
        let rec: PairRecord = serde_json::from_value(v).unwrap();
        assert_eq!(rec.prompt, Turns::Text("q".into()));
        assert_eq!(rec.prompt.media_items(), None);
        assert_eq!(rec.images, Some(Paths::One("x.png".into())));
        assert_eq!(rec.unranked, vec![4]);
        let back = serde_json::to_value(&rec).unwrap();
        assert_eq!(back["images"], json!("x.png"));
        assert!(back.get("video").is_none());
    }

    fn pairs_records() -> Vec<PairsRecord> {
        vec![
            Record::Answer {
                id: json!("p1"),
                answer: PairsAnswer::Pair(PairRecord {
                    prompt: Turns::user("What is it?", 1, 0),
                    chosen: Turns::assistant("A cat."),
                    rejected: Turns::assistant("A dog."),
                    chosen_score: Some(0.875),
                    rejected_score: Some(0.125),
                    images: Some(Paths::Many(vec!["a.png".into()])),
                    video: None,
                    unranked: vec![],
                }),
            },
            Record::Answer {
                id: json!("p2"),
                answer: PairsAnswer::Pair(PairRecord {
                    prompt: Turns::Text("a red cube".into()),
                    chosen: Turns::Text("c1.png".into()),
                    rejected: Turns::Text("c0.png".into()),
                    chosen_score: Some(4.0),
                    rejected_score: Some(2.5),
                    images: None,
                    video: Some(json!(["f0.png", "f1.png"])),
                    unranked: vec![2, 3],
                }),
            },
            Record::Answer {
                id: json!(3),
                answer: PairsAnswer::Dropped(DroppedPair {
                    prompt: "a blue ball".into(),
                    dropped: "every candidate scored 3".into(),
                    unranked: vec![1],
                }),
            },
            Record::Error {
                id: json!(4),
                error: "x.png: not found".into(),
            },
        ]
    }

    #[test]
    fn pairs_records_are_written_as_before() {
        // The text `engine pairs` wrote when its lines were built as JSON values.
        let texts: Vec<String> = pairs_records()
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect();
        assert_eq!(
            texts,
            [
                concat!(
                    r#"{"id":"p1","prompt":[{"role":"user","content":[{"type":"image"},"#,
                    r#"{"type":"text","text":"What is it?"}]}],"chosen":[{"role":"assistant","#,
                    r#""content":[{"type":"text","text":"A cat."}]}],"rejected":[{"role":"#,
                    r#""assistant","content":[{"type":"text","text":"A dog."}]}],"#,
                    r#""chosen_score":0.875,"rejected_score":0.125,"images":["a.png"]}"#
                ),
                concat!(
                    r#"{"id":"p2","prompt":"a red cube","chosen":"c1.png","rejected":"c0.png","#,
                    r#""chosen_score":4.0,"rejected_score":2.5,"video":["f0.png","f1.png"],"#,
                    r#""unranked":[2,3]}"#
                ),
                r#"{"id":3,"prompt":"a blue ball","dropped":"every candidate scored 3","unranked":[1]}"#,
                r#"{"id":4,"error":"x.png: not found"}"#,
            ]
        );
    }

    #[test]
    fn pairs_records_read_back_equal() {
        for r in pairs_records() {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<PairsRecord>(&text).unwrap(), r);
        }
    }

    #[test]
    fn a_pair_missing_a_field_is_refused_by_name() {
        let err = serde_json::from_str::<PairsRecord>(r#"{"id":1,"prompt":"q","chosen":"a"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("rejected"), "{err}");
    }
}
