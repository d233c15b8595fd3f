//! Captioned images for `trainer denoise`, in either layout:
//!
//! - `{"id"?, "caption" | "prompt" | "text", "image"}`;
//! - diffusers' `imagefolder` metadata (`metadata.jsonl`, which train_text_to_image.py reads):
//!   `{"file_name", "text"}`.
//!
//! The image is a path (relative ones start at the media root), or, for a motion UNet, a
//! directory of frames or a list of frame files, as in [`super::diffusion_pairs`]. Every record
//! is checked when the file is read (a malformed one, or a missing image, stops the run before
//! training, named by its position).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::diffusion_pairs::Candidate;
use super::{read_records, record_id};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct CaptionedImage {
    pub id: String,
    pub caption: String,
    pub image: Candidate,
}

pub struct CaptionedImages {
    pub examples: Vec<CaptionedImage>,
}

fn parse(v: &Value, root: &Path) -> std::result::Result<CaptionedImage, String> {
    let caption = ["caption", "prompt", "text"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str))
        .ok_or("a string `caption` (or `prompt`, or `text`) is required")?;
    let key = ["image", "file_name"]
        .iter()
        .find(|k| v.get(**k).is_some())
        .ok_or("an `image` (or `file_name`) is required")?;
    let paths: Vec<PathBuf> = match v.get(*key) {
        Some(Value::String(s)) => vec![s.into()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(PathBuf::from))
            .collect::<Option<_>>()
            .ok_or_else(|| format!("`{key}` must be a path or a list of frame paths"))?,
        _ => return Err(format!("`{key}` must be a path or a list of frame paths")),
    };
    Ok(CaptionedImage {
        id: String::new(),
        caption: caption.to_string(),
        image: Candidate::resolve(&paths, root)?,
    })
}

impl CaptionedImages {
    pub fn read(path: &Path, media_root: &Path) -> Result<Self> {
        let mut examples = Vec::new();
        for (position, v) in read_records(path)? {
            let mut ex = parse(&v, media_root).map_err(|msg| Error::Data {
                path: path.to_path_buf(),
                record: position,
                msg,
            })?;
            ex.id = record_id(&v, position);
            examples.push(ex);
        }
        if examples.is_empty() {
            return Err(Error::Data {
                path: path.to_path_buf(),
                record: 0,
                msg: "no captioned image to train on".into(),
            });
        }
        Ok(Self { examples })
    }
}
