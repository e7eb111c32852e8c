//! The library's error type. Every error says what went wrong and where (file, byte offset,
//! tensor, contract line), and carries a kind that maps onto the CLI's exit codes.

use std::fmt;
use std::path::Path;

/// What class of failure this is; decides the exit code (all are 2: bad input or internal error,
/// while a divergence is a result, not an error) and how the runner reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed or inconsistent input: a truncated GGUF, an unknown block type, a bad contract.
    Input,
    /// The operating system refused a read or write.
    Io,
    /// No CUDA driver or device: a clean outcome for GPU checks, never a crash.
    NoDevice,
    /// A bug or a failed device call.
    Internal,
}

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    msg: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, msg: impl Into<String>) -> Error {
        Error {
            kind,
            msg: msg.into(),
        }
    }

    /// Bad input; `msg` must name the file and the place.
    pub fn input(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Input, msg)
    }

    pub fn internal(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, msg)
    }

    pub fn no_device(msg: impl Into<String>) -> Error {
        Error::new(ErrorKind::NoDevice, msg)
    }

    /// An I/O error on `path`.
    pub fn io(path: &Path, what: &str, err: std::io::Error) -> Error {
        Error::new(ErrorKind::Io, format!("{}: {what}: {err}", path.display()))
    }

    /// Prefix the message with more context (`context: message`), keeping the kind.
    pub fn context(self, ctx: impl fmt::Display) -> Error {
        Error {
            kind: self.kind,
            msg: format!("{ctx}: {}", self.msg),
        }
    }

    pub fn message(&self) -> &str {
        &self.msg
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

/// Add context to any `Result<_, Error>`.
pub trait ResultExt<T> {
    fn context(self, ctx: impl fmt::Display) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn context(self, ctx: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(ctx))
    }
}
