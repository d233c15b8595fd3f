//! Qwen3-VL's vision transformer: the Conv3d patch embedding (with a bias; its kernel equals its
//! stride, so a linear map of each flattened patch) plus learned positions resampled from a
//! square grid to the image's, 2-D rotary positions, blocks of LayerNorm → attention over each
//! frame → LayerNorm → GELU (tanh) MLP; after the `deepstack_visual_indexes` blocks the hidden
//! states also go through their own merger (LayerNorm after the 2x2 shuffle), and after the
//! last block through the main merger (LayerNorm before it).
//!
//! The patches stay in the processor's order (merge group by merge group) throughout: without
//! windows, nothing is reordered.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::Qwen3VisionConfig;
use crate::encode::qwen2_5_vl_vision::{
    merge_group_positions, FramePatches, VisionAttention, VisionRotary,
};
use crate::linear::Linear;
use crate::nn::LayerNorm;
use crate::qwen2_5_vl::QwenVisionFeatures;
use crate::{Error, Result};

const LAYER_NORM_EPS: f64 = 1e-6;

struct VisionMlp {
    fc1: Linear,
    fc2: Linear,
}

impl VisionMlp {
    fn new(cfg: &Qwen3VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            fc1: Linear::load(vb.pp("linear_fc1"), d, i, true)?,
            fc2: Linear::load(vb.pp("linear_fc2"), i, d, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // candle's `gelu` is the tanh approximation: transformers' gelu_pytorch_tanh.
        Ok(self.fc2.forward(&self.fc1.forward(xs)?.gelu()?)?)
    }
}

struct VisionBlock {
    norm1: LayerNorm,
    norm2: LayerNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &Qwen3VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            norm1: LayerNorm::new(vb.pp("norm1"), d, LAYER_NORM_EPS)?,
            norm2: LayerNorm::new(vb.pp("norm2"), d, LAYER_NORM_EPS)?,
            attn: VisionAttention::load(vb.pp("attn"), d, cfg.num_heads)?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, cu: &[usize]) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, cos, sin, cu)?)?;
        Ok((&xs + self.mlp.forward(&self.norm2.forward(&xs)?)?)?)
    }
}

/// 2x2 neighbouring patches concatenated → MLP (GELU, erf) to the decoder's width. The main
/// merger normalises each patch before the concatenation, the deep-stack ones after it.
struct PatchMerger {
    norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    group: usize,
    postshuffle_norm: bool,
}

