//! The media a request names, as records write them: image paths, and videos given as a path
//! (frame directory, GIF or video file) or a list of frame paths; and how a video reaches the
//! model ([`VideoMode`]): as the UnifiedReward LLaVA scripts send it (its sampled frames as
//! plain image tiles, one `<image>` marker each), or through LLaVA-OneVision's pooled video
//! path (one `<video>` marker).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use super::video::VideoSource;

/// How a video reaches the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoMode {
    /// As the UnifiedReward LLaVA scripts run their checkpoints: frames sampled at
    /// `linspace(0, n - 1, N, dtype=int)`, each one plain tile (Pillow bicubic to the tile
    /// size, the image processor's arithmetic; no anyres, no newline, no pooling), one
    /// `<image>` marker per frame. See [`super::frame_tiles`].
    Frames,
    /// LLaVA-OneVision's video path (transformers): frames at `round(linspace(0, n - 1, N))`,
    /// torchvision's resize, each frame's features 2x2-pooled, one newline after the last
    /// frame, one `<video>` marker per video.
    Pooled,
}

impl FromStr for VideoMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "frames" => Ok(VideoMode::Frames),
            "pooled" => Ok(VideoMode::Pooled),
            _ => Err(format!(
                "unknown video mode {s:?}; expected frames or pooled"
            )),
        }
    }
}

impl fmt::Display for VideoMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VideoMode::Frames => "frames",
            VideoMode::Pooled => "pooled",
        })
    }
}

/// A media key's value as a record writes it: one path, or a list of entries. Whatever else
/// is found is kept, so that the error can show it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawMedia {
    Path(String),
    List(Vec<RawEntry>),
    Other(Value),
}

/// An entry of a media list: a path, or a list of frames.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawEntry {
    Path(String),
    Frames(Vec<RawFrame>),
    Other(Value),
}

/// An entry of a frame list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum RawFrame {
    Path(String),
    Other(Value),
}

impl RawEntry {
    /// The entry as the record wrote it, for error messages.
    fn to_value(&self) -> Value {
        match self {
            RawEntry::Path(p) => Value::String(p.clone()),
            RawEntry::Frames(frames) => Value::Array(frames.iter().map(RawFrame::to_value).collect()),
            RawEntry::Other(v) => v.clone(),
        }
    }
}

impl RawFrame {
    fn to_value(&self) -> Value {
        match self {
            RawFrame::Path(p) => Value::String(p.clone()),
            RawFrame::Other(v) => v.clone(),
        }
    }
}

/// The media a request names: image paths and videos.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaRequest {
    pub images: Vec<PathBuf>,
    pub videos: Vec<VideoSource>,
}

impl MediaRequest {
    /// Reads `images_key` (a list of paths, or one path) and `video_key` of `v`; see
    /// [`Self::from_raw`].
    pub fn parse(
        v: &Value,
        images_key: &str,
        video_key: &str,
    ) -> std::result::Result<Self, String> {
        let raw = |key: &str| match v.get(key) {
            None => Ok(None),
            Some(value) => {
                Option::<RawMedia>::deserialize(value).map_err(|e| format!("{key:?}: {e}"))
            }
        };
        Self::from_raw(raw(images_key)?, images_key, raw(video_key)?, video_key)
    }

    /// The request from the values of its image and video keys (`None`: absent or null).
    /// A plural video key (`videos`, ending in `s`) lists videos, each a path (frame
    /// directory, GIF or video file) or a list of frame paths; a bare path is one video. A
    /// singular key (`video`) is one video: a path, or a list of frame paths (a one-entry
    /// list is that path).
    pub fn from_raw(
        images: Option<RawMedia>,
        images_key: &str,
        videos: Option<RawMedia>,
        video_key: &str,
    ) -> std::result::Result<Self, String> {
        let mut out = Self::default();
        let not_paths = |found: &Value| format!("{images_key:?} must list paths, found {found}");
        match images {
            None => {}
            Some(RawMedia::List(items)) => {
                for item in items {
                    match item {
                        RawEntry::Path(p) => out.images.push(PathBuf::from(p)),
                        other => return Err(not_paths(&other.to_value())),
                    }
                }
            }
            Some(RawMedia::Path(p)) => out.images.push(PathBuf::from(p)),
            Some(RawMedia::Other(other)) => return Err(not_paths(&other)),
        }
        let lists_videos = video_key.ends_with('s');
        match videos {
            None => {}
            Some(RawMedia::Path(p)) => out.videos.push(VideoSource::from_path(p)),
            Some(RawMedia::List(items)) if lists_videos => {
                for item in items {
                    out.videos.push(video_source(item, video_key)?);
                }
            }
            // A list of frame lists under the singular key is how earlier files (and the
            // demo's judge data) wrote one video: still read as the videos it lists.
            Some(RawMedia::List(items))
                if !items.is_empty() && items.iter().all(|i| matches!(i, RawEntry::Frames(_))) =>
            {
                for item in items {
                    out.videos.push(video_source(item, video_key)?);
                }
            }
            Some(RawMedia::List(frames)) => out.videos.push(frame_list(
                frames.into_iter().map(|f| match f {
                    RawEntry::Path(p) => RawFrame::Path(p),
                    other => RawFrame::Other(other.to_value()),
                }),
                video_key,
            )?),
            Some(RawMedia::Other(other)) => {
                return Err(format!("{video_key:?}: not a video: {other}"))
            }
        }
        Ok(out)
    }
}

