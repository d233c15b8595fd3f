//! Scoring backends. A backend runs the two model graphs of DESIGN.md — pixel tiles to
//! projected features, and embeddings to log-probabilities — while packing, tokenization and
//! the embedding merge stay in Rust, shared by every backend.
//!
//! A backend offers a few basic calls ([`Backend`]): encode tiles, embed tokens, and one
//! decoder call over an optional KV cache ([`DecoderCache`]), with its limits. The algorithms
//! built on them — scoring continuations after a prompt, greedy generation, log-probs at
//! positions — are written once above the trait, in [`crate::decoding`].
//!
//! `candle` runs the model directly; `ort` runs a directory written by `unireward-export onnx` through
//! ONNX Runtime, loaded at run time.

pub mod candle;
mod candle_batch;
pub mod error;
mod mrope_calls;
pub mod ort;
pub mod qwen_vl;
pub mod recomputing;

use std::any::Any;

use candle_core::Tensor;
use unireward_models::config::{LlavaConfig, TextConfig};
use unireward_models::qwen2_5_vl::{QwenVision, RopePositions};
use unireward_models::tokenize::Tokenized;
use unireward_models::MediaFeatures;

use crate::error::Result;

pub use self::candle::CandleBackend;
pub use self::ort::library::LibrarySearch;
pub use self::ort::providers::{
    CudaOptions, ExecutionProvider, ProfileDim, ProfileInput, ShapeLimits, ShapeProfile,
    TensorRtOptions,
};
pub use self::ort::qwen_vl::OrtQwenVlBackend;
pub use self::ort::runtime::{
    InputTensor, OrtRuntime, OrtSession, OutputData, OutputTensor, Outputs, SessionConfig,
    TensorInfo,
};
pub use self::ort::{EngineLimits, OrtBackend};
pub use self::qwen_vl::QwenVlBackend;
pub use self::recomputing::Recomputing;
pub use crate::decoding::{Continuation, Decoding, Prompt};

/// The decoder side of a judge model: token embeddings and decoder calls over a KV cache.
/// Everything the decoding algorithms ([`crate::decoding`]) and the judge need; every family
/// has it.
pub trait Decoder: Send + Sync {
    /// Short name for logs (`candle`, `ort-cpu`, …).
    fn name(&self) -> String;

    /// The decoder's configuration (vocabulary, width, context length, stop token).
    fn text_config(&self) -> &TextConfig;

    /// Token ids → embeddings [T, hidden] f32.
    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor>;

    /// What one decoder call takes, and whether the decoder has a cache.
    fn limits(&self) -> Limits;

    /// An empty cache for [`Decoder::decode`]; an error when `limits().kv_cache` is false.
    fn new_cache(&self) -> Result<Box<dyn DecoderCache>>;

    /// One decoder call: the sequences of embeddings ([T_i, hidden] each, at most
    /// `limits().max_batch` of them), right-padded to the longest, continue the history in
    /// `cache` (every sequence after the same number of cached positions), or start from
    /// position 0 when `cache` is `None` (nothing is kept then). Returns for each sequence
    /// the log-softmax over the vocabulary at the `rows` asked ([rows_i, vocab] f32); the
    /// row at position p predicts the token at p + 1. The cache grows by the longest
    /// sequence: a shorter one leaves padding there, which [`DecoderCache::select`] cuts off.
    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>>;

    /// The positions of a prompt's tokens where the family's are not 0..T: Qwen-VL's M-RoPE
    /// positions follow each medium's grid ([`MediaFeatures`]'s grids). `None` (the default):
    /// 1-D positions.
    fn prompt_positions(
        &self,
        tokens: &Tokenized,
        media: &MediaFeatures,
    ) -> Result<Option<RopePositions>> {
        let _ = (tokens, media);
        Ok(None)
    }

    /// [`Decoder::decode`] of prompts at the positions [`Decoder::prompt_positions`] gave
    /// them (and with their deep-stack features), into an empty `cache`, which keeps each
    /// prompt's position offset for the tokens that follow. A decoder of 1-D positions (the
    /// default) says so.
    fn decode_prompts(
        &self,
        prompts: &[Prompt],
        rows: Rows<'_>,
        cache: &mut dyn DecoderCache,
    ) -> Result<Vec<Tensor>> {
        let _ = (prompts, rows, cache);
        Err(crate::error::EngineError::Invalid(format!(
            "the {} backend takes 1-D positions only",
            self.name()
        )))
    }

    /// One decoder call of one new token per sequence over a batch whose sequences cached
    /// different histories (they joined a running generation at different times, see
    /// [`DecoderCache::append`]): `embeds` [B, hidden] f32; `positions[b]` the position of
    /// sequence b's token (its count of real cached tokens); `seen[b]` which of the
    /// `cache.len()` slots are sequence b's tokens (the others are padding it must not
    /// attend to). Returns the log-softmax over the vocabulary after each token [B, vocab]
    /// f32; the cache grows by one slot. A backend without it (the default) says so.
    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        let _ = (embeds, positions, seen, cache);
        Err(crate::error::EngineError::Invalid(format!(
            "the {} backend has no decoder call over different histories",
            self.name()
        )))
    }
}

