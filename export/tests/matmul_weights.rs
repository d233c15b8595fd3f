//! What ONNX Runtime's own tools need of our graphs: every linear layer's weight is the
//! MatMul's initializer, in the [in, out] orientation it multiplies, never a Transpose (or
//! Reshape) of the checkpoint's [out, in] tensor. `onnxruntime.quantization.quantize_dynamic`
//! and the transformer optimizer only recognise a weight that is the MatMul's own input.
//!
//! Reads the golden exports' protobuf; needs no runtime.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use unireward_export::proto::{GraphProto, ModelProto};
use unireward_export::{export_onnx, DataType, ExportOptions, Precision};
use unireward_tests::golden_model_dir;

fn graph(model: &Path) -> GraphProto {
    let bytes = std::fs::read(model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
    ModelProto::decode(bytes.as_slice())
        .unwrap_or_else(|e| panic!("{}: {e}", model.display()))
        .graph
        .unwrap_or_else(|| panic!("{}: no graph", model.display()))
}

/// For each MatMul: its weight input's initializer name, or the chain of ops that produce
/// that input from an initializer (e.g. `Transpose <- w`), or `None` for an activation.
struct MatMuls {
    /// (initializer name, dims, element type) of each MatMul whose weight is an initializer.
    direct: Vec<(String, Vec<i64>, i32)>,
    /// MatMuls whose right-hand input is an initializer reached through other ops.
    rearranged: Vec<String>,
    total: usize,
}

fn matmuls(g: &GraphProto) -> MatMuls {
    let inits: HashMap<&str, (Vec<i64>, i32)> = g
        .initializer
        .iter()
        .filter_map(|t| {
            Some((
                t.name.as_deref()?,
                (t.dims.clone(), t.data_type.unwrap_or(0)),
            ))
        })
        .collect();
    let producer: HashMap<&str, (&str, Vec<&str>)> = g
        .node
        .iter()
        .flat_map(|n| {
            let op = n.op_type.as_deref().unwrap_or("");
            let ins: Vec<&str> = n.input.iter().map(String::as_str).collect();
            n.output
                .iter()
                .map(move |o| (o.as_str(), (op, ins.clone())))
        })
        .collect();
    let mut out = MatMuls {
        direct: Vec::new(),
        rearranged: Vec::new(),
        total: 0,
    };
    for n in g
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some("MatMul"))
    {
        out.total += 1;
        let w = n.input[1].as_str();
        if let Some((dims, dt)) = inits.get(w) {
            out.direct.push((w.to_string(), dims.clone(), *dt));
            continue;
        }
        // Follow single-input rearrangements back: does an initializer sit behind them?
        let mut chain = Vec::new();
        let mut at = w;
        while let Some((op, ins)) = producer.get(at) {
            if !matches!(*op, "Transpose" | "Reshape" | "Cast" | "Identity") {
                break;
            }
            chain.push(*op);
            at = ins[0];
            if inits.contains_key(at) {
                out.rearranged
                    .push(format!("{} <- {} <- {at}", w, chain.join(" <- ")));
                break;
            }
        }
    }
    out
}

#[test]
fn every_linear_weight_is_its_matmuls_own_initializer() {
    let model = golden_model_dir().unwrap();
    let cfg = unireward_models::config::LlavaConfig::from_file(&model.join("config.json")).unwrap();
    let (v, t) = (&cfg.vision, &cfg.text);
    for precision in [Precision::F32, Precision::F16] {
        let dir = tempfile::tempdir().unwrap();
        let opts = ExportOptions {
            precision,
            ..Default::default()
        };
        let report = export_onnx(&model, dir.path(), &opts).unwrap_or_else(|e| panic!("{e}"));
        let want_type = precision.compute_type().onnx_code();
        for (saved, linear_layers) in [
            // Patch embedding; q, k, v, out, fc1, fc2 per layer; the projector's two.
            (&report.vision, 1 + 6 * v.num_hidden_layers + 2),
            // q, k, v, o, gate, up, down per layer; the head.
            (&report.decoder, 7 * t.num_hidden_layers + 1),
        ] {
            let g = graph(&saved.model);
            let m = matmuls(&g);
            println!(
                "{precision:?} {}: {} MatMuls, {} with an initializer weight, {} through a rearrangement",
                saved.model.display(),
                m.total,
                m.direct.len(),
                m.rearranged.len()
            );
            assert!(
                m.rearranged.is_empty(),
                "weights reach MatMuls through rearrangements: {:?}",
                m.rearranged
            );
            assert_eq!(m.direct.len(), linear_layers, "{}", saved.model.display());
            for (name, dims, dt) in &m.direct {
                assert_eq!(*dt, want_type, "{name} is stored as the compute type");
                assert_eq!(dims.len(), 2, "{name}: {dims:?}");
            }
        }
        // The orientation: [in, out], the transpose of the checkpoint's [out, in].
        let g = graph(&report.decoder.model);
        let gate = matmuls(&g)
            .direct
            .into_iter()
            .find(|(n, _, _)| n == "language_model.model.layers.0.mlp.gate_proj.weight")
            .map(|(_, dims, _)| dims);
        assert_eq!(
            gate,
            Some(vec![t.hidden_size as i64, t.intermediate_size as i64])
        );
        assert_eq!(
            DataType::from_onnx_code(want_type),
            Some(precision.compute_type())
        );
    }
}
