//! Qwen2.5-VL's 3-D rotary positions (transformers' `get_rope_index`): text tokens advance all
//! three positions together; an image's (or video's) merged tokens take (t, row, column)
//! offset by the position where the medium starts, and the text after it continues from that
//! start plus the larger side of its merged grid.

use candle_core::{Device, Tensor};

use crate::preprocess::qwen_vl::QwenVlPixels;
use crate::tokenize::Tokenized;
use crate::{Error, Result};

/// A medium's grid in patches, and how far apart its frames' temporal positions are
/// (`tokens_per_second * seconds per temporal patch` for a video, 1 for an image).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MediaGrid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub time_interval: f64,
}

impl MediaGrid {
    /// The grid of a preprocessed image (or of a video frame sent as an image).
    pub fn of_image(pixels: &QwenVlPixels) -> Self {
        let (t, h, w) = pixels.grid_thw;
        Self {
            t,
            h,
            w,
            time_interval: 1.0,
        }
    }
}

/// Positions [3][T] of a prompt and its delta: max position + 1 − T, what continuations add to
/// their 1-D positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopePositions {
    pub axes: [Vec<u32>; 3],
    pub delta: i64,
}

impl RopePositions {
    /// Positions of `tokens`, whose media spans take `images[i]` / `videos[i]` in order.
    pub fn new(
        tokens: &Tokenized,
        images: &[MediaGrid],
        videos: &[MediaGrid],
        merge: usize,
    ) -> Result<Self> {
        let n = tokens.ids.len();
        let mut axes: [Vec<u32>; 3] = std::array::from_fn(|_| Vec::with_capacity(n));
        let mut at = 0;
        let mut current: u32 = 0;
        let mut spans: Vec<_> = tokens.spans.iter().collect();
        spans.sort_by_key(|s| s.start);
        for span in spans {
            let grid = match span.kind {
                crate::tokenize::MediaKind::Image => images.get(span.index),
                crate::tokenize::MediaKind::Video => videos.get(span.index),
            }
            .ok_or_else(|| Error::Input(format!("no grid for {:?} {}", span.kind, span.index)))?;
            for _ in at..span.start {
                for axis in &mut axes {
                    axis.push(current);
                }
                current += 1;
            }
            let (lt, lh, lw) = (grid.t, grid.h / merge, grid.w / merge);
            if lt * lh * lw != span.len {
                return Err(Error::Input(format!(
                    "{:?} {} has {} tokens but its grid {}x{}x{} merges to {}",
                    span.kind,
                    span.index,
                    span.len,
                    grid.t,
                    grid.h,
                    grid.w,
                    lt * lh * lw
                )));
            }
            for t in 0..lt {
                // transformers: (arange(t) * interval).long(), then + start.
                let tp = (t as f64 * grid.time_interval) as u32 + current;
                for y in 0..lh {
                    for x in 0..lw {
                        axes[0].push(tp);
                        axes[1].push(current + y as u32);
                        axes[2].push(current + x as u32);
                    }
                }
            }
            current += lh.max(lw) as u32;
            at = span.start + span.len;
        }
        for _ in at..n {
            for axis in &mut axes {
                axis.push(current);
            }
            current += 1;
        }
        let max = axes.iter().flatten().copied().max().map_or(-1, i64::from);
        Ok(Self {
            delta: max + 1 - n as i64,
            axes,
        })
    }

    /// As a [3, 1, T] tensor.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        let t = self.axes[0].len();
        let flat: Vec<u32> = self.axes.iter().flatten().copied().collect();
        Ok(Tensor::from_vec(flat, (3, 1, t), device)?)
    }
}

/// Positions [3, B, T] of `rows`, one per row of `embeds` [B, T, D], right-padded to its T
/// tokens: what a training forward over a batch of whole sequences runs at. Padding sits after
/// each row's tokens and the mask is causal, so whatever positions it gets never reach a real
/// token; it continues the row's last position.
pub fn padded_positions(rows: &[RopePositions], embeds: &Tensor) -> Result<Tensor> {
    let (b, t, _) = embeds.dims3()?;
    if rows.len() != b {
        return Err(Error::Input(format!(
            "{} sequences for {b} rows of embeddings",
            rows.len()
        )));
    }
    let mut flat = vec![0u32; 3 * b * t];
    for (row, pos) in rows.iter().enumerate() {
        let n = pos.axes[0].len();
        if n > t {
            return Err(Error::Input(format!(
                "a sequence of {n} tokens in rows of {t} embeddings"
            )));
        }
        for (axis, values) in pos.axes.iter().enumerate() {
            let last = values.last().copied().unwrap_or(0);
            let out = &mut flat[(axis * b + row) * t..(axis * b + row + 1) * t];
            out[..n].copy_from_slice(values);
            for (k, p) in out[n..].iter_mut().enumerate() {
                *p = last + 1 + k as u32;
            }
        }
    }
    Ok(Tensor::from_vec(flat, (3, b, t), embeds.device())?)
}

/// Positions [3, B, T] for `t` tokens after `past` cached ones of a prompt with `delta`:
/// every axis at past + delta + i, as transformers continues after the prompt.
pub fn continuation_positions(
    b: usize,
    t: usize,
    past: usize,
    delta: i64,
    device: &Device,
) -> Result<Tensor> {
    let start = past as i64 + delta;
    if start < 0 {
        return Err(Error::Input(format!(
            "position delta {delta} puts token {past} before position 0"
        )));
    }
    let start = start as u32;
    Ok(Tensor::arange(start, start + t as u32, device)?
        .reshape((1, 1, t))?
        .broadcast_as((3, b, t))?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::{MediaKind, MediaSpan};

    #[test]
    fn text_after_an_image_continues_from_its_larger_side() {
        // 2 text tokens, a 4 x 6 patch image (2 x 3 merged tokens), 2 text tokens.
        let tokens = Tokenized {
            ids: vec![0; 10],
            spans: vec![MediaSpan {
                kind: MediaKind::Image,
                index: 0,
                start: 2,
                len: 6,
            }],
        };
        let grid = MediaGrid {
            t: 1,
            h: 4,
            w: 6,
            time_interval: 1.0,
        };
        let p = RopePositions::new(&tokens, &[grid], &[], 2).unwrap();
        assert_eq!(p.axes[0], [0, 1, 2, 2, 2, 2, 2, 2, 5, 6]);
        assert_eq!(p.axes[1], [0, 1, 2, 2, 2, 3, 3, 3, 5, 6]);
        assert_eq!(p.axes[2], [0, 1, 2, 3, 4, 2, 3, 4, 5, 6]);
        assert_eq!(p.delta, 7 - 10);
    }
}
