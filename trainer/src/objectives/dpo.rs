//! DPO on preference pairs: policy and reference log-probabilities of both answers, the loss
//! of [`crate::loss::dpo`], and optionally an SFT term on the chosen answer (the mean
//! negative log-likelihood per chosen token, weighted by `sft_weight`, as LLaVA's DPO
//! trainer adds it).
//!
//! The reference is either a frozen copy of the starting model, run on every batch, or its
//! log-probabilities computed once before training and cached in `OUT/ref_logps.jsonl`
//! (reused by a resumed run when the data, the model and the settings are unchanged).

use std::hash::Hasher;
use std::io::IsTerminal;
use std::path::Path;

use candle_core::{DType, Tensor};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use unireward_models::family::JudgeModel;
use unireward_models::MediaFeatures;

use crate::data::canonical;
use crate::data::dpo::{DpoData, DpoExample};
use crate::data::fingerprint::{hash_file, Fnv1a};
use crate::durable_file::replace_file;
use crate::logprob::{media_features, sequence_logprobs, to_f64_vec};
use crate::loss::dpo::{dpo_loss, DpoParams, PairLogps};
use crate::memory_estimate::StepShape;
use crate::train_loop::{Forward, Objective, Prepared};
use crate::{Error, Result};

pub const REFERENCE_CACHE: &str = "ref_logps.jsonl";

pub enum Reference {
    /// (chosen, rejected) summed log-probabilities per record.
    Precomputed(Vec<[f64; 2]>),
    Frozen(Box<dyn JudgeModel>),
}

impl Reference {
    fn kind(&self) -> &'static str {
        match self {
            Reference::Precomputed(_) => "precompute",
            Reference::Frozen(_) => "frozen",
        }
    }
}

pub struct DpoObjective {
    pub data: DpoData,
    pub params: DpoParams,
    pub sft_weight: f64,
    pub reference: Reference,
}

pub struct DpoBatch {
    indices: Vec<usize>,
    examples: Vec<DpoExample>,
}

/// (chosen, rejected) summed log-probabilities `[B]` each, one decoder call for all 2B
/// answers (chosen first), each pair's media encoded once for both of its answers.
fn pair_logprobs(model: &dyn JudgeModel, examples: &[DpoExample]) -> Result<(Tensor, Tensor)> {
    let feats: Vec<MediaFeatures> = examples
        .iter()
        .map(|ex| media_features(model, &ex.media))
        .collect::<Result<_>>()?;
    let mut batch: Vec<_> = examples
        .iter()
        .zip(&feats)
        .map(|(ex, f)| (&ex.chosen, f))
        .collect();
    batch.extend(examples.iter().zip(&feats).map(|(ex, f)| (&ex.rejected, f)));
    let lp = sequence_logprobs(model, &batch)?;
    let b = examples.len();
    Ok((lp.narrow(0, 0, b)?, lp.narrow(0, b, b)?))
}

impl DpoObjective {
    fn reference_logps(
        &self,
        batch: &DpoBatch,
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        match &self.reference {
            Reference::Frozen(model) => {
                let (c, r) = pair_logprobs(model.as_ref(), &batch.examples)?;
                Ok((c.detach(), r.detach()))
            }
            Reference::Precomputed(values) => {
                let pick = |k: usize| -> Result<Tensor> {
                    let v = batch
                        .indices
                        .iter()
                        .map(|&i| {
                            values.get(i).map(|p| p[k]).ok_or_else(|| {
                                Error::Config(format!("no reference log-probs for record {i}"))
                            })
                        })
                        .collect::<Result<Vec<f64>>>()?;
                    Ok(Tensor::from_vec(v, batch.indices.len(), device)?)
                };
                Ok((pick(0)?, pick(1)?))
            }
        }
    }
}

impl Objective for DpoObjective {
    type Batch = DpoBatch;
    type Model = dyn JudgeModel;

    fn num_examples(&self) -> usize {
        self.data.len()
    }

