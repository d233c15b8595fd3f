//! The graph-emitting counterparts of the layers every block shares (linear, LayerNorm,
//! RMSNorm, the GELUs, SiLU, softmax), each written as the same sequence of operations as the
//! candle code it mirrors, and the [`Emitter`] that ties a graph to its weights and precision.

use std::collections::HashMap;

use crate::dtype::{self, DataType};
use crate::error::Result;
use crate::graph::{Attr, GraphBuilder, Value};
use crate::model::weights::{transposed_pieces, Weights};
use crate::precision::Precision;

/// `prefix` + `name` as a checkpoint key: prefixes come with (`vision_tower.`) or without
/// (`multi_modal_projector.linear_1`) their trailing dot depending on the layout.
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        format!("{prefix}{name}")
    } else {
        format!("{prefix}.{name}")
    }
}

/// One graph being emitted: its builder, where its weights come from, and its precision.
///
/// Weights become initializers named by their checkpoint key. A linear weight is stored
/// transposed, [in, out], as the MatMul multiplies it, not as the checkpoint's [out, in]
/// behind a Transpose node: ONNX Runtime's quantizer and transformer optimizer only recognise
/// a weight that is the MatMul's initializer itself.
pub struct Emitter<'w> {
    g: GraphBuilder,
    weights: &'w Weights,
    precision: Precision,
    /// Initializers by (checkpoint key, stored transposed).
    params: HashMap<(String, bool), Value>,
    scalars: HashMap<(u32, DataType), Value>,
    ints: HashMap<Vec<i64>, Value>,
}

impl<'w> Emitter<'w> {
    pub fn new(g: GraphBuilder, weights: &'w Weights, precision: Precision) -> Self {
        Self {
            g,
            weights,
            precision,
            params: HashMap::new(),
            scalars: HashMap::new(),
            ints: HashMap::new(),
        }
    }

    pub fn graph(&mut self) -> &mut GraphBuilder {
        &mut self.g
    }

    pub fn into_graph(self) -> GraphBuilder {
        self.g
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The element type of weights, activations and matmuls.
    pub fn compute_type(&self) -> DataType {
        self.precision.compute_type()
    }

    /// The weight stored under `key`, as an initializer in the compute type. A key asked for
    /// twice (tied embeddings) is stored once.
    pub fn weight(&mut self, key: &str, shape: &[usize]) -> Result<Value> {
        let store = self.compute_type();
        self.param(key, shape, store)
    }

    /// A weight kept in f32 whatever the precision: normalisation parameters, which take part
    /// in f32 arithmetic and are too small for their size to matter.
    pub fn weight_f32(&mut self, key: &str, shape: &[usize]) -> Result<Value> {
        self.param(key, shape, DataType::Float)
    }

    /// The weight stored under `key` (of shape `shape`) read as a row-major [rows, cols]
    /// matrix, as an initializer [cols, rows] in the compute type: the right-hand operand of a
    /// MatMul computing `x @ Wᵀ`. Streamed block by block, so no transposed copy of a large
    /// weight is held.
    pub fn weight_transposed(
        &mut self,
        key: &str,
        shape: &[usize],
        rows: usize,
        cols: usize,
    ) -> Result<Value> {
        if let Some(v) = self.params.get(&(key.to_string(), true)) {
            return Ok(v.clone());
        }
        let t = self.weights.get(key, shape)?;
        let name = self.initializer_name(key, true);
        let store = self.compute_type();
        let g = &mut self.g;
        let v = dtype::with_tensor_elements(&t, key, |elements| {
            g.initializer_pieces(&name, &[cols, rows], store, &mut |emit| {
                transposed_pieces(elements, rows, cols, key, emit)
            })
        })?;
        self.params.insert((key.to_string(), true), v.clone());
        Ok(v)
    }

    fn param(&mut self, key: &str, shape: &[usize], store: DataType) -> Result<Value> {
        if let Some(v) = self.params.get(&(key.to_string(), false)) {
            return Ok(v.clone());
        }
        let t = self.weights.get(key, shape)?;
        let name = self.initializer_name(key, false);
        let v = self.g.initializer_from_tensor(&name, &t, store)?;
        self.params.insert((key.to_string(), false), v.clone());
        Ok(v)
    }

    /// The checkpoint key, unless the graph already holds that weight in the other
    /// orientation (a tied table used both ways); then the key marked with its orientation.
    fn initializer_name(&self, key: &str, transposed: bool) -> String {
        if !self.params.contains_key(&(key.to_string(), !transposed)) {
            key.to_string()
        } else if transposed {
            format!("{key}.transposed")
        } else {
            format!("{key}.untransposed")
        }
    }

    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: &[(&str, Attr)],
    ) -> Result<Value> {
        self.g.node(op_type, inputs, attrs)
    }

