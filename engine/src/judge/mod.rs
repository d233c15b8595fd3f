//! The judge: a request's prompt rendered from the UnifiedReward templates, then a verdict
//! either read from one forward pass (`fast`) or decoded and parsed (`generate`).

pub mod fast;
pub mod generate;
pub mod request;

use candle_core::Tensor;
use unireward_models::formats::score_record::{
    PairAnswer, PairScores, PointAnswer, PointScores, ScoreAnswer,
};
use unireward_models::judge::sift_templates::AnswerForm;
use unireward_models::judge::{
    ChatTemplate, Family, Media, MediaMarkers, Mode, PairProbs, PointScore, PromptTemplate, Task,
};
use unireward_models::tokenize::{unquote_user_text, PromptTokenizer};
use unireward_models::MediaFeatures;

use crate::backend::{Backend, Decoder};
use crate::decoding::{Decoding, Prompt};
use crate::error::{EngineError, Result};

pub use request::ScoreRequest;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum JudgeMode {
    /// Verdict probabilities / expected scores from one prompt pass.
    #[default]
    Fast,
    /// Greedy decoding with the rationale kept, verdict parsed from the text.
    Generate,
}

/// How prompts are written.
#[derive(Debug, Clone, Default)]
pub struct PromptStyle {
    pub family: Family,
    pub chat: ChatTemplate,
    /// Replaces the built-in user-turn template for every task and mode.
    pub user_template: Option<PromptTemplate>,
    /// Fast judging of a Think family reads the verdict without the reasoning the checkpoint
    /// was trained to write first; it is refused unless this is set.
    pub allow_fast_think: bool,
    /// How the model family writes the template's media markers.
    pub markers: MediaMarkers,
}

impl PromptStyle {
    /// Refuses fast judging of a Think family unless it was asked for.
    pub fn check_fast(&self) -> Result<()> {
        if self.family.thinks() && !self.allow_fast_think {
            return Err(EngineError::Invalid(format!(
                "template family {} judges in generate mode: its verdict follows its reasoning \
                 (<think>...</think><answer>...</answer>); use --judge generate, or \
                 --allow-fast-think to score the verdict after an empty reasoning",
                self.family
            )));
        }
        Ok(())
    }
}

/// A verdict on one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pair {
        probs: PairProbs,
        /// Per-dimension shares, where the answer format has dimensions.
        scores: Option<PairScores>,
        text: Option<String>,
    },
    Point {
        score: PointScore,
        /// Per-dimension scores, where the answer format has dimensions.
        scores: Option<PointScores>,
        text: Option<String>,
    },
}

impl Outcome {
    /// The answer record's fields (the pipeline puts the id before them).
    pub fn answer(&self) -> ScoreAnswer {
        match self.clone() {
            Outcome::Pair {
                probs,
                scores,
                text,
            } => ScoreAnswer::Pair(PairAnswer {
                verdict: probs.verdict(),
                probs,
                scores,
                text,
            }),
            Outcome::Point {
                score,
                scores,
                text,
            } => ScoreAnswer::Point(PointAnswer {
                score: score.expected,
                score_argmax: score.argmax,
                scores,
                text,
            }),
        }
    }
}

/// One prompt to judge, its media already encoded.
pub struct JudgeItem<'m> {
    pub task: Task,
    pub mode: Mode,
    pub prompt_text: String,
    pub media: &'m MediaFeatures,
}

pub struct Judge<'a> {
    /// What runs the prompts.
    pub decoder: &'a dyn Decoder,
    /// The LLaVA backend whose vision graph encodes the media; `None` for a family whose model
    /// encodes its own (Qwen-VL).
    backend: Option<&'a dyn Backend>,
    pub tokenizer: &'a PromptTokenizer,
    pub style: PromptStyle,
    pub mode: JudgeMode,
    /// Token limit of generate mode.
    pub max_new_tokens: usize,
    /// Token ids whose text starts with a digit: what may continue a score.
    digit_tokens: Vec<u32>,
    /// The tokens of "0" to "9", where each digit is one token: the decimals of a score.
    single_digits: Option<[u32; 10]>,
}

impl<'a> Judge<'a> {
    /// A judge of a LLaVA backend, which also encodes the media of the requests.
    pub fn new(
        backend: &'a dyn Backend,
        tokenizer: &'a PromptTokenizer,
        style: PromptStyle,
        mode: JudgeMode,
        max_new_tokens: usize,
    ) -> Result<Self> {
        let mut judge = Self::with_decoder(backend, tokenizer, style, mode, max_new_tokens)?;
        judge.backend = Some(backend);
        Ok(judge)
    }

