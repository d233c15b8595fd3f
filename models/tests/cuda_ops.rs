//! The custom ops' CUDA kernels against their CPU kernels: forward and every gradient, f32
//! and bf16, on the shapes the model runs (Qwen2-0.5B's hidden 896 and MLP 4864, SigLIP
//! so400m's 1152 hidden, 729 patches and MLP 4304, the 151,936-token vocabulary) and on odd
//! row lengths. Needs the `cuda` feature and a GPU; without a GPU each test prints
//! `SKIPPED: no CUDA device` and passes (it was still compiled).
//!
//! `cargo test -p unireward-models --features cuda --test cuda_ops -- --nocapture`
//!
//! Inputs are the same values on both devices (made on the CPU, cast to the dtype there, then
//! copied), so differences come from the kernels alone: summation order and the exp/log
//! implementations, which in f32 are a few ulps of f32 and in bf16 at most a rounding step of
//! the stored result (both kernels accumulate half types in f32).
#![cfg(feature = "cuda")]

use anyhow::Result;
use candle_core::{DType, Device, Tensor, Var};
use unireward_models::ops;

/// GPU 0, or None after printing the visible skip line.
fn gpu(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(dev) => Some(dev),
        Err(e) => {
            let e = e.to_string();
            let cause = e.lines().next().unwrap_or_default();
            println!("SKIPPED: no CUDA device ({test}: {cause})");
            None
        }
    }
}

/// Deterministic uniform values in [lo, hi) (xorshift64*), so a failure reproduces.
fn uniform(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

/// Allowed |gpu − cpu| per element: `of_max` · max|cpu| + `rel` · |cpu|.
struct Tolerance {
    of_max: f64,
    rel: f64,
}

fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        // f32 accumulation in both, different order: a few ulps.
        DType::F32 => Tolerance {
            of_max: 1e-5,
            rel: 1e-4,
        },
        // bf16 results (8 bits of mantissa): one rounding step (2^-8 relative) apart where
        // the f32 values straddle a rounding boundary, plus the CPU softmax's rounding of its
        // exponentials before it sums them.
        DType::BF16 => Tolerance {
            of_max: 4e-3,
            rel: 1.6e-2,
        },
        other => panic!("no tolerance for {other:?}"),
    }
}

/// Compares `got` (any device) with `want` (CPU), element by element; prints one row.
fn check(what: &str, dtype: DType, got: &Tensor, want: &Tensor) -> Result<()> {
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let flat = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.to_device(&Device::Cpu)?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?)
    };
    let (g, w) = (flat(got)?, flat(want)?);
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs()));
    let tol = tolerance(dtype);
    let mut max_diff = 0f64;
    let mut bad = Vec::new();
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let diff = (a - b).abs();
        max_diff = max_diff.max(diff);
        if !(diff <= tol.of_max * scale + tol.rel * b.abs()) {
            bad.push((i, *a, *b));
        }
    }
    println!(
        "cuda-op {what:<44} {:<5} max|gpu-cpu| {max_diff:.2e}  max|cpu| {scale:.2e}  {}",
        format!("{dtype:?}").to_lowercase(),
        if bad.is_empty() { "ok" } else { "FAIL" }
    );
    assert!(
        bad.is_empty(),
        "{what} {dtype:?}: {} of {} elements off, first (index, gpu, cpu): {:?}",
        bad.len(),
        w.len(),
        &bad[..bad.len().min(5)]
    );
    Ok(())
}

