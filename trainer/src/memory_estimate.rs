//! What a training step will hold in memory, estimated before the first step runs: the
//! weights, their gradients, AdamW's two moments, and the activations autograd keeps for
//! backward; and a clear refusal when that cannot fit in the memory the device has free.
//!
//! Activations are counted per decoder layer and token from what candle keeps alive until
//! backward in `models::decode::qwen2` (every intermediate: the norms' outputs, q/k/v before
//! and after the head split and the rotary, the attention scores and probabilities, the
//! MLP's gate, its SiLU, up and product) — an upper bound that treats every query as
//! attending to the whole sequence. With gradient checkpointing a layer keeps its input and
//! its output's values, and one layer's intermediates exist at a time (its recomputation).
//! The head keeps the logits of the scored span and, in backward, their gradient.

use std::fmt;

use candle_core::{DType, Device};

use unireward_models::qwen2_5_vl::Qwen25VisionConfig;
use unireward_models::qwen3_vl::Qwen3VisionConfig;

use crate::varmap_model::{Architecture, VarMapModel};
use crate::{Error, Result};

/// Bytes, by what holds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    pub weights: u64,
    pub grads: u64,
    pub optimizer: u64,
    pub activations: u64,
}

/// One decoder call of a step: `rows` sequences right-padded to `tokens`, of which the last
/// `scored` positions reach the head; `tiles` rows through the tower (LLaVA's image tiles and
/// frames, Qwen-VL's patches), of which one attention spans at most `frame_patches` (Qwen-VL's
/// largest frame; LLaVA's tiles are all of the config's size, and it leaves this 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepShape {
    pub rows: usize,
    pub tokens: usize,
    pub scored: usize,
    pub tiles: usize,
    pub frame_patches: usize,
}

impl MemoryEstimate {
    /// For `model` as it will train (its trained parts or adapters, its dtype, its
    /// checkpointing) on micro-batches of `shape`.
    pub fn new(model: &VarMapModel, shape: StepShape) -> Result<Self> {
        let elem = model.dtype().size_in_bytes() as u64;
        let weights: u64 = model
            .shapes()?
            .values()
            .map(|d| d.iter().product::<usize>() as u64)
            .sum::<u64>()
            * elem;
        let trained: u64 = model
            .trained_vars()?
            .iter()
            .map(|(_, v)| v.elem_count() as u64)
            .sum();
        // Moments are f32 for f32/bf16 weights, f64 for f64 (optim.rs).
        let moment = if model.dtype() == DType::F64 { 8 } else { 4 };
        let text = model.model().text_config();
        let (d, i, heads) = (
            text.hidden_size as u64,
            text.intermediate_size as u64,
            text.num_attention_heads as u64,
        );
        let kv = text.num_key_value_heads as u64 * text.head_dim() as u64;
        let (rows, t) = (shape.rows as u64, shape.tokens as u64);
        let per_token_layer = 14 * d + 8 * kv + 4 * i + 2 * heads * t;
        let layers = text.num_hidden_layers as u64;
        let decoder = if model.checkpointing().is_some() {
            rows * t * (2 * d * layers + per_token_layer)
        } else {
            rows * t * per_token_layer * layers
        };
        // f32 logits of the scored span, and their gradient in backward (bytes).
        let head = 2 * rows * shape.scored as u64 * text.vocab_size as u64 * 4;
        let tower = if model.parts().vision && model.lora().is_none() {
            match model.architecture() {
                Architecture::Llava(cfg) => {
                    let v = &cfg.vision;
                    let p = v.tokens_per_tile() as u64;
                    let block = Block {
                        width: v.hidden_size as u64,
                        mlp: v.intermediate_size as u64,
                        heads: v.num_attention_heads as u64,
                    };
                    shape.tiles as u64 * p * v.num_hidden_layers as u64 * block.per_row(p)
                }
                Architecture::QwenVl(cfg, _) => qwen2_5_vl_tower(&cfg.vision, shape),
                Architecture::Qwen3Vl(cfg, _) => qwen3_vl_tower(&cfg.vision, shape),
            }
        } else {
            0
        };
        Ok(Self {
            weights,
            grads: trained * elem,
            optimizer: 2 * trained * moment,
            activations: (decoder + tower) * elem + head,
        })
    }

    /// The whole estimate.
    pub fn total(&self) -> u64 {
        self.weights + self.grads + self.optimizer + self.activations
    }

