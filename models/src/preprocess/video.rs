//! Videos: where frames come from (a frame directory, a list of frame files, an
//! animated GIF, or any video file `ffmpeg` can decode), which frames are kept
//! ([`FrameSampling`]: transformers' `round(linspace(0, n - 1, N))` or the UnifiedReward
//! scripts' `linspace(0, n - 1, N, dtype=int)`), and transformers'
//! `LlavaOnevisionVideoProcessor` (torchvision on uint8 tensors: torch's antialiased uint8
//! resize to the tile size, then the fused rescale + normalise in float32), the pooled
//! `<video>` path. The scripts' own per-frame preprocessing is [`super::frame_tiles`].
//!
//! Every frame source is held to the image decode limits ([`super::media_file`]) and only
//! regular files are opened: a FIFO or a device among the paths is an error, not a hang.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use candle_core::Tensor;
use image::RgbImage;
use serde_json::Value;

use super::gif_frames::load_gif_frames;
use super::image::{load_image, planar_tensor, read_common, to_rgb, AlphaHandling, CommonFields};
use super::media_file::{check_regular_file, MAX_DECODED_BYTES};
use super::resize::{resize, Filter, Flavor};
use crate::{Error, Result};

/// Frames sampled from a video unless told otherwise.
pub const DEFAULT_NUM_FRAMES: usize = 8;

/// `round(linspace(0, n - 1, wanted))` with numpy's linspace and round-half-to-even;
/// every frame when there are no more than `wanted`.
pub fn sample_indices(n: usize, wanted: usize) -> Vec<usize> {
    if n <= wanted {
        return (0..n).collect();
    }
    if wanted == 1 {
        return vec![0];
    }
    let step = (n - 1) as f64 / (wanted - 1) as f64;
    let mut idx: Vec<usize> = (0..wanted)
        .map(|i| (i as f64 * step).round_ties_even() as usize)
        .collect();
    // numpy pins the last sample to `stop` exactly.
    if let Some(last) = idx.last_mut() {
        *last = n - 1;
    }
    idx
}

/// `linspace(0, n - 1, wanted, dtype=int)` as numpy computes it (`i · step`, truncated
/// toward zero, the last sample pinned to `n - 1`); every frame when there are no more than
/// `wanted`. This is `get_frame_from_vcap` of the UnifiedReward scripts: a video shorter than
/// `wanted` frames gives all its frames (the script would give 8 black frames for a
/// one-frame video, its "file not found" fallback; here the one frame is used).
pub fn sample_indices_truncated(n: usize, wanted: usize) -> Vec<usize> {
    if n <= wanted {
        return (0..n).collect();
    }
    if wanted == 1 {
        return vec![0];
    }
    let step = (n - 1) as f64 / (wanted - 1) as f64;
    let mut idx: Vec<usize> = (0..wanted).map(|i| (i as f64 * step) as usize).collect();
    if let Some(last) = idx.last_mut() {
        *last = n - 1;
    }
    idx
}

/// Which frames of a video are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameSampling {
    /// `round(linspace(0, n - 1, N))` (half to even): transformers' LLaVA-OneVision video
    /// sampling, [`sample_indices`].
    #[default]
    Rounded,
    /// `linspace(0, n - 1, N, dtype=int)`: the UnifiedReward scripts' `opencv_extract_frames`,
    /// [`sample_indices_truncated`].
    Truncated,
}

impl FrameSampling {
    pub fn indices(self, n: usize, wanted: usize) -> Vec<usize> {
        match self {
            FrameSampling::Rounded => sample_indices(n, wanted),
            FrameSampling::Truncated => sample_indices_truncated(n, wanted),
        }
    }
}

/// Where a video's frames come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoSource {
    /// Every image file in the directory, in file-name order.
    FrameDir(PathBuf),
    /// These image files, in this order.
    FrameFiles(Vec<PathBuf>),
    /// An animated GIF (frames composited as displayed).
    Gif(PathBuf),
    /// Any other file, decoded by `ffmpeg`.
    File(PathBuf),
}

