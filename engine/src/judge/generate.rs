//! Generate mode: greedy decoding with the rationale kept; the verdict parsed from the text
//! as the reference scripts do. An answer without a verdict is an error on the record.

use candle_core::Tensor;
use unireward_models::judge::{parse_pair, parse_score, Mode, PairProbs, PointScore, Task};

use super::{Judge, Outcome};
use crate::decoding::Decoding;
use crate::error::{EngineError, Result};

pub fn judge(judge: &Judge, task: Task, mode: Mode, embeds: &Tensor) -> Result<Outcome> {
    let mut stop: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| judge.tokenizer.token_id(t))
        .collect();
    stop.extend(judge.backend.config().text.eos_token_id);
    let ids = judge
        .backend
        .generate(embeds, judge.max_new_tokens, &stop)?;
    let text = judge.tokenizer.decode(&ids)?;
    let parse_err = |e: unireward_models::judge::ParseError| EngineError::Invalid(e.to_string());
    match mode {
        Mode::Pair => {
            let verdict = parse_pair(judge.style.family, task, &text).map_err(parse_err)?;
            Ok(Outcome::Pair {
                probs: PairProbs::certain(verdict),
                text: Some(text),
            })
        }
        Mode::Point => {
            let score = parse_score(&text).map_err(parse_err)?;
            Ok(Outcome::Point {
                score: PointScore {
                    expected: score,
                    argmax: score,
                },
                text: Some(text),
            })
        }
    }
}
