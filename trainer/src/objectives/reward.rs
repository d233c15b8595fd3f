//! Supervised fine-tuning on judge data: the mean negative log-likelihood of the answer
//! tokens (averaged over every answer token of an optimizer step).

use std::path::Path;

use serde_json::{json, Value};
use unireward_models::family::JudgeModel;

use crate::data::canonical;
use crate::data::reward::{RewardData, RewardExample};
use crate::logprob::{media_features, sequence_logprobs, to_f64_vec};
use crate::memory_estimate::StepShape;
use crate::train_loop::{Forward, Objective, Prepared};
use crate::Result;

pub struct RewardObjective {
    pub data: RewardData,
    /// Held-out data: `eval_loss` is its mean answer-token NLL.
    pub eval: Option<RewardData>,
    pub eval_batch_size: usize,
}

/// Summed log-probabilities of the examples' answers → `[B]` with its graph.
fn batch_logprobs(
    model: &dyn JudgeModel,
    examples: &[RewardExample],
) -> Result<candle_core::Tensor> {
    let feats = examples
        .iter()
        .map(|ex| media_features(model, &ex.media))
        .collect::<Result<Vec<_>>>()?;
    let batch: Vec<_> = examples
        .iter()
        .zip(&feats)
        .map(|(ex, f)| (&ex.seq, f))
        .collect();
    sequence_logprobs(model, &batch)
}

/// Mean negative log-likelihood per answer token of `data` under `model`.
pub fn mean_nll(model: &dyn JudgeModel, data: &RewardData, batch_size: usize) -> Result<f64> {
    let (mut nll, mut tokens) = (0.0, 0usize);
    let indices: Vec<usize> = (0..data.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let examples = chunk
            .iter()
            .map(|&i| data.prepare(i))
            .collect::<Result<Vec<_>>>()?;
        tokens += examples.iter().map(|e| e.seq.num_targets()).sum::<usize>();
        nll -= to_f64_vec(&batch_logprobs(model, &examples)?.detach())?
            .iter()
            .sum::<f64>();
    }
    Ok(nll / tokens.max(1) as f64)
}

impl Objective for RewardObjective {
    type Model = dyn JudgeModel;
    type Batch = Vec<RewardExample>;

    fn num_examples(&self) -> usize {
        self.data.len()
    }

    fn prepare(&self, indices: &[usize], _position: usize) -> Result<Prepared<Self::Batch>> {
        let batch = indices
            .iter()
            .map(|&i| self.data.prepare(i))
            .collect::<Result<Vec<_>>>()?;
        let weight = batch.iter().map(|e| e.seq.num_targets()).sum::<usize>() as f64;
        let shape = StepShape {
            rows: batch.len(),
            tokens: batch.iter().map(|e| e.seq.len()).max().unwrap_or(0),
            scored: batch.iter().map(|e| e.seq.scored_span()).max().unwrap_or(0),
            tiles: batch.iter().map(|e| e.media.tiles()).sum(),
            frame_patches: batch
                .iter()
                .map(|e| e.media.frame_patches())
                .max()
                .unwrap_or(0),
        };
        Ok(Prepared {
            batch,
            weight,
            shape,
        })
    }

    fn forward(&self, model: &dyn JudgeModel, batch: &Self::Batch) -> Result<Forward> {
        let lp = batch_logprobs(model, batch)?;
        Ok(Forward {
            loss_sum: lp.sum_all()?.neg()?,
            metric_sums: Vec::new(),
        })
    }

    fn evaluate(&self, model: &dyn JudgeModel) -> Result<Vec<(String, f64)>> {
        match &self.eval {
            Some(eval) => Ok(vec![(
                "eval_loss".into(),
                mean_nll(model, eval, self.eval_batch_size)?,
            )]),
            None => Ok(Vec::new()),
        }
    }

    fn data_file(&self) -> Option<&Path> {
        Some(&self.data.path)
    }

    fn describe(&self) -> Value {
        json!({"kind": "reward", "data": canonical(&self.data.path)})
    }
}
