//! The driver's errors and their gRPC status codes (the CSI spec says
//! which code each failure gets; the CO retries or gives up by the code).

use std::path::PathBuf;

/// Errors of the CSI driver.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or a field is malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume (or the path) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The volume exists with other parameters, or another volume is
    /// staged or published at the path.
    #[error("{0}")]
    AlreadyExists(String),
    /// Another operation on the same volume is in flight, or a pagination
    /// token is not one this driver gave out.
    #[error("{0}")]
    Aborted(String),
    /// The capacity range cannot be met.
    #[error("{0}")]
    OutOfRange(String),
    /// The request comes in the wrong order (publish before stage) or the
    /// namespace holds something the driver did not make.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The node's DatenLord mount is not there and cannot be brought up.
    #[error("{0}")]
    Unavailable(String),
    /// A file system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CSI socket could not be served.
    #[error("serving the CSI socket {path}: {message}")]
    Serve {
        /// The socket.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The driver's result.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A mapper of `io::Error` into [`Error::Io`] with what was done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::Aborted(_) => tonic::Code::Aborted,
            Self::OutOfRange(_) => tonic::Code::OutOfRange,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            // A FUSE mount whose daemon is gone answers ENOTCONN: the CO
            // retries once the mount is back.
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTCONN) => {
                tonic::Code::Unavailable
            }
            Self::Io { .. } | Self::Serve { .. } => tonic::Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        Self::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_mount_is_unavailable_other_io_errors_internal() {
        let dead = Error::io("stat /x")(std::io::Error::from_raw_os_error(libc::ENOTCONN));
        assert_eq!(dead.code(), tonic::Code::Unavailable);
        let other = Error::io("stat /x")(std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(other.code(), tonic::Code::Internal);
        let status = tonic::Status::from(Error::NotFound("volume v".into()));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "volume v");
    }
}
