//! The two exported graphs. `vision`: pixel tiles → projected features (LLaVA's; the Qwen-VL
//! towers' are `qwen_vl_graphs`). `decoder`, every family's: input embeddings, attention mask,
//! position ids, the rows to read, the deep-stack levels and each layer's cached keys and
//! values → log-probabilities at those rows and the grown cache. Anyres packing, token
//! embedding and the media merge run in Rust between them.

use std::path::Path;

use unireward_models::checkpoint::KeyLayout;
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_models::decode::AttentionVariant;

use crate::dtype::DataType;
use crate::error::Result;
use crate::graph::{Dim, GraphBuilder, SavedModel};
use crate::model::layers::{key, Emitter};
use crate::model::weights::Weights;
use crate::model::{projector, qwen2, siglip};
use crate::precision::Precision;

// The graphs' input and output names are part of the export directory's contract, which the
// engine reads through the same module.
pub use unireward_models::formats::export_manifest::{
    deepstack_name, past_name, present_name, KvKind, ATTENTION_MASK, INPUTS_EMBEDS, LOG_PROBS,
    POSITIONS, POSITION_IDS, VISION_INPUT, VISION_OUTPUT,
};

pub const VISION_NAME: &str = "vision";
pub const DECODER_NAME: &str = "decoder";

/// A graph input or output as the manifest lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub name: String,
    pub dtype: DataType,
    pub dims: Vec<Dim>,
}

/// The vision graph's input and output.
pub fn vision_io(cfg: &LlavaConfig) -> (IoSpec, IoSpec) {
    let v = &cfg.vision;
    let tokens = v.tokens_per_tile() - usize::from(cfg.drop_first_feature);
    (
        IoSpec {
            name: VISION_INPUT.into(),
            dtype: DataType::Float,
            dims: vec![
                "tiles".into(),
                v.num_channels.into(),
                v.image_size.into(),
                v.image_size.into(),
            ],
        },
        IoSpec {
            name: VISION_OUTPUT.into(),
            dtype: DataType::Float,
            dims: vec!["tiles".into(), tokens.into(), cfg.text.hidden_size.into()],
        },
    )
}

/// What a decoder graph is built from: candle's `Qwen2::with_variant` arguments (the text
/// config, the family's attention, where the body and the head are) and how many deep-stack
/// levels it takes (Qwen3-VL's; 0 for the others). M-RoPE attention takes positions
/// [3, batch, sequence], the others [batch, sequence].
pub struct DecoderSpec<'a> {
    pub text: &'a TextConfig,
    pub variant: AttentionVariant,
    pub body_prefix: &'a str,
    /// The output head's prefix; `None` when tied to `embed_tokens`.
    pub head: Option<&'a str>,
    pub deepstack: usize,
}

impl<'a> DecoderSpec<'a> {
    /// LLaVA-OneVision's Qwen2.
    pub fn llava(cfg: &'a LlavaConfig, layout: &'a KeyLayout) -> Self {
        Self {
            text: &cfg.text,
            variant: AttentionVariant::qwen2(&cfg.text, None),
            body_prefix: &layout.decoder,
            head: layout.lm_head.as_deref(),
            deepstack: 0,
        }
    }
}

/// The decoder graph's inputs (embeddings, mask, position ids, rows to read, the deep-stack
/// levels, then each layer's past key and value) and outputs (log-probs, then each layer's
/// present key and value). Caches are [batch, kv_heads, past, head_dim] in the compute type;
/// the mask spans past and new positions.
pub fn decoder_io(spec: &DecoderSpec, precision: Precision) -> (Vec<IoSpec>, Vec<IoSpec>) {
    let text = spec.text;
    let io = |name: &str, dtype: DataType, dims: Vec<Dim>| IoSpec {
        name: name.to_string(),
        dtype,
        dims,
    };
    let embeds =
        || -> Vec<Dim> { vec!["batch".into(), "sequence".into(), text.hidden_size.into()] };
    let positions: Vec<Dim> = match spec.variant.mrope_section {
        Some(_) => vec![3usize.into(), "batch".into(), "sequence".into()],
        None => vec!["batch".into(), "sequence".into()],
    };
    let mut inputs = vec![
        io(INPUTS_EMBEDS, DataType::Float, embeds()),
        io(
            ATTENTION_MASK,
            DataType::Int64,
            vec!["batch".into(), "total_sequence".into()],
        ),
        io(POSITION_IDS, DataType::Int64, positions),
        io(
            POSITIONS,
            DataType::Int64,
            vec!["batch".into(), "positions".into()],
        ),
    ];
    for l in 0..spec.deepstack {
        inputs.push(io(&deepstack_name(l), DataType::Float, embeds()));
    }
    let mut outputs = vec![io(
        LOG_PROBS,
        DataType::Float,
        vec!["batch".into(), "positions".into(), text.vocab_size.into()],
    )];
    let cache = precision.compute_type();
    let kv_dims = |len: &str| {
        vec![
            "batch".into(),
            text.num_key_value_heads.into(),
            len.into(),
            spec.variant.head_dim.into(),
        ]
    };
    for i in 0..text.num_hidden_layers {
        for kind in [KvKind::Key, KvKind::Value] {
            inputs.push(io(&past_name(i, kind), cache, kv_dims("past_sequence")));
            outputs.push(io(&present_name(i, kind), cache, kv_dims("total_sequence")));
        }
    }
    (inputs, outputs)
}

