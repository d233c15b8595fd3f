//! A GIF of 60 full 2000x2000 canvases in a few hundred bytes: the frame loader keeps the
//! sampled frames only. The only test of its binary, so that the process's peak memory is
//! this test's.

#![cfg(target_os = "linux")]

use unireward_models::preprocess::{FrameLoader, VideoSource};

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmHWM value");
    kb * 1024
}

#[test]
fn many_full_canvas_frames_stay_within_the_sampled_ones() {
    let (w, h, n) = (2000u16, 2000u16, 60);
    let mut g = b"GIF89a".to_vec();
    g.extend(w.to_le_bytes());
    g.extend(h.to_le_bytes());
    g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
    for _ in 0..n {
        g.extend([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x44, 0x01, 0]);
    }
    g.push(0x3B);
    assert!(g.len() < 1000, "{} bytes", g.len());
    let path =
        std::env::temp_dir().join(format!("unireward-gif-memory-{}.gif", std::process::id()));
    std::fs::write(&path, &g).unwrap();

    let before = peak_rss();
    let frames = FrameLoader::new(8)
        .load(&VideoSource::from_path(&path))
        .unwrap();
    let grown = peak_rss().saturating_sub(before);
    std::fs::remove_file(&path).unwrap();

    assert_eq!(frames.len(), 8);
    let canvas_rgba = u64::from(w) * u64::from(h) * 4;
    println!(
        "peak memory grew {} MB; one RGBA canvas is {} MB",
        grown >> 20,
        canvas_rgba >> 20
    );
    // 8 RGB frames kept (6 canvases' worth) plus the decoder's working canvases; decoding
    // all 60 before sampling, as the loader once did, takes 60 canvases (960 MB).
    assert!(
        grown < 16 * canvas_rgba,
        "peak memory grew {} MB",
        grown >> 20
    );
}