    /// A scalar constant in the compute type.
    pub fn scalar(&mut self, value: f32) -> Result<Value> {
        let dtype = self.compute_type();
        self.scalar_of(value, dtype)
    }

    pub fn scalar_f32(&mut self, value: f32) -> Result<Value> {
        self.scalar_of(value, DataType::Float)
    }

    fn scalar_of(&mut self, value: f32, dtype: DataType) -> Result<Value> {
        if let Some(v) = self.scalars.get(&(value.to_bits(), dtype)) {
            return Ok(v.clone());
        }
        let v = self.g.const_scalar("scalar", value, dtype)?;
        self.scalars.insert((value.to_bits(), dtype), v.clone());
        Ok(v)
    }

    /// A 1-D i64 constant (shapes, axes, slice bounds).
    pub fn ints(&mut self, data: &[i64]) -> Result<Value> {
        if let Some(v) = self.ints.get(data) {
            return Ok(v.clone());
        }
        let v = self.g.const_i64("ints", &[data.len()], data)?;
        self.ints.insert(data.to_vec(), v.clone());
        Ok(v)
    }

    /// f32 → compute type.
    pub fn narrow(&mut self, x: &Value) -> Result<Value> {
        self.precision.narrow(&mut self.g, x)
    }

    /// Compute type → f32.
    pub fn widen(&mut self, x: &Value) -> Result<Value> {
        self.precision.widen(&mut self.g, x)
    }

