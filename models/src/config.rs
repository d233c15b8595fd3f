//! Model configuration: Hugging Face `LlavaOnevisionConfig` and LLaVA-NeXT `LlavaQwenForCausalLM`
//! (`mm_*` keys) parsed into one shape.
//!
//! Field names moved between transformers versions (`rope_theta` beside the other text fields
//! in the hub's files, inside `rope_parameters` in what transformers 5 writes), so every field
//! is looked up where any version puts it, with the library's default when absent.
//!
//! The file is read into raw structs that mirror it ([`RawConfig`] and the sections it holds),
//! then converted with the checks into [`LlavaConfig`].

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::preprocess::anyres::{parse_pinpoints, AnyresGeometry};
use crate::{Error, Result};

/// SigLIP vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Layers stored in the checkpoint.
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    /// SigLIP so400m-patch14-384, the tower of every UnifiedReward / LLaVA-OneVision checkpoint,
    /// with the last layer dropped as the original LLaVA-NeXT code does.
    pub fn so400m() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 26,
            num_attention_heads: 16,
            num_channels: 3,
            image_size: 384,
            patch_size: 14,
            layer_norm_eps: 1e-6,
        }
    }

    /// Patches along one side of a tile.
    pub fn patches_per_side(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens one tile yields (no CLS token in SigLIP).
    pub fn tokens_per_tile(&self) -> usize {
        self.patches_per_side() * self.patches_per_side()
    }
}

/// Qwen2 decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub eos_token_id: Option<u32>,
}

impl TextConfig {
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Which stored layout the configuration came from; decides the checkpoint key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFlavour {
    /// `LlavaOnevisionForConditionalGeneration` (transformers).
    HuggingFace,
    /// `LlavaQwenForCausalLM` (the original LLaVA-NeXT code, UnifiedReward-7b).
    LlavaNext,
}

/// The whole reward model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlavaConfig {
    pub flavour: ConfigFlavour,
    pub vision: VisionConfig,
    pub text: TextConfig,
    /// Token id that `<image>` expands to; `None` when the tokenizer has no such token
    /// (LLaVA-NeXT splices features in place of a marker that is never tokenized).
    pub image_token_id: Option<u32>,
    pub video_token_id: Option<u32>,
    /// Tiling: pinpoint resolutions and the `anyres_max_N` cap.
    pub anyres: AnyresGeometry,
    /// Index into the vision tower's hidden states (embeddings first), Python-style.
    pub vision_feature_layer: i64,
    /// `full` keeps every patch; `default` drops the first token (CLIP's CLS).
    pub drop_first_feature: bool,
    pub projector_bias: bool,
}