impl VideoSource {
    /// A directory, a `.gif`, or a video file, by what the path is.
    pub fn from_path(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let is_gif = path
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|e| e.eq_ignore_ascii_case("gif"));
        if path.is_dir() {
            VideoSource::FrameDir(path)
        } else if is_gif {
            VideoSource::Gif(path)
        } else {
            VideoSource::File(path)
        }
    }

    /// One path is read as [`VideoSource::from_path`]; several are frame files.
    pub fn from_paths(mut paths: Vec<PathBuf>) -> Result<Self> {
        match paths.len() {
            0 => Err(Error::Input("a video needs at least one path".into())),
            1 => Ok(Self::from_path(paths.remove(0))),
            _ => Ok(VideoSource::FrameFiles(paths)),
        }
    }

    /// The frame files of a video given as frames (a list, or a directory's images in file-name
    /// order); `None` for a GIF or a video file.
    pub fn frame_files(&self) -> Result<Option<Vec<PathBuf>>> {
        match self {
            VideoSource::FrameFiles(files) => Ok(Some(files.clone())),
            VideoSource::FrameDir(dir) => Ok(Some(list_frame_dir(dir)?)),
            VideoSource::Gif(_) | VideoSource::File(_) => Ok(None),
        }
    }

    /// The same source with relative paths taken under `base`.
    pub fn under(&self, base: &Path) -> Self {
        let at = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        match self {
            // What a path is (frame directory, GIF, video file) is only known once it is taken
            // from `base`.
            VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => {
                VideoSource::from_path(at(p))
            }
            VideoSource::FrameFiles(f) => VideoSource::FrameFiles(f.iter().map(at).collect()),
        }
    }

    fn describe(&self) -> PathBuf {
        match self {
            VideoSource::FrameDir(p) | VideoSource::Gif(p) | VideoSource::File(p) => p.clone(),
            VideoSource::FrameFiles(f) => f.first().cloned().unwrap_or_default(),
        }
    }
}

/// Loads and samples frames.
#[derive(Debug, Clone)]
pub struct FrameLoader {
    pub num_frames: usize,
    /// The `ffmpeg` executable, if one was found.
    pub ffmpeg: Option<PathBuf>,
    pub alpha: AlphaHandling,
    pub sampling: FrameSampling,
}

impl FrameLoader {
    /// Samples `num_frames` frames ([`FrameSampling::Rounded`]), with `ffmpeg` looked up on
    /// `PATH`.
    pub fn new(num_frames: usize) -> Self {
        FrameLoader {
            num_frames,
            ffmpeg: find_program("ffmpeg", std::env::var_os("PATH").as_deref()),
            alpha: AlphaHandling::default(),
            sampling: FrameSampling::default(),
        }
    }

    pub fn with_sampling(mut self, sampling: FrameSampling) -> Self {
        self.sampling = sampling;
        self
    }

    pub fn with_ffmpeg(mut self, ffmpeg: Option<PathBuf>) -> Self {
        self.ffmpeg = ffmpeg;
        self
    }

    /// The sampled frames, as RGB.
    pub fn load(&self, source: &VideoSource) -> Result<Vec<RgbImage>> {
        if self.num_frames == 0 {
            return Err(Error::Input("asked for 0 video frames".into()));
        }
        let frames = match source {
            VideoSource::FrameDir(dir) => self.load_files(&list_frame_dir(dir)?, dir)?,
            VideoSource::FrameFiles(files) => self.load_files(files, &source.describe())?,
            VideoSource::Gif(path) => self.load_gif(path)?,
            VideoSource::File(path) => self.load_with_ffmpeg(path)?,
        };
        if frames.is_empty() {
            return Err(Error::Image {
                path: source.describe(),
                msg: "video has no frames".into(),
            });
        }
        Ok(frames)
    }

    fn load_files(&self, files: &[PathBuf], what: &Path) -> Result<Vec<RgbImage>> {
        if files.is_empty() {
            return Err(Error::Image {
                path: what.to_path_buf(),
                msg: "no frame images".into(),
            });
        }
        self.sampling
            .indices(files.len(), self.num_frames)
            .into_iter()
            .map(|i| Ok(to_rgb(&load_image(&files[i])?, self.alpha)))
            .collect()
    }

    fn load_gif(&self, path: &Path) -> Result<Vec<RgbImage>> {
        load_gif_frames(
            path,
            |n| self.sampling.indices(n, self.num_frames),
            self.alpha,
        )
    }

