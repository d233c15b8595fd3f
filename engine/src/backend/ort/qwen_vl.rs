//! A Qwen-VL export (Qwen2.5-VL, Qwen3-VL, written by `unireward-export onnx`) run by ONNX
//! Runtime: the vision graph as the judge's [`QwenVision`] (the host computes the patches'
//! layout from the grids, as the candle towers do, and feeds it), the decoder graph as a
//! [`Decoder`] at M-RoPE positions (3-D for a prompt with media, all axes together after it),
//! with Qwen3-VL's deep-stack levels in the prompt pass. The same algorithms and records as the
//! candle backend ([`crate::backend::QwenVlBackend`]) run over it.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use candle_core::{DType, Device, Tensor};
use unireward_models::config::TextConfig;
use unireward_models::encode::vision_graph_inputs::{
    PaddedSegments, Qwen25VisionInputs, Qwen3VisionInputs,
};
use unireward_models::formats::export_manifest::ExportFamily;
use unireward_models::preprocess::{QwenVlPixels, QwenVlVideo};
use unireward_models::qwen2_5_vl::{MediaGrid, QwenVision, QwenVisionFeatures, RopePositions};
use unireward_models::qwen_vl::QwenVlConfig;
use unireward_models::tokenize::Tokenized;
use unireward_models::MediaFeatures;

use super::decoder::{CallPositions, DecoderGraph};
use super::kv::PastKv;
use super::manifest::QwenExportDir;
use super::providers::ExecutionProvider;
use super::runtime::{InputTensor, OrtSession, SessionConfig};
use crate::backend::mrope_calls::{continuing, next_positions, PromptPass, RopeCache};
use crate::backend::{own_cache, Decoder, DecoderCache, Limits, Prompt, QwenBackend, Rows};
use crate::error::{EngineError, Result};

type OrtRopeCache = RopeCache<PastKv>;

pub struct OrtQwenVlBackend {
    dir: PathBuf,
    cfg: QwenVlConfig,
    family: ExportFamily,
    dtype: String,
    session: SessionConfig,
    // Runs need `&mut` sessions; one run at a time (ONNX Runtime parallelises within it).
    vision: Mutex<OrtSession>,
    decoder: DecoderGraph,
    /// [vocab, hidden] in the export's precision (f32 or f16).
    embed_tokens: Tensor,
}

impl OrtQwenVlBackend {
    /// Opens the Qwen-VL export in `dir` with `session`'s execution provider and threads.
    pub fn open(dir: &Path, session: &SessionConfig) -> Result<Self> {
        if matches!(session.provider, ExecutionProvider::TensorRt(_)) {
            return Err(EngineError::Invalid(format!(
                "export {}: TensorRT has no optimisation profiles for the Qwen-VL graphs yet \
                 (their patch layout inputs); run it with --ep cpu or --ep cuda",
                dir.display()
            )));
        }
        let QwenExportDir {
            cfg,
            family,
            dtype,
            vision_file,
            decoder_file,
            deepstack,
            kv,
            embed_tokens,
        } = QwenExportDir::read(dir)?;
        let text = cfg.text();
        let decoder = DecoderGraph::new(
            OrtSession::open(&decoder_file, session)?,
            Some(kv),
            text.hidden_size,
            text.vocab_size,
            deepstack,
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            vision: Mutex::new(OrtSession::open(&vision_file, session)?),
            cfg,
            family,
            dtype,
            session: session.clone(),
            decoder,
            embed_tokens,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &QwenVlConfig {
        &self.cfg
    }

    fn vision_session(&self) -> MutexGuard<'_, OrtSession> {
        // A panic during an earlier run leaves the session itself intact.
        self.vision.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache<'a>(&self, cache: &'a mut dyn DecoderCache) -> Result<&'a mut OrtRopeCache> {
        own_cache::<OrtRopeCache>(cache)
    }

