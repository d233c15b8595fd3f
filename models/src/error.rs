use std::path::PathBuf;

/// Errors of the model library. Each names what failed and where, so that a binary can
/// report it on the record it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("image {path}: {msg}")]
    Image { path: PathBuf, msg: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("input: {0}")]
    Input(String),
    /// A request's media that cannot be shown as asked (the message says why).
    #[error("{0}")]
    Media(String),
    /// A `--device` that does not name a usable device (the message says why).
    #[error("device: {0}")]
    Device(String),
    /// The runtime that runs an exported model failed (ONNX Runtime's own message).
    #[error("backend: {0}")]
    Backend(String),
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
}
