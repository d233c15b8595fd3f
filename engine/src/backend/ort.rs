//! The reward model run by ONNX Runtime from a directory written by `unireward-export onnx`: the
//! vision and decoder graphs as sessions on the chosen execution provider, the token
//! embedding table and `image_newline` from `embeddings.safetensors`, the configuration and
//! tokenizer files beside them, and `manifest.json` saying how they fit together.
//!
//! A format-2 export's decoder takes and returns a KV cache (`ort_kv`): continuations are
//! scored after one prompt pass and `generate` decodes one token per call, as the candle
//! backend does. A format-1 export (no cache) still opens; it then recomputes the prompt for
//! every continuation and every generated token (the `Backend` trait's defaults), and says so
//! on stderr when opened.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use unireward_models::config::{LlavaConfig, VisionConfig};

use super::ort_kv::{KvLayout, PastKv};
use super::ort_providers::{ExecutionProvider, ProfileDim, ShapeLimits, ShapeProfile};
use super::ort_runtime::{InputTensor, OrtSession, SessionConfig};
use super::{Backend, Continuation, Recomputing};
use crate::error::{EngineError, Result};

/// The manifest format this engine writes and reads best: the decoder has a KV cache.
pub const MANIFEST_FORMAT: u32 = 2;
/// The oldest format still read: a decoder without a cache.
pub const MANIFEST_FORMAT_NO_CACHE: u32 = 1;
pub const MANIFEST_FILE: &str = "manifest.json";

const INPUTS_EMBEDS: &str = "inputs_embeds";
const ATTENTION_MASK: &str = "attention_mask";
const POSITION_IDS: &str = "position_ids";
const POSITIONS: &str = "positions";
const LOG_PROBS: &str = "log_probs";

#[derive(Debug, Deserialize)]
struct Manifest {
    format_version: u32,
    dtype: String,
    graphs: Graphs,
    embeddings: Embeddings,
    config: Essentials,
    /// Format 2 on.
    kv_cache: Option<KvCacheEntry>,
    /// The size of every file of the export but the manifest (absent from exports written
    /// before the exporter recorded them).
    #[serde(default)]
    file_sizes: Option<BTreeMap<String, u64>>,
}

#[derive(Debug, Deserialize)]
struct KvCacheEntry {
    num_layers: usize,
    num_key_value_heads: usize,
    head_dim: usize,
    dtype: String,
}

#[derive(Debug, Deserialize)]
struct Graphs {
    vision: GraphEntry,
    decoder: GraphEntry,
}

#[derive(Debug, Deserialize)]
struct GraphEntry {
    file: String,
    /// The external data file beside the graph.
    #[serde(default)]
    data: Option<String>,
    inputs: Vec<IoEntry>,
    outputs: Vec<IoEntry>,
}

#[derive(Debug, Deserialize)]
struct IoEntry {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Embeddings {
    file: String,
    embed_tokens: String,
    image_newline: String,
}

#[derive(Debug, Deserialize)]
struct Essentials {
    vision: VisionEssentials,
    text: TextEssentials,
    features_per_tile: usize,
}

#[derive(Debug, Deserialize)]
struct VisionEssentials {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    layer_norm_eps: f64,
}

#[derive(Debug, Deserialize)]
struct TextEssentials {
    vocab_size: usize,
    hidden_size: usize,
}

/// An exported model opened in ONNX Runtime.
pub struct OrtBackend {
    dir: PathBuf,
    cfg: LlavaConfig,
    dtype: String,
    session: SessionConfig,
    // Runs need `&mut` sessions; one run at a time per graph (ONNX Runtime parallelises
    // within the run).
    vision: Mutex<OrtSession>,
    decoder: Mutex<OrtSession>,
    vision_input: String,
    vision_output: String,
    features_per_tile: usize,
    /// [vocab, hidden] in the export's precision (f32 or f16).
    embed_tokens: Tensor,
    newline: Tensor,
    /// The decoder's cache, `None` for a format-1 export.
    kv: Option<KvLayout>,
    /// TensorRT's optimisation profile caps the sequences of one decoder call.
    max_batch: Option<usize>,
}

/// Continuations of one prompt scored in one decoder call hold a copy of the prompt's cache
/// each; calls are split so the copies stay under this many bytes (a 7B model's cache of a
/// 2,000-token prompt is ~115 MB in fp16, and a 0-100 score has 101 continuations).
const CACHE_COPIES_BYTES: usize = 1 << 30;

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
        let manifest = read_manifest(dir)?;
        check_file_sizes(dir, &manifest)?;
        let mut cfg = LlavaConfig::from_file(&dir.join("config.json"))?;
        let essentials = &manifest.config;
        if essentials.text.vocab_size != cfg.text.vocab_size
            || essentials.text.hidden_size != cfg.text.hidden_size
        {
            return Err(invalid(
                dir,
                format!(
                    "the graphs were built for vocab {} / hidden {}, config.json says {} / {}",
                    essentials.text.vocab_size,
                    essentials.text.hidden_size,
                    cfg.text.vocab_size,
                    cfg.text.hidden_size
                ),
            ));
        }
        // The tower the graphs were built for (a LLaVA-NeXT config.json only names it).
        let v = &essentials.vision;
        cfg.vision = VisionConfig {
            hidden_size: v.hidden_size,
            intermediate_size: v.intermediate_size,
            num_hidden_layers: v.num_hidden_layers,
            num_attention_heads: v.num_attention_heads,
            num_channels: v.num_channels,
            image_size: v.image_size,
            patch_size: v.patch_size,
            layer_norm_eps: v.layer_norm_eps,
        };

