//! The file formats that cross crates, each defined once as serde types and both written and
//! read through them: a rename is then a compile error, not a run-time surprise.

pub mod export_manifest;
pub mod logprob_record;
pub mod pair_record;
pub mod pairs_request;
pub mod record;
pub mod score_record;
