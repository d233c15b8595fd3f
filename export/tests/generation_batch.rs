//! `GenerationBatch` on ONNX Runtime over the exported golden checkpoint: sequences joining
//! and leaving a running batch generate what `OrtBackend::generate` gives each alone, with the
//! cache (the graph's attention mask hiding each sequence's padding slots), with a batch limit,
//! and without a cache (recomputing, as a format-1 export does).
//!
//! Needs the ONNX Runtime library (ORT_DYLIB_PATH, an onnxruntime Python package, or `.ort/`
//! from scripts/fetch-onnxruntime.sh).

#[path = "../../engine/tests/support/generation_scenario.rs"]
mod scenario;

use unireward_engine::backend::{Decoder, OrtBackend, Recomputing, SessionConfig};
use unireward_export::{export_onnx, ExportOptions, Precision};
use unireward_tests::golden_model_dir;

#[test]
fn joining_and_leaving_sequences_generate_what_they_generate_alone() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions {
        precision: Precision::F32,
        ..Default::default()
    };
    export_onnx(&golden_model_dir().unwrap(), dir.path(), &opts)
        .unwrap_or_else(|e| panic!("export failed: {e}"));
    let ort = OrtBackend::open(dir.path(), &SessionConfig::default()).unwrap();
    assert!(ort.limits().kv_cache);
    let steps = scenario::joins_and_leaves(&ort);
    assert!(steps > 5, "{steps} steps");
    scenario::joins_and_leaves(&Recomputing(&ort));
    let capped = OrtBackend::open(dir.path(), &SessionConfig::default())
        .unwrap()
        .with_max_batch(2);
    scenario::joins_and_leaves(&capped);
}
