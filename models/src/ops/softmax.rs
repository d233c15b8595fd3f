//! Softmax over the last dimension, with a backward pass.
//!
//! y = exp(x − max x) / Σ exp(x − max x), per row. With g = dL/dy:
//! dL/dx = y · (g − Σ g·y).

use super::{
    contiguous, for_each_row_mut, lane_sum, row_max, rows_and_dim, storage, with_float_element,
    Acc, Element,
};
use crate::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

const NAME: &str = "softmax_last_dim";

/// Softmax of `x` over its last dimension. Unlike `candle_nn::ops::softmax_last_dim`,
/// gradients flow to `x`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(SoftmaxLastDim)?)
}

/// Causal softmax of attention scores [.., T, past + T]: query i (the row's index modulo
/// T) sees keys 0 ..= past + i, the rest get probability 0. Folding the mask into the softmax
/// saves adding a [.., T, past + T] mask tensor; the backward is the plain softmax's, since
/// masked entries have y = 0.
pub fn causal_softmax_last_dim(x: &Tensor, past: usize) -> Result<Tensor> {
    let dims = x.dims();
    let (t, s) = match dims {
        [.., t, s] => (*t, *s),
        _ => {
            return Err(crate::Error::Input(format!(
                "causal softmax wants [.., queries, keys] scores, got {dims:?}"
            )))
        }
    };
    if s != past + t {
        return Err(crate::Error::Input(format!(
            "causal softmax: {s} keys for {t} queries after {past} cached"
        )));
    }
    Ok(x.contiguous()?
        .apply_op1(CausalSoftmax { past, queries: t })?)
}

fn forward<T: Element>(x: &[T], dim: usize) -> Vec<T> {
    forward_limited(x, dim, |_| dim)
}

/// Softmax over the first `limit(row)` entries of each row; the others are 0.
fn forward_limited<T: Element>(
    x: &[T],
    dim: usize,
    limit: impl Fn(usize) -> usize + Sync + Send,
) -> Vec<T> {
    let mut y = vec![T::zero(); x.len()];
    for_each_row_mut(&mut y, dim, dim, |row, y| {
        let n = limit(row).min(dim);
        let x = &x[row * dim..row * dim + n];
        let y = &mut y[..n];
        let dim = n;
        let max = row_max(x);
        // The unnormalised exponentials go straight into the output and are scaled in
        // place: one exp per element, no scratch row. A plain map, so that it vectorises.
        for (y, &x) in y.iter_mut().zip(x) {
            *y = T::from_acc((x.to_acc() - max).exp());
        }
        let sum = lane_sum(dim, |i| y[i].to_acc());
        let inv_sum = T::Acc::ONE / sum;
        for y in y.iter_mut() {
            *y = T::from_acc(y.to_acc() * inv_sum);
        }
    });
    y
}

fn grad_input<T: Element>(y: &[T], g: &[T], dim: usize) -> Vec<T> {
    let mut dx = vec![T::zero(); y.len()];
    for_each_row_mut(&mut dx, dim, 2 * dim, |row, dx| {
        let y = &y[row * dim..(row + 1) * dim];
        let g = &g[row * dim..(row + 1) * dim];
        let gy = lane_sum(dim, |i| g[i].to_acc() * y[i].to_acc());
        for ((dx, &g), &y) in dx.iter_mut().zip(g).zip(y) {
            *dx = T::from_acc(y.to_acc() * (g.to_acc() - gy));
        }
    });
    dx
}

/// The CUDA kernels (kernels/softmax.cu), launched on contiguous inputs.
#[cfg(feature = "cuda")]
mod gpu {
    use super::NAME;
    use crate::ops::cuda::{self, alloc, kernel, launch, Float, SOFTMAX};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::CudaDevice;

    pub(super) fn forward<T: Float>(
        dev: &CudaDevice,
        x: &CudaView<T>,
        rows: usize,
        dim: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut y = alloc::<T>(dev, rows * dim)?;
        let f = kernel::<T>(dev, &SOFTMAX, "softmax_fwd")?;
        launch!(dev, f, cuda::per_row(rows, dim, NAME)?, x, &mut y, &dim)?;
        Ok(y)
    }

