//! The CLIP text encoders of Stable Diffusion pipelines (`text_encoder/`, `text_encoder_2/`), as
//! transformers' `CLIPTextModel` and `CLIPTextModelWithProjection`, and what the pipelines take
//! from them.
//!
//! SD 1.5 and SDXL's `text_encoder` are OpenAI CLIP ViT-L/14's text tower (`quick_gelu`);
//! SDXL's `text_encoder_2` is OpenCLIP bigG's (`gelu`, with the `text_projection` head). Both are
//! pre-LayerNorm transformers over learned positions with causal self-attention. Every op has a
//! backward pass (our LayerNorm and causal softmax, candle's sigmoid / erf / matmuls), so the
//! encoders can be fine-tuned.
//!
//! Pipelines' conditioning ([`sd15_prompt_embeds`], [`sdxl_prompt_embeds`]):
//! - SD 1.5: `last_hidden_state` (after the final LayerNorm), [B, 77, 768];
//! - SDXL: the penultimate hidden state (not final-normed) of each encoder, concatenated along
//!   the features ([B, 77, 768 + 1280]), and `text_embeds` of `text_encoder_2` as the pooled
//!   embedding ([B, 1280]).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::clip_tokenizer::ClipTokenizer;
use super::component::{open_component, TRANSFORMERS_WEIGHTS};
use crate::linear::Linear;
use crate::nn::LayerNorm;
use crate::{Error, Result};

/// The activation of the MLPs (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// x·σ(1.702x): OpenAI CLIP (SD 1.5, SDXL `text_encoder`).
    QuickGelu,
    /// Exact (erf) GELU: OpenCLIP bigG (SDXL `text_encoder_2`).
    Gelu,
}

impl ClipActivation {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Self::QuickGelu),
            "gelu" => Ok(Self::Gelu),
            other => Err(Error::Config(format!(
                "CLIP text encoder: hidden_act {other:?} is not supported (only \"quick_gelu\", \
                 OpenAI CLIP's, and \"gelu\", OpenCLIP's, are implemented)"
            ))),
        }
    }

    pub fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            // ½x(1 + erf(x/√2)); candle's erf has an exact derivative (its fused gelu_erf's
            // backward uses a 6-digit constant).
            Self::Gelu => {
                let cdf = ((xs / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
                xs * cdf?
            }
        }
    }
}

/// Which head the checkpoint has (`architectures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipTextVariant {
    /// `CLIPTextModel`: hidden states and the pooled state.
    Plain,
    /// `CLIPTextModelWithProjection`: also `text_embeds` = `text_projection`(pooled), no bias.
    WithProjection,
}

fn default_vocab() -> usize {
    49408
}
fn default_hidden() -> usize {
    512
}
fn default_intermediate() -> usize {
    2048
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    8
}
fn default_positions() -> usize {
    77
}
fn default_act() -> String {
    "quick_gelu".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_projection() -> usize {
    512
}
fn default_eos() -> i64 {
    49407
}

/// transformers' `CLIPTextConfig` (`config.json` of `text_encoder/`, `text_encoder_2/`); a
/// field left out takes transformers' default.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ClipTextConfig {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_hidden")]
    pub hidden_size: usize,
    #[serde(default = "default_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "default_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "default_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_projection")]
    pub projection_dim: usize,
    /// 2 in the configs written before transformers#24773 (SD 1.5's, SDXL's): the pooled state
    /// is then read at the argmax of the ids (where `<|endoftext|>`, the largest id, is).
    #[serde(default = "default_eos")]
    pub eos_token_id: i64,
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl ClipTextConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    pub fn activation(&self) -> Result<ClipActivation> {
        ClipActivation::from_name(&self.hidden_act)
    }

    /// The head `architectures` names; `None` when it names none (then the checkpoint decides).
    pub fn variant(&self) -> Result<Option<ClipTextVariant>> {
        let mut found = None;
        for a in &self.architectures {
            let v = match a.as_str() {
                "CLIPTextModel" => ClipTextVariant::Plain,
                "CLIPTextModelWithProjection" => ClipTextVariant::WithProjection,
                other => {
                    return Err(Error::Config(format!(
                        "CLIP text encoder: architecture {other:?} is not a text encoder \
                         (CLIPTextModel or CLIPTextModelWithProjection)"
                    )))
                }
            };
            if found.is_some_and(|f| f != v) {
                return Err(Error::Config(format!(
                    "CLIP text encoder: architectures {:?} name two different heads",
                    self.architectures
                )));
            }
            found = Some(v);
        }
        Ok(found)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Refuses sizes the model cannot be built with, naming the field.
    pub fn validate(&self) -> Result<()> {
        self.activation()?;
        self.variant()?;
        let zero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("projection_dim", self.projection_dim),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("CLIP text encoder: {name} is 0")));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "CLIP text encoder: hidden_size {} does not split into {} heads",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(Error::Config(format!(
                "CLIP text encoder: layer_norm_eps {} is not positive",
                self.layer_norm_eps
            )));
        }
        Ok(())
    }

    /// transformers' rule: the legacy `eos_token_id` 2 pools at the argmax of the ids.
    pub fn pools_at_argmax(&self) -> bool {
        self.eos_token_id == 2
    }
}

