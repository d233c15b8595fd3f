//! RMSNorm over the last dimension, with a backward pass for the input and the weight.
//!
//! y = x · r · w with r = 1 / sqrt(mean(x²) + eps), per row. With g = dL/dy:
//! dL/dx = r · g·w − x · r³ · mean(g·w·x) and dL/dw = Σ_rows g · x · r.

use super::{
    check_norm_param, contiguous, for_each_row_mut, lane_sum, rows_and_dim, storage, sum_over_rows,
    with_float_element, Acc, Element,
};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

const NAME: &str = "rms_norm";

/// RMSNorm of `x` over its last dimension, scaled by `weight` (shape `[x.dim(-1)]`, same
/// dtype as `x`). Unlike `candle_nn::ops::rms_norm`, gradients flow to `x` and `weight`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    check_norm_param(NAME, "weight", weight, x)?;
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    Ok(x.apply_op2(&weight, RmsNorm { eps })?)
}

/// 1 / sqrt(mean(row²) + eps).
fn inv_rms<T: Element>(row: &[T], eps: T::Acc) -> T::Acc {
    let sum_sq = lane_sum(row.len(), |i| {
        let v = row[i].to_acc();
        v * v
    });
    T::Acc::ONE / (sum_sq / T::Acc::from_usize(row.len()) + eps).sqrt()
}

fn forward<T: Element>(x: &[T], w: &[T], dim: usize, eps: f64) -> Vec<T> {
    let eps = T::Acc::cast_f64(eps);
    let mut y = vec![T::zero(); x.len()];
    for_each_row_mut(&mut y, dim, dim, |row, y| {
        let x = &x[row * dim..(row + 1) * dim];
        let r = inv_rms(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = T::from_acc(x.to_acc() * r * w.to_acc());
        }
    });
    y
}

fn grad_input<T: Element>(x: &[T], w: &[T], g: &[T], dim: usize, eps: f64) -> Vec<T> {
    let eps = T::Acc::cast_f64(eps);
    let inv_dim = T::Acc::ONE / T::Acc::from_usize(dim);
    let mut dx = vec![T::zero(); x.len()];
    for_each_row_mut(&mut dx, dim, 2 * dim, |row, dx| {
        let x = &x[row * dim..(row + 1) * dim];
        let g = &g[row * dim..(row + 1) * dim];
        let r = inv_rms(x, eps);
        let gwx = lane_sum(dim, |i| g[i].to_acc() * w[i].to_acc() * x[i].to_acc());
        let coef = r * r * r * gwx * inv_dim;
        for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(w).zip(x) {
            *dx = T::from_acc(r * g.to_acc() * w.to_acc() - coef * x.to_acc());
        }
    });
    dx
}

fn grad_weight<T: Element>(x: &[T], g: &[T], n_rows: usize, dim: usize, eps: f64) -> Vec<T> {
    let eps = T::Acc::cast_f64(eps);
    let dw = sum_over_rows(n_rows, dim, |row, acc| {
        let x = &x[row * dim..(row + 1) * dim];
        let g = &g[row * dim..(row + 1) * dim];
        let r = inv_rms(x, eps);
        for ((acc, &g), &x) in acc.iter_mut().zip(g).zip(x) {
            *acc += g.to_acc() * x.to_acc() * r;
        }
    });
    dw.into_iter().map(T::from_acc).collect()
}

/// The CUDA kernels (kernels/rms_norm.cu), launched on contiguous inputs.
#[cfg(feature = "cuda")]
mod gpu {
    use super::NAME;
    use crate::ops::cuda::{self, acc, alloc, kernel, launch, Float, RMS_NORM};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::CudaDevice;