    /// Refuses a step that needs more than `available` bytes, saying what would help.
    pub fn check(&self, available: u64, device: &Device) -> Result<()> {
        if self.total() <= available {
            return Ok(());
        }
        Err(Error::Config(format!(
            "training needs about {self}: more than the {} free on {}; try \
             --grad-checkpointing, LoRA (--lora-rank), a smaller --batch-size with \
             --grad-accum, --max-length, or --dtype bf16",
            gib(available),
            device_name(device)
        )))
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in all: weights {}, gradients {}, optimizer {}, activations {}",
            gib(self.total()),
            gib(self.weights),
            gib(self.grads),
            gib(self.optimizer),
            gib(self.activations)
        )
    }
}

/// A transformer block of the tower, as candle keeps it for backward.
struct Block {
    width: u64,
    mlp: u64,
    heads: u64,
}

impl Block {
    /// Values one row keeps when it attends over `keys` rows: the norms, q/k/v and the
    /// rotary, the attention's output and projection, the residuals (12 widths), the MLP's
    /// four (its input projections, activation and product), and each head's scores and
    /// probabilities.
    fn per_row(&self, keys: u64) -> u64 {
        12 * self.width + 4 * self.mlp + 2 * self.heads * keys
    }
}

/// Qwen2.5-VL's tower over `shape.tiles` patches: the blocks of `fullatt_block_indexes` attend
/// over a whole frame (`shape.frame_patches`), the others within windows of
/// (window_size / patch_size)² patches; the merger keeps a norm and its MLP per patch group.
/// Backward through a full-attention block also holds the gradients of its scores and
/// probabilities beside everything kept: measured on the 3b-shaped fixture (two pairs of
/// 1920x1080 images, tower trained), the peak RSS was 10.4 GiB, 0.36 GiB of it the process
/// before training; the kept activations alone estimated 8.25 GiB in all, with that transient
/// 11.7 GiB.
fn qwen2_5_vl_tower(v: &Qwen25VisionConfig, shape: StepShape) -> u64 {
    let block = Block {
        width: v.hidden_size as u64,
        mlp: v.intermediate_size as u64,
        heads: v.num_heads as u64,
    };
    let frame = shape.frame_patches.max(1) as u64;
    let side = (v.window_size / v.patch_size.max(1)) as u64;
    let window = (side * side).clamp(1, frame);
    let full = v
        .fullatt_block_indexes
        .iter()
        .filter(|&&i| i < v.depth)
        .count() as u64;
    let windowed = v.depth as u64 - full;
    let merge = (v.spatial_merge_size * v.spatial_merge_size) as u64;
    // Per patch: its norm; per group of `merge` patches: the MLP's hidden (merge widths) twice
    // and its output.
    let merger = v.hidden_size as u64
        + (2 * merge * v.hidden_size as u64 + v.out_hidden_size as u64) / merge;
    let transient = if full > 0 { 2 * block.heads * frame } else { 0 };
    shape.tiles as u64
        * (full * block.per_row(frame) + windowed * block.per_row(window) + merger + transient)
}

/// Qwen3-VL's tower over `shape.tiles` patches: every block attends over a whole frame; the
/// merger and each deep-stack merger keep a norm and their MLP per patch group; backward's
/// transient as Qwen2.5-VL's (the same attention code).
fn qwen3_vl_tower(v: &Qwen3VisionConfig, shape: StepShape) -> u64 {
    let block = Block {
        width: v.hidden_size as u64,
        mlp: v.intermediate_size as u64,
        heads: v.num_heads as u64,
    };
    let frame = shape.frame_patches.max(1) as u64;
    let merge = (v.spatial_merge_size * v.spatial_merge_size) as u64;
    let mergers = 1 + v.deepstack_visual_indexes.len() as u64;
    let merger = mergers
        * (v.hidden_size as u64
            + (2 * merge * v.hidden_size as u64 + v.out_hidden_size as u64) / merge);
    let transient = 2 * block.heads * frame;
    shape.tiles as u64 * (v.depth as u64 * block.per_row(frame) + merger + transient)
}

fn gib(bytes: u64) -> String {
    if bytes < 1 << 30 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
    }
}

fn device_name(device: &Device) -> &'static str {
    if device.is_cpu() {
        "this machine"
    } else {
        "the device"
    }
}

/// Memory the device has free now: on the CPU, the kernel's MemAvailable; `None` when it
/// cannot be read (then nothing is refused).
pub fn available_memory(device: &Device) -> Option<u64> {
    if !device.is_cpu() {
        return None;
    }
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
