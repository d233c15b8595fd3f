//! The CLIP tokenizer of a diffusers pipeline (`tokenizer/`, `tokenizer_2/`), as the pipelines
//! call it: `tokenizer(prompt, padding="max_length", max_length=model_max_length,
//! truncation=True)`.
//!
//! Built as transformers (>= 5) builds `CLIPTokenizer`, from the same `tokenizers` pieces: NFC,
//! runs of whitespace to one space, lowercase; CLIP's split regex (the specials, contractions,
//! letter runs, single digits, other non-space runs) then byte-level symbols; BPE with `</w>`
//! ending each word and `<|endoftext|>` for what the vocabulary lacks; `<|startoftext|>` ids
//! `<|endoftext|>`; truncated to `model_max_length` (the two specials kept) and padded on the
//! right with the pad token (SD 1.5's tokenizer pads with `<|endoftext|>`, SDXL's `tokenizer_2`
//! with `!`, id 0).
//!
//! The vocabulary and merges come from `tokenizer.json` when the directory has one (as
//! transformers does for `CLIPTokenizer`, which rebuilds its pipeline and takes only the
//! vocabulary, merges and added tokens from that file), else from `vocab.json` + `merges.txt`
//! (the layout the hub's SD repositories ship). The special tokens are those of
//! `tokenizer_config.json` (with `special_tokens_map.json` over it, when the config lists no
//! `added_tokens_decoder`), added as transformers adds them: a token given as a plain string
//! matches the raw prompt (so SDXL's `!` pad token splits every `!` typed in a prompt), one given
//! with `"normalized": true` matches after lowercasing.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior,
    Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::{Error, Result};

/// CLIP's pre-tokenization regex (transformers' `CLIPTokenizer`, after OpenAI's `simple_tokenizer`).
pub const CLIP_SPLIT_REGEX: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const END_OF_WORD: &str = "</w>";
const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
/// The named special tokens in the order transformers adds them (a later one with the same
/// text replaces an earlier one's flags).
const NAMED_SPECIALS: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A CLIP tokenizer directory, ready to turn prompts into the `[77]` id rows a text encoder takes.
#[derive(Clone)]
pub struct ClipTokenizer {
    /// Truncation and padding to `model_max_length` set.
    tokenizer: Tokenizer,
    /// The same without padding or truncation (for the pipelines' "was truncated" check).
    untruncated: Tokenizer,
    model_max_length: usize,
    bos_id: u32,
    eos_id: u32,
    pad_id: u32,
    pad_token: String,
}

/// A special token as a tokenizer config gives it: a string, or an `AddedToken` object.
#[derive(Debug, Clone, PartialEq)]
struct TokenSpec {
    content: String,
    single_word: bool,
    lstrip: bool,
    rstrip: bool,
    normalized: bool,
    special: bool,
}

impl TokenSpec {
    /// A plain string is a special token matched on the raw text (`normalized` false). An
    /// object keeps its flags; as transformers builds `AddedToken(**object)`, a missing
    /// `special` is `special_by_default` (true in special_tokens_map.json, false in
    /// tokenizer_config.json) and a missing `normalized` is `not special`.
    fn parse(v: &Value, special_by_default: bool) -> Option<Self> {
        match v {
            Value::String(s) => Some(Self {
                content: s.clone(),
                single_word: false,
                lstrip: false,
                rstrip: false,
                normalized: false,
                special: true,
            }),
            Value::Object(m) => {
                let flag = |k: &str| m.get(k).and_then(Value::as_bool);
                let special = flag("special").unwrap_or(special_by_default);
                Some(Self {
                    content: m.get("content")?.as_str()?.to_string(),
                    single_word: flag("single_word").unwrap_or(false),
                    lstrip: flag("lstrip").unwrap_or(false),
                    rstrip: flag("rstrip").unwrap_or(false),
                    normalized: flag("normalized").unwrap_or(!special),
                    special,
                })
            }
            _ => None,
        }
    }

