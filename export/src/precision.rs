//! The numeric precision of an exported graph and the casts that fp16 graphs need around the
//! parts that must run in fp32.

use crate::dtype::DataType;
use crate::error::Result;
use crate::graph::{GraphBuilder, Value};

/// The numeric precision of an exported graph.
///
/// An fp16 graph stores its weights and runs its matmuls in fp16 but keeps its inputs and
/// outputs f32 (so the engine feeds the same tensors to either graph) and runs
/// normalisations, softmax and the final log-softmax in f32, where fp16's range and
/// resolution lose verdicts. [`Precision::narrow`] and [`Precision::widen`] place those casts
/// and are no-ops in an fp32 graph, so one graph-building routine serves both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Precision {
    #[value(name = "fp32")]
    F32,
    #[value(name = "fp16")]
    F16,
}

impl Precision {
    /// The element type weights are stored in and matmuls run in.
    pub fn compute_type(self) -> DataType {
        match self {
            Precision::F32 => DataType::Float,
            Precision::F16 => DataType::Float16,
        }
    }

    /// f32 → compute type (graph inputs, results of an f32 section).
    pub fn narrow(self, g: &mut GraphBuilder, x: &Value) -> Result<Value> {
        match self {
            Precision::F32 => Ok(x.clone()),
            Precision::F16 => g.cast(x, DataType::Float16),
        }
    }

    /// Compute type → f32 (entering a normalisation / softmax, graph outputs).
    pub fn widen(self, g: &mut GraphBuilder, x: &Value) -> Result<Value> {
        match self {
            Precision::F32 => Ok(x.clone()),
            Precision::F16 => g.cast(x, DataType::Float),
        }
    }
}