        let vision_entry = &manifest.graphs.vision;
        let (vision_input, vision_output) =
            match (&vision_entry.inputs[..], &vision_entry.outputs[..]) {
                ([i], [o]) => (i.name.clone(), o.name.clone()),
                _ => {
                    return Err(invalid(
                        dir,
                        "the vision graph must have one input and one output",
                    ))
                }
            };
        let decoder_entry = &manifest.graphs.decoder;
        let kv = kv_layout(dir, &manifest)?;
        let mut want_inputs: Vec<String> = [INPUTS_EMBEDS, ATTENTION_MASK, POSITION_IDS, POSITIONS]
            .map(String::from)
            .to_vec();
        let mut want_outputs = vec![LOG_PROBS.to_string()];
        if let Some(kv) = &kv {
            want_inputs.extend(kv.past_names());
            want_outputs.extend(kv.present_names());
        } else {
            eprintln!(
                "{}: a format-{MANIFEST_FORMAT_NO_CACHE} export without a KV cache: every \
                 continuation and generated token recomputes the prompt (export the model again \
                 for the cached decoder)",
                dir.display()
            );
        }
        if names(&decoder_entry.inputs) != want_inputs
            || names(&decoder_entry.outputs) != want_outputs
        {
            return Err(invalid(
                dir,
                format!(
                    "the decoder graph must take {want_inputs:?} and give {want_outputs:?}, the \
                     manifest lists {:?} → {:?}",
                    names(&decoder_entry.inputs),
                    names(&decoder_entry.outputs)
                ),
            ));
        }

        let (embed_tokens, newline) = read_embeddings(dir, &manifest.embeddings)?;
        let hidden = cfg.text.hidden_size;
        if embed_tokens.dims() != [cfg.text.vocab_size, hidden] || newline.dims() != [hidden] {
            return Err(invalid(
                dir,
                format!(
                    "embeddings of shape {:?} and newline {:?} do not fit vocab {} / hidden {hidden}",
                    embed_tokens.dims(),
                    newline.dims(),
                    cfg.text.vocab_size
                ),
            ));
        }

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
        let vision = OrtSession::open(&dir.join(&vision_entry.file), &vision_session)?;
        let decoder = OrtSession::open(&dir.join(&decoder_entry.file), &decoder_session)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            cfg,
            dtype: manifest.dtype,
            session: session.clone(),
            vision: Mutex::new(vision),
            decoder: Mutex::new(decoder),
            vision_input,
            vision_output,
            features_per_tile: essentials.features_per_tile,
            embed_tokens,
            newline,
            kv,
            max_batch: match session.provider {
                ExecutionProvider::TensorRt(_) => usize::try_from(limits.max_batch).ok(),
                _ => None,
            },
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
        self.kv.is_some()
    }

    fn lock<'a>(&self, m: &'a Mutex<OrtSession>) -> MutexGuard<'a, OrtSession> {
        // A panic during an earlier run leaves the session itself intact.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The shapes a TensorRT engine is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineLimits {
    /// Sequences per decoder call.
    pub max_batch: i64,
    /// Tokens per sequence.
    pub max_length: i64,
    /// Tiles per vision call (a 6x6 anyres image is 37).
    pub max_tiles: i64,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self {
            max_batch: 8,
            max_length: 4096,
            max_tiles: 64,
        }
    }
}