    fn prepare(&self, indices: &[usize], _position: usize) -> Result<Prepared<DpoBatch>> {
        let examples = indices
            .iter()
            .map(|&i| self.data.prepare(i))
            .collect::<Result<Vec<_>>>()?;
        let seqs = || examples.iter().flat_map(|e| [&e.chosen, &e.rejected]);
        let shape = StepShape {
            rows: 2 * examples.len(),
            tokens: seqs().map(|s| s.len()).max().unwrap_or(0),
            scored: seqs().map(|s| s.scored_span()).max().unwrap_or(0),
            tiles: examples.iter().map(|e| e.media.tiles()).sum(),
            frame_patches: examples
                .iter()
                .map(|e| e.media.frame_patches())
                .max()
                .unwrap_or(0),
        };
        Ok(Prepared {
            weight: examples.len() as f64,
            shape,
            batch: DpoBatch {
                indices: indices.to_vec(),
                examples,
            },
        })
    }

    fn forward(&self, model: &dyn JudgeModel, batch: &DpoBatch) -> Result<Forward> {
        let (pc, pr) = pair_logprobs(model, &batch.examples)?;
        let (rc, rr) = self.reference_logps(batch, model.device())?;
        let chosen_tokens: Vec<usize> = batch
            .examples
            .iter()
            .map(|e| e.chosen.num_targets())
            .collect();
        let rejected_tokens: Vec<usize> = batch
            .examples
            .iter()
            .map(|e| e.rejected.num_targets())
            .collect();
        let out = dpo_loss(
            &self.params,
            &PairLogps {
                policy_chosen: &pc,
                policy_rejected: &pr,
                ref_chosen: &rc,
                ref_rejected: &rr,
                chosen_tokens: &chosen_tokens,
                rejected_tokens: &rejected_tokens,
            },
        )?;
        let dpo_sum = out.losses.sum_all()?;
        let mut metric_sums = out.stats.sums();
        let loss_sum = if self.sft_weight != 0.0 {
            let lens: Vec<f64> = chosen_tokens.iter().map(|&n| n.max(1) as f64).collect();
            let lens = Tensor::from_vec(lens, chosen_tokens.len(), pc.device())?;
            let sft = pc.to_dtype(DType::F64)?.div(&lens)?.neg()?.sum_all()?;
            metric_sums.push(("sft_loss".into(), scalar(&sft)?));
            metric_sums.push(("dpo_loss".into(), scalar(&dpo_sum)?));
            (dpo_sum + (sft * self.sft_weight)?)?
        } else {
            dpo_sum
        };
        Ok(Forward {
            loss_sum,
            metric_sums,
        })
    }

    fn data_file(&self) -> Option<&Path> {
        Some(&self.data.path)
    }

