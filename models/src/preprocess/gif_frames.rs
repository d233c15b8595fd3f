//! The sampled frames of an animated GIF, decoded within bounds.
//!
//! A GIF of a few bytes can declare a 65535x65535 canvas, or hundreds of frames that each
//! composite to a full canvas. Frames are therefore held to the same decode limits as images
//! ([`decode_limits`]), counted first from the block structure alone (no pixel is decoded),
//! and then decoded one at a time, keeping only the sampled ones and stopping after the
//! last of them: at most the sampled frames and the decoder's two working canvases are alive.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use image::codecs::gif::GifDecoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, RgbImage};

use super::image::{to_rgb, AlphaHandling};
use super::media_file::{decode_limits, open_regular_file, MAX_DECODED_BYTES};
use crate::{Error, Result};

/// The frames at `pick(frame_count)` (ascending), as RGB.
pub fn load_gif_frames(
    path: &Path,
    pick: impl FnOnce(usize) -> Vec<usize>,
    alpha: AlphaHandling,
) -> Result<Vec<RgbImage>> {
    let err = |msg: String| Error::Image {
        path: path.to_path_buf(),
        msg,
    };
    let scan = scan_gif(&mut BufReader::new(open_regular_file(path)?))
        .map_err(|e| err(format!("cannot read GIF: {e}")))?;
    let canvas_bytes = u64::from(scan.width) * u64::from(scan.height) * 4;
    if canvas_bytes > MAX_DECODED_BYTES {
        return Err(err(format!(
            "GIF canvas {}x{} needs {canvas_bytes} bytes a frame, over the decode limit of \
             {MAX_DECODED_BYTES}",
            scan.width, scan.height
        )));
    }
    let wanted = pick(scan.frames);
    let Some(&last) = wanted.last() else {
        return Ok(Vec::new());
    };
    let mut decoder = GifDecoder::new(BufReader::new(open_regular_file(path)?))
        .map_err(|e| err(format!("cannot decode GIF: {e}")))?;
    decoder
        .set_limits(decode_limits())
        .map_err(|e| err(format!("cannot decode GIF: {e}")))?;
    let mut out = Vec::with_capacity(wanted.len());
    let mut next = wanted.iter().copied().peekable();
    for (i, frame) in decoder.into_frames().enumerate().take(last + 1) {
        let frame = frame.map_err(|e| err(format!("cannot decode GIF frame {i}: {e}")))?;
        if next.peek() != Some(&i) {
            continue;
        }
        let rgb = to_rgb(&DynamicImage::ImageRgba8(frame.into_buffer()), alpha);
        while next.peek() == Some(&i) {
            next.next();
            out.push(rgb.clone());
        }
    }
    if out.len() != wanted.len() {
        return Err(err(format!(
            "GIF lists {} frames but only {} decoded",
            scan.frames,
            out.len()
        )));
    }
    Ok(out)
}

/// What the block structure of a GIF says, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GifScan {
    /// Logical screen (canvas) size.
    pub width: u16,
    pub height: u16,
    /// Image descriptors, i.e. frames.
    pub frames: usize,
}

/// Walks the GIF blocks (GIF87a/89a): header, logical screen, colour tables, extensions and
/// image data are skipped by their lengths; a missing trailer ends the file as decoders
/// take it.
pub fn scan_gif(r: &mut impl BufRead) -> std::io::Result<GifScan> {
    let bad = |msg: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string());
    let mut header = [0u8; 13];
    r.read_exact(&mut header)?;
    if &header[..3] != b"GIF" {
        return Err(bad("not a GIF"));
    }
    let width = u16::from_le_bytes([header[6], header[7]]);
    let height = u16::from_le_bytes([header[8], header[9]]);
    skip_colour_table(r, header[10])?;
    let mut frames = 0;
    loop {
        let mut kind = [0u8; 1];
        if r.read(&mut kind)? == 0 {
            break;
        }
        match kind[0] {
            0x3B => break,
            0x21 => {
                let mut label = [0u8; 1];
                r.read_exact(&mut label)?;
                skip_sub_blocks(r)?;
            }
            0x2C => {
                let mut desc = [0u8; 9];
                r.read_exact(&mut desc)?;
                skip_colour_table(r, desc[8])?;
                let mut min_code_size = [0u8; 1];
                r.read_exact(&mut min_code_size)?;
                skip_sub_blocks(r)?;
                frames += 1;
            }
            _ => return Err(bad("unknown GIF block")),
        }
    }
    Ok(GifScan {
        width,
        height,
        frames,
    })
}

/// A colour table follows when bit 7 of `packed` is set: 3 · 2^(n+1) bytes.
fn skip_colour_table(r: &mut impl BufRead, packed: u8) -> std::io::Result<()> {
    if packed & 0x80 != 0 {
        skip(r, 3 << ((packed & 0x07) + 1))?;
    }
    Ok(())
}

/// Data sub-blocks: a length byte and that many bytes, until a zero length.
fn skip_sub_blocks(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 1];
        r.read_exact(&mut len)?;
        if len[0] == 0 {
            return Ok(());
        }
        skip(r, len[0].into())?;
    }
}

/// Skips `n` bytes, failing at the end of the file as `read_exact` would.
fn skip(r: &mut impl BufRead, n: u64) -> std::io::Result<()> {
    let skipped = std::io::copy(&mut r.take(n), &mut std::io::sink())?;
    if skipped == n {
        Ok(())
    } else {
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A GIF89a with a 2-colour global table and `frames` 1x1 frames on a `w`x`h` canvas.
    fn tiny_frames_gif(w: u16, h: u16, frames: usize) -> Vec<u8> {
        let mut g = b"GIF89a".to_vec();
        g.extend(w.to_le_bytes());
        g.extend(h.to_le_bytes());
        g.extend([0x80, 0, 0, 0, 0, 0, 255, 255, 255]);
        for _ in 0..frames {
            // Graphic control extension, then a 1x1 image at (0, 0) of colour 0.
            g.extend([0x21, 0xF9, 4, 0, 0, 0, 0, 0]);
            g.extend([0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
            g.extend([2, 2, 0x44, 0x01, 0]);
        }
        g.push(0x3B);
        g
    }

    #[test]
    fn scan_counts_frames_without_decoding() {
        let gif = tiny_frames_gif(2000, 2000, 60);
        let scan = scan_gif(&mut Cursor::new(&gif)).unwrap();
        assert_eq!(
            scan,
            GifScan {
                width: 2000,
                height: 2000,
                frames: 60
            }
        );
        // No trailer: the frames before the end still count.
        let cut = &gif[..gif.len() - 1];
        assert_eq!(scan_gif(&mut Cursor::new(cut)).unwrap().frames, 60);
        // Cut inside a frame: an error, not a guess.
        assert!(scan_gif(&mut Cursor::new(&gif[..40])).is_err());
        assert!(scan_gif(&mut Cursor::new(b"PNG......xxxxxxx")).is_err());
    }

    #[test]
    fn scan_agrees_with_the_image_crate_encoder() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame, RgbaImage};
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut bytes);
            for i in 0..5u8 {
                let img = RgbaImage::from_pixel(7, 3, image::Rgba([i * 40, 9, 200, 255]));
                enc.encode_frame(Frame::from_parts(
                    img,
                    0,
                    0,
                    Delay::from_numer_denom_ms(40, 1),
                ))
                .unwrap();
            }
        }
        let scan = scan_gif(&mut Cursor::new(&bytes)).unwrap();
        assert_eq!((scan.width, scan.height, scan.frames), (7, 3, 5));
    }
}
