//! Reading and writing traces: safetensors trace files (ours), and for engines that are not
//! ours, directories of `{key}.npy` files and APRT dumps.

pub mod safetensors;

pub use self::safetensors::{TraceFile, read_trace, write_trace};
