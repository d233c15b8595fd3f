//! A small ONNX graph builder: typed inputs / outputs with fixed or symbolic dims,
//! initializers (large ones streamed to external data), nodes with attributes, and names that
//! are checked for uniqueness and existence as the graph is built rather than by the runtime.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use prost::Message;

use crate::dtype::{self, DataType, ElementSlice};
use crate::error::{Error, Result};
use crate::external_data::ExternalDataWriter;
use crate::proto::{
    attribute_proto::AttributeType, tensor_shape_proto, type_proto, AttributeProto, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto, IR_VERSION,
};

/// Opset written unless [`GraphBuilder::set_opset`] says otherwise: 17 is the first with
/// `LayerNormalization`, and TensorRT and every ONNX Runtime since 1.13 support it.
pub const DEFAULT_OPSET: i64 = 17;
pub const MIN_OPSET: i64 = 17;
/// Initializers smaller than this stay inline in the model (shape constants, scalars, small
/// biases): the convention of onnx's own external-data converter.
pub const DEFAULT_INLINE_LIMIT: usize = 1024;

/// Takes an initializer's elements piece by piece, in row-major order.
pub type PieceSink<'s> = dyn FnMut(ElementSlice<'_>) -> Result<()> + 's;
/// Hands all of an initializer's elements to a [`PieceSink`].
pub type PieceSource<'s> = dyn FnMut(&mut PieceSink<'_>) -> Result<()> + 's;

/// A named value of the graph (input, initializer or node output).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The empty name ONNX uses for an omitted optional input that precedes a given one.
    pub fn absent() -> Value {
        Value(String::new())
    }
}

/// One dimension of an input or output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dim {
    Fixed(i64),
    /// A named dynamic dimension; equal names promise equal sizes.
    Symbolic(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Dim::Fixed(v as i64)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Symbolic(v.to_string())
    }
}

/// A node attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Str(String),
    Tensor(Box<TensorProto>),
}

