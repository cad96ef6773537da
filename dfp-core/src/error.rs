//! Typed errors of the runtime.
//!
//! Three layers, matching when the problem is found: [`ConfigError`] while a stage's configuration is
//! checked (the spec layer adds file and line), [`StageError`] while a stage runs, and [`RunError`] for a
//! whole run (it names the stage that failed).

use std::any::Any;
use std::path::PathBuf;

/// The message a panic was raised with (`panic!("…")` gives a `&str` or a `String`), if it had one.
pub fn panic_message(payload: &(dyn Any + Send)) -> Option<String> {
    payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned())
}

/// A stage configuration that cannot be accepted.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{message}")]
pub struct ConfigError {
    /// The configuration field at fault, when one is (`path`, `columns[2]`).
    pub field: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl ConfigError {
    /// An error about the configuration as a whole.
    pub fn new(message: impl Into<String>) -> Self {
        Self { field: None, message: message.into() }
    }

    /// An error about one field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), message: message.into() }
    }
}

/// A failure of a stage while it runs. The runtime stops the pipeline and reports it with the stage id.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An Arrow operation failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// The data does not fit what the stage was configured for (a missing column, a wrong type).
    #[error("{0}")]
    Data(String),
    /// The stage cannot run in this context (for example an embedded input outside an embedding program).
    #[error("{0}")]
    Unsupported(String),
    /// A model registry (or another remote service) could not be reached or answered with an error.
    #[error("{0}")]
    Registry(String),
    /// The stage panicked; the panic was caught.
    #[error("panicked: {0}")]
    Panic(String),
    /// Any other failure.
    #[error("{0}")]
    Other(String),
}

impl StageError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StageError::Io { path: path.into(), source }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A stage failed; the pipeline was stopped.
    #[error("stage \"{stage}\" failed: {error}")]
    Stage {
        /// The stage id from the YAML.
        stage: String,
        /// What went wrong (part of the message, so not also a `source()`: printed once in error chains).
        error: StageError,
    },
    /// The timely runtime could not start or a worker died.
    #[error("runtime: {0}")]
    Runtime(String),
    /// The cluster could not form, refused a process, or lost one.
    #[error("cluster: {0}")]
    Cluster(String),
}
