//! A backend seen without its KV cache: continuations and generation re-run the whole
//! prompt ([`crate::decoding`]'s recomputing algorithms). The ONNX Runtime backend of a
//! format-1 export has no cache of its own; tests and benches compare cached paths against
//! this.

use candle_core::Tensor;
use unireward_models::config::{LlavaConfig, TextConfig};

use super::{Backend, Decoder, DecoderCache, Limits, Rows};
use crate::error::{EngineError, Result};

/// `backend` with only its whole-sequence decoder calls.
pub struct Recomputing<'a>(pub &'a dyn Backend);

impl Decoder for Recomputing<'_> {
    fn name(&self) -> String {
        format!("{} (recomputing)", self.0.name())
    }

    fn text_config(&self) -> &TextConfig {
        self.0.text_config()
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        self.0.embed_tokens(ids)
    }

    fn limits(&self) -> Limits {
        Limits {
            kv_cache: false,
            ..self.0.limits()
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        Err(no_cache())
    }

    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        match cache {
            Some(_) => Err(no_cache()),
            None => self.0.decode(seqs, rows, None),
        }
    }
}

impl Backend for Recomputing<'_> {
    fn config(&self) -> &LlavaConfig {
        self.0.config()
    }

    fn image_newline(&self) -> &Tensor {
        self.0.image_newline()
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        self.0.encode_tiles(tiles)
    }
}

fn no_cache() -> EngineError {
    EngineError::Invalid("a recomputing backend keeps no cache".into())
}