/// Where the encoder's weights are in a checkpoint's key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipTextLayout {
    pub name: &'static str,
    /// Prefix of `embeddings.`, `encoder.layers.N.`, `final_layer_norm.`.
    pub prefix: &'static str,
}

impl ClipTextLayout {
    /// The hub's (every SD / SDXL repository; transformers < 5, and >= 5 when re-saving a model
    /// loaded from it): `text_model.embeddings…`; `text_projection` at the top level.
    pub const HUB: Self = Self {
        name: "transformers CLIP text encoder (text_model.*)",
        prefix: "text_model.",
    };
    /// What transformers >= 5 writes for a `CLIPTextModel` it built itself: no `text_model.`.
    pub const UNPREFIXED: Self = Self {
        name: "transformers >= 5 CLIPTextModel (embeddings.*, encoder.*, no text_model.)",
        prefix: "",
    };

    /// The layout whose token embedding the checkpoint holds; the hub's when neither is there
    /// (so that loading names the missing keys in the common spelling).
    pub fn detect(has: impl Fn(&str) -> bool) -> Self {
        if !has("text_model.embeddings.token_embedding.weight")
            && has("embeddings.token_embedding.weight")
        {
            Self::UNPREFIXED
        } else {
            Self::HUB
        }
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
        })
    }

    /// Causal self-attention over [B, T, D]: position i attends to 0..=i.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, d) = xs.dims3()?;
        let split = |x: Tensor| {
            x.reshape((b, t, self.heads, d / self.heads))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (split(self.q_proj.forward(xs)?)? * self.scale)?;
        let k = split(self.k_proj.forward(xs)?)?;
        let v = split(self.v_proj.forward(xs)?)?;
        let scores = q.matmul(&k.t()?)?;
        let probs = crate::nn::causal_softmax_last_dim(&scores, 0)?;
        let out = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.out_proj.forward(&out)
    }
}

struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl EncoderLayer {
    fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d, eps)?,
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d, eps)?,
            fc1: Linear::load(vb.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
            fc2: Linear::load(vb.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
            act: cfg.activation()?,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.self_attn.forward(&self.layer_norm1.forward(xs)?)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        xs + h
    }
}

/// What the encoder returns (transformers' output with `output_hidden_states=True`).
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// The embeddings' output, then each layer's: `num_hidden_layers + 1` tensors [B, T, D],
    /// none final-normed (transformers' `hidden_states`).
    pub hidden_states: Vec<Tensor>,
    /// The last layer's output after `final_layer_norm` [B, T, D].
    pub last_hidden_state: Tensor,
    /// `last_hidden_state` at each row's pooling position [B, D] (`pooler_output`).
    pub pooler_output: Tensor,
    /// `text_projection(pooler_output)` [B, projection_dim], for `CLIPTextModelWithProjection`.
    pub text_embeds: Option<Tensor>,
}

/// transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`.
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Option<Linear>,
    cfg: ClipTextConfig,
}

