//! A request's media made into files the loader reads: `data:` URIs decoded and written to a
//! folder of the request's own (removed when the request is done), paths accepted only under
//! `--allowed-media-dir`, remote URLs refused. Each medium gets the SHA-256 of its bytes, the
//! key of the vision-feature cache.
//!
//! Media become files rather than in-memory images so that they take the very path
//! `engine score` takes (the same loader, ffmpeg for a video file), which is what makes the
//! server's answers equal the batch command's.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use unireward_models::preprocess::{MediaRequest, VideoSource};

use super::api_error::ApiError;

/// What the server lets a request's media be.
#[derive(Debug, Clone)]
pub struct MediaPolicy {
    /// The one folder whose files requests may name (canonical); `None`: paths are refused.
    pub allowed_dir: Option<PathBuf>,
    /// Most images (a video's frame images included) and videos per request.
    pub max_media: usize,
    /// Most pixels per image.
    pub max_pixels: u64,
}

/// The content hash of a medium.
pub type MediaKey = [u8; 32];

/// A medium as a local file.
#[derive(Debug, Clone)]
pub struct Localized {
    pub path: PathBuf,
    /// `None` for a frame folder, whose content is not hashed (never cached).
    pub key: Option<MediaKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Image,
    Video,
}

/// The folder one request's inline media are written to.
pub struct Inbox<'p> {
    policy: &'p MediaPolicy,
    dir: Option<tempfile::TempDir>,
    count: usize,
}

impl<'p> Inbox<'p> {
    pub fn new(policy: &'p MediaPolicy) -> Self {
        Self {
            policy,
            dir: None,
            count: 0,
        }
    }

    /// A media reference as a request gives it (a `data:` URI, a path or `file://` URL under
    /// the allowed folder) as a local file.
    pub fn localize(&mut self, reference: &str, expect: Expect) -> Result<Localized, ApiError> {
        self.count += 1;
        if self.count > self.policy.max_media {
            return Err(ApiError::bad_request(format!(
                "more than {} images and videos in one request (--max-media-per-request)",
                self.policy.max_media
            )));
        }
        let reference = reference.trim();
        if let Some(uri) = reference.strip_prefix("data:") {
            return self.write_data_uri(uri, expect);
        }
        let lower = reference.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            return Err(ApiError::bad_request(format!(
                "remote media are not fetched ({}): send them inline as base64 data: URIs",
                shorten(reference)
            )));
        }
        let path = reference.strip_prefix("file://").unwrap_or(reference);
        self.allowed_path(path, expect)
    }

    fn write_data_uri(&mut self, uri: &str, expect: Expect) -> Result<Localized, ApiError> {
        let (header, payload) = uri
            .split_once(',')
            .ok_or_else(|| ApiError::bad_request("a data: URI without a comma before its data"))?;
        let mut params = header.split(';');
        let media_type = params.next().unwrap_or("").to_ascii_lowercase();
        if !params.any(|p| p.eq_ignore_ascii_case("base64")) {
            return Err(ApiError::bad_request(format!(
                "data:{header}, is not base64; media must be base64 data: URIs"
            )));
        }
        let bytes = decode_base64(payload)?;
        let ext = match expect {
            Expect::Image => image_extension(&bytes, self.policy.max_pixels)?,
            Expect::Video => video_extension(&bytes, &media_type)?,
        };
        let key: MediaKey = Sha256::digest(&bytes).into();
        if self.dir.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("unireward-serve-")
                .tempdir()
                .map_err(|e| ApiError::internal(format!("cannot make a media folder: {e}")))?;
            self.dir = Some(dir);
        }
        let dir = self
            .dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or(Path::new("."));
        let path = dir.join(format!("{}.{ext}", self.count));
        std::fs::write(&path, &bytes)
            .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
        Ok(Localized {
            path,
            key: Some(key),
        })
    }

    fn allowed_path(&self, path: &str, expect: Expect) -> Result<Localized, ApiError> {
        let Some(allowed) = &self.policy.allowed_dir else {
            return Err(ApiError::bad_request(format!(
                "file paths are refused ({}): send media as base64 data: URIs, or start the \
                 server with --allowed-media-dir",
                shorten(path)
            )));
        };
        let joined = allowed.join(path);
        let real = joined
            .canonicalize()
            .map_err(|e| ApiError::bad_request(format!("{}: {e}", shorten(path))))?;
        // Canonical on both sides, so `..` and symbolic links cannot leave the folder.
        if !real.starts_with(allowed) {
            return Err(ApiError::bad_request(format!(
                "{} is outside --allowed-media-dir",
                shorten(path)
            )));
        }
        if real.is_dir() {
            return Ok(Localized {
                path: real,
                key: None,
            });
        }
        let err = |e: String| ApiError::bad_request(format!("{}: {e}", real.display()));
        unireward_models::preprocess::media_file::check_regular_file(&real)
            .map_err(|e| err(e.to_string()))?;
        if expect == Expect::Image {
            let mut head = Vec::new();
            std::fs::File::open(&real)
                .and_then(|f| f.take(IMAGE_HEAD_BYTES).read_to_end(&mut head))
                .map_err(|e| err(e.to_string()))?;
            image_extension(&head, self.policy.max_pixels)?;
        }
        // Streamed, so that a large video file is hashed without being held in memory.
        let mut hasher = Sha256::new();
        std::fs::File::open(&real)
            .and_then(|mut f| std::io::copy(&mut f, &mut hasher))
            .map_err(|e| err(e.to_string()))?;
        Ok(Localized {
            key: Some(hasher.finalize().into()),
            path: real,
        })
    }
}

