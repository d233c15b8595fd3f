//! Qwen2.5-VL's vision transformer: the Conv3d patch embedding (its kernel equals its stride,
//! so it is a linear map of each flattened patch), 2-D rotary positions (height frequencies,
//! then width frequencies), blocks of RMSNorm → attention → RMSNorm → SwiGLU, attending within
//! windows of `window_size` px except the `fullatt_block_indexes` blocks, which attend over
//! each frame; then the merger (RMSNorm, 2x2 patches concatenated, MLP with GELU).
//!
//! The blocks run on the patches reordered window by window (the merge groups of each window
//! consecutive); the merged tokens are put back in raster order at the end, as transformers'
//! `get_window_index` and its `argsort` inverse do.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::VarBuilder;

use crate::linear::Linear;
use crate::nn::RmsNorm;
use crate::qwen2_5_vl::config::Qwen25VisionConfig;
use crate::{Error, Result};

/// Queries per attention block over a whole frame: a 1920x1080 image is 10764 patches, and
/// its full score matrix would be 460 MB a head.
const FULL_ATTENTION_QUERY_BLOCK: usize = 2048;

/// Where each patch sits and which patches attend together, for a batch of grids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowLayout {
    /// Merge groups in window order: entry i is the raster index of the group placed i-th.
    pub window_index: Vec<usize>,
    /// Patch boundaries of the windows, in window order (starting at 0).
    pub cu_window_seqlens: Vec<usize>,
    /// Patch boundaries of the frames (full attention).
    pub cu_seqlens: Vec<usize>,
    /// Per patch in raster order: (row, column) in patches.
    pub positions: Vec<(usize, usize)>,
}

impl WindowLayout {
    /// transformers' `get_window_index`, `rot_pos_emb`'s positions and the frame boundaries
    /// for grids `(t, h, w)` in patches.
    pub fn new(grids: &[(usize, usize, usize)], cfg: &Qwen25VisionConfig) -> Result<Self> {
        let m = cfg.spatial_merge_size;
        let unit = m * m;
        let win = cfg.merged_window();
        let mut window_index = Vec::new();
        let mut cu_window_seqlens = vec![0];
        let mut offset = 0;
        let FramePatches {
            positions,
            cu_seqlens,
        } = merge_group_positions(grids, m)?;
        for &(t, h, w) in grids {
            let (lh, lw) = (h / m, w / m);
            for f in 0..t {
                for wy in (0..lh).step_by(win) {
                    for wx in (0..lw).step_by(win) {
                        let mut count = 0;
                        for y in wy..(wy + win).min(lh) {
                            for x in wx..(wx + win).min(lw) {
                                window_index.push(offset + (f * lh + y) * lw + x);
                                count += 1;
                            }
                        }
                        let end = cu_window_seqlens[cu_window_seqlens.len() - 1] + count * unit;
                        cu_window_seqlens.push(end);
                    }
                }
            }
            offset += t * lh * lw;
        }
        Ok(Self {
            window_index,
            cu_window_seqlens,
            cu_seqlens,
            positions,
        })
    }

    /// The inverse permutation of [`Self::window_index`].
    pub fn reverse_index(&self) -> Vec<usize> {
        let mut rev = vec![0; self.window_index.len()];
        for (i, &g) in self.window_index.iter().enumerate() {
            rev[g] = i;
        }
        rev
    }

    /// Patch rows in window order (every merge group's `unit` patches kept together).
    pub fn patch_rows(&self, unit: usize) -> Vec<usize> {
        self.window_index
            .iter()
            .flat_map(|&g| g * unit..(g + 1) * unit)
            .collect()
    }

    fn patch_order(&self, unit: usize) -> Vec<u32> {
        self.patch_rows(unit)
            .into_iter()
            .map(|i| i as u32)
            .collect()
    }
}

/// Where the patches of a batch of grids sit, in the order the processor flattens them (merge
/// group by merge group, raster over groups, frame after frame).
pub(crate) struct FramePatches {
    /// Per patch: (row, column) in patches.
    pub positions: Vec<(usize, usize)>,
    /// Patch boundaries of the frames (starting at 0), over which full attention runs.
    pub cu_seqlens: Vec<usize>,
}

