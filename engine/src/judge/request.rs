//! Score requests (DESIGN.md "Request formats"):
//! `{"id", "task", "mode", "prompt", "images", "videos", "answers"}`.

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

impl ScoreRequest {
    pub fn parse(v: &Value) -> Result<Self, String> {
        let field = |k: &str| v.get(k).and_then(Value::as_str);
        let task: Task = field("task")
            .ok_or("missing string field \"task\"")?
            .parse()
            .map_err(|e: unireward_models::Error| e.to_string())?;
        let mode: Mode = match field("mode") {
            Some(m) => m
                .parse()
                .map_err(|e: unireward_models::Error| e.to_string())?,
            None => return Err("missing string field \"mode\" (pair or point)".into()),
        };
        let prompt = field("prompt")
            .ok_or("missing string field \"prompt\"")?
            .to_string();
        let media = MediaRequest::parse(v, "images", "videos")?;
        let answers = match v.get("answers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or("\"answers\" must be strings")
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err("\"answers\" must be a list of strings".into()),
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
}
