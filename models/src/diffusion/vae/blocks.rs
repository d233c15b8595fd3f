//! The VAE's layers in diffusers' key names: `ResnetBlock2D` without time embedding,
//! `Downsample2D` (padding 0 after an asymmetric zero pad), `Upsample2D` (nearest 2x, conv),
//! the mid block's `Attention`, and the `Encoder` / `Decoder` stacks built from them.
//!
//! Every op records a backward: candle's convolutions, our GroupNorm and softmax, and the
//! nearest upsampling written as a broadcast (candle's `upsample_nearest2d` backward assigns
//! its gradient instead of adding it, which is wrong as soon as its input has another use).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::VaeConfig;
use crate::diffusion::conv::{conv2d, Conv2d};
use crate::diffusion::group_norm::GroupNorm;
use crate::linear::Linear;

/// GroupNorm eps of every norm in the VAE (diffusers hard-codes it in Encoder / Decoder).
const EPS: f64 = 1e-6;
/// Attention scores computed at once by default, in elements (256 MiB of f32): larger inputs
/// are split along the queries (SDXL at 1024 px has 16384 latent positions, 1 GiB of f32
/// scores per image).
pub const SCORES_PER_PASS: usize = 1 << 26;

/// Key names of the mid block's attention projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionNames {
    /// `to_q`, `to_k`, `to_v`, `to_out.0`: diffusers since 0.14.
    Diffusers,
    /// `query`, `key`, `value`, `proj_attn`: older diffusers saves (diffusers renames them
    /// on load).
    Legacy,
}

impl AttentionNames {
    /// q, k, v, out.
    pub fn names(self) -> [&'static str; 4] {
        match self {
            Self::Diffusers => ["to_q", "to_k", "to_v", "to_out.0"],
            Self::Legacy => ["query", "key", "value", "proj_attn"],
        }
    }

    /// The layout's name in error messages.
    pub fn layout(self) -> &'static str {
        match self {
            Self::Diffusers => {
                "diffusers AutoencoderKL (attention keys to_q / to_k / to_v / to_out.0)"
            }
            Self::Legacy => {
                "diffusers AutoencoderKL, legacy attention keys (query / key / value / proj_attn)"
            }
        }
    }

    /// Legacy when any mid-block attention is stored under the legacy names.
    pub fn detect<'a>(keys: impl IntoIterator<Item = &'a String>) -> Self {
        let legacy = keys.into_iter().any(|k| {
            k.contains(".mid_block.attentions.")
                && (k.ends_with(".query.weight") || k.ends_with(".proj_attn.weight"))
        });
        if legacy {
            Self::Legacy
        } else {
            Self::Diffusers
        }
    }
}

fn linear(vb: VarBuilder, dim: usize) -> Result<Linear> {
    Linear::new(vb.get((dim, dim), "weight")?, Some(vb.get(dim, "bias")?))
}

/// `ResnetBlock2D` with `temb_channels=None`: x + conv2(silu(norm2(conv1(silu(norm1(x)))))),
/// x through a 1x1 `conv_shortcut` when the width changes.
pub(crate) struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(vb.pp("norm1"), groups, cin, EPS)?,
            conv1: conv2d(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: GroupNorm::new(vb.pp("norm2"), groups, cout, EPS)?,
            conv2: conv2d(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            shortcut: if cin != cout {
                Some(conv2d(vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
        })
    }
}

impl Module for ResnetBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// `Downsample2D(use_conv=True, padding=0)`: zero pad right and bottom by one, 3x3 conv,
/// stride 2.
struct Downsample {
    conv: Conv2d,
}

impl Module for Downsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // F.pad(x, (0, 1, 0, 1)): the last dimension (width) first, then height.
        let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
        self.conv.forward(&x)
    }
}

/// Nearest-neighbour 2x upsampling of [B, C, H, W], as a broadcast (backward: a sum over
/// each 2x2 cell).
pub fn upsample_nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// `Upsample2D(use_conv=True)`: nearest 2x, 3x3 conv.
struct Upsample {
    conv: Conv2d,
}

impl Module for Upsample {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest_2x(x)?)
    }
}

/// The mid block's `Attention`: GroupNorm, one head over all channels, the input added back.
struct Attention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    channels: usize,
    scores_per_pass: usize,
}

