//! Deterministic weights for a checkpoint's names and shapes: every value a function of the
//! tensor's name and the element's index, so a test, a bench or the demo's untrained
//! generator can write a full checkpoint from a list of names and shapes, and a Python script
//! can build the very same one (`scripts/golden/make_unet.py` does, in numpy).
//!
//! u_i is splitmix64's output for the state fnv1a(name) + (i + 1)·γ, mapped to [-1, 1);
//! values are rounded to f32. Norm gains are 1 + 0.2u, other vectors (biases) 0.1u, and
//! matrices and kernels u·sqrt(3 / fan_in), which keeps activations near unit variance.
//! A salted copy (`salt` non-empty) adds 0.02u' of the same scale, u' drawn for salt + name:
//! a reference model near, not equal to, the trained one.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use serde::Deserialize;

use crate::splitmix64;

/// The n values u_i of `name`, in [-1, 1).
pub fn counter_uniform(name: &str, n: usize) -> Vec<f64> {
    let seed = splitmix64::fnv1a(name);
    (1..=n as u64)
        .map(|i| {
            let z = splitmix64::mix(seed.wrapping_add(i.wrapping_mul(splitmix64::GAMMA)));
            (z >> 11) as f64 * 2f64.powi(-53) * 2.0 - 1.0
        })
        .collect()
}

/// One tensor's name and shape, as a checkpoint's manifest lists them.
#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
}

/// The values of `spec` (see the module documentation), f32-rounded, as an f32 tensor.
pub fn synthetic_tensor(spec: &TensorSpec, salt: &str, device: &Device) -> Result<Tensor> {
    let n: usize = spec.shape.iter().product();
    let u = counter_uniform(&spec.name, n);
    let (mut values, scale): (Vec<f64>, f64) = if spec.shape.len() == 1 {
        if spec.name.contains("norm") && spec.name.ends_with(".weight") {
            (u.iter().map(|u| 1.0 + 0.2 * u).collect(), 0.2)
        } else {
            (u.iter().map(|u| 0.1 * u).collect(), 0.1)
        }
    } else {
        let fan_in = n / spec.shape[0].max(1);
        let scale = (3.0 / fan_in as f64).sqrt();
        (u.iter().map(|u| u * scale).collect(), scale)
    };
    if !salt.is_empty() {
        let extra = counter_uniform(&format!("{salt}{}", spec.name), n);
        for (v, e) in values.iter_mut().zip(extra) {
            *v += 0.02 * scale * e;
        }
    }
    let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(values, spec.shape.as_slice(), device)
}

/// Every tensor of `specs`, in `dtype`.
pub fn synthetic_tensors(
    specs: &[TensorSpec],
    salt: &str,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
    specs
        .iter()
        .map(|s| {
            Ok((
                s.name.clone(),
                synthetic_tensor(s, salt, device)?.to_dtype(dtype)?,
            ))
        })
        .collect()
}
