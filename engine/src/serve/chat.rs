//! OpenAI chat-completion requests as the RL trainers send them (Flow-GRPO through the
//! `openai` client, Pref-GRPO and MixGRPO with `do_sample`), read into a conversation whose
//! messages are text pieces and media slots, and the `chat.completion` answer.
//!
//! Media markers: when a message's text holds exactly as many literal `<image>` (and
//! `<video>`) markers as the message has images (and videos), they place the media, in
//! order; when it holds none, the media go first, one marker line each, as the LLaVA scripts
//! write `<image>\n` before the question; any other count is refused, naming both.

use serde::Deserialize;
use serde_json::{json, Value};
use unireward_models::tokenize::{quote_user_text, IMAGE_MARKER, VIDEO_MARKER};

use super::api_error::ApiError;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<RawMessage>,
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Not an OpenAI field: Pref-GRPO and MixGRPO send `false`.
    #[serde(default)]
    pub do_sample: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub n: Option<usize>,
    #[serde(default)]
    pub stream: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawMessage {
    pub role: String,
    #[serde(default)]
    pub content: RawContent,
}

#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum RawContent {
    Text(String),
    Parts(Vec<RawPart>),
    #[default]
    Empty,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RawPart {
    Text {
        text: String,
    },
    ImageUrl {
        image_url: UrlField,
    },
    /// vLLM's video part: one video, or its frames as a list.
    VideoUrl {
        video_url: UrlField,
    },
    /// Qwen-VL's message parts: `{"type": "image", "image": ...}`.
    Image {
        image: String,
    },
    Video {
        video: Urls,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum UrlField {
    Object { url: Urls },
    Bare(Urls),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Urls {
    One(String),
    Frames(Vec<String>),
}

impl UrlField {
    fn urls(self) -> Urls {
        match self {
            UrlField::Object { url } | UrlField::Bare(url) => url,
        }
    }
}

/// A video as a request gives it.
#[derive(Debug, Clone, PartialEq)]
pub enum VideoRef {
    /// A video file (or frame folder).
    One(String),
    /// Its frames, as images.
    Frames(Vec<String>),
}

/// A piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    Text(String),
    /// The i-th image of the request.
    Image(usize),
    /// The i-th video of the request.
    Video(usize),
}

#[derive(Debug, Clone, PartialEq)]
pub struct PromptMessage {
    pub role: String,
    pub pieces: Vec<Piece>,
}

/// A chat request's conversation and media references, in request order.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatPrompt {
    pub messages: Vec<PromptMessage>,
    pub images: Vec<String>,
    pub videos: Vec<VideoRef>,
    /// Most new tokens the client allows (`max_tokens` / `max_completion_tokens`).
    pub max_tokens: Option<usize>,
    /// The request asked to sample (answered greedily all the same).
    pub sampling_asked: bool,
}

/// How a video shows in the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoMarks {
    /// Its frames, each an `<image>` line (the LLaVA scripts' way).
    Frames(usize),
    /// One `<video>` marker (LLaVA-OneVision's pooled path).
    Pooled,
}

impl ChatRequest {
    pub fn into_prompt(self) -> Result<ChatPrompt, ApiError> {
        if self.stream == Some(true) {
            return Err(ApiError::bad_request(
                "stream: true is not supported; ask without streaming",
            ));
        }
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::bad_request(
                "n must be 1: greedy decoding gives one answer",
            ));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request("messages is empty"));
        }
        let sampling_asked = match self.do_sample {
            Some(sample) => sample,
            // OpenAI's default temperature is 1.
            None => self.temperature.unwrap_or(1.0) > 0.0,
        };
        let mut prompt = ChatPrompt {
            messages: Vec::with_capacity(self.messages.len()),
            images: Vec::new(),
            videos: Vec::new(),
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            sampling_asked,
        };
        for (at, message) in self.messages.into_iter().enumerate() {
            let m = read_message(at, message, &mut prompt)?;
            prompt.messages.push(m);
        }
        Ok(prompt)
    }
}

fn read_message(
    at: usize,
    message: RawMessage,
    prompt: &mut ChatPrompt,
) -> Result<PromptMessage, ApiError> {
    let role = message.role;
    if !matches!(role.as_str(), "system" | "user" | "assistant") {
        return Err(ApiError::bad_request(format!(
            "messages[{at}]: role {role:?}; expected system, user or assistant"
        )));
    }
    let mut texts = Vec::new();
    let mut media = Vec::new();
    match message.content {
        RawContent::Empty => {}
        RawContent::Text(t) => texts.push(t),
        RawContent::Parts(parts) => {
            for part in parts {
                match part {
                    RawPart::Text { text } => texts.push(text),
                    RawPart::ImageUrl { image_url } => match image_url.urls() {
                        Urls::One(url) => {
                            prompt.images.push(url);
                            media.push(Piece::Image(prompt.images.len() - 1));
                        }
                        Urls::Frames(_) => {
                            return Err(ApiError::bad_request(format!(
                                "messages[{at}]: image_url holds a list; one image per part"
                            )))
                        }
                    },
                    RawPart::Image { image } => {
                        prompt.images.push(image);
                        media.push(Piece::Image(prompt.images.len() - 1));
                    }
                    RawPart::VideoUrl { video_url } => {
                        prompt.videos.push(video_ref(video_url.urls()));
                        media.push(Piece::Video(prompt.videos.len() - 1));
                    }
                    RawPart::Video { video } => {
                        prompt.videos.push(video_ref(video));
                        media.push(Piece::Video(prompt.videos.len() - 1));
                    }
                }
            }
        }
    }
    if !media.is_empty() && role != "user" {
        return Err(ApiError::bad_request(format!(
            "messages[{at}]: media in a {role} message; only user messages carry media"
        )));
    }
    let text = texts.join("\n");
    Ok(PromptMessage {
        role,
        pieces: place_media(at, &text, media)?,
    })
}

