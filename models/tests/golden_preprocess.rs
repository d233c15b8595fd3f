//! Image and video preprocessing and the anyres token arithmetic against the golden
//! outputs of transformers 5.23 (`fixtures/golden/llava_ov_tiny`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::RgbImage;
use serde_json::Value;
use unireward_models::preprocess::anyres::{self, AnyresGeometry};
use unireward_models::preprocess::video::find_program;
use unireward_models::preprocess::{
    load_image, pad_batch, sample_indices, FrameLoader, ImageProcessor, ImageProcessorConfig,
    VideoProcessor, VideoProcessorConfig, VideoSource,
};
use unireward_models::Error;

/// One uint8 level after normalisation with mean = std = 0.5.
const PIXEL_TOL: f32 = 0.008;

fn golden_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden");
    assert!(dir.is_dir(), "golden data not found at {}", dir.display());
    dir
}

struct Golden {
    cases: Vec<Value>,
    tensors: HashMap<String, Tensor>,
    model: PathBuf,
    case_dir: PathBuf,
}

fn golden() -> Golden {
    let root = golden_dir().join("llava_ov_tiny");
    let case_dir = root.join("cases");
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(case_dir.join("cases.json")).expect("read cases.json"),
    )
    .expect("parse cases.json");
    let tensors =
        candle_core::safetensors::load(case_dir.join("expected.safetensors"), &Device::Cpu)
            .expect("load expected.safetensors");
    Golden {
        cases: cases["cases"].as_array().expect("cases").clone(),
        tensors,
        model: root.join("model"),
        case_dir,
    }
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

