//! JSON files the trainer reads (its state, adapter configurations, weight indexes) and
//! writes (durably, through [`replace_file`]).

use std::path::Path;

use serde_json::Value;

use crate::durable_file::replace_file;
use crate::{Error, Result};

pub fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Data {
        path: path.to_path_buf(),
        record: 0,
        msg: format!("invalid JSON: {e}"),
    })
}

/// Writes `value` to a temporary file beside `path`, then renames it over `path`
/// ([`replace_file`]).
pub fn write_json(path: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    replace_file(path, text.as_bytes())
}