/// The vision graph's profile: [tiles, 3, S, S], tuned for two tiles (one 1x1 anyres image).
pub fn vision_profile(input: &str, tile: i64, limits: &EngineLimits) -> Result<ShapeProfile> {
    use ProfileDim::{Batch, Fixed};
    let shape = ShapeLimits {
        opt_batch: 2.min(limits.max_tiles),
        max_batch: limits.max_tiles,
        opt_length: 1,
        max_length: 1,
    };
    Ok(ShapeProfile::from_limits(
        &[(input, &[Batch, Fixed(3), Fixed(tile), Fixed(tile)])],
        &shape,
    )?)
}

/// The decoder graph's profile: embeddings [B, T, hidden], position ids [B, T], rows read
/// [B, P ≤ T], and with a cache the mask [B, past + T] and pasts [B, kv_heads, past, head_dim]
/// with past from 0; tuned for one sequence of half the length limit.
pub fn decoder_profile(
    hidden: i64,
    kv: Option<&KvLayout>,
    limits: &EngineLimits,
) -> Result<ShapeProfile> {
    use ProfileDim::{Batch, Fixed, Length, Past};
    let shape = ShapeLimits {
        opt_batch: 1,
        max_batch: limits.max_batch,
        opt_length: (limits.max_length / 2).max(1),
        max_length: limits.max_length,
    };
    let embeds = [Batch, Length, Fixed(hidden)];
    let rows = [Batch, Length];
    let mut inputs: Vec<(&str, &[ProfileDim])> = vec![
        (INPUTS_EMBEDS, &embeds),
        (ATTENTION_MASK, &rows),
        (POSITION_IDS, &rows),
        (POSITIONS, &rows),
    ];
    let past_dims;
    let past_names;
    if let Some(kv) = kv {
        past_dims = [
            Batch,
            Fixed(kv.kv_heads as i64),
            Past,
            Fixed(kv.head_dim as i64),
        ];
        past_names = kv.past_names();
        inputs.extend(past_names.iter().map(|n| (n.as_str(), &past_dims[..])));
    }
    Ok(ShapeProfile::from_limits(&inputs, &shape)?)
}

/// The cache an export declares, checked against its manifest format.
fn kv_layout(dir: &Path, manifest: &Manifest) -> Result<Option<KvLayout>> {
    match (manifest.format_version, &manifest.kv_cache) {
        (MANIFEST_FORMAT_NO_CACHE, _) => Ok(None),
        (_, Some(c)) => {
            let half = match c.dtype.as_str() {
                "float32" => false,
                "float16" => true,
                other => {
                    return Err(invalid(
                        dir,
                        format!("a KV cache of {other}; the engine feeds float32 or float16"),
                    ))
                }
            };
            Ok(Some(KvLayout {
                num_layers: c.num_layers,
                kv_heads: c.num_key_value_heads,
                head_dim: c.head_dim,
                half,
            }))
        }
        (v, None) => Err(invalid(
            dir,
            format!("a format-{v} manifest without its kv_cache entry"),
        )),
    }
}

fn names(v: &[IoEntry]) -> Vec<String> {
    v.iter().map(|e| e.name.clone()).collect()
}

fn invalid(dir: &Path, msg: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("export {}: {msg}", dir.display()))
}

fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| EngineError::io(&path, e))?;
    let probe: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))?;
    let version = probe.get("format_version").and_then(|v| v.as_u64());
    let readable = u64::from(MANIFEST_FORMAT_NO_CACHE)..=u64::from(MANIFEST_FORMAT);
    if !version.is_some_and(|v| readable.contains(&v)) {
        return Err(EngineError::Invalid(format!(
            "{}: manifest format {version:?}, this engine reads formats \
             {MANIFEST_FORMAT_NO_CACHE} to {MANIFEST_FORMAT}: export the model again with this \
             version's `unireward-export onnx`",
            path.display()
        )));
    }
    serde_json::from_value(probe)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", path.display())))
}

