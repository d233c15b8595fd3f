//! `demo judge-data`: judge training data (LLaVA format), held-out training-format data for
//! the trainer's eval loss, and held-out score requests with their ground truth.

use serde_json::Value;

use crate::error::Result;
use unireward_models::judge::{Mode, Task};

use crate::jsonl;
use crate::judge_data::{
    all_judgements, batch_grouped, judgements, task_tag, TaskCount, Truth, CONTROL_ALIGNMENT,
    CONTROL_GROUNDING,
};
use crate::rng::Rng;
use crate::run_dir::RunDir;
use crate::settings::Settings;
use crate::world::store::{load, Split};

pub fn run(dir: &RunDir, settings: &Settings) -> Result<()> {
    let seed = settings.world.seed;
    let train_world = load(&dir.root, Split::JudgeTrain)?;
    let heldout_world = load(&dir.root, Split::JudgeHeldout)?;

    let mut rng = Rng::stream(seed, "judge-train");
    let train = all_judgements(
        &dir.root,
        &train_world,
        &settings.judge_train,
        "train",
        &mut rng,
    );
    let train = batch_grouped(train, settings.judge_training.batch_size, &mut rng);
    let records = train
        .iter()
        .map(|(id, s)| s.llava_record(id))
        .collect::<Result<Vec<Value>>>()?;
    jsonl::write(&dir.judge_train(), &records)?;

    let mut rng = Rng::stream(seed, "judge-eval-loss");
    let eval = all_judgements(
        &dir.root,
        &heldout_world,
        &settings.judge_eval_loss,
        "evalloss",
        &mut rng,
    );
    let records = eval
        .iter()
        .map(|(id, s)| s.llava_record(id))
        .collect::<Result<Vec<Value>>>()?;
    jsonl::write(&dir.judge_eval_loss(), &records)?;

    let mut rng = Rng::stream(seed, "judge-heldout");
    let heldout = all_judgements(
        &dir.root,
        &heldout_world,
        &settings.judge_heldout,
        "heldout",
        &mut rng,
    );
    let mut requests: Vec<Value> = heldout.iter().map(|(id, s)| s.score_request(id)).collect();
    let mut truth: Vec<Truth> = heldout.iter().map(|(id, s)| s.truth(id)).collect();
    // Control pairs: clean renderings (generation) and answers that leave nothing out
    // (understanding), so that only reading the caption against the image, or the answer
    // against the image, can tell the better one.
    for (task, name) in [
        (Task::ImageGeneration, CONTROL_ALIGNMENT),
        (Task::ImageUnderstanding, CONTROL_GROUNDING),
    ] {
        let tc = TaskCount {
            task,
            mode: Mode::Pair,
            count: settings.controls,
        };
        for (n, s) in judgements(&dir.root, &heldout_world, tc, true, &mut rng)
            .into_iter()
            .enumerate()
        {
            let id = format!("control-{}-{n:05}", task_tag(task, Mode::Pair));
            requests.push(s.score_request(&id));
            let mut t = s.truth(&id);
            t.control = Some(name.to_string());
            truth.push(t);
        }
    }
    jsonl::write(&dir.heldout_requests(), &requests)?;
    jsonl::write(&dir.heldout_truth(), &truth)?;
    tracing::info!(
        "demo judge-data: {} training records, {} eval-loss records, {} held-out requests",
        train.len(),
        eval.len(),
        heldout.len()
    );
    Ok(())
}
