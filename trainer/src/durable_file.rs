//! Files written so that a crash leaves either the old or the new version: written beside,
//! synced, renamed into place, and the directory synced after (otherwise a crash can leave
//! the rename on disk and the data not).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Syncs every file directly in `dir`, then `dir` itself (whoever wrote the files: the
/// safetensors, optimizer and adapter writers do not sync).
pub fn sync_files_in(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            sync_file(&entry.path())?;
        }
    }
    sync_dir(dir)
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Makes renames, creations and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Replaces `path` with `bytes` through a synced temporary file beside it (`path` with
/// `.tmp` added), renamed over it; the directory is synced after.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut name = path.as_os_str().to_os_string();
    name.push(".tmp");
    let tmp = PathBuf::from(name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => sync_dir(Path::new(".")),
    }
}
