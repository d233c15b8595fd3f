//! Score requests (DESIGN.md "Request formats"):
//! `{"id", "task", "mode", "prompt", "images", "videos", "answers"}`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use unireward_models::judge::{Mode, Task};
use unireward_models::preprocess::MediaRequest;

#[derive(Debug, Clone)]
pub struct ScoreRequest {
    pub task: Task,
    pub mode: Mode,
    /// The caption (generation) or the question (understanding).
    pub prompt: String,
    pub media: MediaRequest,
    pub answers: Vec<String>,
}

/// The request line as written. A field of another type than it should have is read as
/// not given (or kept as it is), so that the conversion refuses it in its own words.
#[derive(Deserialize)]
struct RawScoreRequest {
    #[serde(default, deserialize_with = "if_of_type")]
    task: Option<String>,
    #[serde(default, deserialize_with = "if_of_type")]
    mode: Option<String>,
    #[serde(default, deserialize_with = "if_of_type")]
    prompt: Option<String>,
    #[serde(default)]
    answers: Option<RawAnswers>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawAnswers {
    Texts(Vec<String>),
    Other(Value),
}

/// The value as `T` when it is one, else none.
fn if_of_type<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

impl ScoreRequest {
    pub fn parse(v: &Value) -> Result<Self, String> {
        let raw = RawScoreRequest::deserialize(v).map_err(|e| e.to_string())?;
        let task: Task = raw
            .task
            .ok_or("missing string field \"task\"")?
            .parse()
            .map_err(|e: unireward_models::Error| e.to_string())?;
        let mode: Mode = match raw.mode {
            Some(m) => m
                .parse()
                .map_err(|e: unireward_models::Error| e.to_string())?,
            None => return Err("missing string field \"mode\" (pair or point)".into()),
        };
        let prompt = raw.prompt.ok_or("missing string field \"prompt\"")?;
        let media = MediaRequest::parse(v, "images", "videos")?;
        let answers = match raw.answers {
            None => Vec::new(),
            Some(RawAnswers::Texts(a)) => a,
            Some(RawAnswers::Other(Value::Array(_))) => {
                return Err("\"answers\" must be strings".into())
            }
            Some(RawAnswers::Other(_)) => {
                return Err("\"answers\" must be a list of strings".into())
            }
        };
        let req = Self {
            task,
            mode,
            prompt,
            media,
            answers,
        };
        req.check()?;
        Ok(req)
    }

    /// Generation tasks judge their media (two for a pair, one for a point); understanding
    /// tasks judge answers about the question's media.
    fn check(&self) -> Result<(), String> {
        let judged = match self.mode {
            Mode::Pair => 2,
            Mode::Point => 1,
        };
        let (images, videos) = (self.media.images.len(), self.media.videos.len());
        match self.task {
            Task::ImageGeneration if images != judged || videos != 0 => Err(format!(
                "{} {} judges {judged} image(s); the request has {images} image(s), {videos} video(s)",
                self.task, self.mode
            )),
            Task::VideoGeneration if videos != judged || images != 0 => Err(format!(
                "{} {} judges {judged} video(s); the request has {videos} video(s), {images} image(s)",
                self.task, self.mode
            )),
            _ => {
                check_question_media(self.task, &self.media)?;
                let needed = self.task.answers_needed(self.mode);
                if self.answers.len() != needed {
                    return Err(format!(
                        "{} {} judges {needed} answer(s); the request has {}",
                        self.task,
                        self.mode,
                        self.answers.len()
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The media an understanding task's question is about: images for image understanding, one
/// video for video understanding; without them the answers would be judged blind. Generation
/// tasks judge their media and ask about none.
pub fn check_question_media(task: Task, media: &MediaRequest) -> Result<(), String> {
    let (images, videos) = (media.images.len(), media.videos.len());
    match task {
        Task::ImageUnderstanding if images == 0 || videos != 0 => Err(format!(
            "{task} asks about images; the request has {images} image(s), {videos} video(s)"
        )),
        Task::VideoUnderstanding if videos != 1 || images != 0 => Err(format!(
            "{task} asks about one video; the request has {videos} video(s), {images} image(s)"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_are_checked() {
        let ok = json!({"task": "image_generation", "mode": "pair", "prompt": "a cat", "images": ["a.png", "b.png"]});
        assert!(ScoreRequest::parse(&ok).is_ok());
        let one = json!({"task": "image_generation", "mode": "pair", "prompt": "a cat", "images": ["a.png"]});
        assert!(ScoreRequest::parse(&one)
            .unwrap_err()
            .contains("judges 2 image"));
        let unknown = json!({"task": "audio_generation", "mode": "pair", "prompt": "x"});
        assert!(ScoreRequest::parse(&unknown)
            .unwrap_err()
            .contains("audio_generation"));
        let und = json!({"task": "image_understanding", "mode": "point", "prompt": "q", "images": ["a.png"], "answers": ["x", "y"]});
        assert!(ScoreRequest::parse(&und).unwrap_err().contains("1 answer"));
    }

    #[test]
    fn fields_of_the_wrong_type_are_refused_in_the_parser_s_words() {
        let base = json!({"task": "image_understanding", "mode": "point", "prompt": "q",
                          "images": ["a.png"], "answers": ["x"]});
        assert!(ScoreRequest::parse(&base).is_ok());
        let with = |key: &str, value: Value| {
            let mut v = base.clone();
            v[key] = value;
            ScoreRequest::parse(&v).unwrap_err()
        };
        assert_eq!(with("task", json!(3)), "missing string field \"task\"");
        assert_eq!(
            with("mode", Value::Null),
            "missing string field \"mode\" (pair or point)"
        );
        assert_eq!(
            with("prompt", json!(["q"])),
            "missing string field \"prompt\""
        );
        assert_eq!(
            with("answers", json!(["x", 2])),
            "\"answers\" must be strings"
        );
        assert_eq!(
            with("answers", json!("x")),
            "\"answers\" must be a list of strings"
        );
        assert_eq!(
            with("answers", Value::Null),
            "image_understanding point judges 1 answer(s); the request has 0"
        );
    }
}
