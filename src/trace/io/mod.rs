//! Reading and writing traces: safetensors trace files (ours), and for engines that are not
//! ours, directories of `{key}.npy` files and APRT dumps.

pub mod aprt;
pub mod npy;
pub mod safetensors;
pub mod source;

pub use self::safetensors::{TraceFile, read_trace, write_trace};
pub use self::source::{SourceFormat, TraceSource, open_source};
