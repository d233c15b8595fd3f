//! Judge data for supervised fine-tuning, in the LLaVA format:
//! `{"id", "image": path | [paths], "video"?: path | [frame paths], "conversations":
//! [{"from": "human", "value"}, {"from": "gpt", "value"}, ...]}`.
//!
//! The first human turn is wrapped in the ChatML prompt the judge is queried with
//! (`<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{human}<|im_end|>\n<|im_start|>assistant\n`)
//! and each answer is scored as `{gpt}<|im_end|>`; later turns continue the same
//! conversation. Only answer tokens carry loss.

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward_models::family::JudgeMedia;
use unireward_models::judge::ChatTemplate;
use unireward_models::preprocess::MediaRequest;
use unireward_models::tokenize::{IMAGE_MARKER, VIDEO_MARKER};

use super::{count_markers, ensure_markers, read_records, record_id, Preparer};
use crate::logprob::ScoredSequence;
use crate::{Error, Result};

pub const END_OF_TURN: &str = "<|im_end|>";

#[derive(Debug, Clone, PartialEq)]
pub struct RewardRecord {
    pub id: String,
    pub media: MediaRequest,
    /// (human, gpt) turns; the human text holds one marker per image / video.
    pub turns: Vec<(String, String)>,
}

impl RewardRecord {
    pub fn parse(v: &Value, position: usize) -> std::result::Result<Self, String> {
        let id = record_id(v, position);
        let media = MediaRequest::parse(v, "image", "video")?;
        let conv = v
            .get("conversations")
            .and_then(Value::as_array)
            .ok_or("missing \"conversations\" list")?;
        let mut turns: Vec<(String, String)> = Vec::new();
        let mut pending: Option<String> = None;
        for (i, msg) in conv.iter().enumerate() {
            let from = msg.get("from").and_then(Value::as_str).unwrap_or_default();
            let value = msg
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("conversations[{i}] has no string \"value\""))?;
            match (from, pending.take()) {
                ("human" | "user", None) => pending = Some(value.to_string()),
                ("gpt" | "assistant", Some(human)) => turns.push((human, value.to_string())),
                ("human" | "user", Some(_)) | ("gpt" | "assistant", None) => {
                    return Err(format!(
                        "conversations[{i}]: turns must alternate human, gpt, human, ..."
                    ))
                }
                (other, _) => {
                    return Err(format!(
                        "conversations[{i}]: \"from\" is {other:?}, expected \"human\" or \"gpt\""
                    ))
                }
            }
        }
        if pending.is_some() {
            return Err("the conversation ends with a human turn that has no answer".into());
        }
        if turns.is_empty() {
            return Err("the conversation has no answer".into());
        }
        let (n_img, n_vid) = (media.images.len(), media.videos.len());
        // LLaVA writes `<image>` for a video too; here a video's features fill `<video>`.
        if n_img == 0 && n_vid > 0 {
            for (human, _) in &mut turns {
                if count_markers(human).1 == 0 {
                    *human = human.replace(IMAGE_MARKER, VIDEO_MARKER);
                }
            }
        }
        let (mut have_img, mut have_vid) = (0, 0);
        for (human, _) in &turns {
            let (i, v) = count_markers(human);
            have_img += i;
            have_vid += v;
        }
        let first = &mut turns[0].0;
        let missing_img = if have_img == 0 { n_img } else { 0 };
        let missing_vid = if have_vid == 0 { n_vid } else { 0 };
        *first = ensure_markers(first, missing_img, missing_vid);
        let (have_img, have_vid) = turns.iter().fold((0, 0), |(i, v), (human, _)| {
            let (a, b) = count_markers(human);
            (i + a, v + b)
        });
        if (have_img, have_vid) != (n_img, n_vid) {
            return Err(format!(
                "the conversation has {have_img} {IMAGE_MARKER} and {have_vid} {VIDEO_MARKER} \
                 marker(s) for {n_img} image(s) and {n_vid} video(s)"
            ));
        }
        Ok(Self { id, media, turns })
    }

    /// The conversation as (text, scored) segments.
    pub fn segments(&self) -> Result<Vec<(String, bool)>> {
        let mut out = Vec::with_capacity(2 * self.turns.len());
        for (k, (human, gpt)) in self.turns.iter().enumerate() {
            let prompt = if k == 0 {
                ChatTemplate::ChatMl.render(human)?
            } else {
                format!("\n<|im_start|>user\n{human}{END_OF_TURN}\n<|im_start|>assistant\n")
            };
            out.push((prompt, false));
            out.push((format!("{gpt}{END_OF_TURN}"), true));
        }
        Ok(out)
    }
}