/// Refuses an export whose files are not those its manifest was written with (what an
/// export interrupted while overwriting another leaves): every file the manifest records
/// must have the recorded size, and the graphs, their data and the embeddings must be among
/// them.
fn check_file_sizes(dir: &Path, manifest: &Manifest) -> Result<()> {
    let Some(sizes) = &manifest.file_sizes else {
        eprintln!(
            "{}: the manifest records no file sizes (an older exporter): the files are not \
             checked against it; export the model again to have them checked",
            dir.display()
        );
        return Ok(());
    };
    let g = &manifest.graphs;
    let named = [
        Some(&g.vision.file),
        g.vision.data.as_ref(),
        Some(&g.decoder.file),
        g.decoder.data.as_ref(),
        Some(&manifest.embeddings.file),
    ];
    if let Some(missing) = named
        .into_iter()
        .flatten()
        .find(|f| !sizes.contains_key(*f))
    {
        return Err(invalid(
            dir,
            format!("{MANIFEST_FILE} names {missing} but records no size for it"),
        ));
    }
    for (name, &want) in sizes {
        let plain = Path::new(name)
            .file_name()
            .is_some_and(|n| n == name.as_str());
        if !plain {
            return Err(invalid(
                dir,
                format!("{MANIFEST_FILE} records {name:?}, which is not a file name"),
            ));
        }
        let path = dir.join(name);
        let got = std::fs::metadata(&path)
            .map_err(|e| {
                invalid(
                    dir,
                    format!("{name} (recorded in {MANIFEST_FILE}) cannot be read: {e}"),
                )
            })?
            .len();
        if got != want {
            return Err(invalid(
                dir,
                format!(
                    "{name} is {got} bytes but {MANIFEST_FILE} records {want}: the files are \
                     not those of this export (an interrupted or mixed export); export the \
                     model again"
                ),
            ));
        }
    }
    Ok(())
}

fn read_embeddings(dir: &Path, entry: &Embeddings) -> Result<(Tensor, Tensor)> {
    let path = dir.join(&entry.file);
    if !path.is_file() {
        return Err(invalid(dir, format!("{} is missing", entry.file)));
    }
    // SAFETY: mapped read-only; only the two tensors are copied out, and the map is dropped
    // before this returns. As with checkpoints, the file must not be truncated meanwhile.
    let st = unsafe { MmapedSafetensors::new(&path) }
        .map_err(|e| invalid(dir, format!("{}: {e}", entry.file)))?;
    let table = st
        .load(&entry.embed_tokens, &Device::Cpu)
        .map_err(|e| invalid(dir, format!("{}: {}: {e}", entry.file, entry.embed_tokens)))?;
    let newline = st
        .load(&entry.image_newline, &Device::Cpu)
        .map_err(|e| invalid(dir, format!("{}: {}: {e}", entry.file, entry.image_newline)))?
        .to_dtype(DType::F32)?;
    Ok((table, newline))
}

