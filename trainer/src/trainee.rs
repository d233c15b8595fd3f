//! What the training loop trains: the model an objective runs, the variables the optimizer
//! updates, and how the trained state is written into a checkpoint and read back. The judge
//! ([`crate::varmap_model::VarMapModel`]) and a diffusion UNet
//! ([`crate::unet_trainee::UNetTrainee`]) are both trainees of the one loop.

use std::path::Path;

use candle_core::{Device, Var};
use serde_json::Value;
use unireward_models::decode::checkpointing::Checkpointing;

use crate::memory_estimate::{MemoryEstimate, StepShape};
use crate::Result;

pub trait Trainee {
    /// What an objective's forward runs.
    type Model: ?Sized;

    fn model(&self) -> &Self::Model;

    fn device(&self) -> &Device;

    /// The variables the optimizer updates, by name (stable across runs: the optimizer's
    /// moments are saved under these names).
    fn trained_vars(&self) -> Result<Vec<(String, Var)>>;

    /// Layers recomputed in backward, when gradient checkpointing is on.
    fn checkpointing(&self) -> Option<&Checkpointing> {
        None
    }

    /// What a resumed run must share with the run that wrote the checkpoint (dtype, trained
    /// parts, adapter settings).
    fn settings(&self) -> Value;

    /// The step's memory, when the trainee can estimate it for micro-batches of `shape`.
    fn memory_estimate(&self, shape: StepShape) -> Result<Option<MemoryEstimate>>;

    /// Writes what training produced (weights or adapter, with the source's other files)
    /// into `dir`, which exists.
    fn write_trained(&self, source_dir: &Path, dir: &Path) -> Result<()>;

    /// Restores the trained state [`Self::write_trained`] wrote into `dir`.
    fn restore(&mut self, dir: &Path) -> Result<()>;
}
