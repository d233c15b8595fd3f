//! The convolutions of the UNet and the VAE, read from a checkpoint under diffusers' names
//! (`weight` [out, in, k, k], `bias` [out]).
//!
//! On the CPU (f32, f64) a convolution is ours, forward and backward: the input unfolded
//! into its patches (im2col, a row per channel and kernel position, each a run of input
//! rows), the flattened kernel times them, a gemm per image written straight into the
//! output; the kernel's gradient a gemm per image accumulated in place; the input's gradient
//! a gemm per image folded back onto the pixels (col2im). candle 0.11's CPU convolution
//! runs a gemm per image and 512-pixel tile, each asking the thread count anew (which reads
//! /proc/cpuinfo unless RAYON_NUM_THREADS is set), and its backward is two more convolutions
//! (the kernel's gradient one "image" per input channel), each added into zeros by the
//! autograd. Measured: 40 `trainer denoise` steps of 16 images on the demo generator's UNet
//! (16x16 latents, blocks 32/64) took 24.7 / 24.9 / 24.5 s with candle's convolution and
//! 18.1 / 18.5 / 17.2 s with this one, runs interleaved (this machine, Dec 3 2026;
//! benches/RESULTS.md). On other devices and dtypes the convolution is candle's.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor, WithDType};
use candle_nn::VarBuilder;
use gemm::Parallelism;

use crate::ops::{contiguous, for_each_row_mut, storage};

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

impl Conv2d {
    /// The convolution without its bias.
    fn convolve(&self, xs: &Tensor) -> Result<Tensor> {
        let (p, s) = (self.padding, self.stride);
        let ours = xs.device().is_cpu() && matches!(xs.dtype(), DType::F32 | DType::F64);
        if !ours {
            return xs.conv2d(&self.weight, p, s, 1, 1);
        }
        let (b, c, h, w) = xs.dims4()?;
        let (c_out, c_in, k, k_w) = self.weight.dims4()?;
        if c != c_in || k != k_w {
            candle_core::bail!(
                "conv2d: input {:?} against kernel {:?}",
                xs.dims(),
                self.weight.dims()
            );
        }
        let geometry = Geometry::new(b, c, (h, w), c_out, k, s, p)?;
        xs.contiguous()?
            .apply_op2(&self.weight.contiguous()?, ConvForward(geometry))
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.convolve(xs)?
            .broadcast_add(&self.bias.reshape((1, (), 1, 1))?)
    }
}

/// A convolution's sizes: `b` images of `c` channels, `h` x `w`, to `c_out` channels through
/// a `k` x `k` kernel.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    b: usize,
    c: usize,
    h: usize,
    w: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
}

impl Geometry {
    fn new(
        b: usize,
        c: usize,
        (h, w): (usize, usize),
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        if stride == 0 || k == 0 || h + 2 * padding < k || w + 2 * padding < k {
            candle_core::bail!(
                "conv2d: a {h}x{w} map padded by {padding} is smaller than its {k}x{k} kernel \
                 (stride {stride})"
            );
        }
        Ok(Self {
            b,
            c,
            h,
            w,
            c_out,
            k,
            stride,
            padding,
            out_h: (h + 2 * padding - k) / stride + 1,
            out_w: (w + 2 * padding - k) / stride + 1,
        })
    }

    /// A patch's length: c · k · k, the kernel's row.
    fn patch(&self) -> usize {
        self.c * self.k * self.k
    }

    fn pixels(&self) -> usize {
        self.out_h * self.out_w
    }

    /// The input row (or `None`: padding) that output row `o` reads at kernel row `i`.
    #[inline(always)]
    fn source(&self, o: usize, i: usize, n: usize) -> Option<usize> {
        (o * self.stride + i)
            .checked_sub(self.padding)
            .filter(|&x| x < n)
    }

    fn check(&self, l: &Layout, want: Shape, what: &str) -> Result<()> {
        if l.shape() != &want {
            candle_core::bail!("conv2d: {what} {:?}, expected {want:?}", l.shape());
        }
        Ok(())
    }

    fn input_shape(&self) -> Shape {
        (self.b, self.c, self.h, self.w).into()
    }

    fn kernel_shape(&self) -> Shape {
        (self.c_out, self.c, self.k, self.k).into()
    }