impl Backend for OrtBackend {
    fn name(&self) -> String {
        format!("ort-{}-{}", self.session.provider.name(), self.dtype)
    }

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

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let vocab = self.cfg.text.vocab_size;
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(EngineError::Invalid(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let idx = Tensor::new(ids, &Device::Cpu)?;
        Ok(self
            .embed_tokens
            .index_select(&idx, 0)?
            .to_dtype(DType::F32)?)
    }

    fn log_probs_at(&self, seqs: &[Tensor], positions: &[Vec<usize>]) -> Result<Vec<Tensor>> {
        if seqs.len() != positions.len() {
            return Err(EngineError::Invalid(
                "one position list per sequence".into(),
            ));
        }
        if let Some(max) = self.max_batch.filter(|&m| seqs.len() > m) {
            return in_batches(seqs, positions, max, |s, p| self.log_probs_at(s, p));
        }
        let hidden = self.cfg.text.hidden_size;
        let vocab = self.cfg.text.vocab_size;
        let mut lens = Vec::with_capacity(seqs.len());
        for (s, pos) in seqs.iter().zip(positions) {
            let (n, d) = s.dims2()?;
            if d != hidden {
                return Err(EngineError::Invalid(format!(
                    "embeddings of width {d}; the decoder takes {hidden}"
                )));
            }
            if let Some(&bad) = pos.iter().find(|&&p| p >= n) {
                return Err(EngineError::Invalid(format!(
                    "position {bad} is past the sequence's {n} tokens"
                )));
            }
            lens.push(n);
        }
        let batch = seqs.len();
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let max_pos = positions.iter().map(Vec::len).max().unwrap_or(0);
        if batch == 0 || max_len == 0 || max_pos == 0 {
            return Ok(positions
                .iter()
                .map(|_| Tensor::zeros((0, vocab), DType::F32, &Device::Cpu))
                .collect::<candle_core::Result<_>>()?);
        }
        // Right padding with mask 0; every row at positions 0..T, as the candle backend runs.
        let call = DecoderCall::whole(seqs, &lens, positions, hidden)?;
        let (values, _) = self.run_decoder(&call, None, false)?;
        positions
            .iter()
            .enumerate()
            .map(|(b, pos)| {
                let start = b * max_pos * vocab;
                let slice = &values[start..start + pos.len() * vocab];
                Ok(Tensor::from_slice(slice, (pos.len(), vocab), &Device::Cpu)?)
            })
            .collect()
    }

    fn continuations(
        &self,
        prompt: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        if self.kv.is_none() {
            return Recomputing(self).continuations(prompt, continuations);
        }
        let mut all =
            self.continuations_batch(std::slice::from_ref(prompt), &[continuations.to_vec()])?;
        Ok(all.pop().unwrap_or_default())
    }

    fn continuations_batch(
        &self,
        prompts: &[Tensor],
        continuations: &[Vec<Vec<u32>>],
    ) -> Result<Vec<Vec<Continuation>>> {
        let Some(kv) = self.kv else {
            return Recomputing(self).continuations_batch(prompts, continuations);
        };
        if prompts.len() != continuations.len() {
            return Err(EngineError::Invalid(
                "one list of continuations per prompt".into(),
            ));
        }
        if let Some(max) = self.max_batch.filter(|&m| prompts.len() > m) {
            return in_batches(prompts, continuations, max, |p, c| {
                self.continuations_batch(p, c)
            });
        }
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        // One pass over the right-padded prompts: a row's real tokens never see its padding
        // under the causal mask, so its cache cut to its length is exact.
        let lens = prompts
            .iter()
            .map(|p| p.dim(0))
            .collect::<candle_core::Result<Vec<_>>>()?;
        if lens.contains(&0) {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        let last: Vec<Vec<usize>> = lens.iter().map(|&n| vec![n - 1]).collect();
        let call = DecoderCall::whole(prompts, &lens, &last, self.cfg.text.hidden_size)?;
        let empty = PastKv::empty(kv, prompts.len());
        let (first, presents) = self.run_decoder(&call, Some(&empty), true)?;
        let presents = presents.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
        let vocab = self.cfg.text.vocab_size;
        (0..prompts.len())
            .map(|b| {
                let first = Tensor::from_slice(&first[b * vocab..][..vocab], vocab, &Device::Cpu)?;
                self.continue_from(&presents.select(b, lens[b])?, &first, &continuations[b])
            })
            .collect()
    }

    fn generate(&self, prompt: &Tensor, max_new: usize, stop: &[u32]) -> Result<Vec<u32>> {
        let Some(kv) = self.kv else {
            return Recomputing(self).generate(prompt, max_new, stop);
        };
        let t = prompt.dim(0)?;
        if t == 0 {
            return Err(EngineError::Invalid("an empty prompt".into()));
        }
        let hidden = self.cfg.text.hidden_size;
        let mut out = Vec::new();
        if max_new == 0 {
            return Ok(out);
        }
        let call = DecoderCall::whole(std::slice::from_ref(prompt), &[t], &[vec![t - 1]], hidden)?;
        let (mut row, mut cache) = self.run_decoder(&call, Some(&PastKv::empty(kv, 1)), true)?;
        for step in 0..max_new {
            let next = Tensor::from_vec(row, self.cfg.text.vocab_size, &Device::Cpu)?
                .argmax(0)?
                .to_scalar::<u32>()?;
            if stop.contains(&next) {
                break;
            }
            out.push(next);
            if step + 1 == max_new {
                break;
            }
            let past = cache.ok_or_else(|| EngineError::Invalid("no cache came back".into()))?;
            let n = past.len();
            let embeds = self
                .embed_tokens(&[next])?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let call = DecoderCall {
                batch: 1,
                len: 1,
                hidden,
                embeds,
                mask: vec![1; n + 1],
                position_ids: vec![n as i64],
                rows: vec![0],
                rows_per_seq: 1,
            };
            (row, cache) = self.run_decoder(&call, Some(&past), true)?;
        }
        Ok(out)
    }
}

/// One decoder call's inputs, row-major: `embeds` [batch, len, hidden], `mask`
/// [batch, past + len], `position_ids` [batch, len], `rows` [batch, rows_per_seq].
struct DecoderCall {
    batch: usize,
    len: usize,
    hidden: usize,
    embeds: Vec<f32>,
    mask: Vec<i64>,
    position_ids: Vec<i64>,
    rows: Vec<i64>,
    rows_per_seq: usize,
}

impl DecoderCall {
    /// Whole sequences from position 0, right-padded to the longest with mask 0; row lists
    /// padded with row 0.
    fn whole(
        seqs: &[Tensor],
        lens: &[usize],
        positions: &[Vec<usize>],
        hidden: usize,
    ) -> Result<Self> {
        let batch = seqs.len();
        let len = lens.iter().copied().max().unwrap_or(0);
        let rows_per_seq = positions.iter().map(Vec::len).max().unwrap_or(0);
        let mut call = Self {
            batch,
            len,
            hidden,
            embeds: vec![0f32; batch * len * hidden],
            mask: vec![0i64; batch * len],
            position_ids: (0..batch).flat_map(|_| 0..len as i64).collect(),
            rows: vec![0i64; batch * rows_per_seq],
            rows_per_seq,
        };
        for (b, (s, pos)) in seqs.iter().zip(positions).enumerate() {
            let n = lens[b];
            let values = s
                .to_device(&Device::Cpu)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            call.embeds[b * len * hidden..][..n * hidden].copy_from_slice(&values);
            call.mask[b * len..][..n].fill(1);
            for (k, &p) in pos.iter().enumerate() {
                call.rows[b * rows_per_seq + k] = p as i64;
            }
        }
        Ok(call)
    }
}

impl OrtBackend {
    /// Runs the decoder over `call` after `past` (required by a cached decoder, whose
    /// `attention_mask` then spans past + new positions; `None` for a format-1 one). Returns
    /// the log-probs [batch, rows_per_seq, vocab] and, with a cache and `want_cache`, the grown
    /// cache.
    fn run_decoder(
        &self,
        call: &DecoderCall,
        past: Option<&PastKv>,
        want_cache: bool,
    ) -> Result<(Vec<f32>, Option<PastKv>)> {
        let (batch, len, hidden) = (call.batch, call.len, call.hidden);
        let vocab = self.cfg.text.vocab_size;
        let empty;
        let past = match (self.kv, past) {
            (Some(kv), None) => {
                empty = PastKv::empty(kv, batch);
                Some(&empty)
            }
            (None, Some(_)) => {
                return Err(EngineError::Invalid(
                    "a cache given to a decoder without one".into(),
                ))
            }
            (_, p) => p,
        };
        let past_len = past.map(PastKv::len).unwrap_or(0);
        if past.is_some_and(|p| p.batch() != batch) || call.mask.len() != batch * (past_len + len) {
            return Err(EngineError::Invalid(format!(
                "a decoder call of {batch} x {len} tokens after {past_len} cached with a mask of \
                 {} values",
                call.mask.len()
            )));
        }
        let feeds = past.map(PastKv::feeds);
        let mask_shape = [batch, past_len + len];
        let (embeds_shape, ids_shape) = ([batch, len, hidden], [batch, len]);
        let rows_shape = [batch, call.rows_per_seq];
        let mut inputs = vec![
            (
                INPUTS_EMBEDS,
                InputTensor::F32 {
                    shape: &embeds_shape,
                    data: &call.embeds,
                },
            ),
            (
                ATTENTION_MASK,
                InputTensor::I64 {
                    shape: &mask_shape,
                    data: &call.mask,
                },
            ),
            (
                POSITION_IDS,
                InputTensor::I64 {
                    shape: &ids_shape,
                    data: &call.position_ids,
                },
            ),
            (
                POSITIONS,
                InputTensor::I64 {
                    shape: &rows_shape,
                    data: &call.rows,
                },
            ),
        ];
        if let Some(f) = &feeds {
            inputs.extend(f.inputs());
        }
        // A caller that keeps no cache (`log_probs_at`) does not take the presents out of
        // ONNX Runtime: at 7B they are tens of MB per sequence.
        let mut outputs = match self.kv.filter(|_| want_cache) {
            Some(_) => self.lock(&self.decoder).run(&inputs)?,
            None => self.lock(&self.decoder).run_for(&inputs, &[LOG_PROBS])?,
        };
        let idx = outputs
            .0
            .iter()
            .position(|(n, _)| n == LOG_PROBS)
            .ok_or_else(|| EngineError::Invalid(format!("no {LOG_PROBS} output")))?;
        let (_, out) = outputs.0.swap_remove(idx);
        let want = [batch, call.rows_per_seq, vocab];
        if out.shape != want {
            return Err(EngineError::Invalid(format!(
                "{LOG_PROBS} of shape {:?}, expected {want:?}",
                out.shape
            )));
        }
        let values = match out.data {
            super::ort_runtime::OutputData::F32(v) => v,
            super::ort_runtime::OutputData::I64(_) => {
                return Err(EngineError::Invalid(format!(
                    "{LOG_PROBS} is not a float tensor"
                )))
            }
        };
        let presents = match self.kv.filter(|_| want_cache) {
            Some(kv) => Some(PastKv::from_outputs(kv, batch, &mut outputs)?),
            None => None,
        };
        Ok((values, presents))
    }

    /// How many continuations of a prompt with `cache` one decoder call takes.
    fn continuations_per_call(&self, cache: &PastKv) -> usize {
        let by_memory = self.kv.map_or(usize::MAX, |kv| {
            let elem = if kv.half { 2 } else { 4 };
            let copy = cache.len() * kv.num_layers * 2 * kv.kv_heads * kv.head_dim * elem;
            CACHE_COPIES_BYTES / copy.max(1)
        });
        by_memory.min(self.max_batch.unwrap_or(usize::MAX)).max(1)
    }

    /// Scores `continuations` after a prompt whose cache (one sequence) is `cache` and whose
    /// last row's log-softmax is `first`: all of them in one batch over the shared cache,
    /// right-padded (mask 0 on the padding, which no real token sees).
    fn continue_from(
        &self,
        cache: &PastKv,
        first: &Tensor,
        continuations: &[Vec<u32>],
    ) -> Result<Vec<Continuation>> {
        let longest = continuations.iter().map(Vec::len).max().unwrap_or(0);
        if longest == 0 {
            return Ok(continuations
                .iter()
                .map(|_| Continuation {
                    token_logprobs: Vec::new(),
                    next: first.clone(),
                })
                .collect());
        }
        let per_call = self.continuations_per_call(cache);
        if continuations.len() > per_call {
            return in_batches(continuations, continuations, per_call, |c, _| {
                self.continue_from(cache, first, c)
            });
        }
        let (k, past, hidden) = (continuations.len(), cache.len(), self.cfg.text.hidden_size);
        let vocab = self.cfg.text.vocab_size;
        let mut call = DecoderCall {
            batch: k,
            len: longest,
            hidden,
            embeds: vec![0f32; k * longest * hidden],
            mask: vec![0i64; k * (past + longest)],
            position_ids: (0..k)
                .flat_map(|_| (past..past + longest).map(|p| p as i64))
                .collect(),
            rows: (0..k).flat_map(|_| 0..longest as i64).collect(),
            rows_per_seq: longest,
        };
        for (i, c) in continuations.iter().enumerate() {
            if !c.is_empty() {
                let e = self.embed_tokens(c)?.flatten_all()?.to_vec1::<f32>()?;
                call.embeds[i * longest * hidden..][..e.len()].copy_from_slice(&e);
            }
            call.mask[i * (past + longest)..][..past + c.len()].fill(1);
        }
        let (values, _) = self.run_decoder(&call, Some(&cache.repeat_batch(k)?), false)?;
        let first = first.unsqueeze(0)?;
        continuations
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let rows = Tensor::from_slice(
                    &values[i * longest * vocab..][..c.len() * vocab],
                    (c.len(), vocab),
                    &Device::Cpu,
                )?;
                Continuation::from_rows(c, &Tensor::cat(&[&first, &rows], 0)?)
            })
            .collect()
    }
}

