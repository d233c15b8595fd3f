//! ONNX Runtime sessions: the runtime loaded once per process from the library that
//! [`LibrarySearch`] finds, sessions created from a model path with an execution provider,
//! and runs with f32 / f16 / i64 inputs and f32 / i64 outputs.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use half::f16;
use ort::environment::Environment;
use ort::session::{OutputSelector, RunOptions, Session, SessionInputValue};
use ort::value::{TensorElementType, TensorRef, ValueType};

use super::library::LibrarySearch;
use super::providers::ExecutionProvider;
use crate::backend::error::{Error, Result};

/// The loaded ONNX Runtime: one per process (the library cannot be swapped once loaded).
pub struct OrtRuntime {
    env: Environment,
    library: PathBuf,
}

static RUNTIME: OnceLock<OrtRuntime> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

impl OrtRuntime {
    /// The process's runtime, loading the library on first use.
    pub fn get() -> Result<&'static OrtRuntime> {
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt);
        }
        // Serialise first loads; a failed load is retried by the next call (the user may
        // have fetched the library in between).
        let _guard = RUNTIME_INIT.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return Ok(rt);
        }
        let library = LibrarySearch::from_environment().locate()?;
        let env = ort::init_from(&library)
            .map_err(|e| Error::LibraryLoad {
                path: library.clone(),
                msg: e.to_string(),
            })?
            .with_name("unireward")
            .with_telemetry(false)
            .build()
            .map_err(|e| Error::LibraryLoad {
                path: library.clone(),
                msg: e.to_string(),
            })?;
        Ok(RUNTIME.get_or_init(|| OrtRuntime { env, library }))
    }

    /// The shared library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// ONNX Runtime's build description (version, git commit, build flags).
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }

    /// Whether sessions can ask for `provider`: this engine was built with its feature and the
    /// loaded library with the provider (onnxruntime-gpu has CUDA and TensorRT, the plain
    /// onnxruntime wheel neither). It may still fail to register without a GPU or without
    /// the CUDA / TensorRT libraries.
    pub fn supports_provider(&self, provider: &ExecutionProvider) -> Result<bool> {
        // `tensorrt` implies `cuda`, so this covers both arms below.
        #[cfg(feature = "cuda")]
        use ort::ep::ExecutionProvider as _;
        let available: ort::Result<bool> = match provider {
            ExecutionProvider::Cpu => Ok(true),
            #[cfg(feature = "cuda")]
            ExecutionProvider::Cuda(_) => ort::ep::CUDA::is_available(),
            #[cfg(feature = "tensorrt")]
            ExecutionProvider::TensorRt(_) => ort::ep::TensorRT::is_available(),
            #[allow(unreachable_patterns)]
            _ => Ok(false),
        };
        available.map_err(|e| Error::Provider {
            provider: provider.name().to_string(),
            msg: e.to_string(),
        })
    }
}

/// How to open a session.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionConfig {
    pub provider: ExecutionProvider,
    /// Threads within one operator (ONNX Runtime's default: one per physical core).
    pub intra_threads: Option<usize>,
}

/// The element type and dims of a model input or output; -1 marks a dynamic dim.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub element_type: String,
    pub dims: Vec<i64>,
}

/// An input tensor borrowed from the caller (no copy is made).
#[derive(Debug, Clone, Copy)]
pub enum InputTensor<'a> {
    F32 {
        shape: &'a [usize],
        data: &'a [f32],
    },
    /// For inputs an fp16 export takes in half precision (its KV cache).
    F16 {
        shape: &'a [usize],
        data: &'a [f16],
    },
    I64 {
        shape: &'a [usize],
        data: &'a [i64],
    },
}

/// An output tensor copied out of the runtime. fp16 outputs arrive as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    pub shape: Vec<usize>,
    pub data: OutputData,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl OutputTensor {
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            OutputData::F32(v) => Some(v),
            OutputData::I64(_) => None,
        }
    }

    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            OutputData::I64(v) => Some(v),
            OutputData::F32(_) => None,
        }
    }
}

/// The outputs of one run, in the model's output order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs(pub Vec<(String, OutputTensor)>);

