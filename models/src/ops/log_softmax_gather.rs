//! log p(label) per row, fused: log_softmax(logits)[label] without the [rows, vocab]
//! log-softmax, which at a 152k vocabulary and a few thousand tokens is gigabytes.
//!
//! Forward: log p = x[label] − logsumexp(x), the log-sum-exp taken chunk by chunk over the
//! vocabulary with a running maximum, so each row is read once and nothing row-sized is
//! allocated. Backward, with g = dL/d(log p): dL/dx = g · (onehot(label) − softmax(x)),
//! written straight into the gradient (which is [rows, vocab] by nature); the log-sum-exp it
//! needs is recovered as x[label] − log p instead of a second reduction over the row.

use super::{
    contiguous, for_each_row_mut, lane_sum, row_max, storage, with_float_element, Acc, Element,
};
use crate::Result;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

const NAME: &str = "log_softmax_gather";

/// The label that marks a row as ignored (prompt, padding): its log-prob is 0 and it sends
/// no gradient to the logits.
pub const IGNORE_INDEX: u32 = u32::MAX;

/// Elements per step of the running log-sum-exp: small enough to stay in L1 while its
/// maximum and then its exponentials are taken.
const LSE_CHUNK: usize = 1024;

/// log softmax(`logits`)[`label`] over the last dimension: `logits` `[..., V]` (f32, f64,
/// bf16, f16), `labels` `[...]` u32 in `0..V` or [`IGNORE_INDEX`], result `[...]`.
///
/// The result is f64 for f64 logits and f32 otherwise: log-probs get summed over whole
/// sequences, which half precision cannot carry. Gradients flow to `logits` (in their own
/// dtype); labels equal to [`IGNORE_INDEX`] give 0 and a zero gradient row.
pub fn log_softmax_gather(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (lead, vocab) = check_inputs(logits, labels)?;
    let rows: usize = lead.iter().product();
    let logits = logits.reshape((rows, vocab))?.contiguous()?;
    let labels = labels.reshape(rows)?.contiguous()?;
    let log_probs = logits.apply_op2(&labels, LogSoftmaxGather)?;
    Ok(log_probs.reshape(lead)?)
}

/// The leading dimensions and the vocabulary size, once the shapes and dtypes agree.
fn check_inputs(logits: &Tensor, labels: &Tensor) -> candle_core::Result<(Vec<usize>, usize)> {
    let Some((&vocab, lead)) = logits.dims().split_last() else {
        candle_core::bail!("{NAME}: logits must have a vocabulary dimension, got a scalar")
    };
    if labels.dims() != lead {
        candle_core::bail!(
            "{NAME}: labels have shape {:?}, expected {lead:?} to match logits {:?}",
            labels.dims(),
            logits.dims()
        );
    }
    if labels.dtype() != DType::U32 {
        candle_core::bail!("{NAME}: labels must be u32, got {:?}", labels.dtype());
    }
    Ok((lead.to_vec(), vocab))
}

/// Every label indexes the vocabulary or is ignored: the kernels index rows with them.
fn check_labels(labels: &[u32], vocab: usize) -> candle_core::Result<()> {
    match labels
        .iter()
        .position(|&l| l != IGNORE_INDEX && l as usize >= vocab)
    {
        Some(row) => candle_core::bail!(
            "{NAME}: label {} in row {row} is outside the vocabulary of {vocab} \
             (use IGNORE_INDEX = {IGNORE_INDEX} to mask a row)",
            labels[row]
        ),
        None => Ok(()),
    }
}

/// log Σ exp(row), taken chunk by chunk with a running maximum: each chunk's exponentials
/// are relative to the largest value seen so far, and the running sum is rescaled when the
/// maximum grows. Summing per chunk also keeps f32 rounding error to a chunk's worth.
fn log_sum_exp<T: Element>(row: &[T]) -> T::Acc {
    let mut max = T::Acc::NEG_INFINITY;
    let mut sum = T::Acc::ZERO;
    for chunk in row.chunks(LSE_CHUNK) {
        let chunk_max = row_max(chunk);
        if chunk_max == T::Acc::NEG_INFINITY {
            // All −∞ (exp is 0): skipping also avoids −∞ − (−∞) = NaN below.
            continue;
        }
        let new_max = if chunk_max > max { chunk_max } else { max };
        let chunk_sum = lane_sum(chunk.len(), |i| (chunk[i].to_acc() - new_max).exp());
        sum = sum * (max - new_max).exp() + chunk_sum;
        max = new_max;
    }
    max + sum.ln()
}

fn forward<T: Element>(logits: &[T], labels: &[u32], vocab: usize) -> Vec<T::Acc> {
    let mut log_probs = vec![T::Acc::ZERO; labels.len()];
    for_each_row_mut(&mut log_probs, 1, vocab, |row, out| {
        let label = labels[row];
        if label == IGNORE_INDEX {
            return;
        }
        let logits = &logits[row * vocab..(row + 1) * vocab];
        out[0] = logits[label as usize].to_acc() - log_sum_exp(logits);
    });
    log_probs
}