/// `run` over `a` and `b` (one entry of each per sequence) in slices of at most `max`
/// sequences, the results concatenated in order.
fn in_batches<A, B, T>(
    a: &[A],
    b: &[B],
    max: usize,
    run: impl Fn(&[A], &[B]) -> Result<Vec<T>>,
) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(a.len());
    for (a, b) in a.chunks(max).zip(b.chunks(max)) {
        out.extend(run(a, b)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {

    #[test]
    fn tensorrt_profiles_cover_the_limits() {
        let limits = EngineLimits {
            max_batch: 4,
            max_length: 2048,
            max_tiles: 37,
        };
        let d = decoder_profile(896, None, &limits).unwrap();
        let embeds = &d.inputs[0];
        assert_eq!(embeds.name, INPUTS_EMBEDS);
        assert_eq!(embeds.min, vec![1, 1, 896]);
        assert_eq!(embeds.opt, vec![1, 1024, 896]);
        assert_eq!(embeds.max, vec![4, 2048, 896]);
        assert_eq!(d.inputs[3].max, vec![4, 2048]);
        let v = vision_profile("pixel_values", 384, &limits).unwrap();
        assert_eq!(v.inputs[0].min, vec![1, 3, 384, 384]);
        assert_eq!(v.inputs[0].opt, vec![2, 3, 384, 384]);
        assert_eq!(v.inputs[0].max, vec![37, 3, 384, 384]);
        let bad = EngineLimits {
            max_batch: 0,
            ..limits
        };
        assert!(decoder_profile(896, None, &bad).is_err());
    }
    use super::*;

    #[test]
    fn manifest_of_another_format_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        for v in [0, 3] {
            std::fs::write(
                dir.path().join(MANIFEST_FILE),
                format!(r#"{{"format_version": {v}}}"#),
            )
            .unwrap();
            let err = read_manifest(dir.path()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("format Some({v})")) && err.contains("export onnx"),
                "{err}"
            );
        }

        std::fs::write(dir.path().join(MANIFEST_FILE), r#"{"format_version": 1}"#).unwrap();
        let err = read_manifest(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
    }

    /// The parts of a manifest `kv_layout` reads, at `version` with `kv_cache`.
    fn manifest(version: u32, kv_cache: &str) -> Manifest {
        let io = r#"{"file": "g.onnx", "inputs": [], "outputs": []}"#;
        let text = format!(
            r#"{{"format_version": {version}, "dtype": "fp16",
                "graphs": {{"vision": {io}, "decoder": {io}}},
                "embeddings": {{"file": "e", "embed_tokens": "t", "image_newline": "n"}},
                "config": {{"vision": {{"hidden_size": 1, "intermediate_size": 1,
                    "num_hidden_layers": 1, "num_attention_heads": 1, "num_channels": 3,
                    "image_size": 1, "patch_size": 1, "layer_norm_eps": 1e-6}},
                    "text": {{"vocab_size": 1, "hidden_size": 1}}, "features_per_tile": 1}}
                {kv_cache}}}"#
        );
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn format_1_has_no_cache_and_format_2_needs_one() {
        let dir = Path::new("export");
        assert_eq!(kv_layout(dir, &manifest(1, "")).unwrap(), None);
        let kv = r#", "kv_cache": {"num_layers": 2, "num_key_value_heads": 2, "head_dim": 8,
            "dtype": "float16"}"#;
        let layout = kv_layout(dir, &manifest(2, kv)).unwrap().unwrap();
        assert_eq!(
            layout,
            KvLayout {
                num_layers: 2,
                kv_heads: 2,
                head_dim: 8,
                half: true
            }
        );
        assert_eq!(
            layout.past_names()[..3],
            [
                "past_key_values.0.key",
                "past_key_values.0.value",
                "past_key_values.1.key"
            ]
        );
        let err = kv_layout(dir, &manifest(2, "")).unwrap_err().to_string();
        assert!(err.contains("kv_cache"), "{err}");
        let bf16 = kv.replace("float16", "bfloat16");
        assert!(kv_layout(dir, &manifest(2, &bf16)).is_err());

        let limits = EngineLimits {
            max_batch: 4,
            max_length: 2048,
            max_tiles: 37,
        };
        let p = decoder_profile(896, Some(&layout), &limits).unwrap();
        assert_eq!(p.inputs.len(), 4 + 4);
        let past = &p.inputs[4];
        assert_eq!(past.name, "past_key_values.0.key");
        assert_eq!(past.min, vec![1, 2, 0, 8]);
        assert_eq!(past.opt, vec![1, 2, 1024, 8]);
        assert_eq!(past.max, vec![4, 2, 2048, 8]);
    }

    #[test]
    fn files_must_have_the_sizes_the_manifest_records() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("g.onnx"), b"abc").unwrap();
        std::fs::write(dir.path().join("e"), b"x").unwrap();
        let sizes = |g: u64| format!(r#", "file_sizes": {{"g.onnx": {g}, "e": 1}}"#);
        check_file_sizes(dir.path(), &manifest(2, &sizes(3))).unwrap();

        let err = check_file_sizes(dir.path(), &manifest(2, &sizes(4)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("g.onnx is 3 bytes but manifest.json records 4"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("e")).unwrap();
        let err = check_file_sizes(dir.path(), &manifest(2, &sizes(3)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("e (recorded in manifest.json)"), "{err}");

        // Every file the manifest names needs a recorded size.
        let partial = r#", "file_sizes": {"g.onnx": 3}"#;
        let err = check_file_sizes(dir.path(), &manifest(2, partial))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names e but records no size"), "{err}");
        let outside = r#", "file_sizes": {"g.onnx": 3, "e": 1, "../x": 1}"#;
        let err = check_file_sizes(dir.path(), &manifest(2, outside))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a file name"), "{err}");
        // Exports from before the sizes were recorded still open.
        check_file_sizes(dir.path(), &manifest(2, "")).unwrap();
    }
}