/// The [`FramePatches`] of `grids` (t, h, w) with `m` x `m` merge groups.
pub(crate) fn merge_group_positions(
    grids: &[(usize, usize, usize)],
    m: usize,
) -> Result<FramePatches> {
    let mut cu_seqlens = vec![0];
    let mut positions = Vec::new();
    for &(t, h, w) in grids {
        if t == 0 || h == 0 || w == 0 || h % m != 0 || w % m != 0 {
            return Err(Error::Input(format!(
                "grid {t}x{h}x{w} is not whole {m}x{m} merge groups"
            )));
        }
        let (lh, lw) = (h / m, w / m);
        for _ in 0..t {
            for bh in 0..lh {
                for bw in 0..lw {
                    for mh in 0..m {
                        for mw in 0..m {
                            positions.push((bh * m + mh, bw * m + mw));
                        }
                    }
                }
            }
            let end = cu_seqlens[cu_seqlens.len() - 1] + h * w;
            cu_seqlens.push(end);
        }
    }
    Ok(FramePatches {
        positions,
        cu_seqlens,
    })
}

/// The 2-D rotary embedding of the Qwen-VL vision towers: half of each head rotates by the
/// patch's row, half by its column, head_dim / 4 frequencies each.
pub(crate) struct VisionRotary {
    inv_freq: Vec<f32>,
}

impl VisionRotary {
    pub(crate) fn new(head_dim: usize, theta: f64) -> Self {
        let spatial = head_dim / 2;
        let inv_freq = (0..spatial / 2)
            .map(|i| (1.0 / theta.powf((2 * i) as f64 / spatial as f64)) as f32)
            .collect();
        Self { inv_freq }
    }

    /// (cos, sin) [S, head_dim] f32 for patches at `positions` (row, column), computed as
    /// transformers does: the angles in f32, laid out [h freqs, w freqs, h freqs, w freqs].
    pub(crate) fn tables(
        &self,
        positions: &[(usize, usize)],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let dim = 4 * self.inv_freq.len();
        let (cos, sin) = self.table_values(positions);
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, dim), device)?,
            Tensor::from_vec(sin, (n, dim), device)?,
        ))
    }

    /// [`Self::tables`] as row-major values.
    pub(crate) fn table_values(&self, positions: &[(usize, usize)]) -> (Vec<f32>, Vec<f32>) {
        let dim = 4 * self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * dim);
        let mut sin = Vec::with_capacity(positions.len() * dim);
        for &(h, w) in positions {
            let angles: Vec<f32> = self
                .inv_freq
                .iter()
                .map(|&fr| h as f32 * fr)
                .chain(self.inv_freq.iter().map(|&fr| w as f32 * fr))
                .collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        (cos, sin)
    }
}

