//! Scoring backends. A backend runs the two model graphs of DESIGN.md — pixel tiles to
//! projected features, and embeddings to log-probabilities — while packing, tokenization and
//! the embedding merge stay in Rust, shared by every backend.
//!
//! `candle` runs the model directly; `ort` runs a directory written by `unireward-export onnx`
//! through `ort_runtime`'s ONNX Runtime sessions, loaded at run time (`ort_library` finds the
//! library, `ort_providers` sets up CPU / CUDA / TensorRT).

pub mod candle;
pub mod error;
pub mod ort;
pub mod ort_kv;
pub mod ort_library;
pub mod ort_providers;
pub mod ort_runtime;
pub mod recomputing;

use candle_core::Tensor;
use unireward_models::config::LlavaConfig;

use crate::error::Result;

pub use self::candle::CandleBackend;
pub use self::ort::{EngineLimits, OrtBackend};
pub use self::recomputing::Recomputing;
pub use ort_library::LibrarySearch;
pub use ort_providers::{
    CudaOptions, ExecutionProvider, ProfileDim, ProfileInput, ShapeLimits, ShapeProfile,
    TensorRtOptions,
};
pub use ort_runtime::{
    InputTensor, OrtRuntime, OrtSession, OutputData, OutputTensor, Outputs, SessionConfig,
    TensorInfo,
};

pub trait Backend: Send + Sync {
    /// Short name for logs (`candle`, `ort-cpu`, …).
    fn name(&self) -> String;

    fn config(&self) -> &LlavaConfig;

    /// The learned row that closes each packed feature row (f32, [hidden]).
    fn image_newline(&self) -> &Tensor;

    /// Tiles [n, 3, S, S] f32 → projected features [n, patches, hidden].
    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor>;

    /// Token ids → embeddings [T, hidden].
    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor>;

    /// Sequences of embeddings ([T_i, hidden] each) → for each, the log-softmax over the
    /// vocabulary at the requested positions ([positions_i, vocab] f32). The row at position
    /// p predicts the token at p + 1.
    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>>;

    /// Continuations of one prompt ([T, hidden] embeddings): for each, the log-probability of
    /// each of its tokens and the log-softmax row after its last token. Backends with a KV
    /// cache run the prompt once; this default recomputes it with every continuation.
    fn continuations(
        &self,
        prompt: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        let t = prompt.dim(0)?;
        let mut seqs = Vec::with_capacity(continuations.len());
        let mut positions = Vec::with_capacity(continuations.len());
        for c in continuations {
            let seq = if c.is_empty() {
                prompt.clone()
            } else {
                Tensor::cat(&[prompt, &self.embed_tokens(c)?], 0)?
            };
            seqs.push(seq);
            positions.push((t - 1..t + c.len()).collect());
        }
        let rows = self.log_probs_at(&seqs, &positions)?;
        continuations
            .iter()
            .zip(rows)
            .map(|(c, lp)| Continuation::from_rows(c, &lp))
            .collect()
    }

    /// [`Backend::continuations`] for several prompts at once (one list of continuations per
    /// prompt). Backends that can batch the prompt passes override this.
    fn continuations_batch(
        &self,
        prompts: &[Tensor],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>> {
        prompts
            .iter()
            .zip(continuations)
            .map(|(p, c)| self.continuations(p, c))
            .collect()
    }

    /// Greedy decoding after a prompt ([T, hidden]) until a stop token or `max_new` tokens.
    /// The stop token is not returned. This default recomputes the whole sequence per token.
    fn generate(&self, prompt: &Tensor, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        let mut seq = prompt.clone();
        let mut out = Vec::new();
        for _ in 0..max_new {
            let last = seq.dim(0)? - 1;
            let rows = self.log_probs_at(std::slice::from_ref(&seq), &[vec![last]])?;
            let next = rows[0].get(0)?.argmax(0)?.to_scalar::<u32>()?;
            if stop.contains(&next) {
                break;
            }
            out.push(next);
            seq = Tensor::cat(&[&seq, &self.embed_tokens(&[next])?], 0)?;
        }
        Ok(out)
    }
}

/// One continuation's log-probabilities.
#[derive(Debug, Clone)]
pub struct Continuation {
    /// log p of each token given everything before it.
    pub token_logprobs: Vec<f32>,
    /// log-softmax over the vocabulary after the last token [vocab].
    pub next: Tensor,
}

impl Continuation {
    /// From the rows at positions T-1 .. T-1+len (row j predicts token j).
    pub fn from_rows(tokens: &[u32], rows: &Tensor) -> Result<Self> {
        let token_logprobs = tokens
            .iter()
            .enumerate()
            .map(|(j, &tok)| Ok(rows.get(j)?.get(tok as usize)?.to_scalar::<f32>()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_logprobs,
            next: rows.get(tokens.len())?,
        })
    }

    pub fn total(&self) -> f64 {
        self.token_logprobs.iter().map(|&x| x as f64).sum()
    }
}