    pub(super) fn forward<T: Float>(
        dev: &CudaDevice,
        x: &CudaView<T>,
        w: &CudaView<T>,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut y = alloc::<T>(dev, rows * dim)?;
        let eps = acc::<T>(eps);
        let f = kernel::<T>(dev, &RMS_NORM, "rms_norm_fwd")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, dim, NAME)?,
            x,
            w,
            &mut y,
            &dim,
            &eps
        )?;
        Ok(y)
    }

    pub(super) fn grad_input<T: Float>(
        dev: &CudaDevice,
        (x, w, g): (&CudaView<T>, &CudaView<T>, &CudaView<T>),
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut dx = alloc::<T>(dev, rows * dim)?;
        let eps = acc::<T>(eps);
        let f = kernel::<T>(dev, &RMS_NORM, "rms_norm_grad_input")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, dim, NAME)?,
            x,
            w,
            g,
            &mut dx,
            &dim,
            &eps
        )?;
        Ok(dx)
    }

    /// Per-row factors r, then Σ g·x·r per block of rows, then the blocks' in-order total.
    pub(super) fn grad_weight<T: Float>(
        dev: &CudaDevice,
        x: &CudaView<T>,
        g: &CudaView<T>,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> candle_core::Result<CudaSlice<T>> {
        if rows == 0 {
            return dev.alloc_zeros::<T>(dim);
        }
        let eps = acc::<T>(eps);
        let mut r = alloc::<T::Acc>(dev, rows)?;
        let f = kernel::<T>(dev, &RMS_NORM, "rms_norm_row_factors")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, dim, NAME)?,
            x,
            &mut r,
            &dim,
            &eps
        )?;
        let (cfg, n_partials) = cuda::per_partial(rows, dim, NAME)?;
        let mut partials = alloc::<T::Acc>(dev, n_partials * dim)?;
        let f = kernel::<T>(dev, &RMS_NORM, "rms_norm_grad_weight_partials")?;
        launch!(dev, f, cfg, x, g, &r, &mut partials, &rows, &dim)?;
        let mut dw = alloc::<T>(dev, dim)?;
        let f = kernel::<T>(dev, &RMS_NORM, "rms_norm_sum_partials")?;
        launch!(
            dev,
            f,
            cuda::per_column(dim),
            &partials,
            &n_partials,
            &dim,
            &mut dw
        )?;
        Ok(dw)
    }
}

struct RmsNorm {
    eps: f64,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "unireward-rms-norm"
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
            let x = contiguous::<T>(s1, l1, NAME)?;
            let w = contiguous::<T>(s2, l2, NAME)?;
            Ok((storage(forward(x, w, dim, self.eps)), l1.shape().clone()))
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
            let x = input::<T>(s1, l1, NAME)?;
            let w = input::<T>(s2, l2, NAME)?;
            let y = gpu::forward(dev, &x, &w, rows, dim, self.eps)?;
            Ok((output(y, dev), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let eps = self.eps;
        // A frozen weight (or input) needs no gradient: skip its pass over the rows.
        let dx = if x.track_op() {
            Some(x.apply_op3_no_bwd(weight, &grad, &RmsNormGradInput { eps })?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &RmsNormGradWeight { eps })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// dL/dx from (x, weight, dL/dy).
struct RmsNormGradInput {
    eps: f64,
}

impl CustomOp3 for RmsNormGradInput {
    fn name(&self) -> &'static str {
        "unireward-rms-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, dim) = rows_and_dim(l1.dims(), NAME)?;
        with_float_element!(s1, NAME, |T| {
            let x = contiguous::<T>(s1, l1, NAME)?;
            let w = contiguous::<T>(s2, l2, NAME)?;
            let g = contiguous::<T>(s3, l3, NAME)?;
            let dx = grad_input(x, w, g, dim, self.eps);
            Ok((storage(dx), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cuda::{input, output};
        let (rows, dim) = rows_and_dim(l1.dims(), NAME)?;
        let dev = &s1.device;
        with_float_element!(s1, NAME, |T| {
            let x = input::<T>(s1, l1, NAME)?;
            let w = input::<T>(s2, l2, NAME)?;
            let g = input::<T>(s3, l3, NAME)?;
            let dx = gpu::grad_input(dev, (&x, &w, &g), rows, dim, self.eps)?;
            Ok((output(dx, dev), l1.shape().clone()))
        })
    }
}

/// dL/dweight from (x, dL/dy).
struct RmsNormGradWeight {
    eps: f64,
}

impl CustomOp2 for RmsNormGradWeight {
    fn name(&self) -> &'static str {
        "unireward-rms-norm-grad-weight"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n_rows, dim) = rows_and_dim(l1.dims(), NAME)?;
        with_float_element!(s1, NAME, |T| {
            let x = contiguous::<T>(s1, l1, NAME)?;
            let g = contiguous::<T>(s2, l2, NAME)?;
            let dw = grad_weight(x, g, n_rows, dim, self.eps);
            Ok((storage(dw), Shape::from_dims(&[dim])))
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
        let (n_rows, dim) = rows_and_dim(l1.dims(), NAME)?;
        let dev = &s1.device;
        with_float_element!(s1, NAME, |T| {
            let x = input::<T>(s1, l1, NAME)?;
            let g = input::<T>(s2, l2, NAME)?;
            let dw = gpu::grad_weight(dev, &x, &g, n_rows, dim, self.eps)?;
            Ok((output(dw, dev), Shape::from_dims(&[dim])))
        })
    }
}
