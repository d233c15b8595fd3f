//! Sequence log-probabilities with gradients: for each sequence, the sum over its scored
//! tokens of log p(token | everything before it). Sequences are batched with right padding;
//! prompt and padding positions are masked with `IGNORE_INDEX`, and the label of position t
//! is the token at t + 1 (the usual shift by one). The log-softmax and the gather are fused
//! (`ops::log_softmax_gather`), so no [tokens, vocab] log-probability tensor is made.

use candle_core::{DType, Tensor};
use unireward_models::family::JudgeMedia;
use unireward_models::family::JudgeModel;
use unireward_models::ops::{log_softmax_gather, IGNORE_INDEX};
use unireward_models::tokenize::Tokenized;
use unireward_models::MediaFeatures;

use crate::{Error, Result};

/// Token ids (with media spans) and which of them are scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSequence {
    pub tokens: Tokenized,
    /// `targets[i]`: token i counts. Token 0 never does (nothing precedes it).
    pub targets: Vec<bool>,
}

impl Default for ScoredSequence {
    fn default() -> Self {
        Self {
            tokens: Tokenized {
                ids: Vec::new(),
                spans: Vec::new(),
            },
            targets: Vec::new(),
        }
    }
}

impl ScoredSequence {
    /// The tokens from `prompt_len` on are scored.
    pub fn from_prompt_len(tokens: Tokenized, prompt_len: usize) -> Self {
        let targets = (0..tokens.ids.len()).map(|i| i >= prompt_len).collect();
        Self { tokens, targets }
    }

    pub fn len(&self) -> usize {
        self.tokens.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.ids.is_empty()
    }

    /// Tokens whose log-probability is summed.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&t| t).count()
    }

    /// Positions from the first that predicts a scored token to the end: the rows whose
    /// logits are computed.
    pub fn scored_span(&self) -> usize {
        self.first_target().map_or(0, |f| self.len() - f)
    }

    fn first_target(&self) -> Option<usize> {
        self.targets.iter().skip(1).position(|&t| t).map(|i| i + 1)
    }
}

/// Encodes a record's images and videos through `model` in one batch and packs them as its
/// family does (LLaVA: anyres for images, pooling for videos; Qwen-VL: merged patches with
/// their grids). Differentiable in the model's weights.
pub fn media_features(model: &dyn JudgeModel, media: &JudgeMedia) -> Result<MediaFeatures> {
    Ok(model.media_features(media)?)
}

/// Summed log-probabilities of each sequence's scored tokens → `[batch]` (f32, or f64 when
/// the logits are). One decoder call over the right-padded batch, each sequence at the
/// positions inference gives it (M-RoPE for Qwen-VL); logits are taken only at positions from
/// the earliest one that predicts a scored token.
pub fn sequence_logprobs(
    model: &dyn JudgeModel,
    batch: &[(&ScoredSequence, &MediaFeatures)],
) -> Result<Tensor> {
    if batch.is_empty() {
        return Err(Error::Config("sequence_logprobs: empty batch".into()));
    }
    for (seq, _) in batch {
        if seq.targets.len() != seq.len() {
            return Err(Error::Config(format!(
                "a sequence has {} tokens but {} target flags",
                seq.len(),
                seq.targets.len()
            )));
        }
    }
    let t_max = batch.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
    let first = batch
        .iter()
        .filter_map(|(s, _)| s.first_target())
        .min()
        .ok_or_else(|| Error::Config("sequence_logprobs: no sequence has a scored token".into()))?;
    let mut rows = Vec::with_capacity(batch.len());
    for (seq, media) in batch {
        let emb = model.embed(&seq.tokens, media)?;
        let pad = t_max - seq.len();
        rows.push(if pad == 0 {
            emb
        } else {
            let (_, d) = emb.dims2()?;
            let zeros = Tensor::zeros((pad, d), emb.dtype(), emb.device())?;
            Tensor::cat(&[&emb, &zeros], 0)?
        });
    }
    let embeds = Tensor::stack(&rows, 0)?;
    let seqs: Vec<_> = batch.iter().map(|(s, m)| (&s.tokens, *m)).collect();
    let hidden = model.sequence_hidden_states(&embeds, &seqs)?;
    // Position p predicts token p + 1: positions first - 1 ..= t_max - 2.
    let span = t_max - first;
    let hidden = hidden.narrow(1, first - 1, span)?;
    let logits = model.logits(&hidden)?;
    let mut labels = Vec::with_capacity(batch.len() * span);
    for (seq, _) in batch {
        for tok in first..t_max {
            let scored = tok < seq.len() && seq.targets[tok];
            labels.push(if scored {
                seq.tokens.ids[tok]
            } else {
                IGNORE_INDEX
            });
        }
    }
    let labels = Tensor::from_vec(labels, (batch.len(), span), model.device())?;
    let log_probs = log_softmax_gather(&logits, &labels)?;
    Ok(log_probs.sum(1)?)
}

/// A `[n]` tensor's values as f64.
pub fn to_f64_vec(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?.to_vec1::<f64>()?)
}