impl Attr {
    fn to_proto(&self, name: &str) -> AttributeProto {
        let mut a = AttributeProto {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let ty = match self {
            Attr::Int(v) => {
                a.i = Some(*v);
                AttributeType::Int
            }
            Attr::Float(v) => {
                a.f = Some(*v);
                AttributeType::Float
            }
            Attr::Ints(v) => {
                a.ints = v.clone();
                AttributeType::Ints
            }
            Attr::Floats(v) => {
                a.floats = v.clone();
                AttributeType::Floats
            }
            Attr::Str(v) => {
                a.s = Some(v.as_bytes().to_vec());
                AttributeType::String
            }
            Attr::Tensor(t) => {
                a.t = Some(t.as_ref().clone());
                AttributeType::Tensor
            }
        };
        a.r#type = Some(ty as i32);
        a
    }
}

/// What [`GraphBuilder::save`] wrote.
#[derive(Debug, Clone)]
pub struct SavedModel {
    pub model: PathBuf,
    /// The external data file, when any initializer went there.
    pub data: Option<PathBuf>,
    pub data_bytes: u64,
}

/// Builds one graph, to be saved as `dir/<name>.onnx` (+ `dir/<name>.onnx.data`).
///
/// An error while adding an external initializer (an fp16 overflow, a full disk) can leave a
/// partial tensor in the data file: drop the builder then, do not save it.
pub struct GraphBuilder {
    name: String,
    dir: PathBuf,
    opset: i64,
    inline_limit: usize,
    scope: String,
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
    metadata: Vec<StringStringEntryProto>,
    /// Every value name in the graph, to refuse duplicates and dangling references.
    values: HashSet<String>,
    node_names: HashSet<String>,
    counters: HashMap<String, usize>,
    data: Option<ExternalDataWriter>,
}

impl GraphBuilder {
    /// A graph named `name` (also the file stem) whose files go to `dir`. Nothing is written
    /// until the first external initializer.
    pub fn new(dir: &Path, name: &str) -> Result<Self> {
        let file_safe = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !file_safe {
            return Err(Error::graph(
                name,
                "a graph name must be non-empty and use only [A-Za-z0-9_.-] (it names files)",
            ));
        }
        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            opset: DEFAULT_OPSET,
            inline_limit: DEFAULT_INLINE_LIMIT,
            scope: String::new(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            initializers: Vec::new(),
            metadata: Vec::new(),
            values: HashSet::new(),
            node_names: HashSet::new(),
            counters: HashMap::new(),
            data: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn opset(&self) -> i64 {
        self.opset
    }

    pub fn set_opset(&mut self, opset: i64) -> Result<()> {
        if opset < MIN_OPSET {
            return Err(self.err(format!("opset {opset} is below the minimum {MIN_OPSET}")));
        }
        self.opset = opset;
        Ok(())
    }

    /// Initializers of fewer bytes stay inline; 0 sends every initializer to external data.
    pub fn set_inline_limit(&mut self, bytes: usize) {
        self.inline_limit = bytes;
    }

    /// Prefix for generated node and value names (e.g. `layers.3.attn`), so that a runtime's
    /// error about a node says which part of the model it belongs to. Empty clears it.
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    /// A `metadata_props` entry of the model (precision, source checkpoint, ...).
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.metadata.retain(|e| e.key.as_deref() != Some(key));
        self.metadata.push(StringStringEntryProto {
            key: Some(key.to_string()),
            value: Some(value.to_string()),
        });
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::graph(&self.name, msg)
    }

    fn claim(&mut self, name: &str) -> Result<Value> {
        if name.is_empty() {
            return Err(self.err("a value name must not be empty"));
        }
        if !self.values.insert(name.to_string()) {
            return Err(self.err(format!("value name `{name}` is used twice")));
        }
        Ok(Value(name.to_string()))
    }

    /// A name not yet used, built from the scope and `hint`.
    fn fresh(&mut self, hint: &str) -> String {
        let base = if self.scope.is_empty() {
            hint.to_string()
        } else {
            format!("{}/{hint}", self.scope)
        };
        let counter = self.counters.entry(base.clone()).or_insert(0);
        loop {
            let candidate = format!("{base}_{counter}");
            *counter += 1;
            if !self.values.contains(&candidate) && !self.node_names.contains(&candidate) {
                return candidate;
            }
        }
    }

    fn check_known(&self, v: &Value) -> Result<()> {
        if v.0.is_empty() || self.values.contains(&v.0) {
            Ok(())
        } else {
            Err(self.err(format!("value `{}` is not defined in this graph", v.0)))
        }
    }

    pub fn input(&mut self, name: &str, dtype: DataType, dims: &[Dim]) -> Result<Value> {
        let v = self.claim(name)?;
        self.inputs.push(value_info(name, dtype, dims));
        Ok(v)
    }

    /// Declares `value` a graph output called `name` (through an `Identity` node when the
    /// value is called otherwise).
    pub fn output(
        &mut self,
        name: &str,
        value: &Value,
        dtype: DataType,
        dims: &[Dim],
    ) -> Result<()> {
        self.check_known(value)?;
        if value.0.is_empty() {
            return Err(self.err(format!("output `{name}` has no value")));
        }
        if self.outputs.iter().any(|o| o.name.as_deref() == Some(name)) {
            return Err(self.err(format!("output `{name}` is declared twice")));
        }
        if value.0 != name {
            let out = self.claim(name)?;
            let node_name = self.fresh("Identity");
            self.push_node(node_name, "Identity", &[value], &[out], &[]);
        }
        self.outputs.push(value_info(name, dtype, dims));
        Ok(())
    }

    /// An initializer from borrowed elements, stored as `store_as` (e.g. f32 weights stored as
    /// fp16). Large ones are streamed to the external data file.
    pub fn initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: ElementSlice<'_>,
        store_as: DataType,
    ) -> Result<Value> {
        self.add_initializer(name, dims, data, store_as, false)
    }

    /// An initializer whose elements `fill` hands to its argument in row-major order, in as
    /// many pieces as it likes, stored as `store_as`: a weight rearranged on the way (a matrix
    /// transposed block by block) is streamed out without a rearranged copy of the whole.
    pub fn initializer_pieces(
        &mut self,
        name: &str,
        dims: &[usize],
        store_as: DataType,
        fill: &mut PieceSource<'_>,
    ) -> Result<Value> {
        self.add_initializer_pieces(name, dims, store_as, false, fill)
    }

    fn add_initializer(
        &mut self,
        name: &str,
        dims: &[usize],
        data: ElementSlice<'_>,
        store_as: DataType,
        force_inline: bool,
    ) -> Result<Value> {
        let numel: usize = dims.iter().product();
        if numel != data.len() {
            return Err(self.err(format!(
                "initializer `{name}`: dims {dims:?} hold {numel} elements, data has {}",
                data.len()
            )));
        }
        self.add_initializer_pieces(name, dims, store_as, force_inline, &mut |emit| emit(data))
    }