    /// Two decodes: one counts the frames, the second keeps the sampled ones (and stops
    /// at the last), so memory holds only those.
    fn load_with_ffmpeg(&self, path: &Path) -> Result<Vec<RgbImage>> {
        let ffmpeg = checked_ffmpeg(
            path,
            self.ffmpeg.as_deref(),
            "a frame directory, a list of frames or a GIF",
        )?;
        let n = FfmpegRun::new(ffmpeg, path).decode(&[])?.0;
        if n == 0 {
            return Err(Error::Image {
                path: path.to_path_buf(),
                msg: "ffmpeg decoded no video frames".into(),
            });
        }
        let wanted = self.sampling.indices(n, self.num_frames);
        decode_frames_at(ffmpeg, path, &wanted)
    }
}

/// `path` as a video file `ffmpeg` may decode, and the `ffmpeg` to decode it with; the error
/// names the file and the cause, and what else a video may be given as (`instead`).
fn checked_ffmpeg<'a>(path: &Path, ffmpeg: Option<&'a Path>, instead: &str) -> Result<&'a Path> {
    if !path.exists() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: "cannot open: no such file".into(),
        });
    }
    check_regular_file(path)?;
    ffmpeg.ok_or_else(|| Error::Image {
        path: path.to_path_buf(),
        msg: format!(
            "cannot decode this video: `ffmpeg` was not found on PATH (install ffmpeg, or give \
             the video as {instead})"
        ),
    })
}

/// The frames at `wanted` (in order, repeats allowed) of one decode that stops after the last.
fn decode_frames_at(ffmpeg: &Path, path: &Path, wanted: &[usize]) -> Result<Vec<RgbImage>> {
    let mut keep = wanted.to_vec();
    keep.sort_unstable();
    keep.dedup();
    let (_, frames) = FfmpegRun::new(ffmpeg, path).decode(&keep)?;
    if frames.len() != keep.len() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: format!(
                "ffmpeg gave {} of the {} sampled frames on the second decode",
                frames.len(),
                keep.len()
            ),
        });
    }
    wanted
        .iter()
        .map(|i| {
            keep.binary_search(i)
                .map(|k| frames[k].clone())
                .map_err(|_| Error::Image {
                    path: path.to_path_buf(),
                    msg: format!("frame {i} was not decoded"),
                })
        })
        .collect()
}

/// A video file's frames chosen by `pick` from its frame count and its stream's average
/// frame rate (as decord's `len(vr)` and `get_avg_fps()` give them to qwen_vl_utils): one
/// `ffmpeg` run reads the rate from its stream listing, one decode counts the frames, one
/// keeps the picked ones. `ffmpeg` is `None` when none was found, which is the error.
pub fn decode_video_file(
    path: &Path,
    ffmpeg: Option<&Path>,
    pick: impl FnOnce(usize, f64) -> Result<Vec<usize>>,
) -> Result<Vec<RgbImage>> {
    let ffmpeg = checked_ffmpeg(path, ffmpeg, "a frame directory or a list of frames")?;
    let run = FfmpegRun::new(ffmpeg, path);
    let fps = run.stream_fps()?;
    let n = run.decode(&[])?.0;
    if n == 0 {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: "ffmpeg decoded no video frames".into(),
        });
    }
    let wanted = pick(n, fps).map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    decode_frames_at(ffmpeg, path, &wanted)
}

/// The average frame rate of the first video stream in `ffmpeg -i`'s stream listing
/// (`Stream #0:0...: Video: ..., 25 fps, 25 tbr, ...`). ffmpeg prints the rate to two
/// decimals; 23.98, 29.97, 59.94 and the like are read as the NTSC rates (n·1000/1001) they
/// stand for, as decord reports them.
pub fn parse_stream_fps(listing: &str) -> Option<f64> {
    let line = listing
        .lines()
        .find(|l| l.trim_start().starts_with("Stream #") && l.contains(": Video:"))?;
    let printed = line.split(", ").find_map(|field| {
        let number = field.trim().strip_suffix(" fps")?;
        match number.strip_suffix('k') {
            Some(k) => k.parse::<f64>().ok().map(|x| x * 1000.0),
            None => number.parse::<f64>().ok(),
        }
    })?;
    if !(printed.is_finite() && printed > 0.0) {
        return None;
    }
    let ntsc = (printed * 1.001).round();
    let exact = ntsc * 1000.0 / 1001.0;
    if printed.fract() != 0.0 && (exact - printed).abs() < 0.006 {
        return Some(exact);
    }
    Some(printed)
}