/// The op's output and the gradients of Σ y·r (r fixed, random) to each float input.
fn run(
    dev: &Device,
    dtype: DType,
    inputs: &[Tensor],
    r: &Tensor,
    op: &dyn Fn(&[Tensor], &Device) -> Result<Tensor>,
) -> Result<(Tensor, Vec<Tensor>)> {
    let vars = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_dtype(dtype)?.to_device(dev)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&tensors, dev)?;
    let loss = (y.to_dtype(DType::F32)? * r.to_device(dev)?)?.sum_all()?;
    let grads = loss.backward()?;
    let grads = vars
        .iter()
        .map(|v| {
            grads
                .get(v)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no gradient for an input"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((y, grads))
}

/// Runs `op` on the CPU and the GPU in f32 and bf16 and checks the output and each gradient.
fn compare(
    name: &str,
    gpu: &Device,
    inputs: &[(&str, Tensor)],
    op: impl Fn(&[Tensor], &Device) -> Result<Tensor>,
) -> Result<()> {
    let tensors: Vec<Tensor> = inputs.iter().map(|(_, t)| t.clone()).collect();
    for dtype in [DType::F32, DType::BF16] {
        let probe = op(
            &tensors
                .iter()
                .map(|t| t.to_dtype(dtype))
                .collect::<candle_core::Result<Vec<_>>>()?,
            &Device::Cpu,
        )?;
        let r = uniform(probe.dims(), -1.0, 1.0, 99)?;
        let (y_cpu, g_cpu) = run(&Device::Cpu, dtype, &tensors, &r, &op)?;
        let (y_gpu, g_gpu) = run(gpu, dtype, &tensors, &r, &op)?;
        assert!(y_gpu.device().is_cuda(), "{name}: output left the GPU");
        let shape = format!("{:?}", inputs[0].1.dims());
        check(&format!("{name} {shape} forward"), dtype, &y_gpu, &y_cpu)?;
        for ((input, _), (gg, gc)) in inputs.iter().zip(g_gpu.iter().zip(&g_cpu)) {
            check(&format!("{name} {shape} d/d{input}"), dtype, gg, gc)?;
        }
    }
    Ok(())
}

/// `--device cuda:N` of a GPU that is not there names it; on a GPU machine device 0 opens.
#[test]
fn device_flag_names_a_missing_gpu() {
    use unireward_models::device::{device_name, parse_device};
    let msg = parse_device("cuda:977").unwrap_err().to_string();
    assert!(msg.contains("no CUDA device 977"), "{msg}");
    match parse_device("cuda") {
        Ok(dev) => assert_eq!(device_name(&dev), "cuda:0"),
        Err(e) => {
            assert!(e.to_string().contains("no CUDA device 0"), "{e}");
            println!("SKIPPED: no CUDA device (device flag: {e})");
        }
    }
}

#[test]
fn rms_norm_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("rms_norm") else {
        return Ok(());
    };
    // Qwen2-0.5B's hidden size over a [batch, tokens] grid; an odd width; one long row.
    for (shape, seed) in [
        (vec![2, 37, 896], 1),
        (vec![5, 1153], 2),
        (vec![1, 9000], 3),
    ] {
        let dim = *shape.last().unwrap_or(&1);
        let x = uniform(&shape, -3.0, 3.0, seed)?;
        let w = uniform(&[dim], 0.5, 1.5, seed + 10)?;
        compare("rms_norm", &dev, &[("x", x), ("w", w)], |t, _| {
            Ok(ops::rms_norm(&t[0], &t[1], 1e-6)?)
        })?;
    }
    Ok(())
}

#[test]
fn layer_norm_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("layer_norm") else {
        return Ok(());
    };
    // SigLIP so400m: 729 patches of 1152; an odd width; more rows than one partial block.
    for (shape, seed) in [(vec![1, 729, 1152], 4), (vec![70, 383], 5)] {
        let dim = *shape.last().unwrap_or(&1);
        // An offset mean, as activations have, exercises the two-pass variance.
        let x = uniform(&shape, 1.0, 5.0, seed)?;
        let w = uniform(&[dim], 0.5, 1.5, seed + 10)?;
        let b = uniform(&[dim], -0.5, 0.5, seed + 20)?;
        compare(
            "layer_norm",
            &dev,
            &[("x", x), ("w", w), ("b", b)],
            |t, _| Ok(ops::layer_norm(&t[0], &t[1], &t[2], 1e-6)?),
        )?;
    }
    Ok(())
}

