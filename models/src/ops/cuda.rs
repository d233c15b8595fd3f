//! The CUDA side of the ops (feature `cuda`): the PTX that build.rs compiled from
//! `kernels/*.cu` (one module per op family), the element types the kernels are instantiated
//! for, and the launch plumbing the ops' `cuda_fwd`s share.
//!
//! A kernel is `<name>_<dtype>` in its module (`rms_norm_fwd_bf16`); its accumulator type is
//! the CPU kernels' (f64 for f64, f32 otherwise), and so is the type of its scalar arguments
//! such as eps. Sizes are passed as `size_t` (usize).

use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, ValidAsZeroBits,
};
use candle_core::cuda_backend::CudaDType;
use candle_core::{CudaDevice, CudaStorage, Layout, WithDType};
use half::{bf16, f16};

/// One compiled .cu file.
pub(crate) struct Module {
    name: &'static str,
    ptx: &'static str,
}

macro_rules! module {
    ($const:ident, $file:literal) => {
        pub(crate) const $const: Module = Module {
            name: concat!("unireward_", $file),
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}
module!(RMS_NORM, "rms_norm");
module!(LAYER_NORM, "layer_norm");
module!(SOFTMAX, "softmax");
module!(LOG_SOFTMAX_GATHER, "log_softmax_gather");
module!(ACTIVATION, "activation");

/// An element type the kernels take, with the type they accumulate in.
pub(crate) trait Float: WithDType + CudaDType + DeviceRepr + ValidAsZeroBits {
    type Acc: WithDType + CudaDType + DeviceRepr + ValidAsZeroBits;
    /// The kernel name suffix.
    const SUFFIX: &'static str;
}

impl Float for f32 {
    type Acc = f32;
    const SUFFIX: &'static str = "f32";
}
impl Float for f64 {
    type Acc = f64;
    const SUFFIX: &'static str = "f64";
}
impl Float for bf16 {
    type Acc = f32;
    const SUFFIX: &'static str = "bf16";
}
impl Float for f16 {
    type Acc = f32;
    const SUFFIX: &'static str = "f16";
}

/// A scalar argument (eps) in `T`'s accumulator type.
pub(crate) fn acc<T: Float>(v: f64) -> T::Acc {
    <T::Acc as WithDType>::from_f64(v)
}

/// The kernel `name` for `T` in `module`, loaded on first use (candle caches the module).
pub(crate) fn kernel<T: Float>(
    dev: &CudaDevice,
    module: &Module,
    name: &str,
) -> candle_core::Result<CudaFunction> {
    let func =
        dev.get_or_load_custom_func(&format!("{name}_{}", T::SUFFIX), module.name, module.ptx)?;
    Ok(func.into_cuda_function())
}

/// The elements a contiguous `layout` covers. The public functions make their inputs
/// contiguous, so a strided layout here is a bug in this module, reported rather than misread.
pub(crate) fn input<'a, T: CudaDType>(
    storage: &'a CudaStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{op}: expected a contiguous input, got {layout:?}"),
    }
}

/// A kernel's output as storage.
pub(crate) fn output<T: CudaDType>(slice: CudaSlice<T>, dev: &CudaDevice) -> CudaStorage {
    CudaStorage::wrap_cuda_slice(slice, dev.clone())
}

/// `n` elements the kernel overwrites entirely.
pub(crate) fn alloc<T: DeviceRepr>(
    dev: &CudaDevice,
    n: usize,
) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: every launch that gets this buffer writes each of its elements (and an empty
    // one is never read).
    unsafe { dev.alloc::<T>(n) }
}

/// One block per row, with threads enough for the row's length (a multiple of 32, which the
/// block reductions need).
pub(crate) fn per_row(rows: usize, row_len: usize, op: &str) -> candle_core::Result<LaunchConfig> {
    let grid = u32::try_from(rows)
        .ok()
        .filter(|&r| r <= i32::MAX as u32)
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: {rows} rows are too many")))?;
    let threads = match row_len {
        0..=1024 => 128,
        1025..=8192 => 256,
        _ => 1024,
    };
    Ok(LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A grid-stride loop over `n` elements (the kernels loop, so the grid can be capped).
pub(crate) fn per_element(n: usize) -> LaunchConfig {
    const THREADS: usize = 256;
    const MAX_BLOCKS: usize = 1 << 16;
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Rows one block of a parameter-gradient kernel sums (ROWS_PER_PARTIAL in common.cuh).
pub(crate) const ROWS_PER_PARTIAL: usize = 32;

/// The grid of a `*_partials` kernel: blocks of 256 columns by blocks of rows.
pub(crate) fn per_partial(
    n_rows: usize,
    dim: usize,
    op: &str,
) -> candle_core::Result<(LaunchConfig, usize)> {
    let n_partials = n_rows.div_ceil(ROWS_PER_PARTIAL);
    if n_partials > 65_535 {
        candle_core::bail!("{op}: {n_rows} rows are too many for one parameter gradient");
    }
    let cfg = LaunchConfig {
        grid_dim: (dim.div_ceil(256) as u32, n_partials as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    Ok((cfg, n_partials))
}

/// The grid of a `*_sum_partials` kernel over `width` columns.
pub(crate) fn per_column(width: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (width.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Launches the kernel `$func` on `$dev`'s stream on the grid `$cfg` with the arguments in
/// order: device buffers by reference (`&view`, `&mut slice` for outputs), scalars by
/// reference to a local.
macro_rules! launch {
    ($dev:expr, $func:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let func = $func;
        let stream = $dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        $( candle_core::cuda_backend::cudarc::driver::PushKernelArg::arg(&mut builder, $arg); )+
        // SAFETY: each call site passes the arguments of the kernel's signature in
        // kernels/*.cu, in order and of its types, with buffers as long as the sizes passed.
        let launched = unsafe { builder.launch($cfg) };
        candle_core::cuda_backend::WrapErr::w(launched).map(|_| ())
    }};
}
pub(crate) use launch;