    /// A judge of a decoder whose media are encoded elsewhere (by a Qwen-VL model itself).
    pub fn with_decoder(
        decoder: &'a dyn Decoder,
        tokenizer: &'a PromptTokenizer,
        style: PromptStyle,
        mode: JudgeMode,
        max_new_tokens: usize,
    ) -> Result<Self> {
        let vocab = decoder.text_config().vocab_size as u32;
        let digit_tokens = (0..vocab)
            .filter(|&id| {
                tokenizer
                    .decode(&[id])
                    .is_ok_and(|t| t.starts_with(|c: char| c.is_ascii_digit()))
            })
            .collect();
        let single_digits = (0..10u32)
            .map(|d| tokenizer.token_id(&d.to_string()))
            .collect::<Option<Vec<u32>>>()
            .and_then(|v| <[u32; 10]>::try_from(v).ok());
        Ok(Self {
            decoder,
            backend: None,
            tokenizer,
            style,
            mode,
            max_new_tokens,
            digit_tokens,
            single_digits,
        })
    }

    /// The LLaVA backend that encodes the requests' media; an error for a judge of another
    /// family, naming what asked for it.
    pub fn backend(&self, what: &str) -> Result<&'a dyn Backend> {
        self.backend.ok_or_else(|| {
            EngineError::Invalid(format!(
                "{what} encodes media with LLaVA-OneVision's vision graph; the {} judge encodes \
                 its own and is not taken there yet",
                self.decoder.name()
            ))
        })
    }

    /// What the built-in prompt of the judge's family asks the answer of `task` in `mode` to
    /// look like; with a `--template`, the family's answer still.
    pub fn answer_form(&self, task: Task, mode: Mode) -> Result<AnswerForm> {
        Ok(AnswerForm::of(self.style.family, task, mode)?)
    }

    /// The full prompt text: user turn from the template, chat wrapping, and in fast mode
    /// the forced start of the answer. The request's prompt and answers are quoted in it
    /// ([`unireward_models::tokenize::quote_user_text`]); `unquote_user_text` gives the text
    /// the model reads.
    pub fn prompt_text(
        &self,
        task: Task,
        mode: Mode,
        prompt: &str,
        answers: &[String],
        media: Media,
    ) -> Result<String> {
        let template = match &self.style.user_template {
            Some(t) => t.clone(),
            None => PromptTemplate::builtin(self.style.family, task, mode)?,
        };
        let form = self.answer_form(task, mode)?;
        self.prompt_text_with(&template, &form, task, mode, prompt, answers, media)
    }

    /// [`Self::prompt_text`] with a given template, whose answer is to look like `form`.
    #[allow(clippy::too_many_arguments)]
    pub fn prompt_text_with(
        &self,
        template: &PromptTemplate,
        form: &AnswerForm,
        task: Task,
        mode: Mode,
        prompt: &str,
        answers: &[String],
        media: Media,
    ) -> Result<String> {
        let needed = task.answers_needed(mode);
        if answers.len() != needed {
            return Err(EngineError::Invalid(format!(
                "{task} {mode} judges {needed} answer(s), the request has {}",
                answers.len()
            )));
        }
        // Quoted, so that a marker or special token typed in the request is read as text.
        let user = template.render_quoted(prompt, answers, media)?;
        let mut text = self.style.markers.apply(&self.style.chat.render(&user)?);
        if self.mode == JudgeMode::Fast {
            text.push_str(form.answer_prefix);
        }
        Ok(text)
    }

    /// Judges one rendered prompt whose media are already encoded.
    pub fn judge(
        &self,
        task: Task,
        mode: Mode,
        prompt_text: &str,
        media: &MediaFeatures,
    ) -> Result<Outcome> {
        let form = self.answer_form(task, mode)?;
        self.judge_with(&form, task, mode, prompt_text, media)
    }

    /// [`Self::judge`] of a prompt whose answer is to look like `form`.
    pub fn judge_with(
        &self,
        form: &AnswerForm,
        task: Task,
        mode: Mode,
        prompt_text: &str,
        media: &MediaFeatures,
    ) -> Result<Outcome> {
        if self.mode == JudgeMode::Fast {
            self.style.check_fast()?;
        }
        let prompt = self.prompt(prompt_text, media)?;
        match self.mode {
            JudgeMode::Fast => {
                let plan = fast::plan(self, task, mode, form, prompt_text)?;
                let mut scored = self.decoder.prompt_continuations_batch(
                    std::slice::from_ref(&prompt),
                    std::slice::from_ref(&plan.continuations),
                )?;
                let scored = scored.pop().unwrap_or_default();
                fast::reduce(self, &plan, &scored)
            }
            JudgeMode::Generate => generate::judge(self, form, task, mode, &prompt),
        }
    }

    /// Judges several prompts; in fast mode their prompt passes run as batches of at most
    /// `token_budget` padded tokens and of at most the prompts one decoder call of the backend
    /// takes. One result per prompt, in order.
    pub fn judge_batch(&self, items: &[JudgeItem], token_budget: usize) -> Vec<Result<Outcome>> {
        if self.mode == JudgeMode::Generate {
            return items
                .iter()
                .map(|it| self.judge(it.task, it.mode, &it.prompt_text, it.media))
                .collect();
        }
        let mut results: Vec<Option<Result<Outcome>>> = items.iter().map(|_| None).collect();
        let mut ready = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let prepared = self
                .style
                .check_fast()
                .and_then(|()| self.prompt(&it.prompt_text, it.media))
                .and_then(|embeds| {
                    let form = self.answer_form(it.task, it.mode)?;
                    let plan = fast::plan(self, it.task, it.mode, &form, &it.prompt_text)?;
                    Ok((embeds, plan))
                });
            match prepared {
                Ok(p) => ready.push((i, p)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        let lens: Vec<usize> = ready
            .iter()
            .map(|(_, (p, _))| p.embeds.dim(0).unwrap_or(0))
            .collect();
        let per_call = self.decoder.limits().batch();
        for range in crate::batching::batches_by_budget(&lens, token_budget, per_call) {
            let group = &ready[range];
            let prompts: Vec<Prompt> = group.iter().map(|(_, (p, _))| p.clone()).collect();
            let conts: Vec<Vec<Vec<u32>>> = group
                .iter()
                .map(|(_, (_, p))| p.continuations.clone())
                .collect();
            match self.decoder.prompt_continuations_batch(&prompts, &conts) {
                Ok(scored) => {
                    for ((i, (_, plan)), s) in group.iter().zip(scored) {
                        results[*i] = Some(fast::reduce(self, plan, &s));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for (i, _) in group {
                        results[*i] = Some(Err(EngineError::Invalid(msg.clone())));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(EngineError::Invalid("not judged".into()))))
            .collect()
    }

    /// A fast judgement's prompt embeddings and what to score after them, for a caller that
    /// runs the prompt passes itself and reads the verdict with [`fast::reduce`].
    pub fn fast_pass(&self, form: &AnswerForm, item: &JudgeItem) -> Result<(Tensor, fast::Plan)> {
        self.style.check_fast()?;
        let embeds = self.embed_prompt(&item.prompt_text, item.media)?;
        let plan = fast::plan(self, item.task, item.mode, form, &item.prompt_text)?;
        Ok((embeds, plan))
    }

    /// [`Self::prompt`] of a family whose positions are 0..T: its embeddings alone; an error
    /// for a family that needs its positions (Qwen-VL), which the caller would drop.
    pub fn embed_prompt(&self, text: &str, media: &MediaFeatures) -> Result<Tensor> {
        let prompt = self.prompt(text, media)?;
        if prompt.positions.is_some() {
            return Err(EngineError::Invalid(format!(
                "the {} judge runs its prompts at their own (M-RoPE) positions, which this \
                 caller does not pass on yet",
                self.decoder.name()
            )));
        }
        Ok(prompt.embeds)
    }

    /// The rendered prompt as the decoder takes it: embeddings [T, hidden] with the media
    /// features merged in, and its positions where the family's are not 0..T; an error when
    /// the prompt leaves no room in the context for the answer.
    pub fn prompt(&self, text: &str, media: &MediaFeatures) -> Result<Prompt> {
        let (image_lens, video_pads) = media.pads()?;
        let tokens = self
            .tokenizer
            .encode_videos(text, &image_lens, &video_pads)?;
        // Room for the longest verdict or the rationale.
        let room = match self.mode {
            JudgeMode::Fast => 16,
            JudgeMode::Generate => self.max_new_tokens,
        };
        let max = self.decoder.text_config().max_position_embeddings;
        if tokens.ids.len() + room > max {
            return Err(EngineError::Invalid(format!(
                "the prompt is {} tokens; with {room} for the answer that is over the context length {max}",
                tokens.ids.len()
            )));
        }
        let text_embeds = self.decoder.embed_tokens(&tokens.ids)?;
        let embeds = unireward_models::pack::merge_media(&text_embeds, &tokens, media)?;
        let deepstack = unireward_models::pack::merge_deepstack(&text_embeds, &tokens, media)?;
        let positions = self.decoder.prompt_positions(&tokens, media)?;
        Ok(Prompt {
            embeds,
            positions,
            deepstack,
        })
    }

    /// Tokens of `continuation` when written right after `prompt`. Text after the last
    /// special token is tokenized on its own, so only that tail is re-tokenized.
    pub fn continuation_tokens(&self, prompt: &str, continuation: &str) -> Result<Vec<u32>> {
        let tail = prompt
            .rfind("<|im_start|>")
            .map_or(prompt, |at| &prompt[at..]);
        let tail = unquote_user_text(tail);
        let tail = tail.as_str();
        let base = self.tokenizer.encode_text(tail)?;
        let joint = self
            .tokenizer
            .encode_text(&format!("{tail}{continuation}"))?;
        if joint.len() <= base.len() || joint[..base.len()] != base[..] {
            return Err(EngineError::Invalid(format!(
                "{continuation:?} does not tokenize as a continuation of the prompt"
            )));
        }
        Ok(joint[base.len()..].to_vec())
    }

    pub fn digit_tokens(&self) -> &[u32] {
        &self.digit_tokens
    }

    /// The tokens of "0" to "9"; an error for a tokenizer that has no single-digit tokens.
    pub fn single_digits(&self) -> Result<&[u32; 10]> {
        self.single_digits.as_ref().ok_or_else(|| {
            EngineError::Invalid(
                "the tokenizer has no token for each digit 0-9, which fast judging reads the \
                 decimals of a score from"
                    .into(),
            )
        })
    }
}
