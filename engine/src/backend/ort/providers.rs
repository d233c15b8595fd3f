//! Execution providers for ONNX Runtime sessions and their options.
//!
//! A requested provider that fails to register is an error (ort's `error_on_failure`), never a
//! silent run on the CPU: a judge run that was meant for a GPU and crawls on a CPU is a bug to
//! report, not to hide. The provider options are kept as plain key / value pairs (ONNX
//! Runtime's own option names) so they can be checked without a GPU.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ort::ep::ExecutionProviderDispatch;

use crate::backend::error::{Error, Result};

/// Which execution provider a session runs on.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum ExecutionProvider {
    #[default]
    Cpu,
    Cuda(CudaOptions),
    TensorRt(TensorRtOptions),
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct CudaOptions {
    pub device_id: u32,
    /// Cap on the CUDA memory arena, in bytes.
    pub memory_limit_bytes: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorRtOptions {
    pub device_id: u32,
    /// Build fp16 engines (layers TensorRT deems precision-sensitive stay fp32).
    pub fp16: bool,
    /// Where built engines (and the timing cache) are kept across runs; building a 7B
    /// decoder engine takes minutes, so set this for anything but a one-off run.
    pub engine_cache_dir: Option<PathBuf>,
    pub max_workspace_bytes: Option<usize>,
    /// The shapes engines are built for; without one TensorRT builds per new input shape.
    pub profile: Option<ShapeProfile>,
}

impl ExecutionProvider {
    pub fn name(&self) -> &'static str {
        match self {
            ExecutionProvider::Cpu => "cpu",
            ExecutionProvider::Cuda(_) => "cuda",
            ExecutionProvider::TensorRt(_) => "tensorrt",
        }
    }

    /// The ort registrations, in priority order. TensorRT is followed by CUDA on the same
    /// device, for the nodes TensorRT does not take.
    pub(crate) fn dispatches(&self) -> Result<Vec<ExecutionProviderDispatch>> {
        match self {
            ExecutionProvider::Cpu => Ok(vec![cpu_provider().build().error_on_failure()]),
            ExecutionProvider::Cuda(o) => Ok(vec![cuda_dispatch(o)?]),
            ExecutionProvider::TensorRt(o) => {
                let cuda = CudaOptions {
                    device_id: o.device_id,
                    memory_limit_bytes: None,
                };
                Ok(vec![tensorrt_dispatch(o)?, cuda_dispatch(&cuda)?])
            }
        }
    }
}

impl fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `cpu`, `cuda` or `tensorrt`, with default options (for command lines).
impl FromStr for ExecutionProvider {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(ExecutionProvider::Cpu),
            "cuda" => Ok(ExecutionProvider::Cuda(CudaOptions::default())),
            "tensorrt" | "trt" => Ok(ExecutionProvider::TensorRt(TensorRtOptions::default())),
            other => Err(Error::Options(format!(
                "unknown execution provider `{other}` (expected cpu, cuda or tensorrt)"
            ))),
        }
    }
}

impl CudaOptions {
    /// ONNX Runtime's CUDA provider options.
    pub fn option_pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = vec![("device_id", self.device_id.to_string())];
        if let Some(limit) = self.memory_limit_bytes {
            v.push(("gpu_mem_limit", limit.to_string()));
        }
        v
    }
}

impl TensorRtOptions {
    /// ONNX Runtime's TensorRT provider options; checks the profile.
    pub fn option_pairs(&self) -> Result<Vec<(&'static str, String)>> {
        let flag = |b: bool| if b { "1" } else { "0" }.to_string();
        let mut v = vec![
            ("device_id", self.device_id.to_string()),
            ("trt_fp16_enable", flag(self.fp16)),
        ];
        if let Some(dir) = &self.engine_cache_dir {
            let dir = dir.display().to_string();
            v.push(("trt_engine_cache_enable", flag(true)));
            v.push(("trt_engine_cache_path", dir.clone()));
            v.push(("trt_timing_cache_enable", flag(true)));
            v.push(("trt_timing_cache_path", dir));
        }
        if let Some(bytes) = self.max_workspace_bytes {
            v.push(("trt_max_workspace_size", bytes.to_string()));
        }
        if let Some(p) = &self.profile {
            p.validate()?;
            v.push(("trt_profile_min_shapes", p.shapes(|i| &i.min)));
            v.push(("trt_profile_opt_shapes", p.shapes(|i| &i.opt)));
            v.push(("trt_profile_max_shapes", p.shapes(|i| &i.max)));
        }
        Ok(v)
    }
}

