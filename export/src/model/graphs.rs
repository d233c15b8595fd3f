//! The two exported graphs. `vision`: pixel tiles → projected features. `decoder`: input
//! embeddings, attention mask, position ids, the rows to read and each layer's cached keys
//! and values → log-probabilities at those rows and the grown cache. Anyres packing, token
//! embedding and the media merge run in Rust between them.

use std::path::Path;

use unireward_models::checkpoint::KeyLayout;
use unireward_models::config::LlavaConfig;
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
    past_name, present_name, KvKind, ATTENTION_MASK, INPUTS_EMBEDS, LOG_PROBS, POSITIONS,
    POSITION_IDS, VISION_INPUT, VISION_OUTPUT,
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

/// The decoder graph's inputs (embeddings, mask, position ids, rows to read, then each
/// layer's past key and value) and outputs (log-probs, then each layer's present key and
/// value). Caches are [batch, kv_heads, past, head_dim] in the compute type; the mask spans
/// past and new positions.
pub fn decoder_io(cfg: &LlavaConfig, precision: Precision) -> (Vec<IoSpec>, Vec<IoSpec>) {
    let text = &cfg.text;
    let spec = |name: &str, dtype: DataType, dims: Vec<Dim>| IoSpec {
        name: name.to_string(),
        dtype,
        dims,
    };
    let mut inputs = vec![
        spec(
            INPUTS_EMBEDS,
            DataType::Float,
            vec!["batch".into(), "sequence".into(), text.hidden_size.into()],
        ),
        spec(
            ATTENTION_MASK,
            DataType::Int64,
            vec!["batch".into(), "total_sequence".into()],
        ),
        spec(
            POSITION_IDS,
            DataType::Int64,
            vec!["batch".into(), "sequence".into()],
        ),
        spec(
            POSITIONS,
            DataType::Int64,
            vec!["batch".into(), "positions".into()],
        ),
    ];
    let mut outputs = vec![spec(
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
            text.head_dim().into(),
        ]
    };
    for i in 0..text.num_hidden_layers {
        for kind in [KvKind::Key, KvKind::Value] {
            inputs.push(spec(&past_name(i, kind), cache, kv_dims("past_sequence")));
            outputs.push(spec(
                &present_name(i, kind),
                cache,
                kv_dims("total_sequence"),
            ));
        }
    }
    (inputs, outputs)
}

fn builder(dir: &Path, name: &str, precision: Precision, opset: i64) -> Result<GraphBuilder> {
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
/// [B, past + T] i64, position ids [B, T] i64, positions [B, P] i64 and per layer the cached
/// keys / values [B, kv_heads, past, head_dim] → log-probs [B, P, vocab] f32 and per layer the
/// keys / values [B, kv_heads, past + T, head_dim]. The last layer and the head run on the
/// requested rows only.
/// With an empty past (past = 0) it computes what a cacheless forward does.
pub fn decoder_graph(
    dir: &Path,
    weights: &Weights,
    cfg: &LlavaConfig,
    layout: &KeyLayout,
    precision: Precision,
    opset: i64,
) -> Result<SavedModel> {
    let (inputs, outputs) = decoder_io(cfg, precision);
    let mut e = Emitter::new(
        builder(dir, DECODER_NAME, precision, opset)?,
        weights,
        precision,
    );
    let mut values = Vec::with_capacity(inputs.len());
    for spec in &inputs {
        values.push(e.graph().input(&spec.name, spec.dtype, &spec.dims)?);
    }
    let (embeds, attention, position_ids, positions) =
        (&values[0], &values[1], &values[2], &values[3]);
    let past: Vec<qwen2::LayerKv> = values[4..]
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
        &cfg.text,
        &AttentionVariant::qwen2(&cfg.text, None),
        &layout.decoder,
        &x,
        position_ids,
        &mask,
        Some(&past),
        Some(positions),
        &[],
    )?;
    let log_probs = qwen2::head_log_probs(
        &mut e,
        &cfg.text,
        layout.lm_head.as_deref(),
        &layout.decoder,
        &body.hidden,
    )?;
    let mut g = e.into_graph();
    let produced =
        std::iter::once(&log_probs).chain(body.presents.iter().flat_map(|kv| [&kv.key, &kv.value]));
    for (spec, value) in outputs.iter().zip(produced) {
        g.output(&spec.name, value, spec.dtype, &spec.dims)?;
    }
    g.save()
}

/// The checkpoint key of the token embedding table.
pub fn embed_tokens_key(layout: &KeyLayout) -> String {
    key(&layout.decoder, "embed_tokens.weight")
}