    fn describe(&self) -> Value {
        json!({
            "kind": "dpo",
            "data": canonical(&self.data.path),
            "params": serde_json::to_value(self.params).unwrap_or(Value::Null),
            "sft_weight": self.sft_weight,
            "reference": self.reference.kind(),
        })
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Ids of the records whose chosen answer is their rejected one. Such a pair's policy and
/// reference margins are 0 whatever the weights: it adds a constant to the loss (ln 2 for
/// the sigmoid loss) and nothing to the gradient, so a data set of them trains nothing.
pub fn identical_pairs(data: &DpoData) -> Vec<&str> {
    data.records
        .iter()
        .filter(|r| r.chosen == r.rejected)
        .map(|r| r.id.as_str())
        .collect()
}

/// Says on stderr how many of `data`'s pairs have the same chosen and rejected answer (and
/// the first few ids); returns that number.
pub fn warn_identical_pairs(data: &DpoData) -> usize {
    let same = identical_pairs(data);
    if !same.is_empty() {
        const SHOWN: usize = 5;
        let more = if same.len() > SHOWN { ", …" } else { "" };
        tracing::warn!(
            "trainer: warning: {}: {} of {} pair(s) have the same chosen and rejected answer \
             ({}{more}); they add a constant to the DPO loss (ln 2 with the sigmoid loss) and \
             train nothing",
            data.path.display(),
            same.len(),
            data.len(),
            same[..same.len().min(SHOWN)].join(", ")
        );
    }
    same.len()
}

/// The reference's (chosen, rejected) log-probabilities of every record, `batch_size` pairs
/// per decoder call.
pub fn compute_reference(
    model: &dyn JudgeModel,
    data: &DpoData,
    batch_size: usize,
    progress: bool,
) -> Result<Vec<[f64; 2]>> {
    let bar = if progress && std::io::stderr().is_terminal() {
        ProgressBar::new(data.len() as u64).with_message("reference log-probs")
    } else {
        ProgressBar::hidden()
    };
    let mut out = Vec::with_capacity(data.len());
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let examples = chunk
            .iter()
            .map(|&i| data.prepare(i))
            .collect::<Result<Vec<_>>>()?;
        let (c, r) = pair_logprobs(model, &examples)?;
        let (c, r) = (to_f64_vec(&c.detach())?, to_f64_vec(&r.detach())?);
        out.extend(c.into_iter().zip(r).map(|(c, r)| [c, r]));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Identifies what reference log-probs depend on: the data file's bytes, the model
/// directory's config and weight files (names and sizes), and `settings`. FNV-1a, 64 bits:
/// enough to tell a stale cache from a fresh one, which is all it is for.
pub fn reference_fingerprint(data: &Path, model_dir: &Path, settings: &str) -> Result<String> {
    let mut h = Fnv1a::default();
    hash_file(&mut h, data)?;
    let mut entries: Vec<(String, u64)> = Vec::new();
    for entry in std::fs::read_dir(model_dir).map_err(|e| Error::io(model_dir, e))? {
        let entry = entry.map_err(|e| Error::io(model_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
        entries.push((name, len));
    }
    entries.sort();
    for (name, len) in entries {
        h.write(name.as_bytes());
        h.write(&len.to_le_bytes());
        if name == "config.json" {
            let path = model_dir.join(&name);
            h.write(&std::fs::read(&path).map_err(|e| Error::io(&path, e))?);
        }
    }
    h.write(settings.as_bytes());
    Ok(h.hex())
}

/// The cached reference log-probs of `OUT/ref_logps.jsonl` when its fingerprint and record
/// count match; otherwise computes them with `model` and writes the cache (temporary file,
/// then renamed).
pub fn load_or_compute_reference(
    out: &Path,
    fingerprint: &str,
    model: &dyn JudgeModel,
    data: &DpoData,
    batch_size: usize,
    progress: bool,
) -> Result<Vec<[f64; 2]>> {
    let path = out.join(REFERENCE_CACHE);
    if let Some(values) = read_cache(&path, fingerprint, data)? {
        tracing::info!("trainer: reference log-probs from {}", path.display());
        return Ok(values);
    }
    let values = compute_reference(model, data, batch_size, progress)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut body = json!({"fingerprint": fingerprint, "count": values.len()}).to_string();
    body.push('\n');
    for (i, (v, rec)) in values.iter().zip(&data.records).enumerate() {
        body.push_str(
            &json!({"index": i, "id": rec.id, "chosen": v[0], "rejected": v[1]}).to_string(),
        );
        body.push('\n');
    }
    replace_file(&path, body.as_bytes())?;
    Ok(values)
}

fn read_cache(path: &Path, fingerprint: &str, data: &DpoData) -> Result<Option<Vec<[f64; 2]>>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines = text.lines();
    let header: Value = match lines.next().map(serde_json::from_str) {
        Some(Ok(v)) => v,
        _ => return Ok(None),
    };
    let fresh = header.get("fingerprint").and_then(Value::as_str) == Some(fingerprint)
        && header.get("count").and_then(Value::as_u64) == Some(data.len() as u64);
    if !fresh {
        tracing::info!(
            "trainer: {} was computed for other data, model or settings; recomputing",
            path.display()
        );
        return Ok(None);
    }
    let mut values = Vec::with_capacity(data.len());
    for line in lines {
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => return Ok(None),
        };
        let (Some(c), Some(r)) = (
            v.get("chosen").and_then(Value::as_f64),
            v.get("rejected").and_then(Value::as_f64),
        ) else {
            return Ok(None);
        };
        values.push([c, r]);
    }
    Ok((values.len() == data.len()).then_some(values))
}
