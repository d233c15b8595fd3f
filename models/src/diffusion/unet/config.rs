//! `unet/config.json` of a diffusers `UNet2DConditionModel`, as SD 1.5, SDXL and SDXL-Turbo
//! write it, resolved into per-block settings (diffusers' defaults and its quirks included).

use serde::Deserialize;

use crate::{Error, Result};

/// An int for every block, or one int for all of them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    fn resolve(&self, blocks: usize, name: &str) -> Result<Vec<usize>> {
        match self {
            PerBlock::One(n) => Ok(vec![*n; blocks]),
            PerBlock::Each(v) if v.len() == blocks => Ok(v.clone()),
            PerBlock::Each(v) => Err(Error::Config(format!(
                "unet: {name} has {} entries for {blocks} down blocks",
                v.len()
            ))),
        }
    }
}

fn default_channels() -> usize {
    4
}
fn default_true() -> bool {
    true
}
fn default_layers() -> usize {
    2
}
fn default_groups() -> Option<usize> {
    Some(32)
}
fn default_eps() -> f64 {
    1e-5
}
fn default_cross() -> usize {
    1280
}
fn default_head_dim() -> PerBlock {
    PerBlock::One(8)
}
fn default_tlpb() -> PerBlock {
    PerBlock::One(1)
}
fn default_one() -> f64 {
    1.0
}
fn default_silu() -> String {
    "silu".into()
}
fn default_down() -> Vec<String> {
    [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_up() -> Vec<String> {
    [
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ]
    .map(String::from)
    .to_vec()
}
fn default_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn default_boc() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn default_resnet_shift() -> String {
    "default".into()
}
fn default_positional() -> String {
    "positional".into()
}
fn default_kernel() -> usize {
    3
}

/// The file as written; [`UNetConfig::resolve`] checks it and derives the per-block values.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_channels")]
    pub in_channels: usize,
    #[serde(default = "default_channels")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "default_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "default_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "default_up")]
    pub up_block_types: Vec<String>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default = "default_boc")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "default_layers")]
    pub layers_per_block: usize,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_one")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_silu")]
    pub act_fn: String,
    #[serde(default = "default_groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "default_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_cross")]
    pub cross_attention_dim: usize,
    #[serde(default = "default_tlpb")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default = "default_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_resnet_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "default_one")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "default_positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "default_kernel")]
    pub conv_in_kernel: usize,
    #[serde(default = "default_kernel")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
}

fn default_one_usize() -> usize {
    1
}

/// What one down block (and, reversed, one up block) is.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockSpec {
    /// Cross-attention transformers after each resnet.
    pub cross_attention: bool,
    pub out_channels: usize,
    pub heads: usize,
    /// Transformer layers of each of the block's `Transformer2DModel`s.
    pub transformer_layers: usize,
}

/// The config checked and spelled out per block.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub down: Vec<BlockSpec>,
    /// The up blocks in the order they run (the down blocks' reversed settings).
    pub up: Vec<BlockSpec>,
    pub layers_per_block: usize,
    pub downsample_padding: usize,
    pub groups: usize,
    pub eps: f64,
    pub cross_attention_dim: usize,
    pub use_linear_projection: bool,
    pub time_embed_dim: usize,
    /// SDXL's added conditioning (`addition_embed_type: "text_time"`): the width of each
    /// time id's embedding and the input width of `add_embedding`.
    pub text_time: Option<TextTime>,
    pub mid_block: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextTime {
    pub time_embed_dim: usize,
    pub projection_input_dim: usize,
}