/// A LLaVA-OneVision backend: the [`Decoder`] and the vision graph whose tiles the engine
/// packs (anyres) between the two.
pub trait Backend: Decoder {
    fn config(&self) -> &LlavaConfig;

    /// The learned row that closes each packed feature row (f32, [hidden]).
    fn image_newline(&self) -> &Tensor;

    /// Tiles [n, 3, S, S] f32 → projected features [n, patches, hidden].
    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor>;
}

/// A Qwen-VL backend (candle's [`QwenVlBackend`], ONNX Runtime's [`OrtQwenVlBackend`]): the
/// [`Decoder`] at M-RoPE positions and the vision transformer that reading a request's media
/// needs.
pub trait QwenBackend: Decoder {
    fn vision(&self) -> &dyn QwenVision;

    /// `(image_token_id, video_token_id)`: the pads the prompt's media markers expand to.
    fn media_token_ids(&self) -> (u32, u32);
}

/// The rows of a decoder call's sequences whose log-probabilities are wanted.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    /// Every row of each sequence, 0 .. T_i.
    All,
    /// These rows of each sequence (one list per sequence, each position < T_i).
    At(&'a [Vec<usize>]),
}

/// What one decoder call of a backend takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Sequences per decoder call (a TensorRT optimisation profile caps them); `None`: any.
    pub max_batch: Option<usize>,
    /// Tokens per sequence of a decoder call, cache included, where the backend caps them
    /// (a TensorRT profile); `None`: the model's context length is the only bound.
    pub max_length: Option<usize>,
    /// Whether the decoder keeps a KV cache: continuations and generation then run the
    /// prompt once, else they recompute it.
    pub kv_cache: bool,
}

impl Limits {
    /// How many sequences one decoder call takes, as a count to split work by.
    pub fn batch(&self) -> usize {
        self.max_batch.unwrap_or(usize::MAX).max(1)
    }
}

/// A backend's KV cache: the keys and values of every layer for a batch of sequences that
/// share one number of cached positions.
pub trait DecoderCache: Send {
    /// Cached positions per sequence.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sequence `b`, cut to its first `len` positions (its real tokens when the batch was
    /// right-padded).
    fn select(&self, b: usize, len: usize) -> Result<Box<dyn DecoderCache>>;

    /// The history of this one sequence for `n` sequences: one prompt's cache shared by `n`
    /// continuations.
    fn repeat(&self, n: usize) -> Result<Box<dyn DecoderCache>>;

    /// How many copies of this one-sequence cache one decoder call may hold (the backend's
    /// memory bound on sharing it among continuations).
    fn copies_per_call(&self) -> usize;

    /// The sequences `rows` of this batch, each keeping only the cached slots `slots` (in
    /// order): finished sequences leave a running batch, and slots that no remaining sequence
    /// uses go with them. A cache without it (the default) says so.
    fn gather(&self, rows: &[usize], slots: &[usize]) -> Result<Box<dyn DecoderCache>> {
        let _ = (rows, slots);
        Err(crate::error::EngineError::Invalid(
            "this cache cannot drop sequences".into(),
        ))
    }

    /// `other`'s sequences (a cache of the same backend) join this batch after its own; the
    /// shorter history is padded at its end to the longer's length, with slots that the
    /// sequences there must not attend to ([`Backend::decode_next`]'s `seen`). A cache
    /// without it (the default) says so.
    fn append(&mut self, other: &mut dyn DecoderCache) -> Result<()> {
        let _ = other;
        Err(crate::error::EngineError::Invalid(
            "this cache cannot take more sequences".into(),
        ))
    }

    /// The backend's own cache type, for its decoder call.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// `cache` as the backend's own cache type `T`; an error when another backend made it.
pub(crate) fn own_cache<T: 'static>(cache: &mut dyn DecoderCache) -> Result<&mut T> {
    cache
        .as_any_mut()
        .downcast_mut::<T>()
        .ok_or_else(|| crate::error::EngineError::Invalid("a cache made by another backend".into()))
}

/// The arguments of a [`Backend::decode_next`] call are of one batch and of the cache's length.
pub(crate) fn check_next(
    batch: usize,
    hidden: usize,
    positions: &[usize],
    seen: &[&[bool]],
    past: usize,
    cfg: &TextConfig,
) -> Result<()> {
    if hidden != cfg.hidden_size {
        return Err(crate::error::EngineError::Invalid(format!(
            "embeddings of width {hidden}; the decoder takes {}",
            cfg.hidden_size
        )));
    }
    if positions.len() != batch || seen.len() != batch {
        return Err(crate::error::EngineError::Invalid(format!(
            "{batch} tokens with {} positions and {} slot masks",
            positions.len(),
            seen.len()
        )));
    }
    if let Some(bad) = seen.iter().find(|s| s.len() != past) {
        return Err(crate::error::EngineError::Invalid(format!(
            "a slot mask of {} after a cache of {past}",
            bad.len()
        )));
    }
    Ok(())
}
