//! Ops that training needs and candle lacks.
//!
//! candle's fused `candle_nn::ops::{rms_norm, layer_norm, softmax_last_dim}` are applied
//! without a backward pass, so a gradient silently stops at them. The ops here are candle
//! `CustomOp`s with a `cpu_fwd` and a `bwd`, so they run fused and still backpropagate.
//! `log_softmax_gather` gives log p(label) per row without materialising the [tokens, vocab]
//! log-softmax, which at a 152k vocabulary is gigabytes.
//!
//! All ops take f32, f64, bf16 and f16. Half types are read and written as such but
//! accumulated in f32, f32 in f32, f64 in f64. Inputs of any layout are accepted (strided
//! ones are made contiguous first, which backpropagates like any copy). With the `cuda`
//! feature every op (forward and backward) also has a CUDA kernel, in `kernels/*.cu` (one
//! file per op family, compiled to PTX by build.rs; launched through `cuda.rs`), with the
//! same accumulation types, so the same model code runs on `Device::Cuda`.
//!
//! This file holds the plumbing the kernels share: the element and accumulator types,
//! access to contiguous storage, and the row-parallel loops.

mod activation;
#[cfg(feature = "cuda")]
mod cuda;
mod exp;
mod layer_norm;
mod log_softmax_gather;
mod rms_norm;
mod softmax;

pub use activation::{gelu_tanh, swiglu};
pub use layer_norm::layer_norm;
pub use log_softmax_gather::{log_softmax_gather, IGNORE_INDEX};
pub use rms_norm::rms_norm;
pub use softmax::{causal_softmax_last_dim, softmax_last_dim};

use candle_core::{CpuStorage, Layout, WithDType};
use half::{bf16, f16};
use rayon::prelude::*;

/// The arithmetic the kernels accumulate in (f32 or f64).
pub(crate) trait Acc: WithDType {
    const ZERO: Self;
    const ONE: Self;
    const NEG_INFINITY: Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn from_usize(n: usize) -> Self;
    fn cast_f64(v: f64) -> Self;
}

macro_rules! impl_acc {
    ($t:ty, $exp:path) => {
        impl Acc for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            #[inline(always)]
            fn exp(self) -> Self {
                $exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn from_usize(n: usize) -> Self {
                n as $t
            }
            fn cast_f64(v: f64) -> Self {
                v as $t
            }
        }
    };
}
impl_acc!(f32, exp::exp_f32);
impl_acc!(f64, f64::exp);

/// A stored element type and the type it is accumulated in.
pub(crate) trait Element: WithDType {
    type Acc: Acc;
    fn to_acc(self) -> Self::Acc;
    fn from_acc(a: Self::Acc) -> Self;
}

impl Element for f32 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self
    }
    fn from_acc(a: f32) -> Self {
        a
    }
}

impl Element for f64 {
    type Acc = f64;
    fn to_acc(self) -> f64 {
        self
    }
    fn from_acc(a: f64) -> Self {
        a
    }
}

impl Element for bf16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    fn from_acc(a: f32) -> Self {
        bf16::from_f32(a)
    }
}

impl Element for f16 {
    type Acc = f32;
    fn to_acc(self) -> f32 {
        self.to_f32()
    }
    fn from_acc(a: f32) -> Self {
        f16::from_f32(a)
    }
}

/// Runs `$body` with `$T` bound to the element type of `$storage`, for the float dtypes the
/// ops support; any other dtype is an error naming `$op`. `$body` should only call generic
/// functions: trait methods on the concrete `$T` would need their traits imported.
macro_rules! with_float_element {
    ($storage:expr, $op:expr, |$T:ident| $body:expr) => {
        match candle_core::backend::BackendStorage::dtype($storage) {
            candle_core::DType::F32 => {
                type $T = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $T = f64;
                $body
            }
            candle_core::DType::BF16 => {
                type $T = half::bf16;
                $body
            }
            candle_core::DType::F16 => {
                type $T = half::f16;
                $body
            }
            dtype => candle_core::bail!("{}: unsupported dtype {:?}", $op, dtype),
        }
    };
}
pub(crate) use with_float_element;

/// The elements of `storage` that a contiguous `layout` covers, as `T`. The public
/// functions make their inputs contiguous, so a strided layout here is a bug in this
/// module, reported rather than silently misread.
pub(crate) fn contiguous<'a, T: WithDType>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous input, got {layout:?}"),
    }
}

/// A kernel's output as storage.
pub(crate) fn storage<T: WithDType>(data: Vec<T>) -> CpuStorage {
    T::to_cpu_storage_owned(data)
}