/// The directory's image files (by extension), sorted by file name.
fn list_frame_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let err = |msg: String| Error::Image {
        path: dir.to_path_buf(),
        msg,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(format!("cannot list frames: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                && image::ImageFormat::from_path(p).is_ok()
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The first executable called `name` in a `PATH`-style list of directories.
pub fn find_program(name: &str, path_var: Option<&OsStr>) -> Option<PathBuf> {
    let exe: OsString = if cfg!(windows) {
        format!("{name}.exe").into()
    } else {
        name.into()
    };
    std::env::split_paths(path_var?)
        .map(|dir| dir.join(&exe))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// The arguments of one `ffmpeg` decode of `video` to PPM frames on stdout. Only the `file`
/// protocol is allowed and the path is given as a `file:` URL, so a file named
/// `concat:a.mp4` or `http://host/x` is read as that file name, never as a protocol, and a
/// playlist inside a file cannot make ffmpeg open URLs or devices.
pub fn ffmpeg_args(video: &Path, sync_flag: &str) -> Vec<OsString> {
    let mut input = OsString::from("file:");
    input.push(video.as_os_str());
    let mut args: Vec<OsString> = [
        "-nostdin",
        "-hide_banner",
        "-loglevel",
        "error",
        "-protocol_whitelist",
        "file",
        "-i",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    args.push(input);
    args.extend(
        [
            "-map",
            "0:v:0",
            sync_flag,
            "passthrough",
            "-f",
            "image2pipe",
            "-c:v",
            "ppm",
            "-pix_fmt",
            "rgb24",
            "-",
        ]
        .iter()
        .map(OsString::from),
    );
    args
}

/// One `ffmpeg` decode to a stream of PPM images on stdout.
struct FfmpegRun<'a> {
    ffmpeg: &'a Path,
    video: &'a Path,
}

impl<'a> FfmpegRun<'a> {
    fn new(ffmpeg: &'a Path, video: &'a Path) -> Self {
        FfmpegRun { ffmpeg, video }
    }

    fn err(&self, msg: String) -> Error {
        Error::Image {
            path: self.video.to_path_buf(),
            msg,
        }
    }

    /// The stream's average frame rate, from the listing `ffmpeg -i` prints without an
    /// output (it then exits with an error, which is expected).
    fn stream_fps(&self) -> Result<f64> {
        let mut input = OsString::from("file:");
        input.push(self.video.as_os_str());
        let out = Command::new(self.ffmpeg)
            .args([
                "-nostdin",
                "-hide_banner",
                "-protocol_whitelist",
                "file",
                "-i",
            ])
            .arg(input)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| self.err(format!("cannot run {}: {e}", self.ffmpeg.display())))?;
        let listing = String::from_utf8_lossy(&out.stderr);
        parse_stream_fps(&listing).ok_or_else(|| {
            self.err(format!(
                "ffmpeg lists no video stream with a frame rate: {}",
                listing.trim()
            ))
        })
    }

    /// Counts the frames and keeps those at `keep` (sorted). With `keep` empty it
    /// decodes everything and keeps nothing.
    fn decode(&self, keep: &[usize]) -> Result<(usize, Vec<RgbImage>)> {
        // Every decoded frame, as decord gives them: no frame-rate conversion.
        // `-fps_mode` is ffmpeg >= 5.1; older ones only know `-vsync`.
        match self.decode_with(keep, "-fps_mode") {
            Err(Error::Image { msg, .. }) if msg.contains("fps_mode") => {
                self.decode_with(keep, "-vsync")
            }
            other => other,
        }
    }

    fn decode_with(&self, keep: &[usize], sync_flag: &str) -> Result<(usize, Vec<RgbImage>)> {
        let mut child = Command::new(self.ffmpeg)
            .args(ffmpeg_args(self.video, sync_flag))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.err(format!("cannot run {}: {e}", self.ffmpeg.display())))?;
        let stderr = child.stderr.take().map(|mut s| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = s.read_to_string(&mut text);
                text
            })
        });
        let mut out = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| self.err("ffmpeg has no stdout".into()))?,
        );
        let mut count = 0usize;
        let mut frames = Vec::with_capacity(keep.len());
        let mut next = keep.iter().peekable();
        let mut stopped_early = false;
        let read = loop {
            let header = match read_ppm_header(&mut out) {
                Ok(Some(h)) => h,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            let (w, h) = header;
            let bytes = u64::from(w) * u64::from(h) * 3;
            if bytes > MAX_DECODED_BYTES {
                break Err(std::io::Error::other(format!(
                    "a {w}x{h} frame is over the decode limit of {MAX_DECODED_BYTES} bytes"
                )));
            }
            let bytes = bytes as usize;
            if next.peek() == Some(&&count) {
                next.next();
                let mut buf = vec![0u8; bytes];
                if let Err(e) = out.read_exact(&mut buf) {
                    break Err(e);
                }
                match RgbImage::from_raw(w, h, buf) {
                    Some(img) => frames.push(img),
                    None => break Err(std::io::Error::other("bad frame size")),
                }
                if next.peek().is_none() {
                    count += 1;
                    stopped_early = true;
                    break Ok(());
                }
            } else if let Err(e) =
                std::io::copy(&mut (&mut out).take(bytes as u64), &mut std::io::sink()).and_then(
                    |n| {
                        if n == bytes as u64 {
                            Ok(())
                        } else {
                            Err(std::io::ErrorKind::UnexpectedEof.into())
                        }
                    },
                )
            {
                break Err(e);
            }
            count += 1;
        };
        if stopped_early {
            // Only the frames before the last sampled one are needed.
            let _ = child.kill();
        }
        drop(out);
        let status = child.wait().map_err(|e| self.err(format!("ffmpeg: {e}")))?;
        let log = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
        if !stopped_early && !status.success() {
            return Err(self.err(format!("ffmpeg failed ({status}): {}", log.trim())));
        }
        read.map_err(|e| self.err(format!("reading ffmpeg's frames: {e}")))?;
        Ok((count, frames))
    }
}

