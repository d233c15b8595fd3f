//! One line of `engine pairs` input (DESIGN.md "Request formats", pairs): a prompt and its
//! candidates, `{"id", "task", "prompt", "candidates", "images" / "videos"}`. `trainer sample`
//! writes these lines for the images it draws; `engine pairs` reads them (its `PairsRequest`
//! checks the task against the candidates and the question's media).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::judge::Task;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairsRequestRecord {
    /// Any JSON value; `null` when the line gives none.
    #[serde(default)]
    pub id: Value,
    pub task: Task,
    /// The caption (generation tasks) or the question (understanding tasks).
    pub prompt: String,
    /// Image or video paths (generation tasks; relative ones are taken from the file's
    /// directory) or answer texts (understanding tasks).
    pub candidates: Vec<String>,
    /// The question's images (understanding tasks): a path or a list of paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Value>,
    /// The question's videos (understanding tasks): each a path or a list of frame paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub videos: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
