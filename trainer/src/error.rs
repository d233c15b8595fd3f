use std::path::PathBuf;

/// Errors of the trainer. Each names what failed and where: the file and line of a bad
/// record, the record id whose media would not load, the step whose loss went non-finite.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: record {record}: {msg}")]
    Data {
        path: PathBuf,
        /// 1-based line (JSONL) or array position (JSON).
        record: usize,
        msg: String,
    },
    #[error("record {id:?}: {msg}")]
    Record { id: String, msg: String },
    #[error("{0}")]
    Config(String),
    #[error("resume: {0}")]
    Resume(String),
    #[error(
        "step {step}: the {what} is {value}, not finite; stopped before updating the weights \
         ({})",
        match last_checkpoint {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written yet".to_string(),
        }
    )]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error(transparent)]
    Model(#[from] unireward_models::Error),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn record(id: impl Into<String>, msg: impl ToString) -> Self {
        Error::Record {
            id: id.into(),
            msg: msg.to_string(),
        }
    }
}