/// Partial results a row reduction keeps side by side: they break the chain of dependent
/// additions, so the compiler can hold them in one SIMD register. (Also a little more
/// accurate than one running sum.)
const LANES: usize = 8;

/// Σ_{i<n} f(i), accumulated in `LANES` interleaved partial sums.
#[inline(always)]
pub(crate) fn lane_sum<A: Acc>(n: usize, mut f: impl FnMut(usize) -> A) -> A {
    let mut lanes = [A::ZERO; LANES];
    let full = n - n % LANES;
    for base in (0..full).step_by(LANES) {
        for (lane, acc) in lanes.iter_mut().enumerate() {
            *acc += f(base + lane);
        }
    }
    let mut total = A::ZERO;
    for acc in lanes {
        total += acc;
    }
    for i in full..n {
        total += f(i);
    }
    total
}

/// The largest element of `row` (−∞ if empty). NaNs are passed over here; they surface
/// through the exponentials the callers take next.
#[inline(always)]
pub(crate) fn row_max<T: Element>(row: &[T]) -> T::Acc {
    let mut lanes = [T::Acc::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (max, &v) in lanes.iter_mut().zip(chunk) {
            let v = v.to_acc();
            if v > *max {
                *max = v;
            }
        }
    }
    let mut max = T::Acc::NEG_INFINITY;
    for v in lanes.into_iter().chain(rest.iter().map(|&v| v.to_acc())) {
        if v > max {
            max = v;
        }
    }
    max
}

/// Elements a rayon task should cover at least, so that splitting never costs more than it
/// saves on small tensors.
const MIN_ELEMS_PER_TASK: usize = 16 * 1024;

/// Calls `f(row, dst_row)` for each `row_len`-long row of `dst`, in parallel over rows.
/// `work_per_row` is how many input elements one row reads (it sets the task size).
pub(crate) fn for_each_row_mut<U: Send>(
    dst: &mut [U],
    row_len: usize,
    work_per_row: usize,
    f: impl Fn(usize, &mut [U]) + Sync + Send,
) {
    if row_len == 0 {
        return;
    }
    let min_rows = (MIN_ELEMS_PER_TASK / work_per_row.max(1)).max(1);
    dst.par_chunks_mut(row_len)
        .with_min_len(min_rows)
        .enumerate()
        .for_each(|(row, dst_row)| f(row, dst_row));
}

/// Rows summed into one partial result. Fixed, so the summation order (and so the result)
/// does not depend on the number of threads.
const ROWS_PER_BLOCK: usize = 32;

/// Sums `f`'s per-row contributions into a `width`-long vector: `f(row, acc)` adds row
/// `row`'s contribution to `acc`. Blocks of rows run in parallel; the block sums are added
/// in order, so the result is deterministic.
pub(crate) fn sum_over_rows<A: Acc>(
    n_rows: usize,
    width: usize,
    f: impl Fn(usize, &mut [A]) + Sync + Send,
) -> Vec<A> {
    let n_blocks = n_rows.div_ceil(ROWS_PER_BLOCK);
    let partials: Vec<Vec<A>> = (0..n_blocks)
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![A::ZERO; width];
            let end = ((block + 1) * ROWS_PER_BLOCK).min(n_rows);
            for row in block * ROWS_PER_BLOCK..end {
                f(row, &mut acc);
            }
            acc
        })
        .collect();
    let mut total = vec![A::ZERO; width];
    for partial in partials {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
    total
}

/// Checks that `param` (a norm's weight or bias) is a vector as long as `x`'s last
/// dimension, of `x`'s dtype.
pub(crate) fn check_norm_param(
    op: &str,
    name: &str,
    param: &candle_core::Tensor,
    x: &candle_core::Tensor,
) -> candle_core::Result<()> {
    let dim = x.dim(candle_core::D::Minus1)?;
    if param.dims() != [dim] {
        candle_core::bail!(
            "{op}: {name} has shape {:?}, expected [{dim}] to match input {:?}",
            param.dims(),
            x.dims()
        );
    }
    if param.dtype() != x.dtype() {
        candle_core::bail!(
            "{op}: {name} is {:?} but the input is {:?}",
            param.dtype(),
            x.dtype()
        );
    }
    Ok(())
}

/// The size of the last dimension and the number of rows it splits `dims` into.
pub(crate) fn rows_and_dim(dims: &[usize], op: &str) -> candle_core::Result<(usize, usize)> {
    match dims.split_last() {
        Some((&dim, lead)) => Ok((lead.iter().product(), dim)),
        None => candle_core::bail!("{op}: expected at least one dimension, got a scalar"),
    }
}