impl LlavaConfig {
    /// Reads and validates `path`; an error names the file and the offending field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value, path.parent()).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// `dir` is where the config lives: LLaVA-NeXT configs name their vision tower by path.
    /// Every field is checked for its type and range here, once, so that a bad value is
    /// refused by name instead of falling back to a default or failing later per record.
    pub fn from_json(v: &Value, dir: Option<&Path>) -> Result<Self> {
        let raw = match v {
            Value::Object(_) => {
                RawConfig::deserialize(v).map_err(|e| Error::Config(e.to_string()))?
            }
            _ => RawConfig::default(),
        };
        let cfg = if raw.mm_vision_tower.is_some() || raw.mm_projector_type.is_some() {
            Self::from_llava_next(&raw, v, dir)?
        } else if raw.vision_config.is_some() || raw.text_config.is_some() {
            Self::from_hf(&raw)?
        } else {
            return Err(Error::Config(
                "neither a LlavaOnevisionConfig (vision_config/text_config) nor a \
                 LlavaQwenForCausalLM config (mm_* keys)"
                    .into(),
            ));
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn from_hf(raw: &RawConfig) -> Result<Self> {
        let top = Checks::new("");
        let vision_raw: RawVision = top.section("vision_config", &raw.vision_config)?;
        let text_raw: RawText = top.section("text_config", &raw.text_config)?;
        let vision = vision_from_raw(&vision_raw, "vision_config.", &VisionConfig::so400m())?;
        let mut text = text_from_raw(&text_raw, "text_config.")?;
        if let Some(tied) = top.bool("tie_word_embeddings", &raw.tie_word_embeddings)? {
            // The outer flag is what transformers ties by when the inner one is absent.
            if text_raw.tie_word_embeddings.is_none() {
                text.tie_word_embeddings = tied;
            }
        }
        let strategy = top.string(
            "vision_feature_select_strategy",
            &raw.vision_feature_select_strategy,
        )?;
        let aspect = top.string("vision_aspect_ratio", &raw.vision_aspect_ratio)?;
        // The hub's defaults (151646, 151647) are not checked against the vocabulary: a small
        // model used for text alone never reaches them.
        let image = top.token_id(raw.image_token())?;
        let video = top.token_id(raw.video_token())?;
        for (name, id) in [("image_token_index", image), ("video_token_index", video)] {
            if let Some(id) = id {
                check_token_id(name, id, text.vocab_size)?;
            }
        }
        Ok(Self {
            flavour: ConfigFlavour::HuggingFace,
            vision: vision.clone(),
            text,
            image_token_id: Some(image.unwrap_or(151646)),
            video_token_id: Some(video.unwrap_or(151647)),
            anyres: anyres(
                &vision,
                raw.image_grid_pinpoints.as_ref(),
                aspect.as_deref().unwrap_or("anyres_max_9"),
            )?,
            vision_feature_layer: top
                .feature_layer("vision_feature_layer", &raw.vision_feature_layer)?
                .unwrap_or(-1),
            drop_first_feature: feature_strategy(strategy.as_deref().unwrap_or("full"))?,
            projector_bias: top
                .bool("multimodal_projector_bias", &raw.multimodal_projector_bias)?
                .unwrap_or(true),
        })
    }

    /// `v` is the whole file: the LLaVA-NeXT layout keeps the decoder's fields at the top.
    fn from_llava_next(raw: &RawConfig, v: &Value, dir: Option<&Path>) -> Result<Self> {
        let top = Checks::new("");
        let text_raw = RawText::deserialize(v).map_err(|e| Error::Config(e.to_string()))?;
        let text = text_from_raw(&text_raw, "")?;
        let vision = match local_vision_config(raw, dir) {
            Some(found) => found?,
            None => VisionConfig::so400m(),
        };
        let projector = top.string("mm_projector_type", &raw.mm_projector_type)?;
        let projector = projector.as_deref().unwrap_or("mlp2x_gelu");
        if projector != "mlp2x_gelu" {
            return Err(Error::Config(format!(
                "mm_projector_type {projector:?}: only mlp2x_gelu (Linear-GELU-Linear) is supported"
            )));
        }
        let strategy = top.string("mm_vision_select_feature", &raw.mm_vision_select_feature)?;
        let strategy = strategy.as_deref().unwrap_or("patch");
        let aspect = top.string("image_aspect_ratio", &raw.image_aspect_ratio)?;
        // The original code marks images with the id -200, never tokenized: no token.
        let image = top.llava_next_token_id(raw.image_token())?;
        let video = top.llava_next_token_id(raw.video_token())?;
        for (name, id) in [("image_token_index", image), ("video_token_index", video)] {
            if let Some(id) = id {
                check_token_id(name, id, text.vocab_size)?;
            }
        }
        Ok(Self {
            flavour: ConfigFlavour::LlavaNext,
            vision: vision.clone(),
            text,
            image_token_id: image,
            video_token_id: video,
            anyres: anyres(
                &vision,
                raw.image_grid_pinpoints.as_ref(),
                aspect.as_deref().unwrap_or("anyres_max_9"),
            )?,
            // The original tower drops its last layer and reads the output of what is left;
            // checkpoints store only the kept layers, so the last stored layer is the feature.
            vision_feature_layer: -1,
            drop_first_feature: strategy == "cls_patch" || strategy == "default",
            projector_bias: true,
        })
    }

    /// What no single field can say: token ids inside the vocabulary and a feature layer
    /// inside the tower.
    fn validate(&self) -> Result<()> {
        if let Some(eos) = self.text.eos_token_id {
            check_token_id("eos_token_id", eos, self.text.vocab_size)?;
        }
        self.vision_layers_used()?;
        Ok(())
    }

    /// How many vision layers must run for the configured feature layer.
    pub fn vision_layers_used(&self) -> Result<usize> {
        let n = self.vision.num_hidden_layers as i64;
        let k = self.vision_feature_layer;
        let used = if k < 0 { n + 1 + k } else { k };
        if used < 0 || used > n {
            return Err(Error::Config(format!(
                "vision_feature_layer {k} is outside a tower of {n} layers"
            )));
        }
        Ok(used as usize)
    }
}

fn check_token_id(name: &str, id: u32, vocab: usize) -> Result<()> {
    if id as usize >= vocab {
        return Err(Error::Config(format!(
            "{name} {id} is outside the vocabulary (vocab_size {vocab})"
        )));
    }
    Ok(())
}

/// The largest tile side accepted, in pixels: pinpoints are multiples of it in u32, and
/// so400m's is 384.
const MAX_IMAGE_SIZE: usize = 1 << 16;

/// `config.json` as written, in either layout: the hub's `LlavaOnevisionConfig` (the towers'
/// settings in `vision_config` / `text_config`) or LLaVA-NeXT's `LlavaQwenForCausalLM` (`mm_*`
/// keys, the decoder's settings at the top, read as [`RawText`] from the same object). Values
/// stay JSON until [`Checks`] converts them, so that a value of the wrong type or range is
/// refused naming its key and what it holds. A key that is absent or `null` takes the
/// library's default.
#[derive(Debug, Default, Deserialize)]
struct RawConfig {
    /// Present (even `null`) marks the hub layout.
    #[serde(default, deserialize_with = "present")]
    vision_config: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    text_config: Option<Value>,
    tie_word_embeddings: Option<Value>,
    vision_feature_select_strategy: Option<Value>,
    vision_aspect_ratio: Option<Value>,
    image_token_index: Option<Value>,
    image_token_id: Option<Value>,
    video_token_index: Option<Value>,
    video_token_id: Option<Value>,
    image_grid_pinpoints: Option<Value>,
    vision_feature_layer: Option<Value>,
    multimodal_projector_bias: Option<Value>,
    /// Present (even `null`) marks the LLaVA-NeXT layout.
    #[serde(default, deserialize_with = "present")]
    mm_vision_tower: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    mm_projector_type: Option<Value>,
    mm_vision_select_feature: Option<Value>,
    image_aspect_ratio: Option<Value>,
}

impl RawConfig {
    /// The token id keys, in the order they are looked up: the older name first.
    fn image_token(&self) -> [(&'static str, &Option<Value>); 2] {
        [
            ("image_token_index", &self.image_token_index),
            ("image_token_id", &self.image_token_id),
        ]
    }

    fn video_token(&self) -> [(&'static str, &Option<Value>); 2] {
        [
            ("video_token_index", &self.video_token_index),
            ("video_token_id", &self.video_token_id),
        ]
    }
}

/// The SigLIP tower's settings (`vision_config`, or a tower's own config.json).
#[derive(Debug, Default, Deserialize)]
struct RawVision {
    hidden_size: Option<Value>,
    intermediate_size: Option<Value>,
    num_hidden_layers: Option<Value>,
    num_attention_heads: Option<Value>,
    num_channels: Option<Value>,
    image_size: Option<Value>,
    patch_size: Option<Value>,
    layer_norm_eps: Option<Value>,
    hidden_act: Option<Value>,
}

/// The decoder's settings (`text_config`, or the top level of a LLaVA-NeXT config).
#[derive(Debug, Default, Deserialize)]
struct RawText {
    vocab_size: Option<Value>,
    hidden_size: Option<Value>,
    intermediate_size: Option<Value>,
    num_hidden_layers: Option<Value>,
    num_attention_heads: Option<Value>,
    num_key_value_heads: Option<Value>,
    max_position_embeddings: Option<Value>,
    rope_theta: Option<Value>,
    /// Where transformers 5 puts `rope_theta` and the rotary kind.
    rope_parameters: Option<Value>,
    rope_scaling: Option<Value>,
    rms_norm_eps: Option<Value>,
    tie_word_embeddings: Option<Value>,
    eos_token_id: Option<Value>,
}

/// `rope_parameters` / `rope_scaling`.
#[derive(Debug, Default, Deserialize)]
struct RawRope {
    rope_theta: Option<Value>,
    rope_type: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
}

/// A key's value kept as given, `null` included: what marks a layout is the key's presence.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// Converts the values of one object of the config (the top level, `text_config`,
/// `vision_config`, ...): an error names the key with the object's `prefix`.
struct Checks {
    prefix: &'static str,
}

impl Checks {
    fn new(prefix: &'static str) -> Self {
        Self { prefix }
    }

    fn bad(&self, key: &str, want: &str, got: &Value) -> Error {
        Error::Config(format!("{}{key}: expected {want}, got {got}", self.prefix))
    }

    /// A size: an integer of at least 1.
    fn size(&self, key: &str, x: &Option<Value>, default: usize) -> Result<usize> {
        match given(x) {
            None => Ok(default),
            Some(x) => x
                .as_u64()
                .filter(|&n| n >= 1 && n <= usize::MAX as u64)
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(key, "a positive integer", x)),
        }
    }

    /// A finite number above zero (epsilons, rope_theta).
    fn positive(&self, key: &str, x: &Option<Value>) -> Result<Option<f64>> {
        match given(x) {
            None => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite() && *f > 0.0)
                .map(Some)
                .ok_or_else(|| self.bad(key, "a finite positive number", x)),
        }
    }

    fn bool(&self, key: &str, x: &Option<Value>) -> Result<Option<bool>> {
        match given(x) {
            None => Ok(None),
            Some(x) => x
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.bad(key, "true or false", x)),
        }
    }

    fn string(&self, key: &str, x: &Option<Value>) -> Result<Option<String>> {
        match given(x) {
            None => Ok(None),
            Some(x) => x
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.bad(key, "a string", x)),
        }
    }

