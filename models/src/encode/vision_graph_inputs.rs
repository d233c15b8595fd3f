//! What the exported Qwen-VL vision graphs take besides the pixels: everything the candle
//! towers compute on the host from the media's grids (the window order, the rotary tables, the
//! learned positions' taps, which patches attend together), computed by the same code, as the
//! flat arrays the graphs are fed.
//!
//! Attention within segments (windows, frames) of different lengths is laid out at one fixed
//! shape: every segment padded to the longest, [segments, longest], with the padding's keys
//! masked. The candle towers instead batch runs of equal-length segments; both sum the same
//! products (a masked key contributes an exact 0).

use crate::encode::qwen2_5_vl_vision::{merge_group_positions, VisionRotary, WindowLayout};
use crate::qwen2_5_vl::Qwen25VisionConfig;
use crate::qwen3_vl::Qwen3VisionConfig;
use crate::Result;

/// Segments of rows padded to one length: `gather` [segments, len] the row each slot takes
/// (padding repeats the segment's first row), `keys` [segments, len] 1 for a real row and 0
/// for padding, `scatter` [rows] the slot (flat index into [segments · len]) holding each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedSegments {
    pub segments: usize,
    pub len: usize,
    pub gather: Vec<i64>,
    pub keys: Vec<i64>,
    pub scatter: Vec<i64>,
}

impl PaddedSegments {
    /// The segments between consecutive boundaries of `cu` (starting at 0); empty ones are
    /// dropped, as the candle towers drop them.
    pub fn new(cu: &[usize]) -> Self {
        let spans: Vec<(usize, usize)> = cu
            .windows(2)
            .map(|w| (w[0], w[1].saturating_sub(w[0])))
            .filter(|&(_, n)| n > 0)
            .collect();
        let len = spans.iter().map(|&(_, n)| n).max().unwrap_or(0);
        let rows = cu.last().copied().unwrap_or(0);
        let mut gather = Vec::with_capacity(spans.len() * len);
        let mut keys = Vec::with_capacity(spans.len() * len);
        let mut scatter = vec![0i64; rows];
        for (s, &(start, n)) in spans.iter().enumerate() {
            for j in 0..len {
                let real = j < n;
                gather.push((start + if real { j } else { 0 }) as i64);
                keys.push(i64::from(real));
                if real {
                    scatter[start + j] = (s * len + j) as i64;
                }
            }
        }
        Self {
            segments: spans.len(),
            len,
            gather,
            keys,
            scatter,
        }
    }
}

/// The exported Qwen2.5-VL vision graph's inputs for a batch of `grids` (t, h, w): the
/// patches' order window by window, their rotary tables [N, head_dim] in that order, the
/// windows and the frames as [`PaddedSegments`] over that order, and the order that puts the
/// merged tokens back in raster order.
#[derive(Debug, Clone)]
pub struct Qwen25VisionInputs {
    pub patches: usize,
    pub window_order: Vec<i64>,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub windows: PaddedSegments,
    pub frames: PaddedSegments,
    pub merge_order: Vec<i64>,
}

impl Qwen25VisionInputs {
    pub fn new(grids: &[(usize, usize, usize)], cfg: &Qwen25VisionConfig) -> Result<Self> {
        let layout = WindowLayout::new(grids, cfg)?;
        let unit = cfg.spatial_merge_size * cfg.spatial_merge_size;
        let order = layout.patch_rows(unit);
        let positions: Vec<(usize, usize)> = order.iter().map(|&i| layout.positions[i]).collect();
        let (cos, sin) = VisionRotary::new(cfg.head_dim(), cfg.rope_theta).table_values(&positions);
        Ok(Self {
            patches: order.len(),
            window_order: order.iter().map(|&i| i as i64).collect(),
            cos,
            sin,
            windows: PaddedSegments::new(&layout.cu_window_seqlens),
            frames: PaddedSegments::new(&layout.cu_seqlens),
            merge_order: layout.reverse_index().iter().map(|&i| i as i64).collect(),
        })
    }
}

/// The exported Qwen3-VL vision graph's inputs for a batch of `grids`: the learned positions'
/// four taps per patch (`pos_index` [N · 4] into the position grid, `pos_weight` [N · 4]), the
/// rotary tables [N, head_dim] and the frames as [`PaddedSegments`], all in the processor's
/// patch order (nothing is reordered without windows).
#[derive(Debug, Clone)]
pub struct Qwen3VisionInputs {
    pub patches: usize,
    pub pos_index: Vec<i64>,
    pub pos_weight: Vec<f32>,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub frames: PaddedSegments,
}

impl Qwen3VisionInputs {
    pub fn new(grids: &[(usize, usize, usize)], cfg: &Qwen3VisionConfig) -> Result<Self> {
        let frames = merge_group_positions(grids, cfg.spatial_merge_size)?;
        let (pos_index, pos_weight) =
            crate::qwen3_vl::vision::position_taps(cfg, grids, &frames.positions);
        let (cos, sin) =
            VisionRotary::new(cfg.head_dim(), cfg.rope_theta).table_values(&frames.positions);
        Ok(Self {
            patches: frames.positions.len(),
            pos_index: pos_index.into_iter().map(i64::from).collect(),
            pos_weight,
            cos,
            sin,
            frames: PaddedSegments::new(&frames.cu_seqlens),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_pad_to_the_longest_and_scatter_back() {
        let s = PaddedSegments::new(&[0, 3, 3, 4]);
        assert_eq!((s.segments, s.len), (2, 3));
        assert_eq!(s.gather, [0, 1, 2, 3, 3, 3]);
        assert_eq!(s.keys, [1, 1, 1, 1, 0, 0]);
        assert_eq!(s.scatter, [0, 1, 2, 3]);
    }
}
