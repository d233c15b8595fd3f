//! LayerNorm over the last dimension, with a backward pass for the input, weight and bias.
//!
//! x̂ = (x − mean(x)) · r with r = 1 / sqrt(var(x) + eps), y = x̂ · w + b, per row. With
//! g = dL/dy: dL/dx = r · (g·w − mean(g·w) − x̂ · mean(g·w·x̂)), dL/dw = Σ_rows g · x̂ and
//! dL/db = Σ_rows g.

use super::{
    check_norm_param, contiguous, for_each_row_mut, lane_sum, rows_and_dim, storage, sum_over_rows,
    with_float_element, Acc, Element,
};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};

const NAME: &str = "layer_norm";

/// LayerNorm of `x` over its last dimension with an affine `weight` and `bias` (each of
/// shape `[x.dim(-1)]`, same dtype as `x`). The variance is the biased one (divides by the
/// dimension), as in PyTorch. Unlike `candle_nn::ops::layer_norm`, gradients flow to all
/// three inputs.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    check_norm_param(NAME, "weight", weight, x)?;
    check_norm_param(NAME, "bias", bias, x)?;
    let x = x.contiguous()?;
    let weight = weight.contiguous()?;
    let bias = bias.contiguous()?;
    Ok(x.apply_op3(&weight, &bias, LayerNorm { eps })?)
}

/// The row's mean and 1 / sqrt(var + eps). Two passes: subtracting the mean before squaring
/// keeps the variance accurate when the mean is large against the spread.
fn mean_and_inv_std<T: Element>(row: &[T], eps: T::Acc) -> (T::Acc, T::Acc) {
    let n = T::Acc::from_usize(row.len());
    let mean = lane_sum(row.len(), |i| row[i].to_acc()) / n;
    let sum_sq = lane_sum(row.len(), |i| {
        let d = row[i].to_acc() - mean;
        d * d
    });
    (mean, T::Acc::ONE / (sum_sq / n + eps).sqrt())
}

fn forward<T: Element>(x: &[T], w: &[T], b: &[T], dim: usize, eps: f64) -> Vec<T> {
    let eps = T::Acc::cast_f64(eps);
    let mut y = vec![T::zero(); x.len()];
    for_each_row_mut(&mut y, dim, dim, |row, y| {
        let x = &x[row * dim..(row + 1) * dim];
        let (mean, r) = mean_and_inv_std(x, eps);
        for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(w).zip(b) {
            *y = T::from_acc((x.to_acc() - mean) * r * w.to_acc() + b.to_acc());
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
        let (mean, r) = mean_and_inv_std(x, eps);
        let sum_gw = lane_sum(dim, |i| g[i].to_acc() * w[i].to_acc());
        let sum_gw_xhat = lane_sum(dim, |i| {
            g[i].to_acc() * w[i].to_acc() * (x[i].to_acc() - mean) * r
        });
        let mean_gw = sum_gw * inv_dim;
        let mean_gw_xhat = sum_gw_xhat * inv_dim;
        for (((dx, &g), &w), &x) in dx.iter_mut().zip(g).zip(w).zip(x) {
            let xhat = (x.to_acc() - mean) * r;
            let gw = g.to_acc() * w.to_acc();
            *dx = T::from_acc(r * (gw - mean_gw - xhat * mean_gw_xhat));
        }
    });
    dx
}

/// `[2, dim]`: dL/dweight in row 0, dL/dbias in row 1.
fn grad_params<T: Element>(x: &[T], g: &[T], n_rows: usize, dim: usize, eps: f64) -> Vec<T> {
    let eps = T::Acc::cast_f64(eps);
    let sums = sum_over_rows(n_rows, 2 * dim, |row, acc| {
        let x = &x[row * dim..(row + 1) * dim];
        let g = &g[row * dim..(row + 1) * dim];
        let (mean, r) = mean_and_inv_std(x, eps);
        let (dw, db) = acc.split_at_mut(dim);
        for (((dw, db), &g), &x) in dw.iter_mut().zip(db).zip(g).zip(x) {
            let g = g.to_acc();
            *dw += g * (x.to_acc() - mean) * r;
            *db += g;
        }
    });
    sums.into_iter().map(T::from_acc).collect()
}

/// The CUDA kernels (kernels/layer_norm.cu), launched on contiguous inputs.
#[cfg(feature = "cuda")]
mod gpu {
    use super::NAME;
    use crate::ops::cuda::{self, acc, alloc, kernel, launch, Float, LAYER_NORM};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::CudaDevice;

    pub(super) fn forward<T: Float>(
        dev: &CudaDevice,
        (x, w, b): (&CudaView<T>, &CudaView<T>, &CudaView<T>),
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut y = alloc::<T>(dev, rows * dim)?;
        let eps = acc::<T>(eps);
        let f = kernel::<T>(dev, &LAYER_NORM, "layer_norm_fwd")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, dim, NAME)?,
            x,
            w,
            b,
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
        let f = kernel::<T>(dev, &LAYER_NORM, "layer_norm_grad_input")?;
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

    /// `[2, dim]` (dL/dw, dL/db): per-row (mean, r), then sums per block of rows, then the
    /// blocks' in-order total.
    pub(super) fn grad_params<T: Float>(
        dev: &CudaDevice,
        x: &CudaView<T>,
        g: &CudaView<T>,
        rows: usize,
        dim: usize,
        eps: f64,
    ) -> candle_core::Result<CudaSlice<T>> {
        let width = 2 * dim;
        if rows == 0 {
            return dev.alloc_zeros::<T>(width);
        }
        let eps = acc::<T>(eps);
        let mut stats = alloc::<T::Acc>(dev, 2 * rows)?;
        let f = kernel::<T>(dev, &LAYER_NORM, "layer_norm_row_stats")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, dim, NAME)?,
            x,
            &mut stats,
            &dim,
            &eps
        )?;
        let (cfg, n_partials) = cuda::per_partial(rows, dim, NAME)?;
        let mut partials = alloc::<T::Acc>(dev, n_partials * width)?;
        let f = kernel::<T>(dev, &LAYER_NORM, "layer_norm_grad_params_partials")?;
        launch!(dev, f, cfg, x, g, &stats, &mut partials, &rows, &dim)?;
        let mut params = alloc::<T>(dev, width)?;
        let f = kernel::<T>(dev, &LAYER_NORM, "layer_norm_sum_partials")?;
        launch!(
            dev,
            f,
            cuda::per_column(width),
            &partials,
            &n_partials,
            &width,
            &mut params
        )?;
        Ok(params)
    }
}