impl UNetConfig {
    /// Checks the settings this UNet implements, naming the first one it does not, and
    /// spells out the per-block values as diffusers derives them.
    pub fn resolve(&self) -> Result<UNetSpec> {
        let bad = |what: String| Err(Error::Config(format!("unet: {what}")));
        let n = self.down_block_types.len();
        if n == 0 || self.block_out_channels.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "{} down blocks, {} up blocks and {} block_out_channels must agree",
                n,
                self.up_block_types.len(),
                self.block_out_channels.len()
            ));
        }
        let unsupported: [(&str, bool); 14] = [
            ("center_input_sample", self.center_input_sample),
            ("dual_cross_attention", self.dual_cross_attention),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("encoder_hid_dim", self.encoder_hid_dim.is_some()),
            (
                "time_cond_proj_dim (LCM)",
                self.time_cond_proj_dim.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("resnet_skip_time_act", self.resnet_skip_time_act),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
            ),
            (
                "only_cross_attention",
                !matches!(
                    &self.only_cross_attention,
                    serde_json::Value::Null | serde_json::Value::Bool(false)
                ),
            ),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            (
                "attention_type other than default",
                self.attention_type
                    .as_deref()
                    .is_some_and(|t| t != "default"),
            ),
            (
                "mid_block_only_cross_attention",
                self.mid_block_only_cross_attention == Some(true),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
            return bad(format!("{name} is not supported"));
        }
        if self.act_fn != "silu" {
            return bad(format!(
                "act_fn {:?} is not supported (silu is)",
                self.act_fn
            ));
        }
        if self.resnet_time_scale_shift != "default" {
            return bad(format!(
                "resnet_time_scale_shift {:?} is not supported (default is)",
                self.resnet_time_scale_shift
            ));
        }
        if self.time_embedding_type != "positional" {
            return bad(format!(
                "time_embedding_type {:?} is not supported (positional is)",
                self.time_embedding_type
            ));
        }
        if self.conv_in_kernel != 3 || self.conv_out_kernel != 3 {
            return bad("conv_in_kernel and conv_out_kernel other than 3".into());
        }
        if self.resnet_out_scale_factor != 1.0 || self.mid_block_scale_factor != 1.0 {
            return bad("resnet_out_scale_factor / mid_block_scale_factor other than 1".into());
        }
        let Some(groups) = self.norm_num_groups else {
            return bad("norm_num_groups null is not supported".into());
        };
        match self.mid_block_type.as_deref() {
            Some("UNetMidBlock2DCrossAttn") | None => {}
            Some(other) => return bad(format!("mid_block_type {other:?} is not supported")),
        }
        // diffusers' naming quirk: configs written before num_attention_heads existed say
        // attention_head_dim and mean the number of heads (SD 1.5's 8, SDXL's [5, 10, 20]).
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .resolve(n, "num_attention_heads / attention_head_dim")?;
        let layers = self
            .transformer_layers_per_block
            .resolve(n, "transformer_layers_per_block")?;
        let mut down = Vec::with_capacity(n);
        for (i, kind) in self.down_block_types.iter().enumerate() {
            let cross_attention = match kind.as_str() {
                "CrossAttnDownBlock2D" => true,
                "DownBlock2D" => false,
                other => return bad(format!("down block type {other:?} is not supported")),
            };
            let out_channels = self.block_out_channels[i];
            if heads[i] == 0
                || !out_channels.is_multiple_of(groups)
                || (cross_attention && !out_channels.is_multiple_of(heads[i]))
            {
                return bad(format!(
                    "block {i}: {out_channels} channels do not split into {groups} groups and {} heads",
                    heads[i]
                ));
            }
            down.push(BlockSpec {
                cross_attention,
                out_channels,
                heads: heads[i],
                transformer_layers: layers[i],
            });
        }
        let mut up: Vec<BlockSpec> = down.iter().rev().cloned().collect();
        for (i, kind) in self.up_block_types.iter().enumerate() {
            up[i].cross_attention = match kind.as_str() {
                "CrossAttnUpBlock2D" => true,
                "UpBlock2D" => false,
                other => return bad(format!("up block type {other:?} is not supported")),
            };
        }
        let text_time = match self.addition_embed_type.as_deref() {
            None => None,
            Some("text_time") => {
                let (Some(time_embed_dim), Some(projection_input_dim)) = (
                    self.addition_time_embed_dim,
                    self.projection_class_embeddings_input_dim,
                ) else {
                    return bad(
                        "addition_embed_type text_time needs addition_time_embed_dim and \
                         projection_class_embeddings_input_dim"
                            .into(),
                    );
                };
                Some(TextTime {
                    time_embed_dim,
                    projection_input_dim,
                })
            }
            Some(other) => {
                return bad(format!(
                    "addition_embed_type {other:?} is not supported (text_time is)"
                ))
            }
        };
        Ok(UNetSpec {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            down,
            up,
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            groups,
            eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
            time_embed_dim: self
                .time_embedding_dim
                .unwrap_or(self.block_out_channels[0] * 4),
            text_time,
            mid_block: self.mid_block_type.is_some(),
        })
    }
}
