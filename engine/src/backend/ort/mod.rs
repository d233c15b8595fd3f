//! The reward model run by ONNX Runtime from a directory written by `unireward-export onnx`: the
//! vision and decoder graphs as sessions on the chosen execution provider, the token
//! embedding table and `image_newline` from `embeddings.safetensors`, the configuration and
//! tokenizer files beside them, and `manifest.json` saying how they fit together
//! ([`manifest`] reads and checks it).
//!
//! A format-2 export's decoder takes and returns a KV cache ([`kv`]): continuations are
//! scored after one prompt pass and generation decodes one token per call, as with the
//! candle backend. A format-1 export (no cache) still opens; it then recomputes the prompt
//! for every continuation and every generated token, and says so when opened.
//!
//! [`library`] finds the ONNX Runtime library, [`providers`] sets up CPU / CUDA / TensorRT,
//! [`profiles`] gives TensorRT its shapes, [`runtime`] holds the sessions, [`decoder`] makes
//! the decoder calls.

mod decoder;
pub mod kv;
pub mod library;
mod manifest;
pub mod profiles;
pub mod providers;
pub mod qwen_vl;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};
use unireward_models::config::{LlavaConfig, TextConfig};

use self::decoder::{CallPositions, DecoderGraph};
use self::kv::PastKv;
use self::manifest::ExportDir;
pub use self::profiles::{decoder_profile, vision_profile, EngineLimits};
use self::providers::{ExecutionProvider, ShapeProfile};
use self::runtime::{InputTensor, OrtSession, SessionConfig};
use super::{own_cache, Backend, Decoder, DecoderCache, Limits, Rows};
use crate::error::{EngineError, Result};

/// An exported model opened in ONNX Runtime.
pub struct OrtBackend {
    dir: PathBuf,
    cfg: LlavaConfig,
    dtype: String,
    session: SessionConfig,
    // Runs need `&mut` sessions; one run at a time per graph (ONNX Runtime parallelises
    // within the run).
    vision: Mutex<OrtSession>,
    decoder: DecoderGraph,
    vision_input: String,
    vision_output: String,
    features_per_tile: usize,
    /// [vocab, hidden] in the export's precision (f32 or f16).
    embed_tokens: Tensor,
    newline: Tensor,
    /// TensorRT's optimisation profile caps the sequences of one decoder call, and their
    /// tokens.
    max_batch: Option<usize>,
    max_length: Option<usize>,
}

impl OrtBackend {
    /// Opens the export in `dir` with `session`'s execution provider and threads.
    pub fn open(dir: &Path, session: &SessionConfig) -> Result<Self> {
        Self::open_with_limits(dir, session, &EngineLimits::default())
    }

