//! SigLIP vision tower: patch embedding + learned positions, pre-LayerNorm transformer blocks
//! with tanh-GELU MLPs. Returns the hidden states of the configured feature layer, before the
//! post-layernorm (which LLaVA-OneVision never applies), all patches, no CLS token.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::linear::Linear;
use crate::nn::LayerNorm;

use crate::config::VisionConfig;
use crate::Result;

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / ((d / cfg.num_attention_heads) as f64).sqrt(),
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = xs.dims3()?;
        let split = |t: Tensor| {
            t.reshape((b, n, self.heads, d / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        // Scaling q instead of the scores touches n·d values instead of n².
        let q = (split(self.q_proj.forward(xs)?)? * self.scale)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = crate::nn::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d, eps)?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d, eps)?,
            fc1: Linear::load(vb.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
            fc2: Linear::load(vb.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.layer_norm1.forward(xs)?;
        let xs = (xs + self.self_attn.forward(&h)?)?;
        let h = self.layer_norm2.forward(&xs)?;
        let h = self.fc1.forward(&h)?;
        let h = crate::ops::gelu_tanh(&h).map_err(crate::nn::into_candle)?;
        let h = self.fc2.forward(&h)?;
        xs + h
    }
}

pub struct SiglipVision {
    /// Patch convolution as a matrix [3·p·p, hidden]: a stride-p convolution is a matmul
    /// over non-overlapping patches, which is cheaper than im2col and exports as one MatMul.
    patch_weight: Tensor,
    patch_bias: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    cfg: VisionConfig,
}

impl SiglipVision {
    /// Builds the first `layers_used` blocks; later ones never influence the features read.
    pub fn new(cfg: &VisionConfig, layers_used: usize, vb: VarBuilder) -> Result<Self> {
        let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
        let emb = vb.pp("embeddings");
        let conv = emb.get((d, c, p, p), "patch_embedding.weight")?;
        // A frozen weight is rearranged once; a trained one stays a view of its variable's
        // storage, so that the optimizer's in-place updates reach the forward without a
        // rebuild of the model.
        let patch_weight = conv.reshape((d, c * p * p))?.t()?;
        let patch_weight = if conv.is_variable() {
            patch_weight
        } else {
            patch_weight.contiguous()?
        };
        let patch_bias = emb.get(d, "patch_embedding.bias")?;
        let position_embedding =
            emb.get((cfg.tokens_per_tile(), d), "position_embedding.weight")?;
        let layers = (0..layers_used)
            .map(|i| EncoderLayer::new(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            patch_weight,
            patch_bias,
            position_embedding,
            layers,
            cfg: cfg.clone(),
        })
    }

    /// [tiles, channels, S, S] → [tiles, patches, hidden].
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = pixels.dims4()?;
        let p = self.cfg.patch_size;
        let (gh, gw) = (h / p, w / p);
        // A stride-p convolution ignores the pixels past the last whole patch.
        let patches = pixels
            .to_dtype(self.patch_weight.dtype())?
            .narrow(2, 0, gh * p)?
            .narrow(3, 0, gw * p)?
            .reshape((n, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n, gh * gw, c * p * p))?;
        let mut xs = patches
            .broadcast_matmul(&self.patch_weight)?
            .broadcast_add(&self.patch_bias)?
            .broadcast_add(&self.position_embedding)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        Ok(xs)
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// The patch matmul must equal the stride-p convolution it replaces, also when the tile
    /// is not a multiple of the patch (so400m: 384 px, 14 px patches).
    #[test]
    fn patch_matmul_equals_conv() -> anyhow::Result<()> {
        for s in [8, 10] {
            patch_matmul_equals_conv_at(s)?;
        }
        Ok(())
    }

    fn patch_matmul_equals_conv_at(s: usize) -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (d, c, p) = (5, 3, 4);
        let w = Tensor::randn(0f32, 1.0, (d, c, p, p), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, c, s, s), &dev)?;
        let conv = x.conv2d(&w, 0, p, 1, 1)?; // [2, d, 2, 2]
        let conv = conv.flatten_from(2)?.transpose(1, 2)?;
        let wm = w.reshape((d, c * p * p))?.t()?;
        let patches = x
            .narrow(2, 0, (s / p) * p)?
            .narrow(3, 0, (s / p) * p)?
            .reshape((2, c, s / p, p, s / p, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((2, (s / p) * (s / p), c * p * p))?;
        let mm = patches.broadcast_matmul(&wm)?;
        let diff = (conv - mm)?
            .abs()?
            .max_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
