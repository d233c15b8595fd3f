//! Preference pairs of generated images for Diffusion-DPO, in either layout:
//!
//! - `engine pairs` output for image generation: `{"id", "prompt", "chosen", "rejected", ...}`
//!   with the chosen and rejected candidates' image paths ([`PairsRecord`]; lines without a
//!   pair are passed over);
//! - the DiffusionDPO / Pick-a-Pic layout UnifiedReward's `DiffusionDPO/` trains on:
//!   `{"caption", "jpg_0", "jpg_1", "label_0"}`, where `label_0` 1 prefers `jpg_0` and 0
//!   prefers `jpg_1`; ties (0.5) are passed over, as train.py drops them.
//!
//! Relative image paths start at the media root. Every record is checked when the file is
//! read (a malformed one, or a missing image, stops the run before training, named by its
//! position).

use std::path::{Path, PathBuf};

use serde_json::Value;
use unireward_models::formats::pair_record::{PairsAnswer, PairsRecord};
use unireward_models::formats::record::Record;

use super::{read_records, record_id};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionPair {
    pub id: String,
    pub caption: String,
    pub chosen: PathBuf,
    pub rejected: PathBuf,
}

pub struct DiffusionPairs {
    pub pairs: Vec<DiffusionPair>,
}

enum Parsed {
    Pair(DiffusionPair),
    /// A line that holds no pair (engine pairs' dropped prompts, ties).
    Skip,
}

fn parse(v: &Value, position: usize) -> std::result::Result<Parsed, String> {
    let id = record_id(v, position);
    if v.get("jpg_0").is_some() {
        let text = |k: &str| -> std::result::Result<String, String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("`{k}` must be a string"))
        };
        let (caption, jpg_0, jpg_1) = (text("caption")?, text("jpg_0")?, text("jpg_1")?);
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
        return Ok(Parsed::Pair(DiffusionPair {
            id,
            caption,
            chosen: chosen.into(),
            rejected: rejected.into(),
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
                            media); Diffusion-DPO takes image-generation pairs"
                        .into(),
                );
            }
            Ok(Parsed::Pair(DiffusionPair {
                id,
                caption: rec.prompt.text(),
                chosen: rec.chosen.text().into(),
                rejected: rec.rejected.text().into(),
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
                Parsed::Pair(mut pair) => {
                    for image in [&mut pair.chosen, &mut pair.rejected] {
                        if image.is_relative() {
                            *image = media_root.join(&*image);
                        }
                        if !image.is_file() {
                            return Err(bad(format!("image {} does not exist", image.display())));
                        }
                    }
                    pairs.push(pair);
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
                msg: "no image pair to train on".into(),
            });
        }
        Ok(Self { pairs })
    }
}