    fn add_initializer_pieces(
        &mut self,
        name: &str,
        dims: &[usize],
        store_as: DataType,
        force_inline: bool,
        fill: &mut PieceSource<'_>,
    ) -> Result<Value> {
        let numel: usize = dims.iter().product();
        let v = self.claim(name)?;
        let dims_i64: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let length = numel as u64 * store_as.size_bytes() as u64;
        let graph = self.name.clone();
        let mut count = 0usize;
        let miscount = |got: String| {
            Error::graph(
                &graph,
                format!("initializer `{name}`: dims {dims:?} hold {numel} elements, got {got}"),
            )
        };
        let proto = if force_inline || length < self.inline_limit as u64 {
            let mut raw = Vec::with_capacity(length as usize);
            fill(&mut |piece| {
                if count + piece.len() > numel {
                    return Err(miscount(format!("more than {count} + {}", piece.len())));
                }
                dtype::encode_at(piece, count, store_as, name, &mut |b| {
                    raw.extend_from_slice(b);
                    Ok(())
                })?;
                count += piece.len();
                Ok(())
            })?;
            TensorProto {
                name: Some(name.to_string()),
                dims: dims_i64,
                data_type: Some(store_as.onnx_code()),
                raw_data: Some(raw),
                ..Default::default()
            }
        } else {
            let writer = match &mut self.data {
                Some(w) => w,
                None => {
                    let file_name = format!("{}.onnx.data", self.name);
                    self.data
                        .insert(ExternalDataWriter::create(&self.dir, &file_name)?)
                }
            };
            let mut sink = writer.begin_tensor(length)?;
            fill(&mut |piece| {
                if count + piece.len() > numel {
                    return Err(miscount(format!("more than {count} + {}", piece.len())));
                }
                dtype::encode_at(piece, count, store_as, name, &mut |b| sink.write(b))?;
                count += piece.len();
                Ok(())
            })?;
            if count != numel {
                return Err(miscount(count.to_string()));
            }
            let location = sink.finish()?;
            writer.tensor_proto(name, store_as, &dims_i64, location)
        };
        if count != numel {
            return Err(miscount(count.to_string()));
        }
        self.initializers.push(proto);
        Ok(v)
    }

    /// An initializer from a candle tensor (any device, layout and float dtype), read in place
    /// when it is a contiguous CPU tensor.
    pub fn initializer_from_tensor(
        &mut self,
        name: &str,
        t: &Tensor,
        store_as: DataType,
    ) -> Result<Value> {
        let dims = t.dims().to_vec();
        dtype::with_tensor_elements(t, name, |s| self.initializer(name, &dims, s, store_as))
    }

    /// A small i64 constant (axes, shapes), always inline, under a generated name.
    pub fn const_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> Result<Value> {
        let name = self.fresh(hint);
        self.add_initializer(&name, dims, ElementSlice::I64(data), DataType::Int64, true)
    }

    /// A scalar float constant in `dtype` (e.g. an epsilon in fp16), inline.
    pub fn const_scalar(&mut self, hint: &str, value: f32, dtype: DataType) -> Result<Value> {
        let name = self.fresh(hint);
        self.add_initializer(&name, &[], ElementSlice::F32(&[value]), dtype, true)
    }

    /// A node with one output, named from its op type.
    pub fn node(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
    ) -> Result<Value> {
        let mut outs = self.node_n(op_type, inputs, 1, attrs)?;
        outs.pop()
            .ok_or_else(|| self.err(format!("{op_type} produced no output")))
    }

    /// A node with `n_outputs` outputs.
    pub fn node_n(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        n_outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Result<Vec<Value>> {
        for v in inputs {
            self.check_known(v)?;
        }
        let node_name = self.fresh(op_type);
        let mut outputs = Vec::with_capacity(n_outputs);
        for i in 0..n_outputs {
            let name = if n_outputs == 1 {
                format!("{node_name}_out")
            } else {
                format!("{node_name}_out{i}")
            };
            outputs.push(self.claim(&name)?);
        }
        self.push_node(node_name, op_type, inputs, &outputs, attrs);
        Ok(outputs)
    }

    /// `Cast` to `to`.
    pub fn cast(&mut self, x: &Value, to: DataType) -> Result<Value> {
        self.node("Cast", &[x], &[("to", Attr::Int(to.onnx_code() as i64))])
    }

    fn push_node(
        &mut self,
        node_name: String,
        op_type: &str,
        inputs: &[&Value],
        outputs: &[Value],
        attrs: &[(&str, Attr)],
    ) {
        self.node_names.insert(node_name.clone());
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outputs.iter().map(|v| v.0.clone()).collect(),
            name: Some(node_name),
            op_type: Some(op_type.to_string()),
            domain: None,
            attribute: attrs.iter().map(|(k, a)| a.to_proto(k)).collect(),
            doc_string: None,
        });
    }

