//! Progress of a long library operation, reported through a callback so that the library draws
//! nothing: the CLI passes a [`Progress`] that draws a bar (`cli::progress::Bar`), tests and
//! other callers pass [`NoProgress`].

/// Told how a long operation advances. Every method has an empty default, so an implementation
/// takes only what it draws. `Send + Sync`, so that parallel work may report from any thread.
pub trait Progress: Send + Sync {
    /// The work ahead: `total` units (bytes, rows, ...), reported once before any
    /// [`Progress::advance`].
    fn start(&self, _total: u64) {}
    /// What is being worked on now (a tensor's name, a stage).
    fn message(&self, _what: &str) {}
    /// `n` more units are done.
    fn advance(&self, _n: u64) {}
    /// The operation ended (done, or given up on an error).
    fn finish(&self) {}
}

/// Reports nowhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