/// `P6 <w> <h> <maxval>` and the single whitespace byte before the pixels; None at
/// the end of the stream.
fn read_ppm_header(r: &mut impl BufRead) -> std::io::Result<Option<(u32, u32)>> {
    let mut fields = Vec::with_capacity(4);
    let mut token = Vec::new();
    let mut byte = [0u8; 1];
    while fields.len() < 4 {
        if r.read(&mut byte)? == 0 {
            if fields.is_empty() && token.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match byte[0] {
            b'#' if token.is_empty() => {
                let mut comment = Vec::new();
                r.read_until(b'\n', &mut comment)?;
            }
            c if c.is_ascii_whitespace() => {
                if !token.is_empty() {
                    fields.push(String::from_utf8_lossy(&token).into_owned());
                    token.clear();
                }
            }
            c => token.push(c),
        }
    }
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a binary RGB PPM frame",
        )
    };
    if fields[0] != "P6" || fields[3] != "255" {
        return Err(bad());
    }
    let w = fields[1].parse().map_err(|_| bad())?;
    let h = fields[2].parse().map_err(|_| bad())?;
    Ok(Some((w, h)))
}

/// The video processor's settings (`processor_config.json`'s `video_processor`).
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProcessorConfig {
    /// Frame size after resizing, `(height, width)`.
    pub size: (u32, u32),
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub resample: Filter,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
    pub do_convert_rgb: bool,
    /// Frames sampled per video.
    pub num_frames: usize,
}

impl Default for VideoProcessorConfig {
    fn default() -> Self {
        VideoProcessorConfig {
            size: (384, 384),
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
            resample: Filter::Bicubic,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
            do_convert_rgb: true,
            num_frames: DEFAULT_NUM_FRAMES,
        }
    }
}

