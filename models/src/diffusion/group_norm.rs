//! GroupNorm as a composition of differentiable tensor ops: candle's fused kernels record no
//! backward, and the UNet and VAE normalise before every convolution and attention block.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// `torch.nn.GroupNorm(num_groups, channels, eps, affine=True)` over [B, C, ...].
#[derive(Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(vb: VarBuilder, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!(
                "{}: {channels} channels do not split into {groups} groups",
                vb.prefix()
            );
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?,
            bias: vb.get(channels, "bias")?,
            groups,
            eps,
        })
    }
}

impl Module for GroupNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        if dims.len() < 3 || dims[1] != self.weight.dim(0)? {
            candle_core::bail!(
                "group norm over {} channels got input {:?}",
                self.weight.dim(0)?,
                dims
            );
        }
        let dtype = xs.dtype();
        // Statistics in f32 for half inputs, as torch's CPU and CUDA kernels keep them.
        let work = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let per_group: usize = dims[1..].iter().product::<usize>() / self.groups;
        let x = xs
            .to_dtype(work)?
            .reshape((dims[0], self.groups, per_group))?;
        let mean = (x.sum_keepdim(2)? / per_group as f64)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(2)? / per_group as f64)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        let mut affine = vec![1usize; dims.len()];
        affine[1] = dims[1];
        normed
            .reshape(dims.as_slice())?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight.reshape(affine.as_slice())?)?
            .broadcast_add(&self.bias.reshape(affine.as_slice())?)
    }
}
