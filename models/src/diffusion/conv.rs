//! The convolutions of the UNet and the VAE, read from a checkpoint under diffusers' names
//! (`weight` [out, in, k, k], `bias` [out]).
//!
//! The forward is candle's `conv2d`. On the CPU its backward is ours: candle computes the
//! input's gradient with `conv_transpose2d`, whose CPU kernel is a dot product per output
//! element, 3.3x the time of the same product as a convolution (im2col + gemm) at the UNet's
//! sizes (2 x 128 x 32 x 32, 3x3: 77.8 ms against 23.3 ms; 2 x 512 x 8 x 8: 57.4 against
//! 26.3 ms; this machine, Dec 3 2026). For a stride-1 convolution that gradient is the
//! convolution of the output's gradient with the kernel flipped and its channels swapped,
//! padded by k − 1 − p. At the level of a whole Diffusion-DPO step (`bench-diffusion-dpo-step`,
//! 142M-parameter UNet) the gain was within the noise: 10.8 s against 11.5 s median, minima
//! 10.5 and 10.1 s (same binary, candle's backward picked by a switch since removed).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

/// A 2-D convolution with a bias, square kernel, no dilation or groups.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    stride: usize,
}

pub fn conv2d(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    Ok(Conv2d {
        weight: vb.get((c_out, c_in, kernel, kernel), "weight")?,
        bias: vb.get(c_out, "bias")?,
        padding,
        stride,
    })
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (p, s) = (self.padding, self.stride);
        let tracked = xs.track_op() || self.weight.track_op();
        let ys = if tracked && xs.device().is_cpu() {
            let computed = xs.detach().conv2d(&self.weight.detach(), p, s, 1, 1)?;
            xs.apply_op2(
                &self.weight,
                ConvGrad {
                    computed: Mutex::new(Some(computed)),
                    padding: p,
                    stride: s,
                },
            )?
        } else {
            xs.conv2d(&self.weight, p, s, 1, 1)?
        };
        ys.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// `conv2d(x, w)` with our backward: the forward's result, computed by candle beforehand, is
/// handed over once (the graph keeps the op, and must not keep a second copy of every
/// convolution's output).
struct ConvGrad {
    computed: Mutex<Option<Tensor>>,
    padding: usize,
    stride: usize,
}

impl CustomOp2 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-with-gemm-input-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let ys = self
            .computed
            .lock()
            .map_err(|_| candle_core::Error::Msg("conv2d: a poisoned lock".into()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("conv2d: the result was taken".into()))?;
        let shape = ys.shape().clone();
        let flat = ys.flatten_all()?;
        let storage = match ys.dtype() {
            DType::F32 => CpuStorage::F32(flat.to_vec1()?),
            DType::F64 => CpuStorage::F64(flat.to_vec1()?),
            DType::BF16 => CpuStorage::BF16(flat.to_vec1()?),
            DType::F16 => CpuStorage::F16(flat.to_vec1()?),
            other => candle_core::bail!("conv2d: {other:?} is not a float type"),
        };
        Ok((storage, shape))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (p, s) = (self.padding, self.stride);
        let (_, _, k, _) = weight.dims4()?;
        let grad_x = if s == 1 && p < k {
            let flipped = weight.flip(&[2, 3])?.transpose(0, 1)?.contiguous()?;
            grad.conv2d(&flipped, k - 1 - p, 1, 1, 1)?
        } else {
            // As candle's backward does it.
            let out = (grad.dim(2)? - 1) * s + k - 2 * p;
            grad.conv_transpose2d(weight, p, xs.dim(2)? - out, s, 1)?
        };
        // candle's kernel gradient: the input against the output's gradient, batch and
        // channels swapped (the stride becomes the dilation).
        let grad_w = xs
            .transpose(0, 1)?
            .conv2d(&grad.transpose(0, 1)?, p, 1, s, 1)?
            .transpose(0, 1)?;
        let (_, _, gk0, gk1) = grad_w.dims4()?;
        let grad_w = if gk0 != k || gk1 != k {
            grad_w.narrow(2, 0, k)?.narrow(3, 0, k)?
        } else {
            grad_w
        };
        Ok((Some(grad_x), Some(grad_w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Our backward against candle's own (its `conv_transpose2d`), in f64: the same gradients.
    #[test]
    fn gradients_are_candles() -> Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, k, p, s, h, w) in [
            (3, 5, 3, 1, 1, 7, 6),
            (4, 4, 1, 0, 1, 5, 5),
            (2, 3, 3, 0, 2, 9, 7),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, c_in, h, w), &dev)?)?;
            let wt = Var::from_tensor(&Tensor::randn(0f64, 0.3, (c_out, c_in, k, k), &dev)?)?;
            let bias = Tensor::randn(0f64, 0.1, c_out, &dev)?;
            let conv = Conv2d {
                weight: wt.as_tensor().clone(),
                bias: bias.clone(),
                padding: p,
                stride: s,
            };
            let ours = conv.forward(x.as_tensor())?;
            let theirs = x
                .as_tensor()
                .conv2d(wt.as_tensor(), p, s, 1, 1)?
                .broadcast_add(&bias.reshape((1, (), 1, 1))?)?;
            let d = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert_eq!(d, 0.0, "forward");
            let probe = Tensor::randn(0f64, 1.0, ours.shape(), &dev)?;
            let (g1, g2) = (
                (ours * &probe)?.sum_all()?.backward()?,
                (theirs * &probe)?.sum_all()?.backward()?,
            );
            for v in [&x, &wt] {
                let a = g1.get(v.as_tensor()).expect("our gradient");
                let b = g2.get(v.as_tensor()).expect("candle's gradient");
                let d = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(d < 1e-12, "k {k} p {p} s {s}: {d}");
            }
        }
        Ok(())
    }
}