fn video_ref(urls: Urls) -> VideoRef {
    match urls {
        Urls::One(url) => VideoRef::One(url),
        Urls::Frames(frames) => VideoRef::Frames(frames),
    }
}

/// The message as text pieces and media slots (see the module's comment).
fn place_media(at: usize, text: &str, media: Vec<Piece>) -> Result<Vec<Piece>, ApiError> {
    let count = |k: fn(&Piece) -> bool| media.iter().filter(|p| k(p)).count();
    let images = count(|p| matches!(p, Piece::Image(_)));
    let videos = count(|p| matches!(p, Piece::Video(_)));
    let image_marks = text.matches(IMAGE_MARKER).count();
    let video_marks = text.matches(VIDEO_MARKER).count();
    if image_marks == 0 && video_marks == 0 {
        let mut pieces = Vec::with_capacity(2 * media.len() + 1);
        for m in media {
            pieces.push(m);
            pieces.push(Piece::Text("\n".into()));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text.to_string()));
        }
        return Ok(pieces);
    }
    if image_marks != images || video_marks != videos {
        return Err(ApiError::bad_request(format!(
            "messages[{at}]: the text has {image_marks} {IMAGE_MARKER} and {video_marks} \
             {VIDEO_MARKER} marker(s) but the message has {images} image(s) and {videos} \
             video(s); write one marker per medium, or none to put them before the text"
        )));
    }
    let mut next_image = media.iter().filter(|p| matches!(p, Piece::Image(_)));
    let mut next_video = media.iter().filter(|p| matches!(p, Piece::Video(_)));
    let mut pieces = Vec::new();
    let mut rest = text;
    loop {
        let found = [IMAGE_MARKER, VIDEO_MARKER]
            .iter()
            .filter_map(|m| rest.find(m).map(|i| (i, *m)))
            .min();
        let Some((i, marker)) = found else {
            if !rest.is_empty() {
                pieces.push(Piece::Text(rest.to_string()));
            }
            return Ok(pieces);
        };
        if i > 0 {
            pieces.push(Piece::Text(rest[..i].to_string()));
        }
        let slot = if marker == IMAGE_MARKER {
            next_image.next()
        } else {
            next_video.next()
        };
        // The counts matched, so every marker has its medium.
        if let Some(p) = slot {
            pieces.push(p.clone());
        }
        rest = &rest[i + marker.len()..];
    }
}

impl ChatPrompt {
    /// The messages with their markers (a video as `video_marks` says), the text quoted so
    /// that a marker or special token typed by the client is read as text. The line break
    /// right after a medium is left unquoted: it is the marker's own, LLaVA's layout, which a
    /// Qwen-VL judge drops as its template does (`MediaMarkers::apply`).
    pub fn messages_with_markers(
        &self,
        video_marks: &[VideoMarks],
    ) -> Result<Vec<unireward_models::judge::ChatMessage>, ApiError> {
        self.messages
            .iter()
            .map(|m| {
                let mut content = String::new();
                let mut after_media = false;
                for piece in &m.pieces {
                    let text = match piece {
                        Piece::Text(t) if after_media => match t.strip_prefix('\n') {
                            Some(rest) => {
                                content.push('\n');
                                rest
                            }
                            None => t.as_str(),
                        },
                        Piece::Text(t) => t.as_str(),
                        _ => "",
                    };
                    after_media = !matches!(piece, Piece::Text(_));
                    match piece {
                        Piece::Text(_) if text.is_empty() => {}
                        Piece::Text(_) => content.push_str(&quote_user_text(text)),
                        Piece::Image(_) => content.push_str(IMAGE_MARKER),
                        Piece::Video(v) => match video_marks.get(*v) {
                            Some(VideoMarks::Pooled) => content.push_str(VIDEO_MARKER),
                            Some(VideoMarks::Frames(n)) => {
                                content.push_str(&vec![IMAGE_MARKER; *n].join("\n"))
                            }
                            None => {
                                return Err(ApiError::internal(format!("no video {v} prepared")))
                            }
                        },
                    }
                }
                Ok(unireward_models::judge::ChatMessage::new(&m.role, content))
            })
            .collect()
    }

