//! Element-wise activations of the MLPs, parallel over the elements and with backward passes:
//! candle's own run on one thread, and SwiGLU as two ops (silu, then the product) makes an
//! extra pass over the [tokens, intermediate] activations.
//!
//! gelu_tanh(x) = ½x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³) (SigLIP's `gelu_pytorch_tanh`);
//! swiglu(g, u) = silu(g)·u with silu(g) = g·σ(g) (Qwen2's MLP).

use super::{contiguous, for_each_row_mut, storage, with_float_element, Acc, Element};
use crate::Result;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

/// Elements per parallel task: enough work to amortise a task, small enough to split a layer.
const CHUNK: usize = 4096;

/// An `n`-long output filled in parallel chunks: `f(at, dst)` writes the chunk of elements
/// `at..at + dst.len()`. The callers zip `dst` with their input slices from `at`, a plain
/// element-wise loop the compiler vectorises (indexing per element would not be).
fn map_par<U: Send + Copy + Default>(
    n: usize,
    f: impl Fn(usize, &mut [U]) + Sync + Send,
) -> Vec<U> {
    let mut out = vec![U::default(); n];
    for_each_row_mut(&mut out, CHUNK, CHUNK, |chunk, dst| f(chunk * CHUNK, dst));
    out
}

#[inline(always)]
fn sigmoid<A: Acc>(x: A) -> A {
    A::ONE / (A::ONE + (A::ZERO - x).exp())
}

const GELU_NAME: &str = "gelu_tanh";
const SWIGLU_NAME: &str = "swiglu";

/// SigLIP's tanh-approximated GELU, gradients flowing to `x`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(GeluTanh)?)
}

/// silu(gate) · up, gradients flowing to both.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.shape() != up.shape() || gate.dtype() != up.dtype() {
        return Err(crate::Error::Input(format!(
            "swiglu: gate {:?} {:?} and up {:?} {:?} differ",
            gate.dims(),
            gate.dtype(),
            up.dims(),
            up.dtype()
        )));
    }
    Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, Swiglu)?)
}

#[inline(always)]
fn gelu_parts<A: Acc>(x: A) -> (A, A) {
    let c = A::cast_f64((2.0 / std::f64::consts::PI).sqrt());
    let k = A::cast_f64(0.044715);
    let half = A::cast_f64(0.5);
    let two = A::cast_f64(2.0);
    let x2 = x * x;
    // ½(1 + tanh(u)) = σ(2u): one exp instead of libm's tanh, which costs several times
    // as much and was an eighth of the CPU forward's time.
    let s = sigmoid(two * c * (x + k * x2 * x));
    let t = two * s - A::ONE;
    let y = x * s;
    // dy/dx = ½(1 + t) + ½x(1 − t²)·c(1 + 3k·x²)
    let dy = half * (A::ONE + t)
        + half * x * (A::ONE - t * t) * c * (A::ONE + A::cast_f64(3.0) * k * x2);
    (y, dy)
}

/// The CUDA kernels (kernels/activation.cu), element-wise over contiguous inputs.
#[cfg(feature = "cuda")]
mod gpu {
    use crate::ops::cuda::{self, alloc, kernel, launch, Float, ACTIVATION};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
    use candle_core::CudaDevice;

    /// `kernel`(inputs..., out, n) over `n` elements.
    pub(super) fn map<T: Float>(
        dev: &CudaDevice,
        name: &str,
        inputs: &[&CudaView<T>],
        n: usize,
    ) -> candle_core::Result<CudaSlice<T>> {
        let mut out = alloc::<T>(dev, n)?;
        let f = kernel::<T>(dev, &ACTIVATION, name)?;
        let cfg = cuda::per_element(n);
        match inputs {
            [a] => launch!(dev, f, cfg, *a, &mut out, &n)?,
            [a, b] => launch!(dev, f, cfg, *a, *b, &mut out, &n)?,
            [a, b, c] => launch!(dev, f, cfg, *a, *b, *c, &mut out, &n)?,
            _ => candle_core::bail!("{name}: {} inputs, expected 1 to 3", inputs.len()),
        }
        Ok(out)
    }
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "unireward-gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        with_float_element!(s, GELU_NAME, |T| {
            let x = contiguous::<T>(s, l, GELU_NAME)?;
            let y = map_par(x.len(), |at, dst| {
                for (y, &x) in dst.iter_mut().zip(&x[at..]) {
                    *y = T::from_acc(gelu_parts(x.to_acc()).0);
                }
            });
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
        let dev = &s.device;
        with_float_element!(s, GELU_NAME, |T| {
            let x = input::<T>(s, l, GELU_NAME)?;
            let y = gpu::map(dev, "gelu_tanh_fwd", &[&x], l.shape().elem_count())?;
            Ok((output(y, dev), l.shape().clone()))
        })
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&grad.contiguous()?, &GeluTanhGrad)?,
        ))
    }
}