impl VideoProcessorConfig {
    /// Reads `processor_config.json`'s `video_processor` object (or a bare
    /// `video_preprocessor_config.json`); no such object gives the defaults.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let obj = match value.get("video_processor") {
            Some(v) => v,
            None if value.get("video_processor_type").is_some() => &value,
            None => return Ok(Self::default()),
        };
        Self::from_json(obj).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = VideoProcessorConfig::default();
        read_common(
            v,
            &mut CommonFields {
                size: &mut c.size,
                mean: &mut c.image_mean,
                std: &mut c.image_std,
                rescale_factor: &mut c.rescale_factor,
                resample: &mut c.resample,
                flags: [
                    ("do_resize", &mut c.do_resize),
                    ("do_rescale", &mut c.do_rescale),
                    ("do_normalize", &mut c.do_normalize),
                    ("do_convert_rgb", &mut c.do_convert_rgb),
                ],
            },
        )?;
        if !matches!(c.resample, Filter::Bicubic | Filter::Bilinear) {
            return Err(Error::Config(format!(
                "video resample {:?} is not supported (bilinear or bicubic)",
                c.resample
            )));
        }
        if let Some(n) = v.get("num_frames").and_then(Value::as_u64) {
            c.num_frames = n as usize;
        }
        Ok(c)
    }

    /// torchvision's fused rescale + normalise, in float32: mean and std are scaled by
    /// `1 / rescale_factor` first, then `(x - mean') / std'`.
    fn to_f32(&self, v: u8, channel: usize) -> f32 {
        let x = v as f32;
        match (self.do_rescale, self.do_normalize) {
            (true, true) => {
                let inv = (1.0 / self.rescale_factor) as f32;
                (x - self.image_mean[channel] * inv) / (self.image_std[channel] * inv)
            }
            (false, true) => (x - self.image_mean[channel]) / self.image_std[channel],
            (true, false) => x * self.rescale_factor as f32,
            (false, false) => x,
        }
    }
}

#[derive(Debug, Clone)]
pub struct VideoProcessor {
    pub config: VideoProcessorConfig,
}

impl VideoProcessor {
    pub fn new(config: VideoProcessorConfig) -> Self {
        VideoProcessor { config }
    }

    /// A loader sampling this processor's number of frames.
    pub fn frame_loader(&self) -> FrameLoader {
        FrameLoader::new(self.config.num_frames)
    }

