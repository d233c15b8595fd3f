//! A backend seen through the [`Backend`] trait's recomputing defaults: continuations and
//! generation re-run the whole prompt instead of using the backend's KV cache. The ONNX
//! Runtime backend falls back to it for exports without a cache; tests and benches compare
//! cached paths against it.

use candle_core::Tensor;
use unireward_models::config::LlavaConfig;

use super::Backend;
use crate::error::Result;

/// `backend` with only its whole-sequence methods; everything else is the trait's default.
pub struct Recomputing<'a>(pub &'a dyn Backend);

impl Backend for Recomputing<'_> {
    fn name(&self) -> String {
        format!("{} (recomputing)", self.0.name())
    }

    fn config(&self) -> &LlavaConfig {
        self.0.config()
    }

    fn image_newline(&self) -> &Tensor {
        self.0.image_newline()
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        self.0.encode_tiles(tiles)
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        self.0.embed_tokens(ids)
    }

    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>> {
        self.0.log_probs_at(seqs, positions)
    }
}