/// Bytes of an image file read to find its format and size: the header, and room for the
/// metadata some JPEGs put before their frame header.
const IMAGE_HEAD_BYTES: u64 = 1 << 20;

/// The content hashes of a request's images and videos, in [`MediaRequest`] order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaKeys {
    pub images: Vec<Option<MediaKey>>,
    pub videos: Vec<Option<MediaKey>>,
}

impl Inbox<'_> {
    /// A request whose media name data URIs, paths or URLs (as `engine score` records name
    /// paths), with every medium made a local file.
    pub fn localize_request(
        &mut self,
        req: &MediaRequest,
    ) -> Result<(MediaRequest, MediaKeys), ApiError> {
        let mut out = MediaRequest::default();
        let mut keys = MediaKeys::default();
        for image in &req.images {
            let local = self.localize(&image.to_string_lossy(), Expect::Image)?;
            out.images.push(local.path);
            keys.images.push(local.key);
        }
        for video in &req.videos {
            let (source, key) = self.localize_video(video)?;
            out.videos.push(source);
            keys.videos.push(key);
        }
        Ok((out, keys))
    }

    /// A video file (or frame folder), or a list of frame images; a frame list's key hashes
    /// its frames' keys in order.
    pub fn localize_video(
        &mut self,
        video: &VideoSource,
    ) -> Result<(VideoSource, Option<MediaKey>), ApiError> {
        match video {
            VideoSource::FrameFiles(frames) => {
                let mut paths = Vec::with_capacity(frames.len());
                let mut hasher = Sha256::new();
                let mut hashed = true;
                for f in frames {
                    let local = self.localize(&f.to_string_lossy(), Expect::Image)?;
                    match local.key {
                        Some(k) => hasher.update(k),
                        None => hashed = false,
                    }
                    paths.push(local.path);
                }
                let key: MediaKey = hasher.finalize().into();
                Ok((VideoSource::FrameFiles(paths), hashed.then_some(key)))
            }
            VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => {
                let local = self.localize(&p.to_string_lossy(), Expect::Video)?;
                Ok((VideoSource::from_path(local.path), local.key))
            }
        }
    }
}

fn decode_base64(payload: &str) -> Result<Vec<u8>, ApiError> {
    let compact: String = payload
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&compact))
        .map_err(|e| ApiError::bad_request(format!("a data: URI's base64 does not decode: {e}")))
}