/// `log_prob_grad` is `[rows, 2]`: the forward's log p and the incoming dL/d(log p).
fn grad_logits<T: Element>(
    logits: &[T],
    labels: &[u32],
    log_prob_grad: &[T::Acc],
    vocab: usize,
) -> Vec<T> {
    let mut dx = vec![T::zero(); logits.len()];
    for_each_row_mut(&mut dx, vocab, 2 * vocab, |row, dx| {
        let label = labels[row];
        let (log_prob, g) = (log_prob_grad[2 * row], log_prob_grad[2 * row + 1]);
        if label == IGNORE_INDEX || g == T::Acc::ZERO {
            return;
        }
        let label = label as usize;
        let logits = &logits[row * vocab..(row + 1) * vocab];
        // x[label] − log p is the log-sum-exp to within the rounding of log p, which is no
        // worse than recomputing it over the row.
        let label_logit = logits[label].to_acc();
        let lse = label_logit - log_prob;
        for (dx, &x) in dx.iter_mut().zip(logits) {
            *dx = T::from_acc(T::Acc::ZERO - g * (x.to_acc() - lse).exp());
        }
        dx[label] = T::from_acc(g * (T::Acc::ONE - (label_logit - lse).exp()));
    });
    dx
}

/// The CUDA kernels (kernels/log_softmax_gather.cu), launched on contiguous inputs.
#[cfg(feature = "cuda")]
mod gpu {
    use super::{check_labels, NAME};
    use crate::ops::cuda::{self, alloc, kernel, launch, Float, LOG_SOFTMAX_GATHER};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::CudaDevice;

    /// The labels index the rows in the kernels: they are checked on the host first (rows
    /// × 4 bytes, small next to the logits).
    pub(super) fn checked_labels(
        dev: &CudaDevice,
        labels: &CudaView<u32>,
        vocab: usize,
    ) -> candle_core::Result<()> {
        check_labels(&dev.clone_dtoh(labels)?, vocab)
    }

    pub(super) fn forward<T: Float>(
        dev: &CudaDevice,
        logits: &CudaView<T>,
        labels: &CudaView<u32>,
        rows: usize,
        vocab: usize,
    ) -> candle_core::Result<CudaSlice<T::Acc>> {
        let mut log_probs = alloc::<T::Acc>(dev, rows)?;
        let f = kernel::<T>(dev, &LOG_SOFTMAX_GATHER, "log_softmax_gather_fwd")?;
        launch!(
            dev,
            f,
            cuda::per_row(rows, vocab, NAME)?,
            logits,
            labels,
            &mut log_probs,
            &vocab
        )?;
        Ok(log_probs)
    }

    pub(super) fn grad_logits<T: Float>(
        dev: &CudaDevice,
        (logits, labels, log_prob_grad): (&CudaView<T>, &CudaView<u32>, &CudaView<T::Acc>),
        rows: usize,
        vocab: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let n = rows * vocab;
        let mut dx = alloc::<T>(dev, n)?;
        let f = kernel::<T>(dev, &LOG_SOFTMAX_GATHER, "log_softmax_gather_grad")?;
        let cfg = cuda::per_element(n);
        launch!(
            dev,
            f,
            cfg,
            logits,
            labels,
            log_prob_grad,
            &mut dx,
            &rows,
            &vocab
        )?;
        Ok(dx)
    }
}

struct LogSoftmaxGather;

impl CustomOp2 for LogSoftmaxGather {
    fn name(&self) -> &'static str {
        "unireward-log-softmax-gather"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let labels = contiguous::<u32>(s2, l2, NAME)?;
        check_labels(labels, vocab)?;
        with_float_element!(s1, NAME, |T| {
            let logits = contiguous::<T>(s1, l1, NAME)?;
            let log_probs = forward(logits, labels, vocab);
            Ok((storage(log_probs), Shape::from_dims(&[rows])))
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
        let (rows, vocab) = l1.shape().dims2()?;
        let dev = &s1.device;
        let labels = input::<u32>(s2, l2, NAME)?;
        gpu::checked_labels(dev, &labels, vocab)?;
        with_float_element!(s1, NAME, |T| {
            let logits = input::<T>(s1, l1, NAME)?;
            let log_probs = gpu::forward(dev, &logits, &labels, rows, vocab)?;
            Ok((output(log_probs, dev), Shape::from_dims(&[rows])))
        })
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        log_probs: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if !logits.track_op() {
            return Ok((None, None));
        }
        let log_prob_grad = Tensor::stack(&[log_probs, &grad.contiguous()?], 1)?;
        let dx = logits.apply_op3_no_bwd(labels, &log_prob_grad, &LogSoftmaxGatherGrad)?;
        Ok((Some(dx), None))
    }
}

/// dL/dlogits from (logits, labels, [log p, dL/d(log p)]).
struct LogSoftmaxGatherGrad;

impl CustomOp3 for LogSoftmaxGatherGrad {
    fn name(&self) -> &'static str {
        "unireward-log-softmax-gather-grad"
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
        let (_, vocab) = l1.shape().dims2()?;
        let labels = contiguous::<u32>(s2, l2, NAME)?;
        check_labels(labels, vocab)?;
        with_float_element!(s1, NAME, |T| {
            let logits = contiguous::<T>(s1, l1, NAME)?;
            let log_prob_grad = contiguous::<<T as Element>::Acc>(s3, l3, NAME)?;
            let dx = grad_logits(logits, labels, log_prob_grad, vocab);
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
        use crate::ops::cuda::{input, output, Float};
        let (rows, vocab) = l1.shape().dims2()?;
        let dev = &s1.device;
        let labels = input::<u32>(s2, l2, NAME)?;
        gpu::checked_labels(dev, &labels, vocab)?;
        with_float_element!(s1, NAME, |T| {
            let logits = input::<T>(s1, l1, NAME)?;
            let log_prob_grad = input::<<T as Float>::Acc>(s3, l3, NAME)?;
            let dx = gpu::grad_logits::<T>(dev, (&logits, &labels, &log_prob_grad), rows, vocab)?;
            Ok((output(dx, dev), l1.shape().clone()))
        })
    }
}