/// A graph's inputs declared in order, as values.
pub fn declared_inputs(e: &mut Emitter, inputs: &[IoSpec]) -> Result<Vec<crate::graph::Value>> {
    inputs
        .iter()
        .map(|spec| e.graph().input(&spec.name, spec.dtype, &spec.dims))
        .collect()
}

pub(crate) fn builder(
    dir: &Path,
    name: &str,
    precision: Precision,
    opset: i64,
) -> Result<GraphBuilder> {
    let mut g = GraphBuilder::new(dir, name)?;
    g.set_opset(opset)?;
    g.set_metadata("precision", precision_name(precision));
    Ok(g)
}

pub fn precision_name(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "fp32",
        Precision::F16 => "fp16",
    }
}

/// Writes `dir/vision.onnx` (+ `.data`): tiles [n, C, S, S] f32 → features [n, patches, text
/// hidden] f32, as `LlavaOnevision::encode_tiles` computes them.
pub fn vision_graph(
    dir: &Path,
    weights: &Weights,
    cfg: &LlavaConfig,
    layout: &KeyLayout,
    precision: Precision,
    opset: i64,
) -> Result<SavedModel> {
    let (input, output) = vision_io(cfg);
    let mut e = Emitter::new(
        builder(dir, VISION_NAME, precision, opset)?,
        weights,
        precision,
    );
    let pixels = e.graph().input(&input.name, input.dtype, &input.dims)?;
    let x = e.narrow(&pixels)?;
    let mut feats = siglip::tower(
        &mut e,
        &cfg.vision,
        cfg.vision_layers_used()?,
        &layout.vision,
        &x,
    )?;
    if cfg.drop_first_feature {
        feats = e.slice(&feats, 1, 1, i64::MAX)?;
    }
    let out = projector::projector(&mut e, cfg, &layout.projector, &feats)?;
    let out = e.widen(&out)?;
    let mut g = e.into_graph();
    g.output(&output.name, &out, output.dtype, &output.dims)?;
    g.save()
}

/// Writes `dir/decoder.onnx` (+ `.data`): embeddings [B, T, D] f32, attention mask
/// [B, past + T] i64, position ids [B, T] (M-RoPE: [3, B, T]) i64, positions [B, P] i64, the
/// deep-stack levels [B, T, D] f32 and per layer the cached keys / values [B, kv_heads, past,
/// head_dim] → log-probs [B, P, vocab] f32 and per layer the keys / values [B, kv_heads,
/// past + T, head_dim]. The last layer and the head run on the requested rows only.
/// With an empty past (past = 0) it computes what a cacheless forward does.
pub fn decoder_graph(
    dir: &Path,
    weights: &Weights,
    spec: &DecoderSpec,
    precision: Precision,
    opset: i64,
) -> Result<SavedModel> {
    let (inputs, outputs) = decoder_io(spec, precision);
    let mut e = Emitter::new(
        builder(dir, DECODER_NAME, precision, opset)?,
        weights,
        precision,
    );
    let values = declared_inputs(&mut e, &inputs)?;
    let (embeds, attention, position_ids, positions) =
        (&values[0], &values[1], &values[2], &values[3]);
    let levels = spec.deepstack;
    let injections = values[4..4 + levels]
        .iter()
        .map(|x| e.narrow(x))
        .collect::<Result<Vec<_>>>()?;
    let past: Vec<qwen2::LayerKv> = values[4 + levels..]
        .chunks_exact(2)
        .map(|kv| qwen2::LayerKv {
            key: kv[0].clone(),
            value: kv[1].clone(),
        })
        .collect();
    let mask = qwen2::attention_mask(&mut e, attention, embeds)?;
    let x = e.narrow(embeds)?;
    let body = qwen2::body(
        &mut e,
        spec.text,
        &spec.variant,
        spec.body_prefix,
        &x,
        position_ids,
        &mask,
        Some(&past),
        Some(positions),
        &injections,
    )?;
    let log_probs =
        qwen2::head_log_probs(&mut e, spec.text, spec.head, spec.body_prefix, &body.hidden)?;
    let mut g = e.into_graph();
    let produced =
        std::iter::once(&log_probs).chain(body.presents.iter().flat_map(|kv| [&kv.key, &kv.value]));
    for (io, value) in outputs.iter().zip(produced) {
        g.output(&io.name, value, io.dtype, &io.dims)?;
    }
    g.save()
}

/// The checkpoint key of the token embedding table.
pub fn embed_tokens_key(layout: &KeyLayout) -> String {
    key(&layout.decoder, "embed_tokens.weight")
}
