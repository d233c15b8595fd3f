//! `demo init-models`: learns the tokenizer's merges and writes the randomly initialised
//! judge and answer-model checkpoints.

use crate::checkpoint::write_random;
use crate::corpus::corpus;
use crate::error::Result;
use crate::run_dir::RunDir;
use crate::settings::Settings;
use crate::tokenizer::{save, train};

pub fn run(dir: &RunDir, settings: &Settings) -> Result<()> {
    let tokenizer = train(&corpus()?, settings.tokenizer_vocab)?;
    save(&tokenizer, &dir.tokenizer())?;
    let seed = settings.world.seed;
    write_random(&dir.judge_init(), &settings.judge_model, &tokenizer, seed)?;
    write_random(
        &dir.answer_init(),
        &settings.answer_model,
        &tokenizer,
        seed.wrapping_add(1),
    )?;
    tracing::info!(
        "demo init-models: tokenizer of {} tokens; random checkpoints in {} and {}",
        tokenizer.get_vocab_size(true),
        dir.judge_init().display(),
        dir.answer_init().display()
    );
    Ok(())
}