    fn added(&self) -> AddedToken {
        AddedToken::from(self.content.clone(), self.special)
            .single_word(self.single_word)
            .lstrip(self.lstrip)
            .rstrip(self.rstrip)
            .normalized(self.normalized)
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn tok_err(dir: &Path, what: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{}: {what}", dir.display()))
}

/// The vocabulary and merges of a `tokenizer.json` BPE model (merges as "a b" or ["a", "b"]).
fn vocab_and_merges_of_json(dir: &Path, json: &Value) -> Result<(Vocab, Merges)> {
    let model = &json["model"];
    if model.get("type").and_then(Value::as_str).unwrap_or("BPE") != "BPE" {
        return Err(tok_err(dir, "tokenizer.json does not hold a BPE model"));
    }
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| tok_err(dir, "tokenizer.json has no model.vocab object"))?
        .iter()
        .map(|(k, v)| {
            let id = v
                .as_u64()
                .and_then(|i| u32::try_from(i).ok())
                .ok_or_else(|| tok_err(dir, format!("vocabulary id of {k:?} is not a u32")))?;
            Ok((k.clone(), id))
        })
        .collect::<Result<Vocab>>()?;
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| tok_err(dir, "tokenizer.json has no model.merges list"))?
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s
                    .split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string())),
                Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                    (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                    _ => None,
                },
                _ => None,
            };
            pair.ok_or_else(|| tok_err(dir, format!("merge {i} of tokenizer.json is not a pair")))
        })
        .collect::<Result<Merges>>()?;
    Ok((vocab, merges))
}