    /// The vision graph over `media` stacked: the merged features and each deep-stack level,
    /// [tokens of all media, hidden] each.
    fn run_vision(&self, media: &[&QwenVlPixels]) -> Result<Vec<Tensor>> {
        let grids: Vec<(usize, usize, usize)> = media.iter().map(|m| m.grid_thw).collect();
        let pixels = Tensor::cat(
            &media.iter().map(|m| &m.pixel_values).collect::<Vec<_>>(),
            0,
        )?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?;
        let (n, patch) = pixels.dims2()?;
        let pixels = pixels.flatten_all()?.to_vec1::<f32>()?;
        let pixel_shape = [n, patch];
        let mut outputs = match &self.cfg {
            QwenVlConfig::Qwen25(c) => {
                let inputs = Qwen25VisionInputs::new(&grids, &c.vision)?;
                check_patches(n, inputs.patches, &grids)?;
                let hd = c.vision.head_dim();
                let rot = [n, hd];
                let (ws, fs) = (&inputs.windows, &inputs.frames);
                let (wshape, fshape) = ([ws.segments, ws.len], [fs.segments, fs.len]);
                let merged = [inputs.merge_order.len()];
                let feeds = [
                    f32_input(&pixel_shape, &pixels),
                    i64_input(std::slice::from_ref(&n), &inputs.window_order),
                    f32_input(&rot, &inputs.cos),
                    f32_input(&rot, &inputs.sin),
                    i64_input(&wshape, &ws.gather),
                    i64_input(&wshape, &ws.keys),
                    i64_input(std::slice::from_ref(&n), &ws.scatter),
                    i64_input(&fshape, &fs.gather),
                    i64_input(&fshape, &fs.keys),
                    i64_input(std::slice::from_ref(&n), &fs.scatter),
                    i64_input(&merged, &inputs.merge_order),
                ];
                self.run_vision_graph(feeds.into_iter())?
            }
            QwenVlConfig::Qwen3(c) => {
                let inputs = Qwen3VisionInputs::new(&grids, &c.vision)?;
                check_patches(n, inputs.patches, &grids)?;
                let hd = c.vision.head_dim();
                let rot = [n, hd];
                let taps = [inputs.pos_index.len()];
                let fs: &PaddedSegments = &inputs.frames;
                let fshape = [fs.segments, fs.len];
                let feeds = [
                    f32_input(&pixel_shape, &pixels),
                    i64_input(&taps, &inputs.pos_index),
                    f32_input(&taps, &inputs.pos_weight),
                    f32_input(&rot, &inputs.cos),
                    f32_input(&rot, &inputs.sin),
                    i64_input(&fshape, &fs.gather),
                    i64_input(&fshape, &fs.keys),
                    i64_input(std::slice::from_ref(&n), &fs.scatter),
                ];
                self.run_vision_graph(feeds.into_iter())?
            }
        };
        let names = self.family.vision_output_names(self.decoder.deepstack);
        names
            .iter()
            .map(|name| {
                let idx = outputs
                    .0
                    .iter()
                    .position(|(n, _)| n == name)
                    .ok_or_else(|| EngineError::Invalid(format!("no {name} output")))?;
                let (_, out) = outputs.0.swap_remove(idx);
                let values = out
                    .as_f32()
                    .ok_or_else(|| EngineError::Invalid(format!("{name} is not a float tensor")))?;
                Ok(Tensor::from_slice(
                    values,
                    out.shape.as_slice(),
                    &Device::Cpu,
                )?)
            })
            .collect()
    }

    /// Runs the vision graph on `feeds`, given in the family's input order.
    fn run_vision_graph<'a>(
        &self,
        feeds: impl Iterator<Item = InputTensor<'a>>,
    ) -> Result<super::runtime::Outputs> {
        let names = self.family.vision_input_names();
        let inputs: Vec<(&str, InputTensor<'a>)> = names.into_iter().zip(feeds).collect();
        Ok(self.vision_session().run(&inputs)?)
    }
}

fn f32_input<'a>(shape: &'a [usize], data: &'a [f32]) -> InputTensor<'a> {
    InputTensor::F32 { shape, data }
}

fn i64_input<'a>(shape: &'a [usize], data: &'a [i64]) -> InputTensor<'a> {
    InputTensor::I64 { shape, data }
}

fn check_patches(given: usize, want: usize, grids: &[(usize, usize, usize)]) -> Result<()> {
    if given != want {
        return Err(EngineError::Invalid(format!(
            "{given} patches given for grids {grids:?}, which have {want}"
        )));
    }
    Ok(())
}