/// One video: a path, or a list of frame paths.
fn video_source(item: RawEntry, key: &str) -> std::result::Result<VideoSource, String> {
    match item {
        RawEntry::Path(p) => Ok(VideoSource::from_path(p)),
        RawEntry::Frames(frames) => frame_list(frames.into_iter(), key),
        RawEntry::Other(other) => Err(format!("{key:?}: not a video: {other}")),
    }
}

fn frame_list(
    frames: impl Iterator<Item = RawFrame>,
    key: &str,
) -> std::result::Result<VideoSource, String> {
    let paths = frames
        .map(|f| match f {
            RawFrame::Path(p) => Ok(PathBuf::from(p)),
            RawFrame::Other(f) => Err(format!(
                "{key:?}: a video's frame list holds paths, found {f}"
            )),
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    VideoSource::from_paths(paths).map_err(|e| format!("{key:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn videos(v: Value, key: &str) -> std::result::Result<Vec<VideoSource>, String> {
        MediaRequest::parse(&v, "images", key).map(|r| r.videos)
    }

    #[test]
    fn videos_lists_videos_and_video_is_one() {
        // The README's pair: two videos, whatever each path is.
        let two = videos(json!({"videos": ["a.gif", "frames_b/"]}), "videos").unwrap();
        assert_eq!(
            two,
            vec![
                VideoSource::Gif("a.gif".into()),
                VideoSource::File("frames_b/".into())
            ]
        );
        // Each entry a path or a frame list.
        let mixed = videos(
            json!({"videos": [["f0.png", "f1.png"], "c.mp4", ["d.mp4"]]}),
            "videos",
        )
        .unwrap();
        assert_eq!(
            mixed,
            vec![
                VideoSource::FrameFiles(vec!["f0.png".into(), "f1.png".into()]),
                VideoSource::File("c.mp4".into()),
                VideoSource::File("d.mp4".into()),
            ]
        );
        assert_eq!(
            videos(json!({"videos": "c.mp4"}), "videos").unwrap().len(),
            1
        );
        // Singular: one video, a path or its frames.
        let frames = videos(json!({"video": ["f0.png", "f1.png", "f2.png"]}), "video").unwrap();
        assert_eq!(
            frames,
            vec![VideoSource::FrameFiles(vec![
                "f0.png".into(),
                "f1.png".into(),
                "f2.png".into()
            ])]
        );
        assert_eq!(
            videos(json!({"video": "clip.gif"}), "video").unwrap(),
            vec![VideoSource::Gif("clip.gif".into())]
        );
        // Earlier files wrote one video as a list of one frame list under the singular key.
        let nested = videos(json!({"video": [["f0.png", "f1.png"]]}), "video").unwrap();
        assert_eq!(
            nested,
            vec![VideoSource::FrameFiles(vec![
                "f0.png".into(),
                "f1.png".into()
            ])]
        );
        assert!(videos(json!({"video": [1, 2]}), "video")
            .unwrap_err()
            .contains("frame list holds paths"));
        assert!(videos(json!({"videos": [["a.png", 3]]}), "videos").is_err());
        assert!(videos(json!({"videos": [[]]}), "videos").is_err());
        assert!(videos(json!({"videos": 3}), "videos").is_err());
    }

    /// The messages name the key and show what was found, as the record wrote it.
    #[test]
    fn errors_name_the_key_and_the_value() {
        let err = |v: Value, key: &str| MediaRequest::parse(&v, "images", key).unwrap_err();
        assert_eq!(
            err(json!({"images": ["a.png", {"x": 1, "a": [2.5]}]}), "videos"),
            r#""images" must list paths, found {"x":1,"a":[2.5]}"#
        );
        assert_eq!(
            err(json!({"images": ["a.png", ["b.png", 3]]}), "videos"),
            r#""images" must list paths, found ["b.png",3]"#
        );
        assert_eq!(
            err(json!({"images": 7}), "videos"),
            r#""images" must list paths, found 7"#
        );
        assert_eq!(
            err(json!({"videos": true}), "videos"),
            r#""videos": not a video: true"#
        );
        assert_eq!(
            err(json!({"videos": ["a.mp4", 4]}), "videos"),
            r#""videos": not a video: 4"#
        );
        assert_eq!(
            err(json!({"video": ["a.png", ["b.png"]]}), "video"),
            r#""video": a video's frame list holds paths, found ["b.png"]"#
        );
        assert_eq!(
            err(json!({"videos": [["a.png", null]]}), "videos"),
            r#""videos": a video's frame list holds paths, found null"#
        );
        assert_eq!(
            err(json!({"video": []}), "video"),
            r#""video": input: a video needs at least one path"#
        );
        // Null is absent.
        let none = MediaRequest::parse(&json!({"images": null, "video": null}), "images", "video");
        assert_eq!(none, Ok(MediaRequest::default()));
    }
}