    fn output_shape(&self) -> Shape {
        (self.b, self.c_out, self.out_h, self.out_w).into()
    }
}

/// Multiply-adds below which one gemm runs on one thread. Splitting a gemm wakes rayon's
/// workers for each call; the demo generator's UNet (16x16 latents, blocks 32/64) does gemms
/// of about 2.4M multiply-adds per image, and `trainer sample` of 120 images there took 13.2 /
/// 14.8 s with every gemm split over 2 threads against 9.1 / 9.2 s with rayon held to one
/// thread (21% of the split run's time was the kernel waking threads; Dec 3 2026).
const SPLIT_GEMM_MACS: usize = 8 << 20;

/// Small gemms run whole on one thread (their images in parallel instead, where they are
/// independent); large ones are split over rayon's threads.
fn parallelism(macs: usize) -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        _ if macs < SPLIT_GEMM_MACS => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst = (accumulate ? dst : 0) + lhs · rhs`, each matrix given by its pointer and its
/// (row, column) strides in elements; `m` x `n` = (`m` x `k`) · (`k` x `n`).
///
/// Safety: every pointer must cover its matrix under its strides, and `dst` must not alias
/// `lhs` or `rhs`.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: (*mut T, usize, usize),
    accumulate: bool,
    lhs: (*const T, usize, usize),
    rhs: (*const T, usize, usize),
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.0,
        dst.2 as isize,
        dst.1 as isize,
        accumulate,
        lhs.0,
        lhs.2 as isize,
        lhs.1 as isize,
        rhs.0,
        rhs.2 as isize,
        rhs.1 as isize,
        T::one(),
        T::one(),
        false,
        false,
        false,
        parallelism,
    )
}

/// The output pixels `ow` whose window column `j` reads inside the input (0..w), with the
/// first such pixel's input column: a stride-`s` run.
#[inline(always)]
fn columns(g: &Geometry, j: usize) -> (std::ops::Range<usize>, usize) {
    let (s, p) = (g.stride, g.padding);
    // ow·s + j − p ∈ [0, w)  ⇔  ow ∈ [ceil((p − j) / s), ceil((w + p − j) / s)).
    let first = p.saturating_sub(j).div_ceil(s);
    let end = (g.w + p).saturating_sub(j).div_ceil(s).min(g.out_w);
    let first = first.min(end);
    (first..end, (first * s + j).saturating_sub(p))
}

/// [B, C, H, W] → [B, C·k·k, OH·OW]: row (b, c, i, j) holds, for every output pixel, the
/// input its window reads at kernel position (i, j) of channel c (the kernel [out, C, k, k]
/// flattened the same way); padding reads 0. Rows are contiguous runs of the input rows.
fn im2col<T: WithDType>(g: &Geometry, x: &[T]) -> Vec<T> {
    let (k, pixels) = (g.k, g.pixels());
    let mut dst = vec![T::zero(); g.b * g.patch() * pixels];
    for_each_row_mut(&mut dst, pixels, pixels, |row, out| {
        let (plane_index, i, j) = (row / (k * k), row / k % k, row % k);
        let plane = &x[plane_index * g.h * g.w..][..g.h * g.w];
        let (cols, x0) = columns(g, j);
        for oh in 0..g.out_h {
            let Some(y) = g.source(oh, i, g.h) else {
                continue;
            };
            let src = &plane[y * g.w..(y + 1) * g.w];
            let out_row = &mut out[oh * g.out_w..(oh + 1) * g.out_w];
            if g.stride == 1 {
                out_row[cols.clone()].copy_from_slice(&src[x0..x0 + cols.len()]);
            } else {
                for (n, ow) in cols.clone().enumerate() {
                    out_row[ow] = src[x0 + n * g.stride];
                }
            }
        }
    });
    dst
}

/// The transpose of `im2col`: each patch element added back onto the pixel it was read from.
fn col2im<T: WithDType>(g: &Geometry, cols: &[T]) -> Vec<T> {
    let (k, pixels) = (g.k, g.pixels());
    let mut dst = vec![T::zero(); g.b * g.c * g.h * g.w];
    // One task per (b, c) plane: no two tasks write the same pixel.
    for_each_row_mut(&mut dst, g.h * g.w, pixels * k * k, |plane_index, plane| {
        for i in 0..k {
            for j in 0..k {
                let row = &cols[((plane_index * k + i) * k + j) * pixels..][..pixels];
                let (range, x0) = columns(g, j);
                for oh in 0..g.out_h {
                    let Some(y) = g.source(oh, i, g.h) else {
                        continue;
                    };
                    let src = &row[oh * g.out_w..(oh + 1) * g.out_w];
                    let dst_row = &mut plane[y * g.w..(y + 1) * g.w];
                    for (n, ow) in range.clone().enumerate() {
                        dst_row[x0 + n * g.stride] += src[ow];
                    }
                }
            }
        }
    });
    dst
}

/// y[b] [C_out, OH·OW] = W [C_out, C·k·k] · patches(x[b]).
fn forward<T: WithDType>(g: &Geometry, x: &[T], kernel: &[T]) -> Vec<T> {
    let cols = im2col(g, x);
    let (pixels, patch) = (g.pixels(), g.patch());
    let mut y = vec![T::zero(); g.b * g.c_out * pixels];
    per_image(
        &mut y,
        g.c_out * pixels,
        g.c_out * pixels * patch,
        |b, y_b, par| {
            // SAFETY: y[b] is c_out x pixels and the kernel c_out x patch, cols[b] patch x
            // pixels, all row-major; the buffers are distinct.
            unsafe {
                matmul(
                    (g.c_out, pixels, patch),
                    (y_b.as_mut_ptr(), pixels, 1),
                    false,
                    (kernel.as_ptr(), patch, 1),
                    (cols[b * patch * pixels..].as_ptr(), pixels, 1),
                    par,
                )
            }
        },
    );
    y
}

/// Calls `f(b, dst[b], parallelism)` for each image's `len`-long slice of `dst`, where each
/// image is one gemm of `macs` multiply-adds: small gemms one per task across the images,
/// large ones in turn, each split over the threads.
fn per_image<T: WithDType>(
    dst: &mut [T],
    len: usize,
    macs: usize,
    f: impl Fn(usize, &mut [T], Parallelism) + Sync + Send,
) {
    match parallelism(macs) {
        Parallelism::None => for_each_row_mut(dst, len, macs, |b, d| f(b, d, Parallelism::None)),
        split => {
            for (b, d) in dst.chunks_mut(len).enumerate() {
                f(b, d, split);
            }
        }
    }
}

/// dL/dx: the patches' gradient Wᵀ · dy[b], folded back.
fn input_grad<T: WithDType>(g: &Geometry, dy: &[T], kernel: &[T]) -> Vec<T> {
    let (pixels, patch) = (g.pixels(), g.patch());
    let mut dcols = vec![T::zero(); g.b * patch * pixels];
    per_image(
        &mut dcols,
        patch * pixels,
        patch * pixels * g.c_out,
        |b, dcols_b, par| {
            // SAFETY: dcols[b] is patch x pixels, row-major; the kernel c_out x patch, read
            // transposed; dy[b] c_out x pixels.
            unsafe {
                matmul(
                    (patch, pixels, g.c_out),
                    (dcols_b.as_mut_ptr(), pixels, 1),
                    false,
                    (kernel.as_ptr(), 1, patch),
                    (dy[b * g.c_out * pixels..].as_ptr(), pixels, 1),
                    par,
                )
            }
        },
    );
    col2im(g, &dcols)
}

/// dL/dW [C_out, C·k·k] = Σ_b dy[b] · patches(x[b])ᵀ.
fn kernel_grad<T: WithDType>(g: &Geometry, x: &[T], dy: &[T]) -> Vec<T> {
    let cols = im2col(g, x);
    let (pixels, patch) = (g.pixels(), g.patch());
    let mut dw = vec![T::zero(); g.c_out * patch];
    for b in 0..g.b {
        // SAFETY: dw is c_out x patch, row-major; dy[b] c_out x pixels; cols[b] patch x
        // pixels, read transposed.
        unsafe {
            matmul(
                (g.c_out, patch, pixels),
                (dw.as_mut_ptr(), patch, 1),
                b > 0,
                (dy[b * g.c_out * pixels..].as_ptr(), pixels, 1),
                (cols[b * patch * pixels..].as_ptr(), 1, pixels),
                parallelism(g.c_out * patch * pixels),
            )
        }
    }
    dw
}

/// Runs `$body` with `$T` bound to f32 or f64, the dtypes the gemm path takes.
macro_rules! with_gemm_float {
    ($storage:expr, |$T:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            DType::F32 => {
                type $T = f32;
                $body
            }
            DType::F64 => {
                type $T = f64;
                $body
            }
            dtype => candle_core::bail!("conv2d: {dtype:?} is not f32 or f64"),
        }
    };
}

/// (x, W) → y. Its backward is `InputGrad` and `KernelGrad`.
struct ConvForward(Geometry);

/// (dy, W) → dL/dx.
struct InputGrad(Geometry);

/// (x, dy) → dL/dW.
struct KernelGrad(Geometry);

impl CustomOp2 for ConvForward {
    fn name(&self) -> &'static str {
        "unireward-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        g.check(xl, g.input_shape(), "input")?;
        g.check(wl, g.kernel_shape(), "kernel")?;
        with_gemm_float!(xs, |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let w = contiguous::<T>(ws, wl, self.name())?;
            Ok((storage(forward(g, x, w)), g.output_shape()))
        })
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((
            Some(grad.apply_op2_no_bwd(weight, &InputGrad(self.0))?),
            Some(xs.apply_op2_no_bwd(&grad, &KernelGrad(self.0))?),
        ))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "unireward-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        g.check(gl, g.output_shape(), "gradient")?;
        g.check(wl, g.kernel_shape(), "kernel")?;
        with_gemm_float!(gs, |T| {
            let dy = contiguous::<T>(gs, gl, self.name())?;
            let w = contiguous::<T>(ws, wl, self.name())?;
            Ok((storage(input_grad(g, dy, w)), g.input_shape()))
        })
    }
}

impl CustomOp2 for KernelGrad {
    fn name(&self) -> &'static str {
        "unireward-conv2d-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.0;
        g.check(xl, g.input_shape(), "input")?;
        g.check(gl, g.output_shape(), "gradient")?;
        with_gemm_float!(xs, |T| {
            let x = contiguous::<T>(xs, xl, self.name())?;
            let dy = contiguous::<T>(gs, gl, self.name())?;
            Ok((storage(kernel_grad(g, x, dy)), g.kernel_shape()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Ours against candle's convolution and its backward, in f64: the same values and
    /// gradients, on square and oblong maps, strides 1 and 2, 1x1 and 3x3 kernels, padding
    /// and none, odd sizes a stride-2 window does not cover, small gemms and split ones.
    #[test]
    fn values_and_gradients_are_candles() -> Result<()> {
        let dev = Device::Cpu;
        for (c_in, c_out, k, p, s, h, w) in [
            (3, 5, 3, 1, 1, 7, 6),
            (4, 4, 1, 0, 1, 5, 5),
            (2, 3, 3, 0, 2, 9, 7),
            (3, 2, 3, 1, 2, 8, 8),
            // 21M multiply-adds an image: over `SPLIT_GEMM_MACS`, each gemm split over the
            // threads (the cases above run one gemm per image, images in parallel).
            (64, 64, 3, 1, 1, 24, 24),
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
            assert_eq!(ours.dims(), theirs.dims());
            let d = (&ours - &theirs)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(d < 1e-12, "forward k {k} p {p} s {s}: {d}");
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

    /// col2im is im2col's transpose: <im2col(x), y> = <x, col2im(y)>.
    #[test]
    fn col2im_is_the_transpose_of_im2col() {
        let g = Geometry::new(2, 3, (7, 5), 4, 3, 2, 1).expect("geometry");
        let x: Vec<f64> = (0..g.b * g.c * g.h * g.w)
            .map(|i| ((i * 37) % 11) as f64 - 5.0)
            .collect();
        let y: Vec<f64> = (0..g.b * g.pixels() * g.patch())
            .map(|i| ((i * 13) % 7) as f64 - 3.0)
            .collect();
        let left: f64 = im2col(&g, &x).iter().zip(&y).map(|(a, b)| a * b).sum();
        let right: f64 = col2im(&g, &y).iter().zip(&x).map(|(a, b)| a * b).sum();
        assert_eq!(left, right);
    }
}