impl ClipTextModel {
    /// Reads `dir/config.json` and `dir/model.safetensors` (or `model.fp16.safetensors`, or the
    /// shards of either), in the hub's key layout or transformers >= 5's unprefixed one,
    /// converting the weights to `dtype`; every missing or misshapen key is named.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, ckpt) = open_component::<ClipTextConfig>(dir, TRANSFORMERS_WEIGHTS)?;
        cfg.validate()?;
        let layout = ClipTextLayout::detect(|k| ckpt.contains(k));
        let variant = match cfg.variant()? {
            Some(v) => v,
            None if ckpt.contains("text_projection.weight") => ClipTextVariant::WithProjection,
            None => ClipTextVariant::Plain,
        };
        let (vb, audit) = ckpt.var_builder(dtype, device);
        let built = Self::with_layout(cfg, variant, layout, vb);
        // Every missing or misshapen key says more than the one that stopped the builder.
        audit.finish_named(dir, layout.name)?;
        built
    }

    /// Builds from any weight source in the hub's names (`text_model.…`, `text_projection`),
    /// e.g. a `VarMap` for training; the head is the one `cfg.architectures` names (none: plain).
    pub fn new(cfg: ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let variant = cfg.variant()?.unwrap_or(ClipTextVariant::Plain);
        Self::with_layout(cfg, variant, ClipTextLayout::HUB, vb)
    }

    /// Builds from weights named as `layout` says, with the head of `variant`.
    pub fn with_layout(
        cfg: ClipTextConfig,
        variant: ClipTextVariant,
        layout: ClipTextLayout,
        vb: VarBuilder,
    ) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.hidden_size;
        let body = if layout.prefix.is_empty() {
            vb.clone()
        } else {
            vb.pp(layout.prefix.trim_end_matches('.'))
        };
        let emb = body.pp("embeddings");
        let token_embedding = emb.get((cfg.vocab_size, d), "token_embedding.weight")?;
        let position_embedding = emb.get(
            (cfg.max_position_embeddings, d),
            "position_embedding.weight",
        )?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(&cfg, body.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<_>>()?;
        let final_layer_norm = LayerNorm::new(body.pp("final_layer_norm"), d, cfg.layer_norm_eps)?;
        let text_projection = match variant {
            ClipTextVariant::Plain => None,
            ClipTextVariant::WithProjection => Some(Linear::load(
                vb.pp("text_projection"),
                d,
                cfg.projection_dim,
                false,
            )?),
        };
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            text_projection,
            cfg,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    pub fn variant(&self) -> ClipTextVariant {
        if self.text_projection.is_some() {
            ClipTextVariant::WithProjection
        } else {
            ClipTextVariant::Plain
        }
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// The final LayerNorm alone (SD 1.5's `clip_skip` applies it to an earlier hidden state).
    pub fn final_layer_norm(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.final_layer_norm.forward(xs)?)
    }

    /// Each row's pooling position, as transformers picks it: with the legacy `eos_token_id`
    /// 2, the first position of the row's largest id; else the first position holding
    /// `eos_token_id`, 0 when none does.
    pub fn pool_positions(&self, ids: &[Vec<i64>]) -> Vec<usize> {
        ids.iter()
            .map(|row| {
                if self.cfg.pools_at_argmax() {
                    let mut best = 0;
                    for (i, &v) in row.iter().enumerate() {
                        if v > row[best] {
                            best = i;
                        }
                    }
                    best
                } else {
                    row.iter()
                        .position(|&v| v == self.cfg.eos_token_id)
                        .unwrap_or(0)
                }
            })
            .collect()
    }

    /// `input_ids` [B, T] (any integer dtype, T <= max_position_embeddings) → every hidden
    /// state, the final-normed last one, the pooled state and, with the projection head,
    /// `text_embeds`. No padding mask, as the SD / SDXL pipelines call it.
    pub fn forward(&self, input_ids: &Tensor) -> Result<ClipTextOutput> {
        let (b, t) = input_ids.dims2()?;
        if t == 0 || t > self.cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "CLIP text encoder: {t} positions, the model has {}",
                self.cfg.max_position_embeddings
            )));
        }
        let ids: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
        if let Some(bad) = ids
            .iter()
            .flatten()
            .find(|&&v| v < 0 || v as usize >= self.cfg.vocab_size)
        {
            return Err(Error::Input(format!(
                "CLIP text encoder: token id {bad} outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let device = self.token_embedding.device();
        let d = self.cfg.hidden_size;
        let flat: Vec<u32> = ids.iter().flatten().map(|&v| v as u32).collect();
        let flat = Tensor::from_vec(flat, b * t, device)?;
        let tokens = self
            .token_embedding
            .index_select(&flat, 0)?
            .reshape((b, t, d))?;
        let positions = self.position_embedding.narrow(0, 0, t)?;
        let mut xs = tokens.broadcast_add(&positions)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(xs.clone());
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
            hidden_states.push(xs.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&xs)?;
        let rows: Vec<u32> = self
            .pool_positions(&ids)
            .into_iter()
            .enumerate()
            .map(|(i, p)| (i * t + p) as u32)
            .collect();
        let rows = Tensor::from_vec(rows, b, device)?;
        let pooler_output = last_hidden_state
            .reshape((b * t, d))?
            .index_select(&rows, 0)?;
        let text_embeds = match &self.text_projection {
            Some(p) => Some(p.forward(&pooler_output)?),
            None => None,
        };
        Ok(ClipTextOutput {
            hidden_states,
            last_hidden_state,
            pooler_output,
            text_embeds,
        })
    }

    /// Tokenizes `prompts` as the pipelines do and runs the encoder on them.
    pub fn encode_prompts(
        &self,
        tokenizer: &ClipTokenizer,
        prompts: &[&str],
    ) -> Result<ClipTextOutput> {
        self.forward(&tokenizer.input_ids(prompts, self.device())?)
    }
}

/// The hidden state `from_end` places before the last (0: the last) of `out`.
fn hidden_from_end(out: &ClipTextOutput, from_end: usize) -> Result<&Tensor> {
    let n = out.hidden_states.len();
    n.checked_sub(from_end + 1)
        .map(|i| &out.hidden_states[i])
        .ok_or_else(|| {
            Error::Input(format!(
                "clip_skip reaches {} layers back, the encoder has {} hidden states",
                from_end, n
            ))
        })
}

/// SD 1.5's `encode_prompt` conditioning [B, 77, D]: `last_hidden_state`, or with `clip_skip`
/// k the final LayerNorm of `hidden_states[-(k + 1)]`.
pub fn sd15_prompt_embeds(
    text_encoder: &ClipTextModel,
    out: &ClipTextOutput,
    clip_skip: Option<usize>,
) -> Result<Tensor> {
    match clip_skip {
        None => Ok(out.last_hidden_state.clone()),
        Some(k) => text_encoder.final_layer_norm(hidden_from_end(out, k)?),
    }
}

/// SDXL's `encode_prompt` for one batch of prompts: `hidden_states[-(clip_skip + 2)]` of every
/// encoder (the penultimate without `clip_skip`), not final-normed, concatenated along the
/// features in the order given — `[text_encoder, text_encoder_2]` for the base model
/// ([B, 77, 768 + 1280]), `[text_encoder_2]` alone for the refiner — and the pooled embedding:
/// `text_embeds` of the first encoder that has the projection head (`text_encoder_2`'s).
pub fn sdxl_prompt_embeds(
    outputs: &[&ClipTextOutput],
    clip_skip: Option<usize>,
) -> Result<(Tensor, Tensor)> {
    let back = clip_skip.unwrap_or(0) + 1;
    let states = outputs
        .iter()
        .map(|o| hidden_from_end(o, back))
        .collect::<Result<Vec<_>>>()?;
    if states.is_empty() {
        return Err(Error::Input(
            "sdxl_prompt_embeds: no encoder outputs".into(),
        ));
    }
    let prompt_embeds = Tensor::cat(&states, 2)?;
    let pooled = outputs
        .iter()
        .find_map(|o| o.text_embeds.clone())
        .ok_or_else(|| {
            Error::Input(
                "sdxl_prompt_embeds: no encoder has the projection head (text_encoder_2, \
                 CLIPTextModelWithProjection) that gives the pooled embedding"
                    .into(),
            )
        })?;
    Ok((prompt_embeds, pooled))
}
