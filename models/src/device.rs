//! The `--device cpu|cuda[:N]` of the binaries: which candle device a model runs on.

use crate::{Error, Result};
use candle_core::Device;

/// The device `spec` names: `cpu`, `cuda` (GPU 0) or `cuda:N`. A CUDA device needs a build
/// with the `cuda` feature and the GPU present; either missing is an error that says which.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    let ordinal = match spec.to_ascii_lowercase().as_str() {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::Device(format!(
                    "unknown device `{spec}`: expected cpu, cuda or cuda:N"
                )))
            }
        },
    };
    cuda_device(ordinal)
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    // The driver's error, without the backtrace candle appends under RUST_BACKTRACE.
    Device::new_cuda(ordinal).map_err(|e| {
        let e = e.to_string();
        let cause = e.lines().next().unwrap_or_default();
        Error::Device(format!("no CUDA device {ordinal}: {cause}"))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(_ordinal: usize) -> Result<Device> {
    Err(Error::Device(
        "cuda requested but this build has no cuda feature (build with `--features cuda`)".into(),
    ))
}

/// How a device is named in logs and reports: `cpu` or `cuda:N`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_malformed_specs() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device(" CPU ").unwrap().is_cpu());
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda0", ""] {
            let msg = parse_device(bad).unwrap_err().to_string();
            assert!(msg.contains("expected cpu, cuda or cuda:N"), "{bad}: {msg}");
        }
        assert_eq!(device_name(&Device::Cpu), "cpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_so() {
        for spec in ["cuda", "cuda:1"] {
            let msg = parse_device(spec).unwrap_err().to_string();
            assert!(
                msg.contains("cuda requested but this build has no cuda feature"),
                "{msg}"
            );
        }
    }
}
