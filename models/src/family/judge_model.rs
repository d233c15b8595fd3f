//! What a judge family's candle model offers to the code above it: the engine's candle
//! backend and the trainer call only these, never a family's own type.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::kind::ModelFamily;
use crate::config::{LlavaConfig, TextConfig};
use crate::decode::checkpointing::Checkpointing;
use crate::decode::KvCache;
use crate::pack::MediaFeatures;
use crate::preprocess::PreparedMedia;
use crate::qwen2_5_vl::QwenMedia;
use crate::tokenize::Tokenized;
use crate::Result;

/// A request's media preprocessed by its family's processor: what
/// [`JudgeModel::media_features`] encodes.
pub enum JudgeMedia {
    /// Anyres tiles and video frames (LLaVA-OneVision's `MediaLoader`).
    Llava(PreparedMedia),
    /// Patches with their grids (Qwen-VL's processor).
    QwenVl(QwenMedia),
}

impl JudgeMedia {
    /// Rows the vision tower encodes for this request: LLaVA's tiles and frames, or Qwen-VL's
    /// patches (what a step's memory grows with).
    pub fn tiles(&self) -> usize {
        match self {
            JudgeMedia::Llava(m) => m.tiles(),
            JudgeMedia::QwenVl(m) => m.patches(),
        }
    }

    /// The most patches one attention of the tower spans: Qwen-VL's largest frame (its
    /// full-attention blocks attend over a frame); 0 for LLaVA, whose tiles are all one size.
    pub fn frame_patches(&self) -> usize {
        match self {
            JudgeMedia::Llava(_) => 0,
            JudgeMedia::QwenVl(m) => m.frame_patches(),
        }
    }
}

pub trait JudgeModel: Send + Sync {
    fn family(&self) -> ModelFamily;

    /// The decoder's configuration (vocabulary, context length, stop token): what family-neutral
    /// code needs of a config.
    fn text_config(&self) -> &TextConfig;

    /// The LLaVA configuration, for code that is still LLaVA-only (the exporter's graphs and
    /// the media loader's anyres geometry); `None` for other families.
    fn llava_config(&self) -> Option<&LlavaConfig>;

    fn device(&self) -> &Device;

    fn dtype(&self) -> DType;

    /// Preprocessed pixels (for LLaVA: tiles [n, 3, S, S]) → projected features
    /// [n, tokens per tile, hidden].
    fn encode_tiles(&self, pixels: &Tensor) -> Result<Tensor>;

    /// One image's encoded tiles (base first) → its token features [tokens, hidden]; `original`
    /// is the image's (width, height) before preprocessing.
    fn pack_image(&self, feats: &Tensor, original: (u32, u32)) -> Result<Tensor>;

    /// One video's encoded frames → its token features [tokens, hidden].
    fn pack_video(&self, feats: &Tensor) -> Result<Tensor>;

    /// One image's preprocessed pixels → its token features: encode, then pack.
    fn image_features(&self, pixels: &Tensor, original: (u32, u32)) -> Result<Tensor> {
        self.pack_image(&self.encode_tiles(pixels)?, original)
    }

    /// One video's preprocessed frames → its token features: encode, then pack.
    fn video_features(&self, frames: &Tensor) -> Result<Tensor> {
        self.pack_video(&self.encode_tiles(frames)?)
    }

    /// A request's prepared images and videos → their token features, encoded in one batch
    /// and packed as this family packs them (with the grids its positions need).
    /// Differentiable in the model's weights. Media prepared for another family are refused.
    fn media_features(&self, media: &JudgeMedia) -> Result<MediaFeatures>;

    /// Token ids [T] or [B, T] → their embeddings.
    fn embed_ids(&self, ids: &Tensor) -> Result<Tensor>;

    /// Token embeddings with each media span overwritten by its features → [T, hidden].
    fn embed(&self, tokens: &Tokenized, media: &MediaFeatures) -> Result<Tensor>;

    /// Embeddings [B, T, D] → final hidden states [B, T, D], continuing `cache` when given
    /// (right padding; every row's positions start after the cache).
    fn hidden_states(&self, embeds: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor>;

    /// Whole right-padded sequences [B, T, D], row b holding `seqs[b]`'s tokens and media,
    /// without a cache → final hidden states [B, T, D], each row at the positions inference
    /// gives a prompt of those tokens and media (LLaVA: 0..T; Qwen-VL: its M-RoPE positions
    /// from the media grids). What training's forwards run.
    fn sequence_hidden_states(
        &self,
        embeds: &Tensor,
        seqs: &[(&Tokenized, &MediaFeatures)],
    ) -> Result<Tensor> {
        let _ = seqs;
        self.hidden_states(embeds, None)
    }

    /// [`JudgeModel::hidden_states`] read at `rows` [B, P] (u32 indices into this call's
    /// tokens) only: [B, P, D].
    fn hidden_states_at(
        &self,
        embeds: &Tensor,
        cache: Option<&mut KvCache>,
        rows: &Tensor,
    ) -> Result<Tensor>;

    /// Embeddings [B, T, D] after `cache` at explicit `positions` [B, T] (u32), under an
    /// additive `mask` broadcastable to [B, 1, T, past + T] (f32) → final hidden states
    /// [B, T, D]. For sequences whose cached histories differ (they joined a running batch at
    /// different times): each gets its own positions, and its mask hides the cache slots that
    /// are not its tokens.
    fn hidden_states_masked(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor>;

    /// Hidden states → logits over the vocabulary (the model's dtype).
    fn logits(&self, hidden: &Tensor) -> Result<Tensor>;

    /// An empty cache with one slot per decoder layer.
    fn new_cache(&self) -> KvCache;

    /// Gradient checkpointing of the decoder's layers from now on (`None`: off): training's
    /// forwards keep only each layer's input and backward recomputes the layer, depositing
    /// the trained weights' gradients in `grads` ([`crate::decode::checkpointing`]).
    fn set_checkpointing(&mut self, grads: Option<Arc<Checkpointing>>) -> Result<()>;
}