/// Multi-head self-attention of the Qwen-VL vision towers (fused qkv with biases, 2-D rotary,
/// no mask: attention runs within each segment).
pub(crate) struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(cfg: &Qwen25VisionConfig, vb: VarBuilder) -> Result<Self> {
        Self::load(vb, cfg.hidden_size, cfg.num_heads)
    }

    /// `qkv` and `proj` under `vb`, for a width `d` split in `heads`.
    pub(crate) fn load(vb: VarBuilder, d: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            qkv: Linear::load(vb.pp("qkv"), d, 3 * d, true)?,
            proj: Linear::load(vb.pp("proj"), d, d, true)?,
            heads,
            head_dim: d / heads,
        })
    }

    /// x [S, D] with rotary tables cos / sin [S, head_dim] (f32), attending within the
    /// segments `cu` (patch boundaries).
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cu: &[usize],
    ) -> Result<Tensor> {
        let s = xs.dim(0)?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((s, 3, self.heads, self.head_dim))?;
        let dtype = xs.dtype();
        // The rotation in f32, as transformers' apply_rotary_pos_emb_vision.
        let rotate = |x: Tensor| -> Result<Tensor> {
            let x = x.to_dtype(DType::F32)?;
            let half = self.head_dim / 2;
            let x1 = x.narrow(D::Minus1, 0, half)?;
            let x2 = x.narrow(D::Minus1, half, half)?;
            let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
            let (c, sn) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
            Ok((x.broadcast_mul(&c)? + rotated.broadcast_mul(&sn)?)?.to_dtype(dtype)?)
        };
        // [S, heads, hd] → [heads, S, hd]
        let q = rotate(qkv.narrow(1, 0, 1)?.squeeze(1)?)?
            .transpose(0, 1)?
            .contiguous()?;
        let k = rotate(qkv.narrow(1, 1, 1)?.squeeze(1)?)?
            .transpose(0, 1)?
            .contiguous()?;
        let v = qkv
            .narrow(1, 2, 1)?
            .squeeze(1)?
            .transpose(0, 1)?
            .contiguous()?;
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;

        let mut outs = Vec::new();
        // Runs of consecutive segments of one length attend as one batch.
        let segs: Vec<(usize, usize)> = cu
            .windows(2)
            .map(|w| (w[0], w[1] - w[0]))
            .filter(|&(_, len)| len > 0)
            .collect();
        let mut i = 0;
        while i < segs.len() {
            let (start, len) = segs[i];
            let mut j = i + 1;
            while j < segs.len() && segs[j].1 == len {
                j += 1;
            }
            let n = j - i;
            let take = |x: &Tensor| -> Result<Tensor> {
                Ok(x.narrow(1, start, n * len)?
                    .reshape((self.heads, n, len, self.head_dim))?
                    .transpose(0, 1)?
                    .contiguous()?)
            };
            let (qs, ks, vs) = (take(&q)?, take(&k)?, take(&v)?);
            let out = if len > FULL_ATTENTION_QUERY_BLOCK {
                let mut blocks = Vec::new();
                for qb in (0..len).step_by(FULL_ATTENTION_QUERY_BLOCK) {
                    let rows = FULL_ATTENTION_QUERY_BLOCK.min(len - qb);
                    blocks.push(attend(&qs.narrow(2, qb, rows)?, &ks, &vs)?);
                }
                Tensor::cat(&blocks, 2)?
            } else {
                attend(&qs, &ks, &vs)?
            };
            // [n, heads, len, hd] → [n * len, heads * hd]
            outs.push(
                out.transpose(1, 2)?
                    .reshape((n * len, self.heads * self.head_dim))?,
            );
            i = j;
        }
        let out = Tensor::cat(&outs, 0)?;
        Ok(self.proj.forward(&out)?)
    }
}

/// softmax(q·kᵀ)·v with the scores and softmax in f32 (q already scaled).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
    let probs = crate::nn::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    Ok(probs.matmul(v)?)
}

struct VisionMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl VisionMlp {
    fn new(cfg: &Qwen25VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(vb.pp("gate_proj"), d, i, true)?,
            up_proj: Linear::load(vb.pp("up_proj"), d, i, true)?,
            down_proj: Linear::load(vb.pp("down_proj"), i, d, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        Ok(self
            .down_proj
            .forward(&(gate * self.up_proj.forward(xs)?)?)?)
    }
}

struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(cfg: &Qwen25VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: RmsNorm::new(vb.pp("norm1"), cfg.hidden_size, 1e-6)?,
            norm2: RmsNorm::new(vb.pp("norm2"), cfg.hidden_size, 1e-6)?,
            attn: VisionAttention::new(cfg, vb.pp("attn"))?,
            mlp: VisionMlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor, cu: &[usize]) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, cos, sin, cu)?)?;
        Ok((&xs + self.mlp.forward(&self.norm2.forward(&xs)?)?)?)
    }
}

struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    group: usize,
}

