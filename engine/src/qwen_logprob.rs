//! `engine logprob` on a Qwen-VL checkpoint (Qwen2.5-VL, Qwen3-VL): the same records in and
//! out as for LLaVA ([`crate::logprob`]), the prompt raw text with
//! `<|vision_start|><|image_pad|><|vision_end|>` once per image and
//! `<|vision_start|><|video_pad|><|vision_end|>` once per video (`"video"`: its frames, or a
//! video file), each pad expanded to the medium's merged token count as the processor expands
//! it (Qwen3-VL: one timestamped run per temporal patch). One record a prompt pass, on either backend ([`QwenBackend`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use unireward_models::formats::logprob_record::LogprobAnswer;
use unireward_models::pack::{merge_deepstack, merge_media};
use unireward_models::preprocess::{MediaRequest, QwenVlProcessor};
use unireward_models::tokenize::PromptTokenizer;

use crate::backend::{Prompt, QwenBackend, Rows};
use crate::error::{EngineError, Result};
use crate::pipeline::{decoded_image_bytes, run_pipeline_with};
use crate::pipeline::{RunOptions, RunSummary};
use unireward_models::qwen2_5_vl::{QwenMedia, QwenVideos};

pub struct QwenLogprobJob<'a> {
    pub backend: &'a dyn QwenBackend,
    pub tokenizer: &'a PromptTokenizer,
    pub processor: &'a QwenVlProcessor,
}

/// A record read and its media preprocessed.
struct Request {
    prompt: String,
    completion: String,
    media: QwenMedia,
}

impl QwenLogprobJob<'_> {
    pub fn run(&self, input: &Path, out: &Path, opts: &RunOptions) -> Result<RunSummary> {
        let base = input.parent().unwrap_or(Path::new(".")).to_path_buf();
        run_pipeline_with(
            opts,
            input,
            out,
            |v: &Value| {
                MediaRequest::parse(v, "images", "video")
                    .map(|m| decoded_image_bytes(&m, &base))
                    .unwrap_or(0)
            },
            |v: &Value| self.read(v, &base),
            |batch: Vec<(Value, Request)>| {
                batch
                    .into_iter()
                    .map(|(_, req)| self.answer(&req))
                    .collect()
            },
        )
    }

    fn read(&self, v: &Value, base: &Path) -> std::result::Result<Request, String> {
        let text = |k: &str| -> std::result::Result<String, String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("missing string field {k:?}"))
        };
        let (prompt, completion) = (text("prompt")?, text("completion")?);
        let media = MediaRequest::parse(v, "images", "video")?;
        let media = QwenMedia::read(self.processor, &media, base, QwenVideos::Items)
            .map_err(|e| e.to_string())?;
        Ok(Request {
            prompt,
            completion,
            media,
        })
    }

    fn answer(&self, req: &Request) -> Result<LogprobAnswer> {
        let backend = self.backend;
        // Videos are items here and the raw prompt places every marker: the tokenizer fills the
        // i-th image and the i-th video marker in turn, so images and videos may share a prompt.
        let media = req.media.encoded(backend.vision())?.into_features();
        let (images, videos) = media.pads()?;
        let full = format!("{}{}", req.prompt, req.completion);
        let tokens = self.tokenizer.encode_videos(&full, &images, &videos)?;
        let prompt_len = self
            .tokenizer
            .encode_videos(&req.prompt, &images, &videos)?
            .ids
            .len();
        let n = tokens.ids.len();
        let max = backend.text_config().max_position_embeddings;
        if n > max {
            return Err(EngineError::Invalid(format!(
                "prompt and completion are {n} tokens, over the context length {max}"
            )));
        }
        if prompt_len == 0 || prompt_len >= n {
            return Err(EngineError::Invalid(
                "the completion adds no tokens after a non-empty prompt".into(),
            ));
        }
        let text = backend.embed_tokens(&tokens.ids)?;
        let prompt = Prompt {
            embeds: merge_media(&text, &tokens, &media)?,
            positions: backend.prompt_positions(&tokens, &media)?,
            deepstack: merge_deepstack(&text, &tokens, &media)?,
        };
        let rows = vec![(prompt_len - 1..n - 1).collect::<Vec<usize>>()];
        let mut cache = backend.new_cache()?;
        let logp = backend
            .decode_prompts(
                std::slice::from_ref(&prompt),
                Rows::At(&rows),
                cache.as_mut(),
            )?
            .remove(0);
        let targets = Tensor::new(&tokens.ids[prompt_len..], &Device::Cpu)?.unsqueeze(1)?;
        let total: f64 = logp
            .to_device(&Device::Cpu)?
            .gather(&targets, 1)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar()?;
        if !total.is_finite() {
            return Err(EngineError::Invalid(format!(
                "the model's log-probability is {total}: its outputs are not finite (broken \
                 weights, or an overflow at this precision)"
            )));
        }
        Ok(LogprobAnswer {
            logprob: total,
            prompt_tokens: prompt_len,
            completion_tokens: n - prompt_len,
        })
    }
}