    pub(super) fn causal_forward<T: Float>(
        dev: &CudaDevice,
        x: &CudaView<T>,
        rows: usize,
        dim: usize,
        (past, queries): (usize, usize),
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut y = alloc::<T>(dev, rows * dim)?;
        let f = kernel::<T>(dev, &SOFTMAX, "causal_softmax_fwd")?;
        let cfg = cuda::per_row(rows, dim, NAME)?;
        launch!(dev, f, cfg, x, &mut y, &dim, &past, &queries)?;
        Ok(y)
    }

    pub(super) fn grad_input<T: Float>(
        dev: &CudaDevice,
        y: &CudaView<T>,
        g: &CudaView<T>,
        rows: usize,
        dim: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut dx = alloc::<T>(dev, rows * dim)?;
        let f = kernel::<T>(dev, &SOFTMAX, "softmax_grad")?;
        launch!(dev, f, cuda::per_row(rows, dim, NAME)?, y, g, &mut dx, &dim)?;
        Ok(dx)
    }
}

struct SoftmaxLastDim;

struct CausalSoftmax {
    past: usize,
    queries: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "unireward-causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, dim) = rows_and_dim(l.dims(), NAME)?;
        let (past, t) = (self.past, self.queries);
        with_float_element!(s, NAME, |T| {
            let x = contiguous::<T>(s, l, NAME)?;
            let y = forward_limited(x, dim, |row| past + row % t + 1);
            Ok((storage(y), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cuda::{input, output};
        let (rows, dim) = rows_and_dim(l.dims(), NAME)?;
        let dev = &s.device;
        with_float_element!(s, NAME, |T| {
            let x = input::<T>(s, l, NAME)?;
            let y = gpu::causal_forward(dev, &x, rows, dim, (self.past, self.queries))?;
            Ok((output(y, dev), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "unireward-softmax-last-dim"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, dim) = rows_and_dim(l.dims(), NAME)?;
        with_float_element!(s, NAME, |T| {
            let x = contiguous::<T>(s, l, NAME)?;
            Ok((storage(forward(x, dim)), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cuda::{input, output};
        let (rows, dim) = rows_and_dim(l.dims(), NAME)?;
        let dev = &s.device;
        with_float_element!(s, NAME, |T| {
            let x = input::<T>(s, l, NAME)?;
            let y = gpu::forward(dev, &x, rows, dim)?;
            Ok((output(y, dev), l.shape().clone()))
        })
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(res.apply_op2_no_bwd(&grad, &SoftmaxGrad)?))
    }
}

/// dL/dx from (y, dL/dy).
struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "unireward-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, dim) = rows_and_dim(l1.dims(), NAME)?;
        with_float_element!(s1, NAME, |T| {
            let y = contiguous::<T>(s1, l1, NAME)?;
            let g = contiguous::<T>(s2, l2, NAME)?;
            Ok((storage(grad_input(y, g, dim)), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cuda::{input, output};
        let (rows, dim) = rows_and_dim(l1.dims(), NAME)?;
        let dev = &s1.device;
        with_float_element!(s1, NAME, |T| {
            let y = input::<T>(s1, l1, NAME)?;
            let g = input::<T>(s2, l2, NAME)?;
            let dx = gpu::grad_input(dev, &y, &g, rows, dim)?;
            Ok((output(dx, dev), l1.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// The causal softmax equals the plain one on scores with −∞ above the diagonal, in
    /// value and gradient.
    #[test]
    fn causal_equals_masked_plain_softmax() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let (t, past) = (4, 3);
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, t, past + t), &dev)?)?;
        let mask: Vec<f64> = (0..t)
            .flat_map(|i| {
                (0..past + t).map(move |j| {
                    if j <= past + i {
                        0.0
                    } else {
                        f64::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, 1, t, past + t), &dev)?;
        let w = Tensor::randn(0f64, 1.0, (2, 3, t, past + t), &dev)?;
        let a = causal_softmax_last_dim(x.as_tensor(), past)?;
        let b = softmax_last_dim(&x.as_tensor().broadcast_add(&mask)?)?;
        let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        let ga = (&a * &w)?.sum_all()?.backward()?;
        let gb = (&b * &w)?.sum_all()?.backward()?;
        let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
        let gdiff = (ga - gb)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(gdiff < 1e-12, "{gdiff}");
        let rows = a.sum(D::Minus1)?.flatten_all()?.to_vec1::<f64>()?;
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-12));
        Ok(())
    }
}