    /// As [`OrtBackend::open`]; a TensorRT provider without a profile of its own gets one
    /// optimisation profile per graph from `limits`.
    pub fn open_with_limits(
        dir: &Path,
        session: &SessionConfig,
        limits: &EngineLimits,
    ) -> Result<Self> {
        let export = ExportDir::read(dir)?;
        let ExportDir {
            cfg,
            dtype,
            vision_file,
            decoder_file,
            vision_input,
            vision_output,
            features_per_tile,
            kv,
            embed_tokens,
            newline,
        } = export;
        let hidden = cfg.text.hidden_size;
        let (vision_session, decoder_session) = match &session.provider {
            ExecutionProvider::TensorRt(opts) if opts.profile.is_none() => {
                let with = |profile: ShapeProfile| {
                    let mut o = opts.clone();
                    o.profile = Some(profile);
                    SessionConfig {
                        provider: ExecutionProvider::TensorRt(o),
                        intra_threads: session.intra_threads,
                    }
                };
                let tile = cfg.vision.image_size as i64;
                (
                    with(vision_profile(&vision_input, tile, limits)?),
                    with(decoder_profile(hidden as i64, kv.as_ref(), limits)?),
                )
            }
            _ => (session.clone(), session.clone()),
        };
        let vision = OrtSession::open(&vision_file, &vision_session)?;
        let decoder = DecoderGraph::new(
            OrtSession::open(&decoder_file, &decoder_session)?,
            kv,
            hidden,
            cfg.text.vocab_size,
            0,
        );
        let trt = matches!(session.provider, ExecutionProvider::TensorRt(_));
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            dtype,
            session: session.clone(),
            vision: Mutex::new(vision),
            decoder,
            vision_input,
            vision_output,
            features_per_tile,
            embed_tokens,
            newline,
            max_batch: usize::try_from(limits.max_batch).ok().filter(|_| trt),
            max_length: usize::try_from(limits.max_length).ok().filter(|_| trt),
        })
    }

    /// Caps the sequences of one decoder call, as a TensorRT profile does (more sequences, or
    /// more continuations of a prompt, are run in several calls).
    pub fn with_max_batch(mut self, max_batch: usize) -> Self {
        self.max_batch = Some(max_batch.max(1));
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `fp32` or `fp16`, as exported.
    pub fn dtype(&self) -> &str {
        &self.dtype
    }

    /// Whether the decoder has a KV cache (a format-2 export): continuations and generation
    /// then run the prompt once.
    pub fn has_kv_cache(&self) -> bool {
        self.decoder.kv.is_some()
    }

    fn lock<'a>(&self, m: &'a Mutex<OrtSession>) -> MutexGuard<'a, OrtSession> {
        // A panic during an earlier run leaves the session itself intact.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Decoder for OrtBackend {
    fn name(&self) -> String {
        format!("ort-{}-{}", self.session.provider.name(), self.dtype)
    }

    fn text_config(&self) -> &TextConfig {
        &self.cfg.text
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        embedded(&self.embed_tokens, ids)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: self.max_batch,
            max_length: self.max_length,
            kv_cache: self.decoder.kv.is_some(),
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        match self.decoder.kv {
            Some(kv) => Ok(Box::new(PastKv::empty(kv, 0))),
            None => Err(EngineError::Invalid(format!(
                "export {}: a format-1 export's decoder keeps no cache",
                self.dir.display()
            ))),
        }
    }

    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        let cache = match cache {
            Some(c) => Some(own_cache::<PastKv>(c)?),
            None => None,
        };
        self.decoder
            .decode_seqs(seqs, rows, cache, |_| Ok(CallPositions::Plain), &[])
    }

    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        let cache = own_cache::<PastKv>(cache)?;
        let (batch, hidden) = embeds.dims2()?;
        super::check_next(batch, hidden, positions, seen, cache.len(), &self.cfg.text)?;
        let positions = positions.iter().map(|&p| p as i64).collect();
        self.decoder
            .decode_next_seqs(embeds, CallPositions::Given(positions), seen, cache)
    }
}

/// Rows `ids` of an export's embedding `table` [vocab, hidden], as f32.
pub(super) fn embedded(table: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let vocab = table.dim(0)?;
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(EngineError::Invalid(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let idx = Tensor::new(ids, &Device::Cpu)?;
    Ok(table.index_select(&idx, 0)?.to_dtype(DType::F32)?)
}

impl Backend for OrtBackend {
    fn config(&self) -> &LlavaConfig {
        &self.cfg
    }

    fn image_newline(&self) -> &Tensor {
        &self.newline
    }

    fn encode_tiles(&self, tiles: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = tiles.dims4()?;
        let v = &self.cfg.vision;
        if (c, h, w) != (v.num_channels, v.image_size, v.image_size) {
            return Err(EngineError::Invalid(format!(
                "tiles of {c}x{h}x{w}; the vision graph takes {}x{}x{}",
                v.num_channels, v.image_size, v.image_size
            )));
        }
        let hidden = self.cfg.text.hidden_size;
        if n == 0 {
            return Ok(Tensor::zeros(
                (0, self.features_per_tile, hidden),
                DType::F32,
                &Device::Cpu,
            )?);
        }
        let data = tiles
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let outputs = self.lock(&self.vision).run(&[(
            self.vision_input.as_str(),
            InputTensor::F32 {
                shape: &[n, c, h, w],
                data: &data,
            },
        )])?;
        let out = outputs
            .get(&self.vision_output)
            .ok_or_else(|| EngineError::Invalid(format!("no {} output", self.vision_output)))?;
        let values = out.as_f32().ok_or_else(|| {
            EngineError::Invalid(format!("{} is not a float tensor", self.vision_output))
        })?;
        Ok(Tensor::from_slice(
            values,
            out.shape.as_slice(),
            &Device::Cpu,
        )?)
    }
}
