//! Export of a model whose weights exceed protobuf's 2 GiB: a synthetic LLaVA-OneVision with a
//! 30-layer, 1024-wide Qwen2 and a 152,064-token vocabulary (2.8 GiB of f32 weights, 2.2 GiB of them in the decoder graph).
//! The export runs in a child process whose peak memory is reported: weights are streamed from
//! the memory-mapped checkpoint to the external data file tensor by tensor, never held twice.
//! ONNX Runtime then loads the export and scores a short sequence.
//!
//! `cargo run --release -p unireward-benches --bin bench-export-large`

// Tensors of a few MB are allocated and freed per op; glibc's malloc returns them to the
// system each time, and faulting the pages back in cost a fifth of a CPU forward.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use unireward_engine::backend::{Decoder, Decoding, ExecutionProvider, OrtBackend, SessionConfig};
use unireward_export::{export_onnx, ExportOptions};

const LAYERS: usize = 30;
const HIDDEN: usize = 1024;
const MLP: usize = 4096;
const VOCAB: usize = 152064;

fn status_kb(field: &str) -> Result<u64> {
    let s = std::fs::read_to_string("/proc/self/status")?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{field} not in /proc/self/status"))
}

fn write_checkpoint(dir: &Path) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut add = |name: String, shape: Vec<usize>| -> Result<()> {
        let fan_in = *shape.last().unwrap_or(&1) as f32;
        t.insert(name, Tensor::randn(0f32, fan_in.powf(-0.5), shape, &dev)?);
        Ok(())
    };
    let v = "vision_tower.vision_model";
    add(
        format!("{v}.embeddings.patch_embedding.weight"),
        vec![64, 3, 8, 8],
    )?;
    add(format!("{v}.embeddings.patch_embedding.bias"), vec![64])?;
    add(
        format!("{v}.embeddings.position_embedding.weight"),
        vec![16, 64],
    )?;
    for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        add(
            format!("{v}.encoder.layers.0.self_attn.{n}.weight"),
            vec![64, 64],
        )?;
        add(format!("{v}.encoder.layers.0.self_attn.{n}.bias"), vec![64])?;
    }
    for n in ["layer_norm1", "layer_norm2"] {
        add(format!("{v}.encoder.layers.0.{n}.weight"), vec![64])?;
        add(format!("{v}.encoder.layers.0.{n}.bias"), vec![64])?;
    }
    add(
        format!("{v}.encoder.layers.0.mlp.fc1.weight"),
        vec![128, 64],
    )?;
    add(format!("{v}.encoder.layers.0.mlp.fc1.bias"), vec![128])?;
    add(
        format!("{v}.encoder.layers.0.mlp.fc2.weight"),
        vec![64, 128],
    )?;
    add(format!("{v}.encoder.layers.0.mlp.fc2.bias"), vec![64])?;
    add(
        "multi_modal_projector.linear_1.weight".into(),
        vec![HIDDEN, 64],
    )?;
    add("multi_modal_projector.linear_1.bias".into(), vec![HIDDEN])?;
    add(
        "multi_modal_projector.linear_2.weight".into(),
        vec![HIDDEN, HIDDEN],
    )?;
    add("multi_modal_projector.linear_2.bias".into(), vec![HIDDEN])?;
    add("image_newline".into(), vec![HIDDEN])?;
    let m = "language_model.model";
    add(format!("{m}.embed_tokens.weight"), vec![VOCAB, HIDDEN])?;
    add(format!("{m}.norm.weight"), vec![HIDDEN])?;
    add("language_model.lm_head.weight".into(), vec![VOCAB, HIDDEN])?;
    for i in 0..LAYERS {
        let p = format!("{m}.layers.{i}");
        add(format!("{p}.self_attn.q_proj.weight"), vec![HIDDEN, HIDDEN])?;
        add(format!("{p}.self_attn.q_proj.bias"), vec![HIDDEN])?;
        for n in ["k_proj", "v_proj"] {
            add(format!("{p}.self_attn.{n}.weight"), vec![256, HIDDEN])?;
            add(format!("{p}.self_attn.{n}.bias"), vec![256])?;
        }
        add(format!("{p}.self_attn.o_proj.weight"), vec![HIDDEN, HIDDEN])?;
        add(format!("{p}.mlp.gate_proj.weight"), vec![MLP, HIDDEN])?;
        add(format!("{p}.mlp.up_proj.weight"), vec![MLP, HIDDEN])?;
        add(format!("{p}.mlp.down_proj.weight"), vec![HIDDEN, MLP])?;
        add(format!("{p}.input_layernorm.weight"), vec![HIDDEN])?;
        add(format!("{p}.post_attention_layernorm.weight"), vec![HIDDEN])?;
    }
    let bytes: u64 = t.values().map(|x| x.elem_count() as u64 * 4).sum();
    candle_core::safetensors::save(&t, dir.join("model.safetensors"))?;
    let cfg = json!({
        "vision_config": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
            "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
        "text_config": {"hidden_size": HIDDEN, "intermediate_size": MLP, "num_hidden_layers": LAYERS,
            "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": VOCAB,
            "rope_theta": 1000000.0, "max_position_embeddings": 4096},
        "image_grid_pinpoints": [[32, 32], [32, 64], [64, 32], [64, 64]],
        "image_token_index": 151646, "video_token_index": 151647
    });
    std::fs::write(dir.join("config.json"), cfg.to_string())?;
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/golden/llava_ov_tiny/model/tokenizer.json");
    std::fs::copy(golden, dir.join("tokenizer.json"))?;
    Ok(bytes)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Child: export only, then report this process's peak memory.
    if args.len() == 4 && args[1] == "--child-export" {
        // The mapped checkpoint's pages count in RSS as file-backed memory that the kernel can
        // drop; what would show weights held in memory is anonymous RSS, sampled here.
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = done.clone();
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(status_kb("RssAnon:").unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            peak
        });
        let t0 = Instant::now();
        export_onnx(
            Path::new(&args[2]),
            Path::new(&args[3]),
            &ExportOptions::default(),
        )?;
        let secs = t0.elapsed().as_secs_f64();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak_anon = sampler.join().unwrap_or(0);
        println!(
            "export {secs:.1} s; peak anonymous RSS {} MiB (sampled every 5 ms); peak RSS with the mapped checkpoint's file pages (VmHWM) {} MiB",
            peak_anon / 1024,
            status_kb("VmHWM:")? / 1024
        );
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("unireward-export-large-{}", std::process::id()));
    let bytes = write_checkpoint(&dir.join("model"))?;
    println!(
        "synthetic checkpoint: {LAYERS} layers x {HIDDEN}, vocab {VOCAB}: {:.2} GiB of f32 weights",
        bytes as f64 / (1u64 << 30) as f64
    );
    let out = Command::new(std::env::current_exe()?)
        .arg("--child-export")
        .arg(dir.join("model"))
        .arg(dir.join("onnx"))
        .output()?;
    if !out.status.success() {
        bail!("export failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    for f in [
        "decoder.onnx",
        "decoder.onnx.data",
        "vision.onnx.data",
        "embeddings.safetensors",
    ] {
        let len = std::fs::metadata(dir.join("onnx").join(f))?.len();
        println!("  {f}: {:.2} GiB", len as f64 / (1u64 << 30) as f64);
    }
    let t0 = Instant::now();
    let ort = OrtBackend::open(
        &dir.join("onnx"),
        &SessionConfig {
            provider: ExecutionProvider::Cpu,
            intra_threads: None,
        },
    )?;
    let ids: Vec<u32> = (100..116).collect();
    let embeds = ort.embed_tokens(&ids)?;
    let rows = ort.log_probs_at(&[embeds.to_dtype(DType::F32)?], &[vec![15]])?;
    let total: f32 = rows[0].exp()?.sum_all()?.to_scalar()?;
    println!("ONNX Runtime loaded the export and scored 16 tokens in {:.1} s; probabilities sum to {total:.5}", t0.elapsed().as_secs_f64());
    if (total - 1.0).abs() > 1e-3 {
        bail!("log-probs do not normalise");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
