//! A stand-in `ffmpeg` for tests on machines without one: a shell script that answers the two
//! ways unireward runs ffmpeg on a video file. `ffmpeg -i file:…` with no output prints a
//! stream listing in ffmpeg's format on stderr and exits 1; a decode to `image2pipe` prints the
//! given frames as binary PPM on stdout. It refuses an input not given as a `file:` URL, and
//! finds its own tools whatever PATH the test gives the engine. The
//! listing is written as ffmpeg 4-7 print it; no real ffmpeg checks it here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use unireward_models::preprocess::load_image;

/// Writes `dir/ffmpeg` that "decodes" the image files of `frames_dir` (in file-name order) as a
/// stream at `fps` (as ffmpeg prints it: `25`, `29.97`); returns its path.
pub fn fake_ffmpeg(dir: &Path, frames_dir: &Path, fps: &str) -> Result<PathBuf> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(frames_dir)
        .with_context(|| frames_dir.display().to_string())?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    frames.sort();
    let mut ppm = Vec::new();
    let (mut w, mut h) = (0, 0);
    for f in &frames {
        let img = load_image(f)?.to_rgb8();
        (w, h) = img.dimensions();
        ppm.extend_from_slice(format!("P6\n{w} {h}\n255\n").as_bytes());
        ppm.extend_from_slice(img.as_raw());
    }
    let stream = dir.join("frames.ppm");
    std::fs::write(&stream, ppm).with_context(|| stream.display().to_string())?;
    let script = format!(
        "#!/bin/sh\n\
         PATH=/usr/bin:/bin\n\
         file=no\n\
         for a in \"$@\"; do case \"$a\" in file:*) file=yes;; esac; done\n\
         [ $file = yes ] || {{ echo 'input not a file: URL' >&2; exit 2; }}\n\
         for a in \"$@\"; do [ \"$a\" = image2pipe ] && exec cat '{}'; done\n\
         cat >&2 <<'EOF'\n\
         Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'file:clip.mp4':\n\
         \x20 Metadata:\n\
         \x20   major_brand     : isom\n\
         \x20 Duration: 00:00:02.00, start: 0.000000, bitrate: 998 kb/s\n\
         \x20 Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(progressive), \
         {w}x{h} [SAR 1:1 DAR 3:2], 990 kb/s, {fps} fps, {fps} tbr, 10240 tbn (default)\n\
         \x20   Metadata:\n\
         \x20     handler_name    : VideoHandler\n\
         At least one output file must be specified\n\
         EOF\n\
         exit 1\n",
        stream.display()
    );
    let path = dir.join("ffmpeg");
    std::fs::write(&path, script).with_context(|| path.display().to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(path)
}