impl ClipTokenizer {
    /// Reads a tokenizer directory of a diffusers pipeline (`tokenizer.json`, or `vocab.json` +
    /// `merges.txt`; `tokenizer_config.json`, `special_tokens_map.json`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        if !config_path.is_file() {
            return Err(tok_err(dir, "no tokenizer_config.json"));
        }
        let config = read_json(&config_path)?;
        let json_path = dir.join("tokenizer.json");
        let tokenizer_json = if json_path.is_file() {
            Some(read_json(&json_path)?)
        } else {
            None
        };

        // The special tokens: the config's, the legacy special_tokens_map.json over them (each
        // with the file it came from: their objects' flags default differently).
        let mut named: std::collections::HashMap<String, (Value, bool)> = config
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| {
                        NAMED_SPECIALS.contains(&k.as_str())
                            || *k == "additional_special_tokens"
                            || *k == "extra_special_tokens"
                    })
                    .map(|(k, v)| (k.clone(), (v.clone(), false)))
                    .collect()
            })
            .unwrap_or_default();
        let mut listed: Vec<(u32, TokenSpec)> = Vec::new();
        if let Some(decoder) = config
            .get("added_tokens_decoder")
            .and_then(Value::as_object)
        {
            for (id, tok) in decoder {
                let id = id
                    .parse::<u32>()
                    .map_err(|_| tok_err(dir, format!("added_tokens_decoder id {id:?}")))?;
                let spec = TokenSpec::parse(tok, false)
                    .ok_or_else(|| tok_err(dir, format!("added_tokens_decoder entry {id}")))?;
                listed.push((id, spec));
            }
        } else {
            let map_path = dir.join("special_tokens_map.json");
            if map_path.is_file() {
                if let Some(m) = read_json(&map_path)?.as_object() {
                    for (k, v) in m {
                        named.insert(k.clone(), (v.clone(), true));
                    }
                }
            }
            if let Some(added) = tokenizer_json
                .as_ref()
                .and_then(|j| j.get("added_tokens"))
                .and_then(Value::as_array)
            {
                for tok in added {
                    let id = tok.get("id").and_then(Value::as_u64).map(|i| i as u32);
                    let (Some(id), Some(spec)) = (id, TokenSpec::parse(tok, false)) else {
                        return Err(tok_err(dir, "tokenizer.json has a malformed added token"));
                    };
                    listed.push((id, spec));
                }
            }
        }
        listed.sort_by_key(|(id, _)| *id);
        // A named special that is also listed takes the listed token's flags; either way it is
        // added as a special token.
        let resolve = |v: &Value, from_map: bool| -> Option<TokenSpec> {
            let spec = TokenSpec::parse(v, from_map)?;
            let mut spec = listed
                .iter()
                .find(|(_, l)| l.content == spec.content)
                .map(|(_, l)| l.clone())
                .unwrap_or(spec);
            spec.special = true;
            Some(spec)
        };
        let special = |key: &str| named.get(key).and_then(|(v, m)| resolve(v, *m));
        let bos = special("bos_token").map_or(DEFAULT_BOS.to_string(), |s| s.content);
        let eos = special("eos_token").map_or(DEFAULT_EOS.to_string(), |s| s.content);
        let unk = special("unk_token").map_or(DEFAULT_EOS.to_string(), |s| s.content);
        let pad = special("pad_token").map_or(DEFAULT_EOS.to_string(), |s| s.content);

        let model_max_length = config
            .get("model_max_length")
            .and_then(Value::as_f64)
            .filter(|n| *n >= 2.0 && *n <= 1e6)
            .map(|n| n as usize)
            .ok_or_else(|| {
                tok_err(
                    dir,
                    "tokenizer_config.json gives no usable model_max_length (the pipelines pad \
                     and truncate every prompt to it; CLIP's is 77)",
                )
            })?;

        let (vocab, merges) = match &tokenizer_json {
            Some(j) => vocab_and_merges_of_json(dir, j)?,
            None => {
                let (v, m) = (dir.join("vocab.json"), dir.join("merges.txt"));
                if !v.is_file() || !m.is_file() {
                    return Err(tok_err(
                        dir,
                        "neither tokenizer.json nor vocab.json + merges.txt is there",
                    ));
                }
                BPE::read_file(&v.to_string_lossy(), &m.to_string_lossy())
                    .map_err(|e| tok_err(dir, format!("vocab.json / merges.txt: {e}")))?
            }
        };
        let id_of = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| tok_err(dir, format!("the vocabulary has no {t:?}")))
        };
        let (bos_id, eos_id, pad_id) = (id_of(&bos)?, id_of(&eos)?, id_of(&pad)?);

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix(END_OF_WORD.to_string())
            .fuse_unk(false)
            .build()
            .map_err(|e| tok_err(dir, format!("BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace =
            Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| tok_err(dir, e))?;
        tokenizer
            .with_normalizer(Some(NormSequence::new(vec![
                NFC.into(),
                whitespace.into(),
                Lowercase.into(),
            ])))
            .map_err(|e| tok_err(dir, e))?;
        let split = Split::new(
            SplitPattern::Regex(CLIP_SPLIT_REGEX.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|e| tok_err(dir, e))?;
        tokenizer.with_pre_tokenizer(Some(PreSequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        tokenizer.with_post_processor(Some(
            RobertaProcessing::new((eos.clone(), eos_id), (bos.clone(), bos_id))
                .trim_offsets(false)
                .add_prefix_space(false),
        ));

        // Listed tokens by id, then the named specials in transformers' order, one at a time so
        // that a later one with the same text replaces an earlier one's flags.
        let mut to_add: Vec<TokenSpec> = listed.iter().map(|(_, s)| s.clone()).collect();
        for key in NAMED_SPECIALS {
            to_add.extend(special(key));
        }
        for key in ["additional_special_tokens", "extra_special_tokens"] {
            if let Some((Value::Array(list), from_map)) = named.get(key) {
                to_add.extend(list.iter().filter_map(|v| resolve(v, *from_map)));
            }
        }
        for spec in &to_add {
            let added = if spec.special {
                tokenizer.add_special_tokens([spec.added()])
            } else {
                tokenizer.add_tokens([spec.added()])
            };
            added.map_err(|e| tok_err(dir, format!("added token {:?}: {e}", spec.content)))?;
        }
        let untruncated = tokenizer.clone();
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: model_max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| tok_err(dir, e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(model_max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad.clone(),
        }));
        Ok(Self {
            tokenizer,
            untruncated,
            model_max_length,
            bos_id,
            eos_id,
            pad_id,
            pad_token: pad,
        })
    }

    /// The `model_max_length` ids of `prompt`: `<|startoftext|>`, the prompt's tokens (the
    /// first `model_max_length - 2`), `<|endoftext|>`, then pad ids.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(format!("encoding {prompt:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// [`Self::encode`] for each prompt.
    pub fn encode_batch(&self, prompts: &[&str]) -> Result<Vec<Vec<u32>>> {
        prompts.iter().map(|p| self.encode(p)).collect()
    }

    /// The prompts' ids as a `[prompts, model_max_length]` u32 tensor on `device`: the
    /// `input_ids` the pipelines pass to their text encoders.
    pub fn input_ids(&self, prompts: &[&str], device: &Device) -> Result<Tensor> {
        let rows = self.encode_batch(prompts)?;
        let flat: Vec<u32> = rows.concat();
        Ok(Tensor::from_vec(
            flat,
            (prompts.len(), self.model_max_length),
            device,
        )?)
    }

    /// The ids of `prompt` with its specials, neither truncated nor padded: longer than
    /// [`Self::model_max_length`] when the pipelines would cut the prompt (they warn).
    pub fn encode_untruncated(&self, prompt: &str) -> Result<Vec<u32>> {
        let enc = self
            .untruncated
            .encode(prompt, true)
            .map_err(|e| Error::Tokenizer(format!("encoding {prompt:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn model_max_length(&self) -> usize {
        self.model_max_length
    }

    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn pad_token(&self) -> &str {
        &self.pad_token
    }

    /// The underlying `tokenizers` pipeline (truncating and padding), e.g. to decode ids.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}
