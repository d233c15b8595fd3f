//! The demo's steps, each a `demo` subcommand over one run directory; `demo run` runs them
//! in order. A step reads what earlier steps left in the run directory and writes its own
//! artefacts and figures (`metrics/STEP.json`).

pub mod answer_model;
pub mod export_judge;
pub mod generator;
pub mod init_models;
pub mod judge_data;
pub mod pairs;
pub mod score_heldout;
pub mod train_judge;
pub mod world;
