//! The crate's one error type; the binary wraps it in `anyhow` context.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidValue {
        what: &'static str,
        value: String,
        reason: String,
    },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: the file system refuses O_DIRECT (EINVAL); run without --direct, \
         or point the run at a file system that supports direct IO"
    )]
    DirectUnsupported { path: PathBuf },
    #[error("{path}:{line}:{column}: {message}")]
    SloParse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("reading /proc/{pid}/stat: {reason}")]
    ProcStat { pid: u32, reason: String },
    #[error("merging latency histograms: {0}")]
    Histogram(String),
    #[error("compare: {0}")]
    Compare(String),
    #[error("plotting {0}")]
    Plot(String),
    #[error("writing report: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        what: &'static str,
        value: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self::InvalidValue {
            what,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