#[test]
fn softmax_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("softmax") else {
        return Ok(());
    };
    // Attention scores [batch, heads, queries, keys] (14 heads as Qwen2-0.5B); an odd width;
    // a row longer than a block's threads many times over.
    for (shape, seed) in [
        (vec![2, 14, 37, 37], 6),
        (vec![3, 1001], 7),
        (vec![2, 20000], 8),
    ] {
        let x = uniform(&shape, -8.0, 8.0, seed)?;
        compare("softmax_last_dim", &dev, &[("x", x)], |t, _| {
            Ok(ops::softmax_last_dim(&t[0])?)
        })?;
    }
    Ok(())
}

#[test]
fn causal_softmax_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("causal_softmax") else {
        return Ok(());
    };
    // A prefill (no cache) and queries after a cache of 7 positions.
    for (queries, past, seed) in [(64usize, 0usize, 9), (5, 7, 10)] {
        let x = uniform(&[2, 14, queries, past + queries], -8.0, 8.0, seed)?;
        compare("causal_softmax_last_dim", &dev, &[("x", x)], move |t, _| {
            Ok(ops::causal_softmax_last_dim(&t[0], past)?)
        })?;
    }
    Ok(())
}

#[test]
fn log_softmax_gather_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("log_softmax_gather") else {
        return Ok(());
    };
    // Qwen2's 151,936-token vocabulary, one row ignored; and an odd small vocabulary.
    for (rows, vocab, seed) in [(6usize, 151_936usize, 11), (9, 1001, 12)] {
        let logits = uniform(&[rows, vocab], -10.0, 10.0, seed)?;
        let labels: Vec<u32> = (0..rows)
            .map(|i| {
                if i == 2 {
                    ops::IGNORE_INDEX
                } else {
                    ((i * 7919 + 13) % vocab) as u32
                }
            })
            .collect();
        compare("log_softmax_gather", &dev, &[("logits", logits)], |t, d| {
            let labels = Tensor::new(labels.as_slice(), d)?;
            Ok(ops::log_softmax_gather(&t[0], &labels)?)
        })?;
    }
    Ok(())
}

#[test]
fn log_softmax_gather_rejects_out_of_vocabulary_labels_on_gpu() -> Result<()> {
    let Some(dev) = gpu("log_softmax_gather labels") else {
        return Ok(());
    };
    let logits = uniform(&[2, 50], -1.0, 1.0, 13)?.to_device(&dev)?;
    let labels = Tensor::new(&[3u32, 50], &dev)?;
    let err = ops::log_softmax_gather(&logits, &labels).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    Ok(())
}

#[test]
fn gelu_tanh_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("gelu_tanh") else {
        return Ok(());
    };
    // SigLIP so400m's MLP activations; an odd length.
    for (shape, seed) in [(vec![729, 4304], 14), (vec![7, 1001], 15)] {
        let x = uniform(&shape, -5.0, 5.0, seed)?;
        compare("gelu_tanh", &dev, &[("x", x)], |t, _| {
            Ok(ops::gelu_tanh(&t[0])?)
        })?;
    }
    Ok(())
}

#[test]
fn swiglu_matches_cpu() -> Result<()> {
    let Some(dev) = gpu("swiglu") else {
        return Ok(());
    };
    // Qwen2-0.5B's MLP (4864); an odd length.
    for (shape, seed) in [(vec![37, 4864], 16), (vec![3, 1001], 17)] {
        let gate = uniform(&shape, -6.0, 6.0, seed)?;
        let up = uniform(&shape, -2.0, 2.0, seed + 10)?;
        compare("swiglu", &dev, &[("gate", gate), ("up", up)], |t, _| {
            Ok(ops::swiglu(&t[0], &t[1])?)
        })?;
    }
    Ok(())
}
