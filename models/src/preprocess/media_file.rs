//! Opening a media file only when it is a regular file, and the decode limits every image
//! and video frame is held to.
//!
//! Reading a FIFO (or a character device) blocks until something writes to it, so one such
//! path among a run's records would stall the whole run; `stat` does not block on them, so
//! they are refused before anything opens them.

use std::fs::File;
use std::path::Path;

use crate::{Error, Result};

/// Most bytes one decoded image or video frame may take: the `image` crate's default
/// `max_alloc`, which every image goes through, applied to GIF and `ffmpeg` frames too.
pub const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// The `image` crate's limits for a frame decoder (the same as [`image::ImageReader`]'s
/// defaults, written out so that GIF frames are held to them explicitly).
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    limits
}

/// Refuses anything but a regular file (symbolic links are followed): a directory, a FIFO,
/// a socket or a device is an error naming the path.
pub fn check_regular_file(path: &Path) -> Result<()> {
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot open: {e}")))?;
    if meta.is_file() {
        return Ok(());
    }
    let kind = if meta.is_dir() {
        "a directory"
    } else {
        special_kind(&meta)
    };
    Err(err(format!("not a regular file ({kind}); refused")))
}

/// Opens `path` for reading after [`check_regular_file`].
pub fn open_regular_file(path: &Path) -> Result<File> {
    check_regular_file(path)?;
    File::open(path).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: format!("cannot open: {e}"),
    })
}

#[cfg(unix)]
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else {
        "not a file"
    }
}

#[cfg(not(unix))]
fn special_kind(_meta: &std::fs::Metadata) -> &'static str {
    "not a file"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_missing_paths_are_refused() {
        let dir = std::env::temp_dir();
        let msg = check_regular_file(&dir).unwrap_err().to_string();
        assert!(msg.contains("a directory"), "{msg}");
        let gone = dir.join("unireward-no-such-media-file.png");
        let msg = open_regular_file(&gone).unwrap_err().to_string();
        assert!(msg.contains("cannot open"), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn devices_are_refused() {
        let msg = check_regular_file(Path::new("/dev/null"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("a device"), "{msg}");
    }
}