    /// Writes `dir/<name>.onnx` (through a temporary file and a rename, so a model file that
    /// exists is complete) after finishing the external data file.
    pub fn save(self) -> Result<SavedModel> {
        if self.outputs.is_empty() {
            return Err(self.err("the graph has no outputs"));
        }
        let (data, data_bytes) = match self.data {
            Some(w) => {
                let (path, size) = w.finish()?;
                (Some(path), size)
            }
            None => (None, 0),
        };
        let model = ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("unireward-export".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(self.name.clone()),
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: self.metadata,
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let path = self.dir.join(format!("{}.onnx", self.name));
        let tmp = self.dir.join(format!(".{}.onnx.tmp", self.name));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()
        };
        write().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        Ok(SavedModel {
            model: path,
            data,
            data_bytes,
        })
    }
}

fn value_info(name: &str, dtype: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Symbolic(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            }),
            denotation: None,
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(dtype.onnx_code()),
                shape: Some(TensorShapeProto { dim }),
            })),
            denotation: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> (tempfile::TempDir, GraphBuilder) {
        let dir = tempfile::tempdir().unwrap();
        let g = GraphBuilder::new(dir.path(), "g").unwrap();
        (dir, g)
    }

    #[test]
    fn names_are_unique_and_references_checked() {
        let (_dir, mut g) = builder();
        let x = g
            .input("x", DataType::Float, &["batch".into(), 4usize.into()])
            .unwrap();
        assert!(g.input("x", DataType::Float, &[]).is_err());
        let a = g.node("Relu", &[&x], &[]).unwrap();
        let b = g.node("Relu", &[&a], &[]).unwrap();
        assert_ne!(a, b);
        let ghost = Value("nowhere".into());
        let err = g.node("Relu", &[&ghost], &[]).unwrap_err().to_string();
        assert!(err.contains("nowhere"), "{err}");
        g.set_scope("layers.0");
        let c = g.node("Relu", &[&b], &[]).unwrap();
        assert!(c.name().starts_with("layers.0/Relu_"), "{}", c.name());
    }

    #[test]
    fn small_initializers_stay_inline_and_large_go_external() {
        let (dir, mut g) = builder();
        let x = g.input("x", DataType::Float, &[4usize.into()]).unwrap();
        let small = g
            .initializer("small", &[4], ElementSlice::F32(&[1.0; 4]), DataType::Float)
            .unwrap();
        let big_data = vec![0.5f32; 1024];
        let big = g
            .initializer(
                "big",
                &[1024],
                ElementSlice::F32(&big_data),
                DataType::Float16,
            )
            .unwrap();
        let y = g.node("Add", &[&x, &small], &[]).unwrap();
        g.output("y", &y, DataType::Float, &[4usize.into()])
            .unwrap();
        let _ = big;
        let saved = g.save().unwrap();
        assert_eq!(
            saved.data.as_deref(),
            Some(dir.path().join("g.onnx.data").as_path())
        );
        assert_eq!(saved.data_bytes, 2048);
        let model = ModelProto::decode(std::fs::read(&saved.model).unwrap().as_slice()).unwrap();
        let graph = model.graph.unwrap();
        assert!(graph.initializer[0].raw_data.is_some());
        assert!(graph.initializer[1].external_data.len() == 3);
        assert_eq!(
            graph.node.last().unwrap().op_type.as_deref(),
            Some("Identity")
        );
        assert_eq!(model.opset_import[0].version, Some(DEFAULT_OPSET));
    }

    #[test]
    fn bad_graph_name_and_opset_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GraphBuilder::new(dir.path(), "../up").is_err());
        let mut g = GraphBuilder::new(dir.path(), "ok").unwrap();
        assert!(g.set_opset(13).is_err());
        g.set_opset(18).unwrap();
        assert!(g.save().unwrap_err().to_string().contains("no outputs"));
    }

    #[test]
    fn constants_are_inline_under_generated_names() {
        let (_dir, mut g) = builder();
        g.set_inline_limit(0);
        let a = g.const_i64("shape", &[2], &[-1, 4]).unwrap();
        let b = g.const_i64("shape", &[2], &[1, 4]).unwrap();
        let eps = g.const_scalar("eps", 1e-6, DataType::Float16).unwrap();
        assert_ne!(a, b);
        let raw: Vec<usize> = g
            .initializers
            .iter()
            .map(|t| t.raw_data.as_ref().unwrap().len())
            .collect();
        assert_eq!(raw, [16, 16, 2]);
        assert!(g.initializers[2].dims.is_empty());
        assert_eq!(g.initializers[2].name.as_deref(), Some(eps.name()));
        assert!(g.data.is_none());
    }

    #[test]
    fn mismatched_dims_are_refused() {
        let (_dir, mut g) = builder();
        let err = g
            .initializer("w", &[2, 3], ElementSlice::F32(&[0.0; 5]), DataType::Float)
            .unwrap_err();
        assert!(err.to_string().contains("6 elements"));
    }
}