struct LayerNorm {
    eps: f64,
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "unireward-layer-norm"
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
            let b = contiguous::<T>(s3, l3, NAME)?;
            Ok((storage(forward(x, w, b, dim, self.eps)), l1.shape().clone()))
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
            let b = input::<T>(s3, l3, NAME)?;
            let y = gpu::forward(dev, (&x, &w, &b), rows, dim, self.eps)?;
            Ok((output(y, dev), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let eps = self.eps;
        let dx = if x.track_op() {
            Some(x.apply_op3_no_bwd(weight, &grad, &LayerNormGradInput { eps })?)
        } else {
            None
        };
        // Weight and bias gradients come out of one pass over the rows.
        let (dw, db) = if weight.track_op() || bias.track_op() {
            let params = x.apply_op2_no_bwd(&grad, &LayerNormGradParams { eps })?;
            let dw = weight.track_op().then(|| params.get(0)).transpose()?;
            let db = bias.track_op().then(|| params.get(1)).transpose()?;
            (dw, db)
        } else {
            (None, None)
        };
        Ok((dx, dw, db))
    }
}

/// dL/dx from (x, weight, dL/dy).
struct LayerNormGradInput {
    eps: f64,
}

impl CustomOp3 for LayerNormGradInput {
    fn name(&self) -> &'static str {
        "unireward-layer-norm-grad-input"
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

/// dL/dweight and dL/dbias, stacked as `[2, dim]`, from (x, dL/dy).
struct LayerNormGradParams {
    eps: f64,
}

impl CustomOp2 for LayerNormGradParams {
    fn name(&self) -> &'static str {
        "unireward-layer-norm-grad-params"
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
            let params = grad_params(x, g, n_rows, dim, self.eps);
            Ok((storage(params), Shape::from_dims(&[2, dim])))
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
            let params = gpu::grad_params(dev, &x, &g, n_rows, dim, self.eps)?;
            Ok((output(params, dev), Shape::from_dims(&[2, dim])))
        })
    }
}
