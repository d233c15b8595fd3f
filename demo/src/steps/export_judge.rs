//! `demo export`: the trained judge to ONNX with `unireward-export onnx` (fp32).

use serde_json::json;

use crate::error::Result;
use crate::jsonl::write_json;
use crate::run_dir::RunDir;
use crate::tools::{arg, run as run_tool, Tool};

pub fn run(dir: &RunDir) -> Result<()> {
    let args = vec![
        "onnx".to_string(),
        "--model".into(),
        arg(&dir.judge()),
        "--out".into(),
        arg(&dir.judge_onnx()),
    ];
    let done = run_tool(Tool::Export, &args, &dir.root.join("logs/export.log"), &[])?;
    eprintln!(
        "demo export: ONNX graphs in {} ({:.1}s)",
        dir.judge_onnx().display(),
        done.elapsed.as_secs_f64()
    );
    write_json(
        &dir.step_metrics("export"),
        &json!({"seconds": done.elapsed.as_secs_f64()}),
    )
}