impl PatchMerger {
    fn new(cfg: &Qwen25VisionConfig, vb: VarBuilder) -> Result<Self> {
        let group = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        Ok(Self {
            ln_q: RmsNorm::new(vb.pp("ln_q"), cfg.hidden_size, 1e-6)?,
            fc1: Linear::load(vb.pp("mlp.0"), group, group, true)?,
            fc2: Linear::load(vb.pp("mlp.2"), group, cfg.out_hidden_size, true)?,
            group,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let n = xs.dim(0)? * xs.dim(1)? / self.group;
        let h = self.ln_q.forward(xs)?.reshape((n, self.group))?;
        Ok(self.fc2.forward(&self.fc1.forward(&h)?.gelu_erf()?)?)
    }
}

pub struct Qwen25VisionTransformer {
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    rotary: VisionRotary,
    cfg: Qwen25VisionConfig,
}

impl Qwen25VisionTransformer {
    /// `vb` holds `patch_embed`, `blocks.N`, `merger`.
    pub fn new(cfg: &Qwen25VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (p, tp, c) = (cfg.patch_size, cfg.temporal_patch_size, cfg.in_channels);
        let kernel = vb.get((cfg.hidden_size, c, tp, p, p), "patch_embed.proj.weight")?;
        let patch_embed = Linear::new(kernel.reshape((cfg.hidden_size, c * tp * p * p))?, None)?;
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(cfg, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_embed,
            blocks,
            merger: PatchMerger::new(cfg, vb.pp("merger"))?,
            rotary: VisionRotary::new(cfg.head_dim(), cfg.rope_theta),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Qwen25VisionConfig {
        &self.cfg
    }

    /// Flattened patches [N, C·tp·p·p] of images / videos with `grids` (t, h, w) → merged
    /// features [N / merge², out_hidden_size] in raster order, each grid's after the last.
    pub fn forward(&self, pixels: &Tensor, grids: &[(usize, usize, usize)]) -> Result<Tensor> {
        let layout = WindowLayout::new(grids, &self.cfg)?;
        let n = pixels.dim(0)?;
        if n != layout.positions.len() {
            return Err(Error::Input(format!(
                "{n} patches given for grids {grids:?}, which have {}",
                layout.positions.len()
            )));
        }
        let device = pixels.device();
        let dtype = self.patch_embed_dtype();
        let unit = self.cfg.spatial_merge_size * self.cfg.spatial_merge_size;
        let order = Tensor::new(layout.patch_order(unit).as_slice(), device)?;
        let xs = self
            .patch_embed
            .forward(&pixels.to_dtype(dtype)?)?
            .index_select(&order, 0)?;
        let (cos, sin) = self.rotary.tables(&layout.positions, device)?;
        let (cos, sin) = (cos.index_select(&order, 0)?, sin.index_select(&order, 0)?);
        let mut xs = xs;
        for (i, block) in self.blocks.iter().enumerate() {
            let cu = if self.cfg.fullatt_block_indexes.contains(&i) {
                &layout.cu_seqlens
            } else {
                &layout.cu_window_seqlens
            };
            xs = block.forward(&xs, &cos, &sin, cu)?;
        }
        let merged = self.merger.forward(&xs)?;
        let back: Vec<u32> = layout.reverse_index().iter().map(|&i| i as u32).collect();
        Ok(merged.index_select(&Tensor::new(back.as_slice(), device)?, 0)?)
    }

    fn patch_embed_dtype(&self) -> DType {
        self.merger.ln_q.weight.dtype()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Qwen25VisionConfig {
        Qwen25VisionConfig {
            depth: 1,
            hidden_size: 8,
            intermediate_size: 8,
            num_heads: 1,
            in_channels: 3,
            patch_size: 14,
            temporal_patch_size: 2,
            spatial_merge_size: 2,
            window_size: 112,
            out_hidden_size: 8,
            fullatt_block_indexes: vec![],
            tokens_per_second: 2.0,
            rope_theta: 10000.0,
        }
    }

    #[test]
    fn windows_follow_get_window_index() {
        // 14 x 22 patches → 7 x 11 merge groups → windows of 4 x 4 groups: 2 x 3 windows, the
        // last row and column cut short.
        let l = WindowLayout::new(&[(1, 14, 22)], &cfg()).unwrap();
        assert_eq!(l.window_index.len(), 77);
        assert_eq!(&l.window_index[..5], &[0, 1, 2, 3, 11]);
        let lens: Vec<usize> = l
            .cu_window_seqlens
            .windows(2)
            .map(|w| w[1] - w[0])
            .collect();
        assert_eq!(lens, [64, 64, 48, 48, 48, 36]);
        assert_eq!(l.cu_seqlens, [0, 308]);
        assert_eq!(&l.positions[..5], &[(0, 0), (0, 1), (1, 0), (1, 1), (0, 2)]);
        let rev = l.reverse_index();
        assert!(rev.iter().enumerate().all(|(g, &i)| l.window_index[i] == g));
        // A second grid's groups and patches continue after the first's.
        let two = WindowLayout::new(&[(1, 14, 22), (1, 4, 6)], &cfg()).unwrap();
        assert_eq!(two.window_index[77..], [77, 78, 79, 80, 81, 82]);
        assert_eq!(two.cu_seqlens, [0, 308, 332]);
    }
}