    /// The media slots in the order their markers come in the prompt.
    pub fn media_order(&self) -> Vec<Piece> {
        self.messages
            .iter()
            .flat_map(|m| m.pieces.iter())
            .filter(|p| !matches!(p, Piece::Text(_)))
            .cloned()
            .collect()
    }
}

/// Why generation ended, as OpenAI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

/// A `chat.completion` object.
pub struct Completion<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl Completion<'_> {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "logprobs": null,
                "finish_reason": match self.finish {
                    FinishReason::Stop => "stop",
                    FinishReason::Length => "length",
                },
            }],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatPrompt, ApiError> {
        serde_json::from_value::<ChatRequest>(v)
            .map_err(|e| ApiError::bad_request(e.to_string()))?
            .into_prompt()
    }

    #[test]
    fn flow_grpo_body_places_its_image_at_its_marker() {
        let p = parse(
            json!({"model": "UnifiedReward-7b-v1.5", "messages": [{"role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "data:image;base64,AAAA"}},
                        {"type": "text", "text": "<image>\nRate [a cat]."}]}],
            "temperature": 0}),
        )
        .unwrap();
        assert_eq!(p.images, ["data:image;base64,AAAA"]);
        assert!(!p.sampling_asked);
        assert_eq!(
            p.messages[0].pieces,
            [Piece::Image(0), Piece::Text("\nRate [a cat].".into())]
        );
    }

    #[test]
    fn media_without_markers_go_first_and_a_mismatch_is_refused() {
        let p = parse(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,BB"}},
            {"type": "text", "text": "Which is better?"}]}],
            "max_tokens": 4096, "do_sample": false}))
        .unwrap();
        assert_eq!(
            p.messages[0].pieces,
            [
                Piece::Image(0),
                Piece::Text("\n".into()),
                Piece::Image(1),
                Piece::Text("\n".into()),
                Piece::Text("Which is better?".into())
            ]
        );
        assert_eq!(p.max_tokens, Some(4096));
        assert!(!p.sampling_asked);
        let err = parse(json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image;base64,AA"}},
            {"type": "text", "text": "<image> and <image>"}]}]}))
        .unwrap_err();
        assert!(err.message.contains("2 <image>"), "{err}");
        assert!(err.message.contains("1 image(s)"), "{err}");
    }

    #[test]
    fn sampling_requests_are_noted_and_streaming_refused() {
        let p = parse(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert!(p.sampling_asked);
        let err = parse(json!({"messages": [{"role": "user", "content": "hi"}], "stream": true}))
            .unwrap_err();
        assert!(err.message.contains("stream"));
    }

    #[test]
    fn a_video_shows_as_its_frames_or_one_marker() {
        let p = parse(json!({"messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": ["data:image;base64,AA", "data:image;base64,BB"]}},
            {"type": "text", "text": "<video>\nDescribe."}]}]}))
        .unwrap();
        assert_eq!(
            p.videos,
            [VideoRef::Frames(vec![
                "data:image;base64,AA".into(),
                "data:image;base64,BB".into()
            ])]
        );
        let frames = p.messages_with_markers(&[VideoMarks::Frames(2)]).unwrap();
        assert_eq!(
            unireward_models::tokenize::unquote_user_text(&frames[0].content),
            "<image>\n<image>\nDescribe."
        );
        let pooled = p.messages_with_markers(&[VideoMarks::Pooled]).unwrap();
        assert!(pooled[0].content.starts_with("<video>"));
    }

    /// MixGRPO's UnifiedReward-qwen body (an image part, then the question, no marker) reads
    /// as the Qwen-VL chat template writes it: the image's tokens right before the question.
    #[test]
    fn a_medium_s_line_break_is_layout_that_qwen_vl_markers_drop() {
        use unireward_models::judge::MediaMarkers;
        let p = parse(
            json!({"model": "UnifiedReward", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AA"}},
            {"type": "text", "text": "Rate [a cat]."}]}], "temperature": 0, "max_tokens": 4096}),
        )
        .unwrap();
        let content = &p.messages_with_markers(&[]).unwrap()[0].content;
        assert_eq!(
            unireward_models::tokenize::unquote_user_text(content),
            "<image>\nRate [a cat]."
        );
        assert_eq!(
            MediaMarkers::QwenVl.apply(content),
            format!(
                "<|vision_start|><|image_pad|><|vision_end|>{}",
                quote_user_text("Rate [a cat].")
            )
        );
        // A marker the client typed, then its line break: the same prompt.
        let marked = parse(json!({"messages": [{"role": "user", "content": [
            {"type": "image", "image": "data:image/png;base64,AA"},
            {"type": "text", "text": "<image>\nRate [a cat]."}]}]}))
        .unwrap();
        assert_eq!(
            &marked.messages_with_markers(&[]).unwrap()[0].content,
            content
        );
    }
}
