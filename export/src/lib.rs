//! ONNX export of the reward model.
//!
//! `proto` holds the ONNX protobuf messages (prost, no protoc), `graph` a builder for them,
//! `external_data` the streamed `<graph>.onnx.data` weight file, `dtype` element types and
//! fp16 weight conversion, and `precision` the casts an fp16 graph needs. `model` emits the
//! reward model's blocks with them and writes whole export directories.

pub mod dtype;
pub mod error;
pub mod external_data;
pub mod graph;
pub mod model;
pub mod precision;
pub mod proto;

pub use dtype::{DataType, ElementSlice};
pub use error::{Error, Result};
pub use graph::{Attr, Dim, GraphBuilder, SavedModel, Value};
pub use model::{export_onnx, ExportOptions, ExportReport};
pub use precision::Precision;