    /// A nested object read as `T`; absent, it is `T`'s all-absent default.
    fn section<T: DeserializeOwned + Default>(&self, key: &str, x: &Option<Value>) -> Result<T> {
        match given(x) {
            None => Ok(T::default()),
            Some(x) if x.is_object() => {
                T::deserialize(x).map_err(|e| Error::Config(format!("{}{key}: {e}", self.prefix)))
            }
            Some(x) => Err(self.bad(key, "an object", x)),
        }
    }

    /// The first of `keys` present, as a token id (an integer 0..2^32).
    fn token_id(&self, keys: [(&'static str, &Option<Value>); 2]) -> Result<Option<u32>> {
        let Some((key, x)) = keys.iter().find_map(|(k, x)| Some((*k, given(x)?))) else {
            return Ok(None);
        };
        x.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| self.bad(key, "a token id (an integer from 0)", x))
    }

    /// As [`Self::token_id`], except that a negative id (the original code's `-200` image
    /// marker) means there is no such token.
    fn llava_next_token_id(
        &self,
        keys: [(&'static str, &Option<Value>); 2],
    ) -> Result<Option<u32>> {
        let negative = keys
            .iter()
            .find_map(|(_, x)| given(x))
            .and_then(Value::as_i64)
            .is_some_and(|n| n < 0);
        if negative {
            return Ok(None);
        }
        self.token_id(keys)
    }

    /// `eos_token_id`: a number, or a list of numbers whose first ends generation.
    fn eos_id(&self, x: &Option<Value>) -> Result<Option<u32>> {
        let key = "eos_token_id";
        let id = |x: &Value| -> Result<u32> {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| self.bad(key, "a token id or a list of token ids", x))
        };
        match given(x) {
            None => Ok(None),
            Some(Value::Array(a)) => {
                let ids = a.iter().map(id).collect::<Result<Vec<_>>>()?;
                Ok(ids.first().copied())
            }
            Some(x) => id(x).map(Some),
        }
    }

    /// One layer index (negative counts from the end); a list of layers is not supported.
    fn feature_layer(&self, key: &str, x: &Option<Value>) -> Result<Option<i64>> {
        match given(x) {
            None => Ok(None),
            Some(x) => x
                .as_i64()
                .map(Some)
                .ok_or_else(|| self.bad(key, "one layer index (an integer)", x)),
        }
    }
}

/// A value that is there and not `null`.
fn given(x: &Option<Value>) -> Option<&Value> {
    x.as_ref().filter(|x| !x.is_null())
}

fn vision_from_raw(r: &RawVision, prefix: &'static str, d: &VisionConfig) -> Result<VisionConfig> {
    let s = Checks::new(prefix);
    let cfg = VisionConfig {
        hidden_size: s.size("hidden_size", &r.hidden_size, d.hidden_size)?,
        intermediate_size: s.size(
            "intermediate_size",
            &r.intermediate_size,
            d.intermediate_size,
        )?,
        num_hidden_layers: s.size(
            "num_hidden_layers",
            &r.num_hidden_layers,
            d.num_hidden_layers,
        )?,
        num_attention_heads: s.size(
            "num_attention_heads",
            &r.num_attention_heads,
            d.num_attention_heads,
        )?,
        num_channels: s.size("num_channels", &r.num_channels, d.num_channels)?,
        image_size: s.size("image_size", &r.image_size, d.image_size)?,
        patch_size: s.size("patch_size", &r.patch_size, d.patch_size)?,
        layer_norm_eps: s
            .positive("layer_norm_eps", &r.layer_norm_eps)?
            .unwrap_or(d.layer_norm_eps),
    };
    if let Some(act) = s.string("hidden_act", &r.hidden_act)? {
        if act != "gelu_pytorch_tanh" {
            return Err(Error::Config(format!(
                "{}hidden_act {act:?}: SigLIP uses gelu_pytorch_tanh",
                s.prefix
            )));
        }
    }
    if cfg.image_size > MAX_IMAGE_SIZE {
        return Err(Error::Config(format!(
            "{}image_size {} is over {MAX_IMAGE_SIZE} pixels",
            s.prefix, cfg.image_size
        )));
    }
    // so400m has 384 px tiles of 14 px patches: the stride-14 convolution drops the last
    // 6 pixels, so the tile need not be a multiple of the patch.
    if cfg.image_size < cfg.patch_size {
        return Err(Error::Config(format!(
            "{}image_size {} holds no patch of patch_size {}",
            s.prefix, cfg.image_size, cfg.patch_size
        )));
    }
    if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(Error::Config(format!(
            "{}hidden_size {} is not a multiple of num_attention_heads {}",
            s.prefix, cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    Ok(cfg)
}

/// A Qwen2 decoder's settings from one object of a config (another family's `text_config`, or
/// the top level of a file that keeps them there), with the same checks as LLaVA's.
pub(crate) fn text_config_from_json(v: &Value, prefix: &'static str) -> Result<TextConfig> {
    let raw: RawText =
        serde_json::from_value(v.clone()).map_err(|e| Error::Config(format!("{prefix}: {e}")))?;
    text_from_raw(&raw, prefix)
}

fn text_from_raw(r: &RawText, prefix: &'static str) -> Result<TextConfig> {
    let s = Checks::new(prefix);
    let rope = match given(&r.rope_parameters) {
        Some(_) => Some(s.section::<RawRope>("rope_parameters", &r.rope_parameters)?),
        None => None,
    };
    let rope_checks = Checks::new("rope_parameters.");
    let rope_theta = match s.positive("rope_theta", &r.rope_theta)? {
        Some(t) => t,
        None => match &rope {
            Some(rp) => rope_checks
                .positive("rope_theta", &rp.rope_theta)?
                .unwrap_or(10000.0),
            None => 10000.0,
        },
    };
    let scaling = match given(&r.rope_scaling) {
        Some(_) => Some((
            s.section::<RawRope>("rope_scaling", &r.rope_scaling)?,
            Checks::new("rope_scaling."),
        )),
        None => rope.map(|rp| (rp, rope_checks)),
    };
    if let Some((rp, checks)) = scaling {
        let kind = match checks.string("rope_type", &rp.rope_type)? {
            Some(k) => Some(k),
            None => checks.string("type", &rp.kind)?,
        };
        if let Some(kind) = kind.filter(|k| k != "default") {
            return Err(Error::Config(format!(
                "rope_type {kind:?}: only the default rotary embedding is supported"
            )));
        }
    }
    let heads = s.size("num_attention_heads", &r.num_attention_heads, 28)?;
    let cfg = TextConfig {
        vocab_size: s.size("vocab_size", &r.vocab_size, 152064)?,
        hidden_size: s.size("hidden_size", &r.hidden_size, 3584)?,
        intermediate_size: s.size("intermediate_size", &r.intermediate_size, 18944)?,
        num_hidden_layers: s.size("num_hidden_layers", &r.num_hidden_layers, 28)?,
        num_attention_heads: heads,
        num_key_value_heads: s.size("num_key_value_heads", &r.num_key_value_heads, heads)?,
        max_position_embeddings: s.size(
            "max_position_embeddings",
            &r.max_position_embeddings,
            32768,
        )?,
        rope_theta,
        rms_norm_eps: s.positive("rms_norm_eps", &r.rms_norm_eps)?.unwrap_or(1e-6),
        tie_word_embeddings: s
            .bool("tie_word_embeddings", &r.tie_word_embeddings)?
            .unwrap_or(false),
        eos_token_id: s.eos_id(&r.eos_token_id)?,
    };
    if !cfg.hidden_size.is_multiple_of(heads) || !heads.is_multiple_of(cfg.num_key_value_heads) {
        return Err(Error::Config(format!(
            "{p}hidden_size {} / {p}num_attention_heads {heads} / {p}num_key_value_heads {} do \
             not divide",
            cfg.hidden_size,
            cfg.num_key_value_heads,
            p = s.prefix
        )));
    }
    // Rotary embeddings turn the two halves of each head against each other.
    if !cfg.head_dim().is_multiple_of(2) {
        return Err(Error::Config(format!(
            "{p}hidden_size {} / {p}num_attention_heads {heads} gives an odd head size {}",
            cfg.hidden_size,
            cfg.head_dim(),
            p = s.prefix
        )));
    }
    Ok(cfg)
}

/// A SigLIP tower's own config.json: its settings in `vision_config`, or at the top.
#[derive(Debug, Default, Deserialize)]
struct RawTowerFile {
    #[serde(default, deserialize_with = "present")]
    vision_config: Option<Value>,
}

/// The original code names its tower (`mm_vision_tower`); when that is a local directory with
/// a SigLIP config, it is the truth about the tower's shape.
fn local_vision_config(raw: &RawConfig, dir: Option<&Path>) -> Option<Result<VisionConfig>> {
    let name = raw.mm_vision_tower.as_ref()?.as_str()?;
    let candidates = [
        Some(Path::new(name).to_path_buf()),
        dir.map(|d| d.join(name)),
    ];
    let cfg_path = candidates
        .into_iter()
        .flatten()
        .map(|p| p.join("config.json"))
        .find(|p| p.is_file())?;
    Some((|| {
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: cfg_path.clone(),
            source,
        })?;
        let file = match &json {
            Value::Object(_) => RawTowerFile::deserialize(&json)
                .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?,
            _ => RawTowerFile::default(),
        };
        let inner = file.vision_config.as_ref().unwrap_or(&json);
        // Anything but an object holds no settings: the tower is so400m.
        let tower = match inner {
            Value::Object(_) => RawVision::deserialize(inner)
                .map_err(|e| Error::Config(format!("{}: {e}", cfg_path.display())))?,
            _ => RawVision::default(),
        };
        vision_from_raw(&tower, "vision_config.", &VisionConfig::so400m()).map_err(|e| match e {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", cfg_path.display())),
            other => other,
        })
    })())
}

/// Absent pinpoints mean LLaVA-OneVision's 1x1..6x6 tile grid.
fn anyres(
    vision: &VisionConfig,
    pinpoints: Option<&Value>,
    aspect: &str,
) -> Result<AnyresGeometry> {
    let tile = vision.image_size as u32;
    let pinpoints = match pinpoints {
        None | Some(Value::Null) => (1..=6)
            .flat_map(|i| (1..=6).map(move |j| (i * tile, j * tile)))
            .collect(),
        Some(v) => parse_pinpoints(v, tile)?,
    };
    AnyresGeometry::new(tile, vision.patch_size as u32, pinpoints, aspect)
}

fn feature_strategy(s: &str) -> Result<bool> {
    match s {
        "full" => Ok(false),
        "default" => Ok(true),
        other => Err(Error::Config(format!(
            "vision_feature_select_strategy {other:?}: expected full or default"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rope_theta_from_either_place() {
        let hub = json!({"vision_config": {}, "text_config": {"rope_theta": 5.0}});
        let v5 = json!({"vision_config": {}, "text_config": {"rope_parameters": {"rope_theta": 7.0, "rope_type": "default"}}});
        assert_eq!(
            LlavaConfig::from_json(&hub, None).unwrap().text.rope_theta,
            5.0
        );
        assert_eq!(
            LlavaConfig::from_json(&v5, None).unwrap().text.rope_theta,
            7.0
        );
    }

    #[test]
    fn llava_next_config_uses_so400m_and_tile_range() {
        let v = json!({
            "architectures": ["LlavaQwenForCausalLM"], "hidden_size": 896, "num_attention_heads": 14,
            "num_key_value_heads": 2, "mm_vision_tower": "google/siglip-so400m-patch14-384",
            "mm_projector_type": "mlp2x_gelu", "image_aspect_ratio": "anyres_max_9",
            "image_grid_pinpoints": "(1x1),...,(6x6)", "mm_vision_select_feature": "patch"
        });
        let cfg = LlavaConfig::from_json(&v, None).unwrap();
        assert_eq!(cfg.flavour, ConfigFlavour::LlavaNext);
        assert_eq!(cfg.vision, VisionConfig::so400m());
        assert_eq!(cfg.anyres.pinpoints.len(), 36);
        assert_eq!(cfg.anyres.pinpoints[1], (384, 768));
        assert_eq!(cfg.anyres.max_tiles, Some(9));
        assert!(!cfg.drop_first_feature);
    }

    #[test]
    fn feature_layer_counts_from_the_end() {
        let v = json!({"vision_config": {"num_hidden_layers": 4}, "text_config": {}, "vision_feature_layer": -2});
        assert_eq!(
            LlavaConfig::from_json(&v, None)
                .unwrap()
                .vision_layers_used()
                .unwrap(),
            3
        );
    }

    #[test]
    fn unsupported_projector_is_refused() {
        let v = json!({"mm_vision_tower": "x", "mm_projector_type": "linear"});
        let err = LlavaConfig::from_json(&v, None).unwrap_err().to_string();
        assert!(err.contains("mm_projector_type"), "{err}");
    }

    /// The golden model's config with `edit` applied to it.
    fn tiny(edit: impl FnOnce(&mut Value)) -> Value {
        let mut v = json!({
            "vision_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 32, "patch_size": 8},
            "text_config": {"vocab_size": 576, "hidden_size": 64, "intermediate_size": 160,
                            "num_hidden_layers": 2, "num_attention_heads": 4,
                            "num_key_value_heads": 2, "eos_token_id": 573,
                            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"}},
            "image_token_index": 574, "video_token_index": 575,
            "image_grid_pinpoints": [[32, 32], [32, 64]]
        });
        edit(&mut v);
        v
    }

    fn refusal(v: &Value) -> String {
        match LlavaConfig::from_json(v, None) {
            Ok(cfg) => panic!("accepted: {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_unedited_tiny_config_is_valid() {
        let cfg = LlavaConfig::from_json(&tiny(|_| {}), None).unwrap();
        assert_eq!(cfg.text.hidden_size, 64);
        assert_eq!(cfg.text.rope_theta, 1e6);
        assert_eq!(cfg.image_token_id, Some(574));
    }

    #[test]
    fn sizes_of_the_wrong_type_are_refused_by_name() {
        for bad in [json!(64.5), json!(-64), json!(0), json!("64"), json!(true)] {
            let err = refusal(&tiny(|v| v["text_config"]["hidden_size"] = bad.clone()));
            assert!(
                err.contains("text_config.hidden_size") && err.contains("positive integer"),
                "{bad}: {err}"
            );
        }
        let err = refusal(&tiny(|v| {
            v["vision_config"]["num_attention_heads"] = json!(-4)
        }));
        assert!(err.contains("vision_config.num_attention_heads"), "{err}");
        let err = refusal(&tiny(|v| {
            v["text_config"]["tie_word_embeddings"] = json!("no")
        }));
        assert!(err.contains("text_config.tie_word_embeddings"), "{err}");
        let err = refusal(&tiny(|v| v["vision_feature_layer"] = json!([-2, -1])));
        assert!(err.contains("vision_feature_layer"), "{err}");
    }

    #[test]
    fn token_ids_outside_the_vocabulary_are_refused() {
        let err = refusal(&tiny(|v| v["image_token_index"] = json!(576)));
        assert!(
            err.contains("image_token_index 576") && err.contains("vocab_size 576"),
            "{err}"
        );
        let err = refusal(&tiny(|v| v["video_token_index"] = json!(100000)));
        assert!(err.contains("video_token_index"), "{err}");
        let err = refusal(&tiny(|v| {
            v["text_config"]["eos_token_id"] = json!([9999, 573])
        }));
        assert!(err.contains("eos_token_id 9999"), "{err}");
        let err = refusal(&tiny(|v| v["image_token_index"] = json!(-5)));
        assert!(err.contains("image_token_index"), "{err}");
    }

    #[test]
    fn rope_theta_and_epsilons_must_be_finite_and_positive() {
        for bad in [json!(-10000.0), json!(0), json!("1e6")] {
            let err = refusal(&tiny(|v| {
                v["text_config"]["rope_parameters"]["rope_theta"] = bad.clone()
            }));
            assert!(err.contains("rope_theta"), "{bad}: {err}");
            let err = refusal(&tiny(|v| v["text_config"]["rope_theta"] = bad.clone()));
            assert!(err.contains("text_config.rope_theta"), "{bad}: {err}");
        }
        let err = refusal(&tiny(|v| v["text_config"]["rms_norm_eps"] = json!(-1e-6)));
        assert!(err.contains("text_config.rms_norm_eps"), "{err}");
        let err = refusal(&tiny(|v| v["vision_config"]["layer_norm_eps"] = json!(0.0)));
        assert!(err.contains("vision_config.layer_norm_eps"), "{err}");
    }

    #[test]
    fn head_sizes_must_divide_and_be_even() {
        let err = refusal(&tiny(|v| {
            v["text_config"]["num_key_value_heads"] = json!(3)
        }));
        assert!(err.contains("do not divide"), "{err}");
        // 4 heads of 9: rotary embeddings need an even head size.
        let err = refusal(&tiny(|v| v["text_config"]["hidden_size"] = json!(36)));
        assert!(err.contains("odd head size"), "{err}");
        let err = refusal(&tiny(|v| {
            v["vision_config"]["image_size"] = json!(1u64 << 20)
        }));
        assert!(err.contains("vision_config.image_size"), "{err}");
    }

    #[test]
    fn llava_next_negative_image_marker_means_no_token() {
        let v = json!({"mm_vision_tower": "x", "mm_projector_type": "mlp2x_gelu",
                       "hidden_size": 896, "num_attention_heads": 14, "num_key_value_heads": 2,
                       "image_token_index": -200});
        assert_eq!(
            LlavaConfig::from_json(&v, None).unwrap().image_token_id,
            None
        );
    }

    #[test]
    fn a_layout_is_marked_by_its_keys_even_when_null() {
        let next = json!({"mm_vision_tower": null, "hidden_size": 896,
                          "num_attention_heads": 14, "num_key_value_heads": 2});
        assert_eq!(
            LlavaConfig::from_json(&next, None).unwrap().flavour,
            ConfigFlavour::LlavaNext
        );
        let hub = json!({"vision_config": null, "text_config": {"hidden_size": 896,
                         "num_attention_heads": 14, "num_key_value_heads": 2}});
        let cfg = LlavaConfig::from_json(&hub, None).unwrap();
        assert_eq!(cfg.flavour, ConfigFlavour::HuggingFace);
        assert_eq!(cfg.vision, VisionConfig::so400m());
        let err = refusal(&json!(["vision_config"]));
        assert!(err.contains("neither a LlavaOnevisionConfig"), "{err}");
        let err = refusal(&json!({"vision_config": "so400m"}));
        assert!(err.contains("vision_config: expected an object"), "{err}");
    }

    #[test]
    fn errors_from_a_file_name_it() {
        let dir = std::env::temp_dir().join(format!("unireward-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        let v = tiny(|v| v["text_config"]["hidden_size"] = json!(64.5));
        std::fs::write(&path, v.to_string()).unwrap();
        let err = LlavaConfig::from_file(&path).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("text_config.hidden_size"),
            "{err}"
        );
    }
}