/// The image's file extension from its signature, after checking its pixel count from its
/// header (nothing is decoded here).
fn image_extension(bytes: &[u8], max_pixels: u64) -> Result<&'static str, ApiError> {
    let format = image::guess_format(bytes)
        .map_err(|_| ApiError::bad_request("an image that is not PNG, JPEG, WebP, GIF or BMP"))?;
    let ext = match format {
        image::ImageFormat::Png => "png",
        image::ImageFormat::Jpeg => "jpg",
        image::ImageFormat::WebP => "webp",
        image::ImageFormat::Gif => "gif",
        image::ImageFormat::Bmp => "bmp",
        other => {
            return Err(ApiError::bad_request(format!(
                "images must be PNG, JPEG, WebP, GIF or BMP, not {other:?}"
            )))
        }
    };
    let (w, h) = image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| ApiError::bad_request(format!("an unreadable {ext} image: {e}")))?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("an image of {w}x{h} = {pixels} pixels is over the limit of {max_pixels} (--max-image-pixels)"),
        ));
    }
    Ok(ext)
}

/// A video's file extension, from its signature (else from the URI's media type) so that
/// ffmpeg and the GIF reader know it.
fn video_extension(bytes: &[u8], media_type: &str) -> Result<&'static str, ApiError> {
    if bytes.starts_with(b"GIF8") {
        return Ok("gif");
    }
    if bytes.len() > 12 && &bytes[4..8] == b"ftyp" {
        return Ok("mp4");
    }
    if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        return Ok("webm");
    }
    if bytes.starts_with(b"RIFF") && bytes.len() > 12 && &bytes[8..12] == b"AVI " {
        return Ok("avi");
    }
    match media_type {
        "video/mp4" => Ok("mp4"),
        "video/webm" => Ok("webm"),
        "video/quicktime" => Ok("mov"),
        "image/gif" => Ok("gif"),
        _ => Err(ApiError::bad_request(format!(
            "a video that is not MP4, WebM, AVI or GIF (media type {:?})",
            media_type
        ))),
    }
}

/// A reference cut short for an error message (a data URI can be megabytes).
fn shorten(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_string();
    }
    let end = (0..=80).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let mut out = Vec::new();
        image::RgbImage::new(w, h)
            .write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    fn policy(dir: Option<PathBuf>) -> MediaPolicy {
        MediaPolicy {
            allowed_dir: dir,
            max_media: 3,
            max_pixels: 10_000,
        }
    }

    fn data_uri(kind: &str, bytes: &[u8]) -> String {
        format!(
            "{kind};base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn data_uris_with_or_without_a_subtype_become_files_with_the_content_hash() {
        let policy = policy(None);
        let mut inbox = Inbox::new(&policy);
        let bytes = png(8, 6);
        let a = inbox
            .localize(&data_uri("data:image", &bytes), Expect::Image)
            .unwrap();
        let b = inbox
            .localize(&data_uri("data:image/png", &bytes), Expect::Image)
            .unwrap();
        assert_eq!(std::fs::read(&a.path).unwrap(), bytes);
        assert_eq!(a.path.extension().unwrap(), "png");
        assert_eq!(a.key, b.key);
        assert_ne!(a.path, b.path);
    }

    #[test]
    fn remote_urls_paths_and_oversized_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let inside = dir.path().canonicalize().unwrap();
        std::fs::write(inside.join("a.png"), png(4, 4)).unwrap();
        let policy_none = policy(None);
        let mut inbox = Inbox::new(&policy_none);
        let err = inbox
            .localize("https://example.com/a.png", Expect::Image)
            .unwrap_err();
        assert!(err.message.contains("remote media"), "{err}");
        let err = inbox
            .localize("file:///etc/passwd", Expect::Image)
            .unwrap_err();
        assert!(err.message.contains("--allowed-media-dir"), "{err}");
        let err = inbox
            .localize(&data_uri("data:image/png", &png(200, 100)), Expect::Image)
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(err.message.contains("200x100"), "{err}");

        let allowed = policy(Some(inside.clone()));
        let mut inbox = Inbox::new(&allowed);
        let ok = inbox.localize("a.png", Expect::Image).unwrap();
        assert_eq!(ok.path, inside.join("a.png"));
        let err = inbox
            .localize("../../../etc/passwd", Expect::Image)
            .unwrap_err();
        assert!(
            err.message.contains("outside") || err.message.contains("No such"),
            "{err}"
        );
        inbox.localize("a.png", Expect::Image).unwrap();
        let err = inbox.localize("a.png", Expect::Image).unwrap_err();
        assert!(err.message.contains("--max-media-per-request"), "{err}");
    }
}