impl Outputs {
    pub fn get(&self, name: &str) -> Option<&OutputTensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// One ONNX model opened on one execution provider.
pub struct OrtSession {
    session: Session,
    path: PathBuf,
    provider: ExecutionProvider,
}

impl OrtSession {
    /// Opens `path` (its external data is read from beside it).
    pub fn open(path: &Path, config: &SessionConfig) -> Result<Self> {
        let rt = OrtRuntime::get()?;
        let session_err = |msg: String| Error::Session {
            path: path.to_path_buf(),
            msg,
        };
        if !path.is_file() {
            return Err(session_err("no such model file".into()));
        }
        let dispatches = config.provider.dispatches()?;
        let mut builder = Session::builder(&rt.env).map_err(|e| session_err(e.to_string()))?;
        if let Some(n) = config.intra_threads {
            builder = builder
                .with_intra_threads(n)
                .map_err(|e| session_err(e.to_string()))?;
        }
        // A session's idle pool threads spin waiting for work; with the vision and decoder
        // sessions each holding a pool, the idle one's spinning takes the cores the running
        // one needs (measured on 2 cores: 215 ms → 166 ms for one bench-small forward).
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| session_err(e.to_string()))?;
        builder = builder
            .with_execution_providers(dispatches)
            .map_err(|e| Error::Provider {
                provider: config.provider.name().to_string(),
                msg: e.to_string(),
            })?;
        let session = builder
            .commit_from_file(path)
            .map_err(|e| session_err(e.to_string()))?;
        Ok(Self {
            session,
            path: path.to_path_buf(),
            provider: config.provider.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn provider(&self) -> &ExecutionProvider {
        &self.provider
    }

    pub fn inputs(&self) -> Vec<TensorInfo> {
        self.session
            .inputs()
            .iter()
            .map(|o| info(o.name(), o.dtype()))
            .collect()
    }

    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.session
            .outputs()
            .iter()
            .map(|o| info(o.name(), o.dtype()))
            .collect()
    }

    /// Runs the model on named inputs; returns every output.
    pub fn run(&mut self, inputs: &[(&str, InputTensor<'_>)]) -> Result<Outputs> {
        self.run_selected(inputs, None)
    }

    /// Runs the model on named inputs; returns only the outputs named in `wanted` (ONNX
    /// Runtime still computes the others but never copies them out).
    pub fn run_for(
        &mut self,
        inputs: &[(&str, InputTensor<'_>)],
        wanted: &[&str],
    ) -> Result<Outputs> {
        self.run_selected(inputs, Some(wanted))
    }

    fn run_selected(
        &mut self,
        inputs: &[(&str, InputTensor<'_>)],
        wanted: Option<&[&str]>,
    ) -> Result<Outputs> {
        let run_err = |msg: String| Error::Run {
            path: self.path.clone(),
            msg,
        };
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> =
            Vec::with_capacity(inputs.len());
        for (name, t) in inputs {
            let value: SessionInputValue<'_> = match *t {
                InputTensor::F32 { shape, data } => {
                    TensorRef::from_array_view((shape.to_vec(), data))
                        .map_err(|e| run_err(format!("input {name}: {e}")))?
                        .into()
                }
                InputTensor::F16 { shape, data } => {
                    TensorRef::from_array_view((shape.to_vec(), data))
                        .map_err(|e| run_err(format!("input {name}: {e}")))?
                        .into()
                }
                InputTensor::I64 { shape, data } => {
                    TensorRef::from_array_view((shape.to_vec(), data))
                        .map_err(|e| run_err(format!("input {name}: {e}")))?
                        .into()
                }
            };
            values.push((Cow::Borrowed(*name), value));
        }
        let path = self.path.clone();
        let options = match wanted {
            None => None,
            Some(names) => {
                let selector = names
                    .iter()
                    .fold(OutputSelector::no_default(), |sel, name| sel.with(*name));
                Some(
                    RunOptions::new()
                        .map_err(|e| run_err(e.to_string()))?
                        .with_outputs(selector),
                )
            }
        };
        let outputs = match &options {
            None => self.session.run(values),
            Some(options) => self.session.run_with_options(values, options),
        }
        .map_err(|e| Error::Run {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, value) in outputs.iter() {
            let err = |msg: String| Error::Run {
                path: path.clone(),
                msg: format!("output {name}: {msg}"),
            };
            let ValueType::Tensor { ty, .. } = value.dtype() else {
                return Err(err("not a tensor".into()));
            };
            let tensor = match ty {
                TensorElementType::Float32 => {
                    let (shape, data) = value
                        .try_extract_tensor::<f32>()
                        .map_err(|e| err(e.to_string()))?;
                    OutputTensor {
                        shape: dims_of(shape),
                        data: OutputData::F32(data.to_vec()),
                    }
                }
                TensorElementType::Float16 => {
                    let (shape, data) = value
                        .try_extract_tensor::<f16>()
                        .map_err(|e| err(e.to_string()))?;
                    OutputTensor {
                        shape: dims_of(shape),
                        data: OutputData::F32(data.iter().map(|v| v.to_f32()).collect()),
                    }
                }
                TensorElementType::Int64 => {
                    let (shape, data) = value
                        .try_extract_tensor::<i64>()
                        .map_err(|e| err(e.to_string()))?;
                    OutputTensor {
                        shape: dims_of(shape),
                        data: OutputData::I64(data.to_vec()),
                    }
                }
                other => return Err(err(format!("element type {other:?} is not supported"))),
            };
            result.push((name.to_string(), tensor));
        }
        Ok(Outputs(result))
    }
}

fn dims_of(shape: &ort::value::Shape) -> Vec<usize> {
    shape.iter().map(|&d| d.max(0) as usize).collect()
}

fn info(name: &str, ty: &ValueType) -> TensorInfo {
    match ty {
        ValueType::Tensor { ty, shape, .. } => TensorInfo {
            name: name.to_string(),
            element_type: format!("{ty:?}"),
            dims: shape.iter().copied().collect(),
        },
        other => TensorInfo {
            name: name.to_string(),
            element_type: format!("{other:?}"),
            dims: Vec::new(),
        },
    }
}
