//! Preference pairs of generated images or videos for Diffusion-DPO, in either layout:
//!
//! - `engine pairs` output for image or video generation: `{"id", "prompt", "chosen",
//!   "rejected", ...}` with the chosen and rejected candidates' paths ([`PairsRecord`]; lines
//!   without a pair are passed over);
//! - the DiffusionDPO / Pick-a-Pic layout UnifiedReward's `DiffusionDPO/` trains on:
//!   `{"caption", "jpg_0", "jpg_1", "label_0"}`, where `label_0` 1 prefers `jpg_0` and 0
//!   prefers `jpg_1`; ties (0.5) are passed over, as train.py drops them.
//!
//! A candidate is an image file, or a video given as frames: a directory of frame images (in
//! file-name order) or, in the DiffusionDPO layout, a list of frame files. Either layout may
//! carry `"weight"`, a positive number multiplying that pair's loss (default 1).
//!
//! Relative paths start at the media root. Every record is checked when the file is read (a
//! malformed one, or a missing image or frame, stops the run before training, named by its
//! position).

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward_models::formats::pair_record::{PairsAnswer, PairsRecord};
use unireward_models::formats::record::Record;
use unireward_models::preprocess::video::VideoSource;

use super::{read_records, record_id};
use crate::{Error, Result};

/// One generated candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Candidate {
    Image(PathBuf),
    /// A video's frame files, in order.
    Frames(Vec<PathBuf>),
}

impl Candidate {
    pub fn is_video(&self) -> bool {
        matches!(self, Candidate::Frames(_))
    }

    /// A path (an image, or a directory of frames) or a list of frame files, relative ones
    /// under `root`; every file checked to exist.
    pub(crate) fn resolve(paths: &[PathBuf], root: &Path) -> std::result::Result<Self, String> {
        let at = |p: &PathBuf| {
            if p.is_relative() {
                root.join(p)
            } else {
                p.clone()
            }
        };
        let files: Vec<PathBuf> = match paths {
            [one] if at(one).is_dir() => {
                let dir = at(one);
                let frames = VideoSource::FrameDir(dir.clone())
                    .frame_files()
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                if frames.is_empty() {
                    return Err(format!("frame directory {} holds no image", dir.display()));
                }
                return Ok(Candidate::Frames(frames));
            }
            [one] => {
                let path = at(one);
                if !path.is_file() {
                    return Err(format!("image {} does not exist", path.display()));
                }
                return Ok(Candidate::Image(path));
            }
            _ => paths.iter().map(at).collect(),
        };
        if files.is_empty() {
            return Err("an empty list of frames".into());
        }
        if let Some(missing) = files.iter().find(|f| !f.is_file()) {
            return Err(format!("frame {} does not exist", missing.display()));
        }
        Ok(Candidate::Frames(files))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionPair {
    pub id: String,
    pub caption: String,
    pub chosen: Candidate,
    pub rejected: Candidate,
    /// Multiplies the pair's loss (`"weight"`, default 1).
    pub weight: f64,
}

/// A pair as written: each candidate one path or a list of frame files.
struct RawPair {
    id: String,
    caption: String,
    chosen: Vec<PathBuf>,
    rejected: Vec<PathBuf>,
    weight: f64,
}

pub struct DiffusionPairs {
    pub pairs: Vec<DiffusionPair>,
}

enum Parsed {
    Pair(RawPair),
    /// A line that holds no pair (engine pairs' dropped prompts, ties).
    Skip,
}

/// A candidate's paths: one string, or a list of frame files.
fn paths(v: &Value, k: &str) -> std::result::Result<Vec<PathBuf>, String> {
    let bad = || format!("`{k}` must be a path or a list of frame paths");
    match v.get(k) {
        Some(Value::String(s)) => Ok(vec![s.into()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(PathBuf::from).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

fn weight(v: &Value) -> std::result::Result<f64, String> {
    match v.get("weight") {
        None | Some(Value::Null) => Ok(1.0),
        Some(w) => w
            .as_f64()
            .filter(|w| w.is_finite() && *w > 0.0)
            .ok_or_else(|| format!("`weight` must be a positive number, got {w}")),
    }
}

fn parse(v: &Value, position: usize) -> std::result::Result<Parsed, String> {
    let id = record_id(v, position);
    let weight = weight(v)?;
    if v.get("jpg_0").is_some() {
        let caption = v
            .get("caption")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or("`caption` must be a string")?;
        let (jpg_0, jpg_1) = (paths(v, "jpg_0")?, paths(v, "jpg_1")?);
        let label = v
            .get("label_0")
            .and_then(Value::as_f64)
            .ok_or("`label_0` must be a number (1: jpg_0 preferred, 0: jpg_1, 0.5: tie)")?;
        let (chosen, rejected) = if label == 1.0 {
            (jpg_0, jpg_1)
        } else if label == 0.0 {
            (jpg_1, jpg_0)
        } else if label == 0.5 {
            return Ok(Parsed::Skip);
        } else {
            return Err(format!("`label_0` is {label}; expected 1, 0 or 0.5"));
        };
        return Ok(Parsed::Pair(RawPair {
            id,
            caption,
            chosen,
            rejected,
            weight,
        }));
    }
    match serde_json::from_value::<PairsRecord>(v.clone()).map_err(|e| e.to_string())? {
        Record::Answer {
            answer: PairsAnswer::Pair(rec),
            ..
        } => {
            if rec.images.is_some() || rec.video.is_some() {
                return Err(
                    "a pair of an understanding task (it carries the question's \
                            media); Diffusion-DPO takes image- or video-generation pairs"
                        .into(),
                );
            }
            Ok(Parsed::Pair(RawPair {
                id,
                caption: rec.prompt.text(),
                chosen: vec![rec.chosen.text().into()],
                rejected: vec![rec.rejected.text().into()],
                weight,
            }))
        }
        _ => Ok(Parsed::Skip),
    }
}

impl DiffusionPairs {
    pub fn read(path: &Path, media_root: &Path) -> Result<Self> {
        let all = read_records(path)?;
        let total = all.len();
        let mut pairs = Vec::new();
        for (position, v) in all {
            let bad = |msg: String| Error::Data {
                path: path.to_path_buf(),
                record: position,
                msg,
            };
            match parse(&v, position).map_err(bad)? {
                Parsed::Skip => {}
                Parsed::Pair(raw) => {
                    let chosen = Candidate::resolve(&raw.chosen, media_root).map_err(bad)?;
                    let rejected = Candidate::resolve(&raw.rejected, media_root).map_err(bad)?;
                    if chosen.is_video() != rejected.is_video() {
                        return Err(bad("one candidate is a video and the other an image".into()));
                    }
                    pairs.push(DiffusionPair {
                        id: raw.id,
                        caption: raw.caption,
                        chosen,
                        rejected,
                        weight: raw.weight,
                    });
                }
            }
        }
        if pairs.len() < total {
            tracing::warn!(
                "trainer: {}: {} line(s) without a pair (dropped prompts, ties) passed over",
                path.display(),
                total - pairs.len()
            );
        }
        if pairs.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                record: 0,
                msg: "no image or video pair to train on".into(),
            });
        }
        Ok(Self { pairs })
    }
}