/// The CPU provider with ONNX Runtime's memory arena, which ort turns off unless asked.
/// Without it every intermediate tensor is a fresh allocation and the multi-MB attention
/// scores come back as page faults: bench-small's decoder took 137 ms instead of 120 ms.
fn cpu_provider() -> ort::ep::CPU {
    ort::ep::CPU::default().with_arena_allocator(true)
}

#[cfg(feature = "cuda")]
fn cuda_dispatch(o: &CudaOptions) -> Result<ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    let ep = o
        .option_pairs()
        .into_iter()
        .fold(ort::ep::CUDA::default(), |ep, (k, v)| {
            ep.with_arbitrary_config(k, v)
        });
    Ok(ep.build().error_on_failure())
}

#[cfg(not(feature = "cuda"))]
fn cuda_dispatch(_: &CudaOptions) -> Result<ExecutionProviderDispatch> {
    Err(Error::ProviderNotBuilt {
        provider: "cuda",
        feature: "cuda",
    })
}

#[cfg(feature = "tensorrt")]
fn tensorrt_dispatch(o: &TensorRtOptions) -> Result<ExecutionProviderDispatch> {
    use ort::ep::ArbitrarilyConfigurableExecutionProvider;
    if let Some(dir) = &o.engine_cache_dir {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
    }
    let ep = o
        .option_pairs()?
        .into_iter()
        .fold(ort::ep::TensorRT::default(), |ep, (k, v)| {
            ep.with_arbitrary_config(k, v)
        });
    Ok(ep.build().error_on_failure())
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_dispatch(_: &TensorRtOptions) -> Result<ExecutionProviderDispatch> {
    Err(Error::ProviderNotBuilt {
        provider: "tensorrt",
        feature: "tensorrt",
    })
}

/// One dimension of an input, for building a TensorRT optimisation profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileDim {
    Batch,
    Length,
    /// Cached positions before this call's: 0 (a whole sequence) up to the length limit.
    Past,
    Fixed(i64),
}

/// Batch and sequence-length limits the engine will be asked to run: TensorRT builds one
/// engine covering 1..=max, tuned for `opt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShapeLimits {
    pub opt_batch: i64,
    pub max_batch: i64,
    pub opt_length: i64,
    pub max_length: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInput {
    pub name: String,
    pub min: Vec<i64>,
    pub opt: Vec<i64>,
    pub max: Vec<i64>,
}

/// A TensorRT optimisation profile: min / opt / max shape of every dynamic input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShapeProfile {
    pub inputs: Vec<ProfileInput>,
}

impl ShapeProfile {
    /// The profile for inputs whose dims are given as batch / length / fixed.
    pub fn from_limits(inputs: &[(&str, &[ProfileDim])], limits: &ShapeLimits) -> Result<Self> {
        let check = |what: &str, opt: i64, max: i64| {
            if opt < 1 || opt > max {
                Err(Error::Options(format!(
                    "{what}: need 1 <= opt ({opt}) <= max ({max})"
                )))
            } else {
                Ok(())
            }
        };
        check("batch", limits.opt_batch, limits.max_batch)?;
        check("length", limits.opt_length, limits.max_length)?;
        let pick = |d: &ProfileDim, batch: i64, length: i64, past: i64| match d {
            ProfileDim::Batch => batch,
            ProfileDim::Length => length,
            ProfileDim::Past => past,
            ProfileDim::Fixed(v) => *v,
        };
        let profile = Self {
            inputs: inputs
                .iter()
                .map(|(name, dims)| ProfileInput {
                    name: name.to_string(),
                    min: dims.iter().map(|d| pick(d, 1, 1, 0)).collect(),
                    opt: dims
                        .iter()
                        .map(|d| pick(d, limits.opt_batch, limits.opt_length, limits.opt_length))
                        .collect(),
                    max: dims
                        .iter()
                        .map(|d| pick(d, limits.max_batch, limits.max_length, limits.max_length))
                        .collect(),
                })
                .collect(),
        };
        profile.validate()?;
        Ok(profile)
    }

    fn validate(&self) -> Result<()> {
        for i in &self.inputs {
            if i.name.is_empty() || i.name.contains([',', ':']) {
                return Err(Error::Options(format!(
                    "profile input name {:?} must be non-empty without ',' or ':'",
                    i.name
                )));
            }
            let same_rank = i.min.len() == i.opt.len() && i.opt.len() == i.max.len();
            // A min of 0 is for a KV cache that may be empty; no dim is always empty.
            let ordered = i
                .min
                .iter()
                .zip(&i.opt)
                .zip(&i.max)
                .all(|((a, b), c)| 0 <= *a && a <= b && b <= c && 1 <= *c);
            if !same_rank || !ordered {
                return Err(Error::Options(format!(
                    "profile input {}: need 0 <= min {:?} <= opt {:?} <= max {:?} (max >= 1) \
                     per dim",
                    i.name, i.min, i.opt, i.max
                )));
            }
        }
        Ok(())
    }