impl PatchMerger {
    fn new(cfg: &Qwen3VisionConfig, postshuffle_norm: bool, vb: VarBuilder) -> Result<Self> {
        let group = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let norm_dim = if postshuffle_norm {
            group
        } else {
            cfg.hidden_size
        };
        Ok(Self {
            norm: LayerNorm::new(vb.pp("norm"), norm_dim, LAYER_NORM_EPS)?,
            fc1: Linear::load(vb.pp("linear_fc1"), group, group, true)?,
            fc2: Linear::load(vb.pp("linear_fc2"), group, cfg.out_hidden_size, true)?,
            group,
            postshuffle_norm,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let n = xs.elem_count() / self.group;
        let h = if self.postshuffle_norm {
            self.norm.forward(&xs.reshape((n, self.group))?)?
        } else {
            self.norm.forward(xs)?.reshape((n, self.group))?
        };
        Ok(self.fc2.forward(&self.fc1.forward(&h)?.gelu_erf()?)?)
    }
}

pub struct Qwen3VisionTransformer {
    patch_embed: Linear,
    /// The learned position grid [side², hidden].
    pos_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    deepstack_mergers: Vec<PatchMerger>,
    rotary: VisionRotary,
    cfg: Qwen3VisionConfig,
}

impl Qwen3VisionTransformer {
    /// `vb` holds `patch_embed`, `pos_embed`, `blocks.N`, `merger`, `deepstack_merger_list.N`.
    pub fn new(cfg: &Qwen3VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (p, tp, c, d) = (
            cfg.patch_size,
            cfg.temporal_patch_size,
            cfg.in_channels,
            cfg.hidden_size,
        );
        let kernel = vb.get((d, c, tp, p, p), "patch_embed.proj.weight")?;
        let bias = vb.get(d, "patch_embed.proj.bias")?;
        let patch_embed = Linear::new(kernel.reshape((d, c * tp * p * p))?, Some(bias))?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        let deepstack_mergers = (0..cfg.deepstack_visual_indexes.len())
            .map(|i| PatchMerger::new(cfg, true, vb.pp(format!("deepstack_merger_list.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            pos_embed: vb.get((cfg.num_position_embeddings, d), "pos_embed.weight")?,
            blocks,
            merger: PatchMerger::new(cfg, false, vb.pp("merger"))?,
            deepstack_mergers,
            rotary: VisionRotary::new(cfg.head_dim(), cfg.rope_theta),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Qwen3VisionConfig {
        &self.cfg
    }

    /// The learned positions of each patch at `positions` (row, column), resampled by its
    /// grid's [`position_taps`].
    fn position_embeddings(
        &self,
        grids: &[(usize, usize, usize)],
        positions: &[(usize, usize)],
    ) -> Result<Tensor> {
        let (indices, weights) = position_taps(&self.cfg, grids, positions);
        let n = positions.len();
        let device = self.pos_embed.device();
        let idx = Tensor::from_vec(indices, n * 4, device)?;
        let weights =
            Tensor::from_vec(weights, (n, 4, 1), device)?.to_dtype(self.pos_embed.dtype())?;
        Ok(self
            .pos_embed
            .index_select(&idx, 0)?
            .reshape((n, 4, self.cfg.hidden_size))?
            .broadcast_mul(&weights)?
            .sum(1)?)
    }

    /// Flattened patches [N, C·tp·p·p] of images with `grids` (t, h, w) → the merged features and
    /// each deep-stack level's, [N / merge², out_hidden_size], each grid's after the last.
    pub fn forward(
        &self,
        pixels: &Tensor,
        grids: &[(usize, usize, usize)],
    ) -> Result<QwenVisionFeatures> {
        let FramePatches {
            positions,
            cu_seqlens,
        } = merge_group_positions(grids, self.cfg.spatial_merge_size)?;
        let n = pixels.dim(0)?;
        if n != positions.len() {
            return Err(Error::Input(format!(
                "{n} patches given for grids {grids:?}, which have {}",
                positions.len()
            )));
        }
        let device = pixels.device();
        let dtype = self.pos_embed.dtype();
        let xs = self.patch_embed.forward(&pixels.to_dtype(dtype)?)?;
        let mut xs = (xs + self.position_embeddings(grids, &positions)?)?;
        let (cos, sin) = self.rotary.tables(&positions, device)?;
        let mut deepstack = Vec::with_capacity(self.deepstack_mergers.len());
        for (i, block) in self.blocks.iter().enumerate() {
            xs = block.forward(&xs, &cos, &sin, &cu_seqlens)?;
            if let Some(level) = self
                .cfg
                .deepstack_visual_indexes
                .iter()
                .position(|&b| b == i)
            {
                deepstack.push(self.deepstack_mergers[level].forward(&xs)?);
            }
        }
        Ok(QwenVisionFeatures {
            merged: self.merger.forward(&xs)?,
            deepstack,
        })
    }

    pub fn dtype(&self) -> DType {
        self.pos_embed.dtype()
    }
}

/// Each patch's four taps into the learned position grid (row-major indices [N · 4]) and
/// their weights [N · 4], for patches at `positions` (row, column) of `grids` (t, h, w),
/// resampled as transformers' `get_vision_interpolation_indices_and_weights` (bilinear,
/// aligned corners) does: source coordinate row·(side − 1)/(h − 1) in f32, the two
/// neighbouring rows and columns weighted by 1 − distance.
pub(crate) fn position_taps(
    cfg: &Qwen3VisionConfig,
    grids: &[(usize, usize, usize)],
    positions: &[(usize, usize)],
) -> (Vec<u32>, Vec<f32>) {
    let side = cfg.position_grid_side();
    let taps = |index: usize, size: usize| -> ([usize; 2], [f32; 2]) {
        let src = (index as f32 * (side - 1) as f32) / (size.max(2) - 1) as f32;
        let floor = src.floor();
        let frac = src - floor;
        let lo = (floor as usize).min(side - 1);
        let hi = (floor as usize + 1).min(side - 1);
        (
            [lo, hi],
            [(1.0 - frac).max(0.0), (1.0 - (frac - 1.0).abs()).max(0.0)],
        )
    };
    let mut indices = Vec::with_capacity(positions.len() * 4);
    let mut weights = Vec::with_capacity(positions.len() * 4);
    let mut at = 0;
    for &(t, h, w) in grids {
        let end = (at + t * h * w).min(positions.len());
        for &(row, col) in &positions[at..end] {
            let (rows, row_w) = taps(row, h);
            let (cols, col_w) = taps(col, w);
            for (r, rw) in rows.iter().zip(row_w) {
                for (c, cw) in cols.iter().zip(col_w) {
                    indices.push((r * side + c) as u32);
                    weights.push(rw * cw);
                }
            }
        }
        at = end;
    }
    (indices, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    /// A 2x2 grid of learned positions read at a 4 x 6 patch grid: the corners land on the
    /// grid's corners, the inside on the bilinear mix.
    #[test]
    fn positions_resample_the_grid_with_aligned_corners() -> anyhow::Result<()> {
        let cfg = Qwen3VisionConfig {
            depth: 0,
            hidden_size: 4,
            intermediate_size: 4,
            num_heads: 1,
            in_channels: 3,
            patch_size: 2,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            out_hidden_size: 4,
            num_position_embeddings: 4,
            deepstack_visual_indexes: vec![],
            rope_theta: 10000.0,
        };
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let vt = Qwen3VisionTransformer::new(&cfg, vb)?;
        let grid: Vec<f32> = (0..16).map(|i| (i / 4) as f32 * 10.0).collect();
        let vt = Qwen3VisionTransformer {
            pos_embed: Tensor::from_vec(grid, (4, 4), &Device::Cpu)?,
            ..vt
        };
        let positions = merge_group_positions(&[(1, 4, 6)], 2)?.positions;
        let pe = vt.position_embeddings(&[(1, 4, 6)], &positions)?;
        let first: Vec<f32> = pe.to_vec2::<f32>()?.iter().map(|r| r[0]).collect();
        let at = |row: usize, col: usize| {
            let i = positions.iter().position(|&p| p == (row, col)).unwrap();
            first[i]
        };
        // Entry k of the grid holds 10·k: (0, 0) → 0, (0, 5) → 10, (3, 0) → 20, (3, 5) → 30.
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(0, 5), 10.0);
        assert_eq!(at(3, 0), 20.0);
        assert_eq!(at(3, 5), 30.0);
        // Row 1 of 4 → 1/3 of the way down; column 0 → 20/3.
        assert!((at(1, 0) - 20.0 / 3.0).abs() < 1e-5);
        Ok(())
    }
}