    /// `[frames, 3, H, W]` f32.
    pub fn preprocess(&self, frames: &[RgbImage]) -> Result<Tensor> {
        let c = &self.config;
        if frames.is_empty() {
            return Err(Error::Input("video has no frames".into()));
        }
        let (sh, sw) = c.size;
        let resized = frames
            .iter()
            .map(|f| {
                if c.do_resize {
                    resize(f, sw, sh, c.resample, Flavor::TorchU8)
                } else if f.dimensions() == (sw, sh) {
                    Ok(f.clone())
                } else {
                    Err(Error::Config(format!(
                        "do_resize is off but a {}x{} frame is not {sw}x{sh}",
                        f.width(),
                        f.height()
                    )))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let lut: Vec<[f32; 3]> = (0..=255u8)
            .map(|v| std::array::from_fn(|ch| c.to_f32(v, ch)))
            .collect();
        planar_tensor(&resized, &lut, (sh, sw))
    }

    /// Loads, samples and preprocesses a video.
    pub fn load_and_preprocess(&self, source: &VideoSource) -> Result<Tensor> {
        let mut loader = self.frame_loader();
        if !self.config.do_convert_rgb {
            loader.alpha = AlphaHandling::Drop;
        }
        self.preprocess(&loader.load(source)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_rounding_is_numpy_half_even() {
        // linspace(0, 5, 3) = [0, 2.5, 5]: numpy rounds 2.5 to 2.
        assert_eq!(sample_indices(6, 3), vec![0, 2, 5]);
        assert_eq!(sample_indices(100, 1), vec![0]);
        assert_eq!(sample_indices(0, 8), Vec::<usize>::new());
    }

    /// numpy 2.4.6: `np.linspace(0, n - 1, 8, dtype=int).tolist()` for each n.
    #[test]
    fn truncated_sampling_equals_numpy() {
        let numpy: [(usize, [usize; 8]); 18] = [
            (8, [0, 1, 2, 3, 4, 5, 6, 7]),
            (9, [0, 1, 2, 3, 4, 5, 6, 8]),
            (10, [0, 1, 2, 3, 5, 6, 7, 9]),
            (13, [0, 1, 3, 5, 6, 8, 10, 12]),
            (15, [0, 2, 4, 6, 8, 10, 12, 14]),
            (16, [0, 2, 4, 6, 8, 10, 12, 15]),
            (17, [0, 2, 4, 6, 9, 11, 13, 16]),
            (30, [0, 4, 8, 12, 16, 20, 24, 29]),
            (31, [0, 4, 8, 12, 17, 21, 25, 30]),
            (49, [0, 6, 13, 20, 27, 34, 41, 48]),
            (50, [0, 7, 14, 21, 28, 35, 42, 49]),
            (64, [0, 9, 18, 27, 36, 45, 54, 63]),
            (100, [0, 14, 28, 42, 56, 70, 84, 99]),
            (101, [0, 14, 28, 42, 57, 71, 85, 100]),
            (121, [0, 17, 34, 51, 68, 85, 102, 120]),
            (241, [0, 34, 68, 102, 137, 171, 205, 240]),
            (1000, [0, 142, 285, 428, 570, 713, 856, 999]),
            (1001, [0, 142, 285, 428, 571, 714, 857, 1000]),
        ];
        for (n, want) in numpy {
            assert_eq!(sample_indices_truncated(n, 8), want, "n = {n}");
            assert_eq!(FrameSampling::Truncated.indices(n, 8), want, "n = {n}");
        }
        // Where rounding and truncation part: 100 frames, 4.5 · 14.14… = 56.57.
        assert_eq!(sample_indices(100, 8)[4], 57);
        // Shorter than 8: every frame, as get_frame_from_vcap reads them all.
        assert_eq!(sample_indices_truncated(5, 8), vec![0, 1, 2, 3, 4]);
        assert_eq!(sample_indices_truncated(1, 8), vec![0]);
    }

    #[test]
    fn ffmpeg_reads_only_files_named_as_file_urls() {
        let args = ffmpeg_args(Path::new("clips/concat:a.mp4"), "-fps_mode");
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        let at = |s: &str| args.iter().position(|a| *a == s).unwrap();
        assert_eq!(args[at("-protocol_whitelist") + 1], "file");
        assert_eq!(args[at("-i") + 1], "file:clips/concat:a.mp4");
        // The whitelist is an input option: it must come before the input.
        assert!(at("-protocol_whitelist") < at("-i"));
        assert_eq!(args[at("-fps_mode") + 1], "passthrough");
        assert_eq!(args.last(), Some(&"-"));
        let abs = ffmpeg_args(Path::new("/data/http://x.mp4"), "-vsync");
        assert!(abs.iter().any(|a| a == "file:/data/http://x.mp4"));
    }

    #[test]
    fn stream_fps_is_read_from_the_listing() {
        let listing = "Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:a.mp4':\n  Duration: \
                       00:00:02.00, start: 0.000000, bitrate: 120 kb/s\n  Stream #0:0[0x1](und): \
                       Audio: aac (LC), 44100 Hz, stereo, fltp, 2 kb/s (default)\n  \
                       Stream #0:1[0x2](und): Video: h264 (High) (avc1 / 0x31637661), \
                       yuv420p(progressive), 320x240 [SAR 1:1 DAR 4:3], 101 kb/s, 29.97 fps, \
                       29.97 tbr, 30k tbn (default)\nAt least one output file must be specified\n";
        let fps = parse_stream_fps(listing).unwrap();
        assert_eq!(fps, 30000.0 / 1001.0);
        let plain = "  Stream #0:0: Video: mpeg4, yuv420p, 300x200, 25 fps, 25 tbr, 25 tbn";
        assert_eq!(parse_stream_fps(plain), Some(25.0));
        assert_eq!(
            parse_stream_fps("  Stream #0:0: Video: h264, 12.5 fps"),
            Some(12.5)
        );
        assert_eq!(
            parse_stream_fps("  Stream #0:0: Video: gif, 1k fps"),
            Some(1000.0)
        );
        assert_eq!(parse_stream_fps("  Stream #0:0: Video: h264, 25 tbr"), None);
        assert_eq!(parse_stream_fps("  Stream #0:0: Audio: aac, 25 fps"), None);
    }

    #[test]
    fn ppm_header_parsing() {
        let mut data: &[u8] = b"P6\n4 2\n255\nXXXXXXXXXXXXXXXXXXXXXXXX";
        assert_eq!(read_ppm_header(&mut data).unwrap(), Some((4, 2)));
        assert_eq!(data.len(), 24);
        let mut empty: &[u8] = b"";
        assert_eq!(read_ppm_header(&mut empty).unwrap(), None);
        let mut p5: &[u8] = b"P5\n4 2\n255\n";
        assert!(read_ppm_header(&mut p5).is_err());
    }

    #[test]
    fn fused_normalisation_matches_torch_constants() {
        let c = VideoProcessorConfig::default();
        assert_eq!(c.to_f32(0, 0), -1.0);
        assert_eq!(c.to_f32(255, 1), 1.0);
        assert_eq!(c.to_f32(128, 2), (128.0f32 - 127.5) / 127.5);
    }
}