    /// `name:d0xd1x..,name2:..` — ONNX Runtime's syntax for profile shapes.
    fn shapes(&self, pick: impl Fn(&ProfileInput) -> &Vec<i64>) -> String {
        self.inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = pick(i).iter().map(|d| d.to_string()).collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ShapeLimits {
        ShapeLimits {
            opt_batch: 4,
            max_batch: 8,
            opt_length: 512,
            max_length: 2048,
        }
    }

    #[test]
    fn profile_shapes_follow_batch_and_length_limits() {
        use ProfileDim::*;
        let p = ShapeProfile::from_limits(
            &[
                ("inputs_embeds", &[Batch, Length, Fixed(896)]),
                ("attention_mask", &[Batch, Length]),
            ],
            &limits(),
        )
        .unwrap();
        let trt = TensorRtOptions {
            fp16: true,
            engine_cache_dir: Some(PathBuf::from("/tmp/trt-cache")),
            profile: Some(p),
            ..Default::default()
        };
        let pairs = trt.option_pairs().unwrap();
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("trt_fp16_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_enable"), Some("1"));
        assert_eq!(get("trt_engine_cache_path"), Some("/tmp/trt-cache"));
        assert_eq!(
            get("trt_profile_min_shapes"),
            Some("inputs_embeds:1x1x896,attention_mask:1x1")
        );
        assert_eq!(
            get("trt_profile_opt_shapes"),
            Some("inputs_embeds:4x512x896,attention_mask:4x512")
        );
        assert_eq!(
            get("trt_profile_max_shapes"),
            Some("inputs_embeds:8x2048x896,attention_mask:8x2048")
        );
    }

    #[test]
    fn a_past_dim_starts_at_zero() {
        use ProfileDim::*;
        let p = ShapeProfile::from_limits(
            &[("past_key_values.0.key", &[Batch, Fixed(2), Past, Fixed(64)])],
            &limits(),
        )
        .unwrap();
        assert_eq!(p.inputs[0].min, vec![1, 2, 0, 64]);
        assert_eq!(p.inputs[0].opt, vec![4, 2, 512, 64]);
        assert_eq!(p.inputs[0].max, vec![8, 2, 2048, 64]);
    }

    #[test]
    fn bad_limits_and_names_are_refused() {
        let mut l = limits();
        l.opt_batch = 16;
        assert!(ShapeProfile::from_limits(&[("x", &[ProfileDim::Batch])], &l).is_err());
        assert!(ShapeProfile::from_limits(&[("x:y", &[ProfileDim::Batch])], &limits()).is_err());
        assert!(ShapeProfile::from_limits(&[("x", &[ProfileDim::Fixed(0)])], &limits()).is_err());
    }

    #[test]
    fn provider_names_parse() {
        assert_eq!(
            "CPU".parse::<ExecutionProvider>().unwrap(),
            ExecutionProvider::Cpu
        );
        assert_eq!("cuda".parse::<ExecutionProvider>().unwrap().name(), "cuda");
        assert_eq!(
            "tensorrt".parse::<ExecutionProvider>().unwrap().to_string(),
            "tensorrt"
        );
        let err = "rocm".parse::<ExecutionProvider>().unwrap_err().to_string();
        assert!(err.contains("cpu, cuda or tensorrt"), "{err}");
    }

    #[test]
    fn cuda_options_use_onnx_runtime_keys() {
        let o = CudaOptions {
            device_id: 1,
            memory_limit_bytes: Some(1 << 30),
        };
        assert_eq!(
            o.option_pairs(),
            vec![
                ("device_id", "1".to_string()),
                ("gpu_mem_limit", "1073741824".to_string())
            ]
        );
    }

    #[test]
    fn cpu_provider_keeps_the_memory_arena() {
        let shown = format!("{:?}", cpu_provider());
        assert!(shown.contains("use_arena: true"), "{shown}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_provider_without_its_feature_is_an_error() {
        let Err(err) = ExecutionProvider::Cuda(CudaOptions::default()).dispatches() else {
            panic!("a CUDA registration was built without the cuda feature");
        };
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