/// One example ready for the model.
pub struct RewardExample {
    pub id: String,
    pub seq: ScoredSequence,
    pub media: JudgeMedia,
}

pub struct RewardData {
    pub path: PathBuf,
    pub records: Vec<RewardRecord>,
    pub preparer: Preparer,
}

impl RewardData {
    /// Reads and checks every record up front, so that a malformed one stops the run before
    /// training starts, named by its position.
    pub fn read(path: &Path, preparer: Preparer) -> Result<Self> {
        let records = read_records(path)?
            .into_iter()
            .map(|(pos, v)| {
                let bad = |msg| Error::Data {
                    path: path.to_path_buf(),
                    record: pos,
                    msg,
                };
                let rec = RewardRecord::parse(&v, pos).map_err(bad)?;
                match preparer.missing_media(&rec.media) {
                    Some(p) => Err(bad(format!("{} does not exist", p.display()))),
                    None => Ok(rec),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        if records.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                record: 0,
                msg: "no records".into(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            records,
            preparer,
        })
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn prepare(&self, index: usize) -> Result<RewardExample> {
        let rec = &self.records[index];
        let media = self.preparer.load_media(&rec.id, &rec.media)?;
        let seq = self.preparer.encode(&rec.id, &rec.segments()?, &media)?;
        Ok(RewardExample {
            id: rec.id.clone(),
            seq,
            media,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conversation_becomes_chatml_segments_with_answers_scored() {
        let v = json!({"id": 3, "image": "a.png", "conversations": [
            {"from": "human", "value": "Which is better?"},
            {"from": "gpt", "value": "Image 1 is better."},
            {"from": "human", "value": "Why?"},
            {"from": "gpt", "value": "Sharper."}]});
        let rec = RewardRecord::parse(&v, 1).unwrap();
        assert_eq!(rec.id, "3");
        let segs = rec.segments().unwrap();
        assert_eq!(
            segs[0].0,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <image>\nWhich is better?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(segs[1], ("Image 1 is better.<|im_end|>".to_string(), true));
        assert_eq!(
            segs[2].0,
            "\n<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(!segs[0].1 && !segs[2].1 && segs[3].1);
    }

    #[test]
    fn video_markers_written_as_image_become_video() {
        let v = json!({"video": "clip.mp4", "conversations": [
            {"from": "human", "value": "<image>\nScore it."}, {"from": "gpt", "value": "5"}]});
        let rec = RewardRecord::parse(&v, 4).unwrap();
        assert_eq!(rec.id, "#4");
        assert_eq!(rec.turns[0].0, "<video>\nScore it.");
    }

    #[test]
    fn malformed_conversations_are_refused() {
        let cases = [
            json!({"conversations": [{"from": "gpt", "value": "x"}]}),
            json!({"conversations": [{"from": "human", "value": "x"}]}),
            json!({"conversations": [{"from": "robot", "value": "x"}]}),
            json!({"image": 3, "conversations": []}),
            json!({"image": "a.png", "conversations": [
                {"from": "human", "value": "<image> and <image>"}, {"from": "gpt", "value": "x"}]}),
        ];
        for c in cases {
            assert!(RewardRecord::parse(&c, 1).is_err(), "{c}");
        }
    }
}