/// (x, dL/dy) → dL/dx.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "unireward-gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        with_float_element!(s1, GELU_NAME, |T| {
            let x = contiguous::<T>(s1, l1, GELU_NAME)?;
            let g = contiguous::<T>(s2, l2, GELU_NAME)?;
            let dx = map_par(x.len(), |at, dst| {
                for (dx, (&x, &g)) in dst.iter_mut().zip(x[at..].iter().zip(&g[at..])) {
                    *dx = T::from_acc(gelu_parts(x.to_acc()).1 * g.to_acc());
                }
            });
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
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use crate::ops::cuda::{input, output};
        let dev = &s1.device;
        with_float_element!(s1, GELU_NAME, |T| {
            let x = input::<T>(s1, l1, GELU_NAME)?;
            let g = input::<T>(s2, l2, GELU_NAME)?;
            let dx = gpu::map(dev, "gelu_tanh_grad", &[&x, &g], l1.shape().elem_count())?;
            Ok((output(dx, dev), l1.shape().clone()))
        })
    }
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "unireward-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        with_float_element!(s1, SWIGLU_NAME, |T| {
            let g = contiguous::<T>(s1, l1, SWIGLU_NAME)?;
            let u = contiguous::<T>(s2, l2, SWIGLU_NAME)?;
            let y = map_par(g.len(), |at, dst| {
                for (y, (&g, &u)) in dst.iter_mut().zip(g[at..].iter().zip(&u[at..])) {
                    let g = g.to_acc();
                    *y = T::from_acc(g * sigmoid(g) * u.to_acc());
                }
            });
            Ok((storage(y), l1.shape().clone()))
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
        let dev = &s1.device;
        with_float_element!(s1, SWIGLU_NAME, |T| {
            let g = input::<T>(s1, l1, SWIGLU_NAME)?;
            let u = input::<T>(s2, l2, SWIGLU_NAME)?;
            let y = gpu::map(dev, "swiglu_fwd", &[&g, &u], l1.shape().elem_count())?;
            Ok((output(y, dev), l1.shape().clone()))
        })
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_gate = gate.apply_op3_no_bwd(up, &grad, &SwigluGradGate)?;
        let d_up = (grad * gate.silu()?)?;
        Ok((Some(d_gate), Some(d_up)))
    }
}

/// (gate, up, dL/dy) → dL/dgate = g·u·σ(gate)(1 + gate(1 − σ(gate))).
struct SwigluGradGate;

impl CustomOp3 for SwigluGradGate {
    fn name(&self) -> &'static str {
        "unireward-swiglu-grad-gate"
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
        with_float_element!(s1, SWIGLU_NAME, |T| {
            let g = contiguous::<T>(s1, l1, SWIGLU_NAME)?;
            let u = contiguous::<T>(s2, l2, SWIGLU_NAME)?;
            let d = contiguous::<T>(s3, l3, SWIGLU_NAME)?;
            let one = <T as Element>::Acc::ONE;
            let dg = map_par(g.len(), |at, dst| {
                let inputs = g[at..].iter().zip(&u[at..]).zip(&d[at..]);
                for (dg, ((&g, &u), &d)) in dst.iter_mut().zip(inputs) {
                    let g = g.to_acc();
                    let s = sigmoid(g);
                    let dsilu = s * (one + g * (one - s));
                    *dg = T::from_acc(d.to_acc() * u.to_acc() * dsilu);
                }
            });
            Ok((storage(dg), l1.shape().clone()))
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
        let dev = &s1.device;
        with_float_element!(s1, SWIGLU_NAME, |T| {
            let g = input::<T>(s1, l1, SWIGLU_NAME)?;
            let u = input::<T>(s2, l2, SWIGLU_NAME)?;
            let d = input::<T>(s3, l3, SWIGLU_NAME)?;
            let n = l1.shape().elem_count();
            let dg = gpu::map(dev, "swiglu_grad_gate", &[&g, &u, &d], n)?;
            Ok((output(dg, dev), l1.shape().clone()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f64>())
            .unwrap_or(f64::INFINITY)
    }

    /// Values and gradients equal candle's composed ops (which have backward passes).
    #[test]
    fn match_candle_compositions() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 2.0, (3, 5000), &dev)?)?;
        let u = Var::from_tensor(&Tensor::randn(0f64, 1.0, (3, 5000), &dev)?)?;
        let w = Tensor::randn(0f64, 1.0, (3, 5000), &dev)?;

        let ours = gelu_tanh(x.as_tensor())?;
        let theirs = x.as_tensor().gelu()?;
        assert!(max_diff(&ours, &theirs) < 1e-12);
        let g1 = (&ours * &w)?.sum_all()?.backward()?;
        let g2 = (&theirs * &w)?.sum_all()?.backward()?;
        // candle's gelu backward writes its constants to 6 digits; ours is exact (see the
        // finite-difference test below), so they agree to about 1e-6.
        assert!(max_diff(g1.get(&x).unwrap(), g2.get(&x).unwrap()) < 1e-5);

        let ours = swiglu(x.as_tensor(), u.as_tensor())?;
        let theirs = (x.as_tensor().silu()? * u.as_tensor())?;
        assert!(max_diff(&ours, &theirs) < 1e-12);
        let g1 = (&ours * &w)?.sum_all()?.backward()?;
        let g2 = (&theirs * &w)?.sum_all()?.backward()?;
        for v in [&x, &u] {
            assert!(max_diff(g1.get(v).unwrap(), g2.get(v).unwrap()) < 1e-10);
        }
        Ok(())
    }

    /// The backward of gelu_tanh against central differences.
    #[test]
    fn gelu_gradient_matches_finite_differences() -> anyhow::Result<()> {
        let dev = Device::Cpu;
        let xs = [-3.0f64, -0.7, 0.0, 0.4, 2.5];
        let x = Var::from_slice(&xs, 5, &dev)?;
        let g = gelu_tanh(x.as_tensor())?.sum_all()?.backward()?;
        let got = g.get(&x).unwrap().to_vec1::<f64>()?;
        let h = 1e-6;
        for (i, &v) in xs.iter().enumerate() {
            let f = |z: f64| gelu_parts(z).0;
            let fd = (f(v + h) - f(v - h)) / (2.0 * h);
            assert!((got[i] - fd).abs() < 1e-8, "{v}: {} vs {fd}", got[i]);
        }
        Ok(())
    }
}
