//! The prompt passes of many fast judgements, as few and as full as they can be: consecutive
//! judgements whose prompts begin with the same [`MIN_SHARED`] rows or more run that beginning
//! once ([`continuations_of_families`]); prompts run in batches of similar lengths within the
//! token budget ([`similar_length_batches`]). Each verdict is the one [`Judge::judge_with`]
//! gives, up to the float rounding of batched matrix products.

use candle_core::{DType, Tensor};
use unireward_models::judge::sift_templates::AnswerForm;

use crate::decoding::{
    continuations_of_families, similar_length_batches, Continuation, PromptFamily,
};
use crate::error::{EngineError, Result};
use crate::judge::fast::{self, Plan};
use crate::judge::{Judge, JudgeItem, JudgeMode, Outcome};

/// Rows two prompts must share for their beginning to run once: below that a decoder call of
/// its own costs more than the rows it saves.
pub const MIN_SHARED: usize = 128;

/// A judgement ready for its prompt pass.
struct Ready {
    item: usize,
    embeds: Tensor,
    plan: Plan,
}

/// Judges `items` (each answering as `forms` says), one result per item, in order.
pub fn judge_all(
    judge: &Judge,
    items: &[JudgeItem],
    forms: &[AnswerForm],
    token_budget: usize,
) -> Vec<Result<Outcome>> {
    if forms.len() != items.len() {
        return items
            .iter()
            .map(|_| Err(EngineError::Invalid("one answer form per judgement".into())))
            .collect();
    }
    if judge.mode == JudgeMode::Generate {
        return items
            .iter()
            .zip(forms)
            .map(|(it, form)| judge.judge_with(form, it.task, it.mode, &it.prompt_text, it.media))
            .collect();
    }
    let mut results: Vec<Option<Result<Outcome>>> = items.iter().map(|_| None).collect();
    let mut ready = Vec::new();
    let mut rows = Vec::new();
    for (i, (it, form)) in items.iter().zip(forms).enumerate() {
        let prepared = judge.fast_pass(form, it).and_then(|(embeds, plan)| {
            let host = embeds.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            Ok((embeds, plan, host))
        });
        match prepared {
            Ok((embeds, plan, host)) => {
                ready.push(Ready {
                    item: i,
                    embeds,
                    plan,
                });
                rows.push(host);
            }
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    let (groups, singles) = sharing_groups(&rows);
    // A run of prompts sharing a beginning is a family: its first runs whole, the others after
    // the first's cache of the beginning; a prompt sharing none is a family of its own.
    let mut families: Vec<(usize, Vec<usize>)> = groups;
    families.extend(singles.into_iter().map(|k| (rows[k].len(), vec![k])));
    let lens: Vec<usize> = families.iter().map(|(_, m)| rows[m[0]].len()).collect();
    let per_call = judge.decoder.limits().batch();
    for call in similar_length_batches(&lens, token_budget, per_call) {
        let batch: Vec<&(usize, Vec<usize>)> = call.iter().map(|&f| &families[f]).collect();
        let members: Vec<&Ready> = batch
            .iter()
            .flat_map(|(_, m)| m.iter().map(|&k| &ready[k]))
            .collect();
        let done = batch
            .iter()
            .map(|(shared, m)| family(&ready, *shared, m))
            .collect::<Result<Vec<_>>>()
            .and_then(|fams| continuations_of_families(judge.decoder, &fams, token_budget))
            .map(|scored| scored.into_iter().flatten().collect());
        settle(judge, &members, done, &mut results);
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(EngineError::Invalid("not judged".into()))))
        .collect()
}

/// The family of `members` (the first whole, the others after their first `shared` rows).
fn family(ready: &[Ready], shared: usize, members: &[usize]) -> Result<PromptFamily> {
    let first = &ready[members[0]];
    let followers = members[1..]
        .iter()
        .map(|&k| {
            let r = &ready[k];
            let len = r.embeds.dim(0)?;
            Ok((
                r.embeds.narrow(0, shared, len - shared)?,
                r.plan.continuations.clone(),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PromptFamily {
        prompt: first.embeds.clone(),
        continuations: first.plan.continuations.clone(),
        shared,
        followers,
    })
}

/// Each judgement's verdict from its scored continuations, or the call's failure for all.
fn settle(
    judge: &Judge,
    group: &[&Ready],
    done: Result<Vec<Vec<Continuation>>>,
    results: &mut [Option<Result<Outcome>>],
) {
    match done {
        Ok(scored) => {
            for (r, s) in group.iter().zip(scored) {
                results[r.item] = Some(fast::reduce(judge, &r.plan, &s));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            for r in group {
                results[r.item] = Some(Err(EngineError::Invalid(msg.clone())));
            }
        }
    }
}

/// Rows `a` and `b` begin with alike (bit for bit).
fn common_rows(a: &[Vec<f32>], b: &[Vec<f32>]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| {
            x.len() == y.len()
                && x.iter()
                    .zip(y.iter())
                    .all(|(p, q)| p.to_bits() == q.to_bits())
        })
        .count()
}

/// Runs of consecutive prompts (by their embedding rows) that share at least [`MIN_SHARED`]
/// rows with the run's first, each with the rows all of them share (leaving each at least one
/// row of its own, whose log-probabilities its continuations start from); and the prompts in
/// no such run.
fn sharing_groups(rows: &[Vec<Vec<f32>>]) -> (Vec<(usize, Vec<usize>)>, Vec<usize>) {
    let mut groups = Vec::new();
    let mut singles = Vec::new();
    let mut close = |shared: usize, members: Vec<usize>| {
        if members.len() > 1 {
            groups.push((shared, members));
        } else {
            singles.extend(members);
        }
    };
    let mut members: Vec<usize> = Vec::new();
    let mut shared = 0;
    for (k, r) in rows.iter().enumerate() {
        let own = r.len().saturating_sub(1);
        if let Some(&first) = members.first() {
            let with_first = common_rows(&rows[first], r).min(own).min(shared);
            if with_first >= MIN_SHARED {
                members.push(k);
                shared = with_first;
                continue;
            }
            close(shared, std::mem::take(&mut members));
        }
        members.push(k);
        shared = own;
    }
    if !members.is_empty() {
        close(shared, members);
    }
    (groups, singles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(rows: &[f32]) -> Vec<Vec<f32>> {
        rows.iter().map(|&x| vec![x, 0.5]).collect()
    }

    #[test]
    fn prompts_sharing_a_long_beginning_group_and_others_stay_single() {
        let long = |tail: &[f32]| {
            let mut r = vec![1.0; MIN_SHARED + 10];
            r.extend_from_slice(tail);
            prompt(&r)
        };
        let rows = vec![
            long(&[2.0, 3.0]),
            long(&[4.0]),
            prompt(&[9.0; 300]),
            long(&[5.0]),
            prompt(&[1.0; 50]),
        ];
        let (groups, singles) = sharing_groups(&rows);
        assert_eq!(groups, vec![(MIN_SHARED + 10, vec![0, 1])]);
        // The fourth shares with the first but is not next to it; the last shares too little.
        assert_eq!(singles, vec![2, 3, 4]);
    }

    #[test]
    fn a_prompt_that_is_the_whole_shared_beginning_keeps_a_row_of_its_own() {
        let rows = vec![prompt(&[1.0; 200]), prompt(&[1.0; 300])];
        let (groups, singles) = sharing_groups(&rows);
        assert_eq!(groups, vec![(199, vec![0, 1])]);
        assert!(singles.is_empty());
    }
}
