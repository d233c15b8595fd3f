//! Preference pairs for DPO: the `engine pairs` output, read through its record type
//! ([`PairRecord`]) in either layout: plain, as the UnifiedReward / LLaVA DPO format
//! `{"id", "prompt", "chosen", "rejected", "image": path | "images": [paths], "video"?}`
//! (`"videos"` also read), or TRL's conversational one (`prompt`, `chosen`, `rejected` as
//! messages, `{"type": "image"}` items standing for `images`).
//!
//! As the reference DPO code (LLaVA-NeXT `train_dpo.py`) does, the prompt's media markers are
//! removed and put back as one marker line per medium before the text; the prompt is then
//! wrapped in the ChatML user turn, and each answer is scored as `{answer}<|im_end|>`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use unireward_models::family::JudgeMedia;
use unireward_models::formats::pair_record::{PairRecord, PairsAnswer, PairsRecord, Paths};
use unireward_models::formats::record::Record;
use unireward_models::judge::ChatTemplate;
use unireward_models::preprocess::MediaRequest;
use unireward_models::tokenize::{IMAGE_MARKER, VIDEO_MARKER};

use super::reward::END_OF_TURN;
use super::{ensure_markers, read_records, record_id, Preparer};
use crate::logprob::ScoredSequence;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct DpoRecord {
    pub id: String,
    /// The user turn, markers placed.
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub media: MediaRequest,
}

impl DpoRecord {
    pub fn parse(v: &Value, position: usize) -> std::result::Result<Self, String> {
        let rec: PairRecord = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        Self::from_pair(record_id(v, position), rec)
    }

    /// The pair `rec`, named `id`, as the model is to read it.
    fn from_pair(id: String, rec: PairRecord) -> std::result::Result<Self, String> {
        let media = MediaRequest::parse(
            &json!({"images": rec.images.as_ref().map(Paths::to_vec), "videos": rec.video}),
            "images",
            "videos",
        )?;
        if let Some((images, videos)) = rec.prompt.media_items() {
            if (images, videos) != (media.images.len(), media.videos.len()) {
                return Err(format!(
                    "the prompt shows {images} image(s) and {videos} video(s), the record has \
                     {} image(s) and {} video(s)",
                    media.images.len(),
                    media.videos.len()
                ));
            }
        }
        let bare = rec
            .prompt
            .text()
            .replace(IMAGE_MARKER, "")
            .replace(VIDEO_MARKER, "")
            .trim()
            .to_string();
        Ok(Self {
            id,
            prompt: ensure_markers(&bare, media.images.len(), media.videos.len()),
            chosen: rec.chosen.text(),
            rejected: rec.rejected.text(),
            media,
        })
    }

    /// (prompt, scored answer) segments for `answer`.
    pub fn segments(&self, answer: &str) -> Result<Vec<(String, bool)>> {
        Ok(vec![
            (ChatTemplate::ChatMl.render(&self.prompt)?, false),
            (format!("{answer}{END_OF_TURN}"), true),
        ])
    }
}

/// A pair ready for the model: both answers share the prompt and its media.
pub struct DpoExample {
    pub id: String,
    pub chosen: ScoredSequence,
    pub rejected: ScoredSequence,
    pub media: JudgeMedia,
}

pub struct DpoData {
    pub path: PathBuf,
    pub records: Vec<DpoRecord>,
    pub preparer: Preparer,
}