impl QwenVision for OrtQwenVlBackend {
    fn encode_media(
        &self,
        media: &[&QwenVlPixels],
    ) -> unireward_models::Result<Vec<QwenVisionFeatures>> {
        if media.is_empty() {
            return Ok(Vec::new());
        }
        let outputs = self
            .run_vision(media)
            .map_err(|e| unireward_models::Error::Backend(e.to_string()))?;
        let merge = self.cfg.spatial_merge_size();
        let mut features = Vec::with_capacity(media.len());
        let mut at = 0;
        for m in media {
            let n = m.num_tokens(merge);
            let mut levels = outputs
                .iter()
                .map(|o| o.narrow(0, at, n))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let merged = levels.remove(0);
            features.push(QwenVisionFeatures {
                merged,
                deepstack: levels,
            });
            at += n;
        }
        Ok(features)
    }

    fn video_grid(&self, video: &QwenVlVideo) -> unireward_models::Result<MediaGrid> {
        self.cfg.video_grid(video)
    }

    fn timed_video_items(&self) -> bool {
        self.cfg.timed_video_items()
    }
}

impl QwenBackend for OrtQwenVlBackend {
    fn vision(&self) -> &dyn QwenVision {
        self
    }

    fn media_token_ids(&self) -> (u32, u32) {
        self.cfg.media_token_ids()
    }
}

impl Decoder for OrtQwenVlBackend {
    fn name(&self) -> String {
        format!(
            "ort-{}-{}-{}",
            self.cfg.family().name(),
            self.session.provider.name(),
            self.dtype
        )
    }

    fn text_config(&self) -> &TextConfig {
        self.cfg.text()
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        super::embedded(&self.embed_tokens, ids)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_batch: None,
            max_length: None,
            kv_cache: true,
        }
    }

    fn new_cache(&self) -> Result<Box<dyn DecoderCache>> {
        let kv = self
            .decoder
            .kv
            .ok_or_else(|| EngineError::Invalid("a Qwen-VL export without its cache".into()))?;
        Ok(Box::new(OrtRopeCache::new(PastKv::empty(kv, 0))))
    }

    /// Tokens after a cache continue each sequence from its cached offset; without a cache (or
    /// into an empty one) a sequence is text at positions 0..T.
    fn decode(
        &self,
        seqs: &[Tensor],
        rows: Rows<'_>,
        cache: Option<&mut dyn DecoderCache>,
    ) -> Result<Vec<Tensor>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let batch = seqs.len();
        match cache {
            Some(c) => {
                let c = self.cache(c)?;
                let (past, deltas) = c.continued(batch)?;
                let out = self.decoder.decode_seqs(
                    seqs,
                    rows,
                    Some(&mut c.kv),
                    |len| rope(continuing(&deltas, past, len)?),
                    &[],
                )?;
                c.deltas = deltas;
                Ok(out)
            }
            None => self.decoder.decode_seqs(
                seqs,
                rows,
                None,
                |len| rope(continuing(&vec![0; batch], 0, len)?),
                &[],
            ),
        }
    }

    fn prompt_positions(
        &self,
        tokens: &Tokenized,
        media: &MediaFeatures,
    ) -> Result<Option<RopePositions>> {
        Ok(Some(self.cfg.positions(
            tokens,
            &media.image_grids,
            &media.video_grids,
        )?))
    }

    fn decode_prompts(
        &self,
        prompts: &[Prompt],
        rows: Rows<'_>,
        cache: &mut dyn DecoderCache,
    ) -> Result<Vec<Tensor>> {
        let cache = self.cache(cache)?;
        let pass = PromptPass::new(prompts, cache)?;
        let flat = pass.positions;
        let out = self.decoder.decode_seqs(
            &pass.seqs,
            rows,
            Some(&mut cache.kv),
            |_| rope(flat),
            &pass.deepstack,
        )?;
        cache.deltas = pass.deltas;
        Ok(out)
    }

    fn decode_next(
        &self,
        embeds: &Tensor,
        positions: &[usize],
        seen: &[&[bool]],
        cache: &mut dyn DecoderCache,
    ) -> Result<Tensor> {
        let cache = self.cache(cache)?;
        let (batch, hidden) = embeds.dims2()?;
        crate::backend::check_next(
            batch,
            hidden,
            positions,
            seen,
            cache.kv.len(),
            self.cfg.text(),
        )?;
        let flat = next_positions(positions, &cache.deltas)?;
        self.decoder
            .decode_next_seqs(embeds, rope(flat)?, seen, &mut cache.kv)
    }
}

fn rope(flat: Vec<u32>) -> Result<CallPositions> {
    Ok(CallPositions::Rope(
        flat.into_iter().map(i64::from).collect(),
    ))
}
