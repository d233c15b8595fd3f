//! The Qwen-VL families (Qwen2.5-VL, Qwen3-VL) as the exporter reads them, and their vision
//! graph: flattened patches and their layout (what the candle towers compute on the host from
//! the grids) → merged features and, for Qwen3-VL, each deep-stack level's. Their decoder graph
//! is `graphs::decoder_graph` of [`QwenSource::decoder_spec`]: 3-D M-RoPE positions
//! [3, batch, sequence], the family's attention, and Qwen3-VL's deep-stack levels
//! [batch, sequence, hidden] added after the first layers. Token embedding, the media merge and
//! the prompts' positions run in Rust between them, as for candle.

use std::path::Path;

use unireward_models::checkpoint::Checkpoint;
use unireward_models::config::TextConfig;
use unireward_models::decode::AttentionVariant;
use unireward_models::family::ModelFamily;
use unireward_models::formats::export_manifest::{self as contract, ExportFamily};
use unireward_models::qwen2_5_vl::{Qwen25VlConfig, Qwen25VlLayout};
use unireward_models::qwen3_vl::{self, Qwen3VlConfig};

use crate::dtype::DataType;
use crate::error::{Error, Result};
use crate::graph::{Dim, SavedModel};
use crate::model::graphs::{builder, declared_inputs, DecoderSpec, IoSpec, VISION_NAME};
use crate::model::layers::{key, Emitter};
use crate::model::qwen_vl_vision::{self as vision, Segments, FRAME_QUERY_BLOCKS};
use crate::model::weights::Weights;
use crate::precision::Precision;

/// A Qwen-VL checkpoint as the exporter reads it: its configuration and where its parts live.
pub enum QwenSource {
    Qwen25 {
        cfg: Qwen25VlConfig,
        layout: Qwen25VlLayout,
    },
    Qwen3 {
        cfg: Qwen3VlConfig,
        tied: bool,
    },
}

impl QwenSource {
    /// The configuration of `dir` (of `family`) and the layout of `ckpt`'s keys.
    pub fn open(dir: &Path, family: ModelFamily, ckpt: &Checkpoint) -> Result<Self> {
        let config = dir.join("config.json");
        match family {
            ModelFamily::Qwen25Vl => {
                let cfg = Qwen25VlConfig::from_file(&config)?;
                let layout = Qwen25VlLayout::detect(ckpt, cfg.text.tie_word_embeddings);
                Ok(Self::Qwen25 { cfg, layout })
            }
            ModelFamily::Qwen3Vl => {
                let cfg = Qwen3VlConfig::from_file(&config)?;
                let tied = cfg.text.tie_word_embeddings || !ckpt.contains("lm_head.weight");
                Ok(Self::Qwen3 { cfg, tied })
            }
            other => Err(Error::Unsupported(format!(
                "{}: a {} checkpoint, not a Qwen-VL one",
                config.display(),
                other.name()
            ))),
        }
    }

    pub fn family(&self) -> ExportFamily {
        match self {
            Self::Qwen25 { .. } => ExportFamily::Qwen25Vl,
            Self::Qwen3 { .. } => ExportFamily::Qwen3Vl,
        }
    }

    pub fn layout_name(&self) -> &'static str {
        match self {
            Self::Qwen25 { layout, .. } => layout.name,
            Self::Qwen3 { .. } => qwen3_vl::LAYOUT_NAME,
        }
    }

    pub fn text(&self) -> &TextConfig {
        match self {
            Self::Qwen25 { cfg, .. } => &cfg.text,
            Self::Qwen3 { cfg, .. } => &cfg.text,
        }
    }

    /// The decoder's attention, as candle builds it.
    pub fn attention(&self) -> AttentionVariant {
        match self {
            Self::Qwen25 { cfg, .. } => {
                AttentionVariant::qwen2(&cfg.text, Some(&cfg.mrope_section))
            }
            Self::Qwen3 { cfg, .. } => cfg.attention.clone(),
        }
    }

    pub fn deepstack_levels(&self) -> usize {
        match self {
            Self::Qwen25 { .. } => 0,
            Self::Qwen3 { cfg, .. } => cfg.vision.deepstack_visual_indexes.len(),
        }
    }

    /// The Qwen2 body's key prefix (`embed_tokens`, `layers.N`, `norm` follow).
    pub fn decoder_prefix(&self) -> &'static str {
        match self {
            Self::Qwen25 { layout, .. } => layout.decoder,
            Self::Qwen3 { .. } => qwen3_vl::DECODER,
        }
    }

    /// The output head's prefix; `None` when tied to the embeddings.
    pub fn head_prefix(&self) -> Option<&'static str> {
        match self {
            Self::Qwen25 { layout, .. } => layout.lm_head,
            Self::Qwen3 { tied: true, .. } => None,
            Self::Qwen3 { tied: false, .. } => Some(qwen3_vl::LM_HEAD),
        }
    }

    /// The decoder graph's source.
    pub fn decoder_spec(&self) -> DecoderSpec<'_> {
        DecoderSpec {
            text: self.text(),
            variant: self.attention(),
            body_prefix: self.decoder_prefix(),
            head: self.head_prefix(),
            deepstack: self.deepstack_levels(),
        }
    }

    /// The checkpoint key of the token embedding table.
    pub fn embed_tokens_key(&self) -> String {
        key(self.decoder_prefix(), "embed_tokens.weight")
    }
}