impl Attention {
    fn new(vb: VarBuilder, channels: usize, groups: usize, names: AttentionNames) -> Result<Self> {
        let [q, k, v, out] = names.names();
        Ok(Self {
            norm: GroupNorm::new(vb.pp("group_norm"), groups, channels, EPS)?,
            q: linear(vb.pp(q), channels)?,
            k: linear(vb.pp(k), channels)?,
            v: linear(vb.pp(v), channels)?,
            out: linear(vb.pp(out), channels)?,
            channels,
            scores_per_pass: SCORES_PER_PASS,
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let tokens = self
            .norm
            .forward(x)?
            .reshape((b, c, n))?
            .transpose(1, 2)?
            .contiguous()?;
        let (q, k, v) = (
            self.q.forward(&tokens)?,
            self.k.forward(&tokens)?,
            self.v.forward(&tokens)?,
        );
        let dtype = x.dtype();
        // Scores and softmax in f32 for half inputs (diffusers' upcast_softmax).
        let work = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let kt = k.to_dtype(work)?.transpose(1, 2)?.contiguous()?;
        let scale = 1.0 / (self.channels as f64).sqrt();
        let rows = (self.scores_per_pass / (b * n).max(1)).clamp(1, n);
        let mut parts = Vec::with_capacity(n.div_ceil(rows));
        for start in (0..n).step_by(rows) {
            let len = rows.min(n - start);
            let qs = q.narrow(1, start, len)?.to_dtype(work)?;
            let scores = (qs.matmul(&kt)? * scale)?;
            let probs = crate::nn::softmax_last_dim(&scores)?.to_dtype(dtype)?;
            parts.push(probs.matmul(&v)?);
        }
        let attended = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(&parts, 1)?
        };
        let out = self
            .out
            .forward(&attended)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        out + x
    }
}

/// `UNetMidBlock2D` of the VAE: resnet, attention (unless `mid_block_add_attention` is
/// false), resnet.
struct MidBlock {
    first: ResnetBlock,
    attention: Option<Attention>,
    second: ResnetBlock,
}

impl MidBlock {
    fn new(
        vb: VarBuilder,
        cfg: &VaeConfig,
        channels: usize,
        names: AttentionNames,
    ) -> Result<Self> {
        let groups = cfg.norm_num_groups;
        let attention = if cfg.mid_block_add_attention {
            Some(Attention::new(
                vb.pp("attentions.0"),
                channels,
                groups,
                names,
            )?)
        } else {
            None
        };
        Ok(Self {
            first: ResnetBlock::new(vb.pp("resnets.0"), channels, channels, groups)?,
            attention,
            second: ResnetBlock::new(vb.pp("resnets.1"), channels, channels, groups)?,
        })
    }
}

impl MidBlock {
    fn set_scores_per_pass(&mut self, n: usize) {
        if let Some(a) = &mut self.attention {
            a.scores_per_pass = n.max(1);
        }
    }
}

impl Module for MidBlock {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.first.forward(x)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.second.forward(&h)
    }
}

/// One `DownEncoderBlock2D` or `UpDecoderBlock2D`: resnets, then the resampler.
struct Stage {
    resnets: Vec<ResnetBlock>,
    down: Option<Downsample>,
    up: Option<Upsample>,
}

impl Module for Stage {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        if let Some(d) = &self.down {
            h = d.forward(&h)?;
        }
        if let Some(u) = &self.up {
            h = u.forward(&h)?;
        }
        Ok(h)
    }
}

/// diffusers `Encoder` (double_z): image [B, in, H, W] → moments [B, 2·latent, H/f, W/f].
pub(crate) struct Encoder {
    conv_in: Conv2d,
    stages: Vec<Stage>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    pub(crate) fn new(vb: VarBuilder, cfg: &VaeConfig, names: AttentionNames) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let groups = cfg.norm_num_groups;
        let last = *ch
            .last()
            .expect("validated: block_out_channels is not empty");
        let mut stages = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| {
                    ResnetBlock::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { cin } else { cout },
                        cout,
                        groups,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let down = if i + 1 < ch.len() {
                Some(Downsample {
                    conv: conv2d(vb.pp("downsamplers.0.conv"), cout, cout, 3, 2, 0)?,
                })
            } else {
                None
            };
            stages.push(Stage {
                resnets,
                down,
                up: None,
            });
            cin = cout;
        }
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            stages,
            mid: MidBlock::new(vb.pp("mid_block"), cfg, last, names)?,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, last, EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }
}

impl Encoder {
    pub(crate) fn set_scores_per_pass(&mut self, n: usize) {
        self.mid.set_scores_per_pass(n);
    }
}

impl Module for Encoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for s in &self.stages {
            h = s.forward(&h)?;
        }
        let h = self.mid.forward(&h)?;
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}

/// diffusers `Decoder`: latents [B, latent, h, w] → image [B, out, h·f, w·f].
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    stages: Vec<Stage>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub(crate) fn new(vb: VarBuilder, cfg: &VaeConfig, names: AttentionNames) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let groups = cfg.norm_num_groups;
        let mut stages = Vec::with_capacity(rev.len());
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    ResnetBlock::new(
                        vb.pp(format!("resnets.{j}")),
                        if j == 0 { cin } else { cout },
                        cout,
                        groups,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < rev.len() {
                Some(Upsample {
                    conv: conv2d(vb.pp("upsamplers.0.conv"), cout, cout, 3, 1, 1)?,
                })
            } else {
                None
            };
            stages.push(Stage {
                resnets,
                down: None,
                up,
            });
            cin = cout;
        }
        let first = cfg.block_out_channels[0];
        Ok(Self {
            conv_in: conv2d(vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid: MidBlock::new(vb.pp("mid_block"), cfg, rev[0], names)?,
            stages,
            norm_out: GroupNorm::new(vb.pp("conv_norm_out"), groups, first, EPS)?,
            conv_out: conv2d(vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }
}

impl Decoder {
    pub(crate) fn set_scores_per_pass(&mut self, n: usize) {
        self.mid.set_scores_per_pass(n);
    }
}

impl Module for Decoder {
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&self.conv_in.forward(z)?)?;
        for s in &self.stages {
            h = s.forward(&h)?;
        }
        self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)
    }
}
