//! Video frames as the UnifiedReward LLaVA scripts feed them (truncated linspace sampling,
//! SigLipImageProcessor on every frame), and the frame loader's hardening: GIF decode
//! limits, non-regular files refused.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;
use unireward_models::preprocess::{
    load_image, FrameLoader, FrameSampling, FrameTileProcessor, ImageProcessorConfig, VideoSource,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "unireward-video-frames-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The reference's pixel values (`scripts/golden/make_video_frames.py`: the scripts' frame
/// sampling and their `SigLipImageProcessor`, run with Pillow and numpy) for a 12-frame
/// 640x360 video at the golden checkpoint's 32 px tile.
#[test]
fn frame_tiles_match_the_reference_siglip_processor() {
    let dir = fixtures().join("video_reference");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("pixel_values.safetensors"), &Device::Cpu).unwrap();
    let want = &tensors["pixel_values"];
    let indices: Vec<usize> = meta["frame_indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect();
    let n = meta["num_video_frames"].as_u64().unwrap() as usize;
    assert_eq!(FrameSampling::Truncated.indices(n, 8), indices);

    let config = ImageProcessorConfig::from_file(
        fixtures().join("golden/llava_ov_tiny/model/processor_config.json"),
    )
    .unwrap();
    assert_eq!(
        config.size.0 as u64,
        meta["tile_size"].as_u64().unwrap(),
        "the golden's tile size is the checkpoint's"
    );
    let frames = FrameLoader::new(8)
        .with_sampling(FrameSampling::Truncated)
        .load(&VideoSource::from_path(dir.join("frames")))
        .unwrap();
    assert_eq!(frames.len(), 8);
    assert!(frames.iter().all(|f| f.dimensions() == (640, 360)));
    let got = FrameTileProcessor::new(config).preprocess(&frames).unwrap();
    let diff = max_abs_diff(&got, want);
    println!("frame tiles {:?}: max abs diff {diff:e}", got.dims());
    // Pillow-exact resampling and numpy's float arithmetic: the same bits.
    assert_eq!(diff, 0.0);
}

#[test]
fn frame_directory_sampled_by_truncation() {
    let dir = scratch("truncated");
    for i in 0..10u8 {
        RgbImage::from_pixel(6, 4, image::Rgb([i * 20, 0, 0]))
            .save(dir.join(format!("f{i:02}.png")))
            .unwrap();
    }
    let reds = |sampling| -> Vec<u8> {
        FrameLoader::new(8)
            .with_sampling(sampling)
            .load(&VideoSource::from_path(&dir))
            .unwrap()
            .iter()
            .map(|f| f.get_pixel(0, 0).0[0] / 20)
            .collect()
    };
    // numpy: linspace(0, 9, 8, dtype=int) = [0 1 2 3 5 6 7 9]; round(...) = [0 1 3 4 5 6 8 9].
    assert_eq!(reds(FrameSampling::Truncated), vec![0, 1, 2, 3, 5, 6, 7, 9]);
    assert_eq!(reds(FrameSampling::Rounded), vec![0, 1, 3, 4, 5, 6, 8, 9]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A GIF89a with a 2-colour table and `frames` 1x1 frames on a `w`x`h` canvas: a few bytes
/// a frame, each compositing to a full canvas.
fn tiny_frames_gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
    let mut g = b"GIF89a".to_vec();
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    for _ in 0..frames {
        g.extend([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        g.extend([2, 2, 0x44, 0x01, 0]);
    }
    g.push(0x3B);
    g
}

#[test]
fn gif_canvas_over_the_decode_limit_is_an_error() {
    let dir = scratch("gif-bomb");
    let path = dir.join("bomb.gif");
    let bytes = tiny_frames_gif(65535, 65535, 1);
    assert_eq!(bytes.len(), 35);
    std::fs::write(&path, &bytes).unwrap();
    for sampling in [FrameSampling::Rounded, FrameSampling::Truncated] {
        let msg = FrameLoader::new(8)
            .with_sampling(sampling)
            .load(&VideoSource::from_path(&path))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("bomb.gif") && msg.contains("65535x65535") && msg.contains("limit"),
            "{msg}"
        );
    }
    // The same file as an image is refused by the image decoder's limits.
    assert!(load_image(&path).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gif_frames_are_decoded_up_to_the_last_sampled_one() {
    let dir = scratch("gif-many");
    let path = dir.join("many.gif");
    std::fs::write(&path, tiny_frames_gif(300, 200, 60)).unwrap();
    let frames = FrameLoader::new(8)
        .with_sampling(FrameSampling::Truncated)
        .load(&VideoSource::from_path(&path))
        .unwrap();
    assert_eq!(frames.len(), 8);
    for f in &frames {
        assert_eq!(f.dimensions(), (300, 200));
        // The 1x1 frame is black; the rest of the canvas is transparent, composited on white.
        assert_eq!(f.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(f.get_pixel(1, 1).0, [255, 255, 255]);
    }
    // A file cut inside a frame is an error, not fewer frames.
    let cut = dir.join("cut.gif");
    let bytes = tiny_frames_gif(30, 20, 10);
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).unwrap();
    assert!(FrameLoader::new(8)
        .load(&VideoSource::from_path(&cut))
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `f` on a thread and fails instead of hanging when it does not return in time.
#[cfg(unix)]
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: still blocked after 20 s"))
}

#[cfg(unix)]
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[cfg(unix)]
#[test]
fn fifos_are_refused_not_read() {
    let dir = scratch("fifo");
    for name in ["frame.png", "clip.gif", "clip.mp4"] {
        mkfifo(&dir.join(name));
    }
    let fifo_png = dir.join("frame.png");
    let msg = within("load_image on a FIFO", move || {
        load_image(&fifo_png).unwrap_err().to_string()
    });
    assert!(msg.contains("FIFO") && msg.contains("frame.png"), "{msg}");

    let sources = [
        VideoSource::from_path(dir.join("clip.gif")),
        // The FIFO is refused before ffmpeg is looked for.
        VideoSource::from_path(dir.join("clip.mp4")),
        VideoSource::FrameFiles(vec![dir.join("frame.png")]),
    ];
    for source in sources {
        let what = format!("{source:?}");
        let msg = within(&what, move || {
            FrameLoader::new(8)
                .with_ffmpeg(Some(PathBuf::from("/nonexistent/ffmpeg")))
                .load(&source)
                .unwrap_err()
                .to_string()
        });
        assert!(msg.contains("FIFO"), "{what}: {msg}");
    }

    // In a frame directory a FIFO is not a frame: the regular frames are read.
    let frames_dir = dir.join("frames");
    std::fs::create_dir(&frames_dir).unwrap();
    for i in 0..3u8 {
        RgbImage::from_pixel(4, 4, image::Rgb([i, i, i]))
            .save(frames_dir.join(format!("f{i}.png")))
            .unwrap();
    }
    mkfifo(&frames_dir.join("f9.png"));
    let n = within("a frame directory holding a FIFO", move || {
        FrameLoader::new(8)
            .load(&VideoSource::from_path(&frames_dir))
            .unwrap()
            .len()
    });
    assert_eq!(n, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}
