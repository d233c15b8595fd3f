use std::path::PathBuf;

/// Errors of the demo. Each names what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {msg}")]
    Json { path: PathBuf, msg: String },
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Model(#[from] unireward_models::Error),
    /// A step's input is missing or does not fit (run the earlier step first).
    #[error("{0}")]
    Missing(String),
    /// A tool (trainer, export, engine) failed or could not be started.
    #[error("{tool}: {msg}")]
    Tool { tool: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Tensor(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn json(path: impl Into<PathBuf>, e: impl std::fmt::Display) -> Self {
        Error::Json {
            path: path.into(),
            msg: e.to_string(),
        }
    }
}