fn spec(name: &str, dtype: DataType, dims: Vec<Dim>) -> IoSpec {
    IoSpec {
        name: name.to_string(),
        dtype,
        dims,
    }
}

/// The vision graph's inputs (in [`ExportFamily::vision_input_names`]' order) and outputs.
pub fn vision_io(src: &QwenSource) -> (Vec<IoSpec>, Vec<IoSpec>) {
    use contract::*;
    let (patch_len, head_dim, out) = match src {
        QwenSource::Qwen25 { cfg, .. } => {
            let v = &cfg.vision;
            (
                v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size,
                v.head_dim(),
                v.out_hidden_size,
            )
        }
        QwenSource::Qwen3 { cfg, .. } => {
            let v = &cfg.vision;
            (
                v.in_channels * v.temporal_patch_size * v.patch_size * v.patch_size,
                v.head_dim(),
                v.out_hidden_size,
            )
        }
    };
    let (f32_, i64_) = (DataType::Float, DataType::Int64);
    let named = |name: &str| -> Dim { name.into() };
    let segments = |gather: &str, keys: &str, scatter: &str, what: &str| {
        vec![
            spec(
                gather,
                i64_,
                vec![named(&format!("{what}s")), named(&format!("{what}_len"))],
            ),
            spec(
                keys,
                i64_,
                vec![named(&format!("{what}s")), named(&format!("{what}_len"))],
            ),
            spec(scatter, i64_, vec![named("patches")]),
        ]
    };
    let mut inputs = vec![spec(
        VISION_INPUT,
        f32_,
        vec![named("patches"), patch_len.into()],
    )];
    let rotary = [
        spec(ROTARY_COS, f32_, vec![named("patches"), head_dim.into()]),
        spec(ROTARY_SIN, f32_, vec![named("patches"), head_dim.into()]),
    ];
    match src {
        QwenSource::Qwen25 { .. } => {
            inputs.push(spec(WINDOW_ORDER, i64_, vec![named("patches")]));
            inputs.extend(rotary);
            inputs.extend(segments(
                WINDOW_GATHER,
                WINDOW_KEYS,
                WINDOW_SCATTER,
                "window",
            ));
            inputs.extend(segments(FRAME_GATHER, FRAME_KEYS, FRAME_SCATTER, "frame"));
            inputs.push(spec(MERGE_ORDER, i64_, vec![named("tokens")]));
        }
        QwenSource::Qwen3 { .. } => {
            inputs.push(spec(POS_INDEX, i64_, vec![named("taps")]));
            inputs.push(spec(POS_WEIGHT, f32_, vec![named("taps")]));
            inputs.extend(rotary);
            inputs.extend(segments(FRAME_GATHER, FRAME_KEYS, FRAME_SCATTER, "frame"));
        }
    }
    let outputs = src
        .family()
        .vision_output_names(src.deepstack_levels())
        .iter()
        .map(|name| spec(name, f32_, vec![named("tokens"), out.into()]))
        .collect();
    (inputs, outputs)
}

/// Writes `dir/vision.onnx` (+ `.data`): what the candle tower's `forward` computes.
pub fn vision_graph(
    dir: &Path,
    weights: &Weights,
    src: &QwenSource,
    precision: Precision,
    opset: i64,
) -> Result<SavedModel> {
    let (inputs, outputs) = vision_io(src);
    let mut e = Emitter::new(
        builder(dir, VISION_NAME, precision, opset)?,
        weights,
        precision,
    );
    let v = declared_inputs(&mut e, &inputs)?;
    let produced = match src {
        QwenSource::Qwen25 { cfg, layout } => {
            let windows = Segments::new(&mut e, &v[4], &v[5], &v[6], 1)?;
            let frames = Segments::new(&mut e, &v[7], &v[8], &v[9], FRAME_QUERY_BLOCKS)?;
            let merged = vision::qwen25_tower(
                &mut e,
                &cfg.vision,
                layout.vision,
                &vision::Qwen25VisionInputs {
                    pixels: &v[0],
                    window_order: &v[1],
                    cos: &v[2],
                    sin: &v[3],
                    windows,
                    frames,
                    merge_order: &v[10],
                },
            )?;
            vec![merged]
        }
        QwenSource::Qwen3 { cfg, .. } => {
            let frames = Segments::new(&mut e, &v[5], &v[6], &v[7], FRAME_QUERY_BLOCKS)?;
            let (merged, deepstack) = vision::qwen3_tower(
                &mut e,
                &cfg.vision,
                qwen3_vl::VISION,
                &vision::Qwen3VisionInputs {
                    pixels: &v[0],
                    pos_index: &v[1],
                    pos_weight: &v[2],
                    cos: &v[3],
                    sin: &v[4],
                    frames,
                },
            )?;
            std::iter::once(merged).chain(deepstack).collect()
        }
    };
    let widened = produced
        .iter()
        .map(|x| e.widen(x))
        .collect::<Result<Vec<_>>>()?;
    let mut g = e.into_graph();
    for (s, x) in outputs.iter().zip(&widened) {
        g.output(&s.name, x, s.dtype, &s.dims)?;
    }
    g.save()
}