fn geometry(model: &Path) -> AnyresGeometry {
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    let v = &cfg["vision_config"];
    let tile = v["image_size"].as_u64().unwrap() as u32;
    AnyresGeometry::new(
        tile,
        v["patch_size"].as_u64().unwrap() as u32,
        anyres::parse_pinpoints(&cfg["image_grid_pinpoints"], tile).unwrap(),
        cfg["vision_aspect_ratio"].as_str().unwrap(),
    )
    .unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn image_pixels_match_transformers() {
    let g = golden();
    let config = ImageProcessorConfig::from_file(g.model.join("processor_config.json")).unwrap();
    assert_eq!(config.size, (32, 32));
    assert_eq!(config.image_grid_pinpoints.len(), 36);
    let processor = ImageProcessor::new(config);
    let mut checked = 0;
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let images = strings(&case["images"]);
        if images.is_empty() {
            continue;
        }
        let expected = &g.tensors[&format!("{name}.pixel_values")];
        let sizes = g.tensors[&format!("{name}.image_sizes")]
            .to_vec2::<i64>()
            .unwrap();
        let n_patches: Vec<usize> = case["num_patches_per_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let processed: Vec<_> = images
            .iter()
            .map(|f| {
                processor
                    .preprocess(&load_image(g.case_dir.join(f)).unwrap())
                    .unwrap()
            })
            .collect();
        for (i, p) in processed.iter().enumerate() {
            assert_eq!(p.num_tiles(), n_patches[i], "{name} image {i}: tile count");
            assert_eq!(
                (p.original_size.0 as i64, p.original_size.1 as i64),
                (sizes[i][0], sizes[i][1]),
                "{name} image {i}: image_sizes"
            );
            let want = expected.get(i).unwrap().narrow(0, 0, n_patches[i]).unwrap();
            let diff = max_abs_diff(&p.pixel_values, &want);
            println!(
                "{name} image {i} ({}): {} tiles, max abs diff {diff:e}",
                images[i],
                p.num_tiles()
            );
            assert!(diff <= PIXEL_TOL, "{name} image {i}: max abs diff {diff}");
            checked += 1;
        }
        // The batch layout, zero tiles included, is the golden tensor's.
        let batch = pad_batch(&processed).unwrap();
        let diff = max_abs_diff(&batch, expected);
        println!(
            "{name} padded batch {:?}: max abs diff {diff:e}",
            batch.dims()
        );
        assert!(diff <= PIXEL_TOL);
    }
    assert_eq!(checked, 4, "expected 4 golden images");
}

#[test]
fn video_pixels_match_transformers() {
    let g = golden();
    let config = VideoProcessorConfig::from_file(g.model.join("processor_config.json")).unwrap();
    assert_eq!(config.size, (32, 32));
    let processor = VideoProcessor::new(config);
    let case = g
        .cases
        .iter()
        .find(|c| c["name"] == "video_four_frames")
        .expect("video case");
    let files: Vec<PathBuf> = strings(&case["video_frames"])
        .iter()
        .map(|f| g.case_dir.join(f))
        .collect();
    let frames = FrameLoader::new(8)
        .load(&VideoSource::FrameFiles(files))
        .unwrap();
    assert_eq!(frames.len(), 4);
    let got = processor.preprocess(&frames).unwrap();
    let want = &g.tensors["video_four_frames.pixel_values_videos"];
    let diff = max_abs_diff(&got, want);
    println!("video_four_frames {:?}: max abs diff {diff:e}", got.dims());
    assert!(diff <= PIXEL_TOL, "video max abs diff {diff}");
}

#[test]
fn token_counts_match_transformers() {
    let g = golden();
    let geo = geometry(&g.model);
    assert_eq!(geo.max_tiles, Some(9));
    assert_eq!(geo.patches_per_side(), 4);
    for case in &g.cases {
        let name = case["name"].as_str().unwrap();
        let mut tokens = 0;
        for f in strings(&case["images"]) {
            let img = load_image(g.case_dir.join(&f)).unwrap();
            let layout = geo.image_layout((img.height(), img.width())).unwrap();
            println!("{name} {f}: {layout:?}");
            tokens += layout.tokens;
        }
        assert_eq!(
            tokens as u64,
            case["num_image_tokens"].as_u64().unwrap(),
            "{name}"
        );
        let frames = case["video_frames"].as_array().unwrap().len();
        let video_tokens = if frames > 0 {
            geo.video_token_count(frames)
        } else {
            0
        };
        assert_eq!(
            video_tokens as u64,
            case["num_video_tokens"].as_u64().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn layouts_of_the_golden_images() {
    let g = golden();
    let geo = geometry(&g.model);
    // 32x32: base + 1x1 grid, nothing to unpad.
    let l = geo.image_layout((32, 32)).unwrap();
    assert_eq!(
        (l.grid.rows, l.grid.cols, l.packed, l.tokens),
        (1, 1, (4, 4), 36)
    );
    // 30 high, 50 wide: a 1x2 grid whose 4x8 features lose a column at each side.
    let l = geo.image_layout((30, 50)).unwrap();
    assert_eq!((l.grid.rows, l.grid.cols), (1, 2));
    assert_eq!(
        l.unpad,
        anyres::Crop {
            top: 0,
            left: 1,
            height: 4,
            width: 6
        }
    );
    assert_eq!(l.downsample, None);
    assert_eq!(l.tokens, 44);
    // 160x160: 5x5 tiles, 20x20 features > 9 tiles' worth → bilinear to 11x11
    // (Python's 20 // 1.6666666666666667 is 11, not 12).
    let l = geo.image_layout((160, 160)).unwrap();
    assert_eq!((l.grid.rows, l.grid.cols), (5, 5));
    assert_eq!(l.feature_grid, (20, 20));
    assert_eq!(l.downsample, Some((11, 11)));
    assert_eq!(l.tokens, 16 + 11 * 12);
    assert_eq!(
        anyres::downsample_target(anyres::unpadded_shape((160, 160), (20, 20)), 9, 4),
        Some((11, 11))
    );
    // 71 high, 23 wide.
    let l = geo.image_layout((71, 23)).unwrap();
    assert_eq!(l.tokens, 224 - (16 + 11 * 12));
}

#[test]
fn select_best_resolution_hand_checked() {
    let pins = [(384, 384), (384, 768), (768, 384), (768, 768), (384, 1152)];
    // Square and small: 384x384 keeps every pixel and wastes the least.
    assert_eq!(
        anyres::select_best_resolution((300, 300), &pins),
        Some((384, 384))
    );
    // 500x500: 768x768 keeps all 250000 pixels; the others keep 147456.
    assert_eq!(
        anyres::select_best_resolution((500, 500), &pins),
        Some((768, 768))
    );
    // 200 high, 600 wide: 384x768 and 384x1152 both keep all 120000 pixels; 384x768
    // wastes less.
    assert_eq!(
        anyres::select_best_resolution((200, 600), &pins),
        Some((384, 768))
    );
    // 200 high, 1000 wide: only 384x1152 keeps all 200000 pixels (384x768 keeps 768x153).
    assert_eq!(
        anyres::select_best_resolution((200, 1000), &pins),
        Some((384, 1152))
    );
    // 400 high, 200 wide: 768x384 keeps all 80000 pixels with less waste than 768x768.
    assert_eq!(
        anyres::select_best_resolution((400, 200), &pins),
        Some((768, 384))
    );
    assert_eq!(anyres::select_best_resolution((10, 10), &[]), None);
    // Golden tiny config (multiples of 32): 71 high, 23 wide → 96x32.
    let tiny: Vec<(u32, u32)> = (1..=6)
        .flat_map(|i| (1..=6).map(move |j| (32 * i, 32 * j)))
        .collect();
    assert_eq!(
        anyres::select_best_resolution((71, 23), &tiny),
        Some((96, 32))
    );
    assert_eq!(
        anyres::select_best_resolution((30, 50), &tiny),
        Some((32, 64))
    );
}

#[test]
fn frame_sampling_indices() {
    assert_eq!(sample_indices(10, 8), vec![0, 1, 3, 4, 5, 6, 8, 9]);
    assert_eq!(sample_indices(3, 8), vec![0, 1, 2]);
    assert_eq!(sample_indices(8, 8), (0..8).collect::<Vec<_>>());
    assert_eq!(sample_indices(100, 8), vec![0, 14, 28, 42, 57, 71, 85, 99]);
}

/// A scratch directory for one test, emptied first.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "unireward-preprocess-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn missing_and_corrupt_images_name_the_file() {
    let dir = scratch("bad-images");
    let missing = dir.join("no_such_image.png");
    let e = load_image(&missing).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Image { .. }));
    assert!(
        msg.contains("no_such_image.png") && msg.contains("cannot open"),
        "{msg}"
    );

    let corrupt = dir.join("corrupt.png");
    // A PNG signature followed by garbage.
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not a png at all").unwrap();
    let msg = load_image(&corrupt).unwrap_err().to_string();
    assert!(
        msg.contains("corrupt.png") && msg.contains("decode"),
        "{msg}"
    );

    let text = dir.join("notes.jpg");
    std::fs::write(&text, b"plain text").unwrap();
    let msg = load_image(&text).unwrap_err().to_string();
    assert!(msg.contains("notes.jpg"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn solid(v: u8) -> RgbImage {
    RgbImage::from_pixel(6, 4, image::Rgb([v, 255 - v, 7]))
}

#[test]
fn frame_directory_is_sorted_and_sampled() {
    let dir = scratch("frame-dir");
    for i in 0..10u8 {
        solid(i * 20)
            .save(dir.join(format!("frame_{i:02}.png")))
            .unwrap();
    }
    std::fs::write(dir.join("notes.txt"), "not a frame").unwrap();
    let frames = FrameLoader::new(8)
        .load(&VideoSource::from_path(&dir))
        .unwrap();
    let firsts: Vec<u8> = frames.iter().map(|f| f.get_pixel(0, 0).0[0]).collect();
    assert_eq!(firsts, vec![0, 20, 60, 80, 100, 120, 160, 180]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn animated_gif_frames_are_sampled() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame};
    let dir = scratch("gif");
    let path = dir.join("clip.gif");
    {
        let file = std::fs::File::create(&path).unwrap();
        let mut enc = GifEncoder::new(file);
        for i in 0..10u8 {
            let rgba = image::DynamicImage::ImageRgb8(solid(i * 20)).to_rgba8();
            enc.encode_frame(Frame::from_parts(
                rgba,
                0,
                0,
                Delay::from_numer_denom_ms(40, 1),
            ))
            .unwrap();
        }
    }
    let source = VideoSource::from_path(&path);
    assert_eq!(source, VideoSource::Gif(path.clone()));
    let frames = FrameLoader::new(8).load(&source).unwrap();
    assert_eq!(frames.len(), 8);
    for (f, i) in frames.iter().zip(sample_indices(10, 8)) {
        assert_eq!(f.dimensions(), (6, 4));
        let red = f.get_pixel(3, 2).0[0] as i32;
        // GIF quantises colours: allow a few levels.
        assert!((red - i as i32 * 20).abs() <= 4, "frame {i}: red {red}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn video_file_without_ffmpeg_is_a_clear_error() {
    let dir = scratch("path-search");
    let clip = dir.join("clip.mp4");
    std::fs::write(&clip, b"some video bytes").unwrap();
    let loader = FrameLoader::new(8).with_ffmpeg(None);
    let msg = loader
        .load(&VideoSource::File(clip.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("clip.mp4") && msg.contains("ffmpeg") && msg.contains("PATH"),
        "{msg}"
    );
    // A missing file is reported as missing, ffmpeg or not.
    let msg = loader
        .load(&VideoSource::from_path(dir.join("gone.mp4")))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("gone.mp4") && msg.contains("no such file"),
        "{msg}"
    );
    // The PATH search itself: found in a listed directory, absent otherwise.
    assert_eq!(find_program("ffmpeg", Some(dir.as_os_str())), None);
    let fake = dir.join("ffmpeg");
    std::fs::write(&fake, "#!/bin/sh\n").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path_var = std::env::join_paths([PathBuf::from("/nonexistent"), dir.clone()]).unwrap();
    assert_eq!(find_program("ffmpeg", Some(&path_var)), Some(fake));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Decodes a lossless video made from the golden frames; runs where `ffmpeg` is
/// installed (says so and checks nothing else otherwise).
#[test]
fn video_file_decoded_by_ffmpeg() {
    let Some(ffmpeg) = find_program("ffmpeg", std::env::var_os("PATH").as_deref()) else {
        eprintln!("ffmpeg not on PATH: video file decoding not exercised");
        return;
    };
    let g = golden();
    let dir = scratch("ffmpeg");
    let video = dir.join("clip.mkv");
    let status = std::process::Command::new(&ffmpeg)
        .args(["-nostdin", "-loglevel", "error", "-framerate", "5", "-i"])
        .arg(g.case_dir.join("frame%d.png"))
        .args(["-c:v", "png", "-pix_fmt", "rgb24"])
        .arg(&video)
        .status()
        .unwrap();
    assert!(status.success());
    let golden_frames: Vec<RgbImage> = (0..4)
        .map(|i| {
            load_image(g.case_dir.join(format!("frame{i}.png")))
                .unwrap()
                .to_rgb8()
        })
        .collect();
    let all = FrameLoader::new(8)
        .load(&VideoSource::from_path(&video))
        .unwrap();
    assert_eq!(all.len(), 4);
    for (a, b) in all.iter().zip(&golden_frames) {
        assert_eq!(a.as_raw(), b.as_raw());
    }
    // Three of four: indices 0, 2 (1.5 rounds to even), 3.
    let some = FrameLoader::new(3)
        .load(&VideoSource::from_path(&video))
        .unwrap();
    assert_eq!(some.len(), 3);
    for (a, i) in some.iter().zip([0, 2, 3]) {
        assert_eq!(a.as_raw(), golden_frames[i].as_raw(), "sampled frame {i}");
    }
    let bad = dir.join("broken.mp4");
    std::fs::write(&bad, b"not a video").unwrap();
    let msg = FrameLoader::new(8)
        .load(&VideoSource::from_path(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("broken.mp4") && msg.contains("ffmpeg"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