    /// `Reshape`; a 0 in `shape` keeps that input dim (so symbolic dims keep their names).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Result<Value> {
        let s = self.ints(shape)?;
        self.op("Reshape", &[x, &s], &[])
    }

    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Result<Value> {
        self.op("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }

    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Result<Value> {
        let a = self.ints(axes)?;
        self.op("Unsqueeze", &[x, &a], &[])
    }

    /// `x[..., start..end]` along `axis`.
    pub fn slice(&mut self, x: &Value, axis: i64, start: i64, end: i64) -> Result<Value> {
        let (s, e, a) = (
            self.ints(&[start])?,
            self.ints(&[end])?,
            self.ints(&[axis])?,
        );
        self.op("Slice", &[x, &s, &e, &a], &[])
    }

    /// candle's `Linear`: `x @ weightᵀ (+ bias)`, weight [d_out, d_in] under `prefix.weight`
    /// (stored as weightᵀ, see [`Emitter`]).
    pub fn linear(
        &mut self,
        prefix: &str,
        d_in: usize,
        d_out: usize,
        bias: bool,
        x: &Value,
    ) -> Result<Value> {
        let wt = self.weight_transposed(&key(prefix, "weight"), &[d_out, d_in], d_out, d_in)?;
        let y = self.op("MatMul", &[x, &wt], &[])?;
        if !bias {
            return Ok(y);
        }
        let b = self.weight(&key(prefix, "bias"), &[d_out])?;
        self.op("Add", &[&y, &b], &[])
    }

    /// LayerNorm over the last dim (`prefix.weight`, `prefix.bias`), computed in f32.
    pub fn layer_norm(&mut self, prefix: &str, dim: usize, eps: f64, x: &Value) -> Result<Value> {
        let w = self.weight_f32(&key(prefix, "weight"), &[dim])?;
        let b = self.weight_f32(&key(prefix, "bias"), &[dim])?;
        let xf = self.widen(x)?;
        let y = self.op(
            "LayerNormalization",
            &[&xf, &w, &b],
            &[
                ("axis", Attr::Int(-1)),
                ("epsilon", Attr::Float(eps as f32)),
            ],
        )?;
        self.narrow(&y)
    }

    /// RMSNorm over the last dim, in f32 as candle's `rms_norm` computes it:
    /// `x / sqrt(mean(x²) + eps) · weight`. Written as the Pow → ReduceMean → Add → Sqrt → Div
    /// → Mul chain that ONNX Runtime fuses into one normalisation kernel.
    pub fn rms_norm(&mut self, prefix: &str, dim: usize, eps: f64, x: &Value) -> Result<Value> {
        let w = self.weight_f32(&key(prefix, "weight"), &[dim])?;
        let xf = self.widen(x)?;
        let two = self.scalar_f32(2.0)?;
        let sq = self.op("Pow", &[&xf, &two], &[])?;
        // ReduceMean takes its axes as an input from opset 18, as an attribute before.
        let mean = if self.graph().opset() >= 18 {
            let axes = self.ints(&[-1])?;
            self.op("ReduceMean", &[&sq, &axes], &[("keepdims", Attr::Int(1))])?
        } else {
            self.op(
                "ReduceMean",
                &[&sq],
                &[("axes", Attr::Ints(vec![-1])), ("keepdims", Attr::Int(1))],
            )?
        };
        let e = self.scalar_f32(eps as f32)?;
        let m = self.op("Add", &[&mean, &e], &[])?;
        let m = self.op("Sqrt", &[&m], &[])?;
        let y = self.op("Div", &[&xf, &m], &[])?;
        let y = self.op("Mul", &[&y, &w], &[])?;
        self.narrow(&y)
    }

    /// candle's `gelu` (the tanh approximation, SigLIP's `gelu_pytorch_tanh`):
    /// `0.5·x · (1 + tanh(√(2/π)·x · (1 + 0.044715·x·x)))`.
    pub fn gelu_tanh(&mut self, x: &Value) -> Result<Value> {
        let (c, one, half) = (self.scalar(0.044715)?, self.scalar(1.0)?, self.scalar(0.5)?);
        let k = self.scalar((2.0 / std::f64::consts::PI).sqrt() as f32)?;
        let inner = self.op("Mul", &[&c, x], &[])?;
        let inner = self.op("Mul", &[&inner, x], &[])?;
        let inner = self.op("Add", &[&one, &inner], &[])?;
        let t = self.op("Mul", &[&k, x], &[])?;
        let t = self.op("Mul", &[&t, &inner], &[])?;
        let t = self.op("Tanh", &[&t], &[])?;
        let t = self.op("Add", &[&one, &t], &[])?;
        let y = self.op("Mul", &[&half, x], &[])?;
        self.op("Mul", &[&y, &t], &[])
    }

    /// candle's `gelu_erf` (exact GELU): `(erf(x/√2) + 1) · 0.5 · x`.
    pub fn gelu_erf(&mut self, x: &Value) -> Result<Value> {
        let (r, one, half) = (
            self.scalar(std::f32::consts::FRAC_1_SQRT_2)?,
            self.scalar(1.0)?,
            self.scalar(0.5)?,
        );
        let t = self.op("Mul", &[x, &r], &[])?;
        let t = self.op("Erf", &[&t], &[])?;
        let t = self.op("Add", &[&t, &one], &[])?;
        let t = self.op("Mul", &[&t, &half], &[])?;
        self.op("Mul", &[&t, x], &[])
    }

    /// SiLU as the candle model's SwiGLU op computes it: `x · σ(x)`.
    pub fn silu(&mut self, x: &Value) -> Result<Value> {
        let s = self.op("Sigmoid", &[x], &[])?;
        self.op("Mul", &[x, &s], &[])
    }

    /// Softmax over the last dim, computed in f32; the result is in the compute type.
    pub fn softmax(&mut self, x: &Value) -> Result<Value> {
        let xf = self.widen(x)?;
        let y = self.op("Softmax", &[&xf], &[("axis", Attr::Int(-1))])?;
        self.narrow(&y)
    }
}