impl DpoData {
    /// Reads and checks every record up front (a malformed one stops the run before training,
    /// named by its position). Lines of `engine pairs` that hold no pair (`"dropped"`, or
    /// `"error"`) are passed over, and their number said on stderr.
    pub fn read(path: &Path, preparer: Preparer) -> Result<Self> {
        let all = read_records(path)?;
        let total = all.len();
        // A line that is not a record of a pair file stays, to be refused below by position.
        let pairs: Vec<(usize, Value, std::result::Result<PairRecord, String>)> = all
            .into_iter()
            .filter_map(
                |(pos, v)| match serde_json::from_value::<PairsRecord>(v.clone()) {
                    Ok(Record::Answer {
                        answer: PairsAnswer::Pair(rec),
                        ..
                    }) => Some((pos, v, Ok(rec))),
                    Ok(_) => None,
                    Err(e) => Some((pos, v, Err(e.to_string()))),
                },
            )
            .collect();
        if pairs.len() < total {
            tracing::warn!(
                "trainer: {}: {} line(s) without a pair (dropped or failed) passed over",
                path.display(),
                total - pairs.len()
            );
        }
        let records = pairs
            .into_iter()
            .map(|(pos, v, rec)| {
                let bad = |msg| Error::Data {
                    path: path.to_path_buf(),
                    record: pos,
                    msg,
                };
                let rec = rec
                    .and_then(|rec| DpoRecord::from_pair(record_id(&v, pos), rec))
                    .map_err(bad)?;
                if preparer.is_media_file(&rec.chosen) && preparer.is_media_file(&rec.rejected) {
                    return Err(bad(
                        "chosen and rejected are files: pairs of generated images or videos \
                         (generation tasks) are for diffusion DPO; --kind vlm trains on text \
                         answers"
                            .into(),
                    ));
                }
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

    pub fn prepare(&self, index: usize) -> Result<DpoExample> {
        let rec = &self.records[index];
        let media = self.preparer.load_media(&rec.id, &rec.media)?;
        let chosen = self
            .preparer
            .encode(&rec.id, &rec.segments(&rec.chosen)?, &media)?;
        let rejected = self
            .preparer
            .encode(&rec.id, &rec.segments(&rec.rejected)?, &media)?;
        Ok(DpoExample {
            id: rec.id.clone(),
            chosen,
            rejected,
            media,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn markers_move_before_the_prompt_one_per_medium() {
        let v = json!({"id": "a", "prompt": "Look <image> here", "chosen": "yes", "rejected": "no",
                       "images": ["x.png", "y.png"]});
        let rec = DpoRecord::parse(&v, 1).unwrap();
        assert_eq!(rec.prompt, "<image>\n<image>\nLook  here");
        let segs = rec.segments(&rec.chosen).unwrap();
        assert!(segs[0].0.ends_with(
            "<|im_start|>user\n<image>\n<image>\nLook  here<|im_end|>\n<|im_start|>assistant\n"
        ));
        assert_eq!(segs[1], ("yes<|im_end|>".to_string(), true));

        let v = json!({"prompt": "<image>\nq", "chosen": "a", "rejected": "b", "image": "x.png"});
        assert_eq!(DpoRecord::parse(&v, 2).unwrap().prompt, "<image>\nq");
        let v = json!({"prompt": "q", "chosen": "a", "rejected": "b", "video": "clip.gif"});
        assert_eq!(DpoRecord::parse(&v, 3).unwrap().prompt, "<video>\nq");
        let v = json!({"prompt": "q", "chosen": "a", "rejected": "b"});
        assert_eq!(DpoRecord::parse(&v, 4).unwrap().prompt, "q");
    }

    #[test]
    fn missing_fields_are_named() {
        let v = json!({"prompt": "q", "chosen": "a"});
        let err = DpoRecord::parse(&v, 1).unwrap_err();
        assert!(err.contains("rejected"), "{err}");
    }

    #[test]
    fn plain_and_conversational_records_read_the_same() {
        let plain = json!({"id": "a", "prompt": "What is it?", "chosen": "A cat.",
                           "rejected": "A dog.", "chosen_score": 80.0, "rejected_score": 20.0,
                           "images": ["x.png"]});
        let trl = json!({"id": "a",
            "prompt": [{"role": "user", "content": [
                {"type": "image"}, {"type": "text", "text": "What is it?"}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "A dog."}]}],
            "chosen_score": 80.0, "rejected_score": 20.0, "images": ["x.png"]});
        let a = DpoRecord::parse(&plain, 1).unwrap();
        let b = DpoRecord::parse(&trl, 1).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.prompt, "<image>\nWhat is it?");
        assert_eq!(
            a.segments(&a.chosen).unwrap(),
            b.segments(&b.chosen).unwrap()
        );

        let video_plain = json!({"prompt": "q", "chosen": "a", "rejected": "b", "video": "c.gif"});
        let video_trl = json!({
            "prompt": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "q"}]}],
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
            "video": "c.gif"});
        assert_eq!(
            DpoRecord::parse(&video_plain, 2).unwrap(),
            DpoRecord::parse(&video_trl, 2).unwrap()
        );
    }

    #[test]
    fn image_items_must_match_the_images() {
        let v = json!({
            "prompt": [{"role": "user", "content": [
                {"type": "image"}, {"type": "image"}, {"type": "text", "text": "q"}]}],
            "chosen": "a", "rejected": "b", "images": ["x.png"]});
        let err = DpoRecord::parse(&v, 1).unwrap_err();
        assert!(err.contains("2 image(s)"), "{err}");
    }
}
