//! GGUF files as llama.cpp and gguf-py write them: a validating memory-mapped reader
//! ([`GgufFile`]) and a streaming writer ([`GgufWriter`]).
//!
//! Layout (v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 kv count,
//! the key/value metadata, the tensor infos, zero padding up to `general.alignment`, then the
//! data section, where each tensor's offset is relative to the section's start.

mod keys;
mod read;
pub mod split;
mod split_write;
mod write;

pub(crate) use keys::Keys;
pub use read::{GgufFile, Shard};
pub use split_write::{SplitWriter, parse_size, plan_shards};
pub use write::GgufWriter;

use crate::model::quant::GgmlType;

/// The alignment gguf-py and llama.cpp use when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// ggml's GGML_MAX_DIMS: a tensor has at most this many dimensions.
pub const MAX_DIMS: usize = 4;

/// On-disk value type ids (`enum gguf_type`).
pub(crate) mod vtype {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any number, integer or float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v as f64),
            MetaValue::I16(v) => Some(v as f64),
            MetaValue::I32(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            MetaValue::U8(v) => Some(v as f64),
            MetaValue::U16(v) => Some(v as f64),
            MetaValue::U32(v) => Some(v as f64),
            MetaValue::U64(v) => Some(v as f64),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The on-disk type id.
    pub(crate) fn type_id(&self) -> u32 {
        match self {
            MetaValue::U8(_) => vtype::U8,
            MetaValue::I8(_) => vtype::I8,
            MetaValue::U16(_) => vtype::U16,
            MetaValue::I16(_) => vtype::I16,
            MetaValue::U32(_) => vtype::U32,
            MetaValue::I32(_) => vtype::I32,
            MetaValue::F32(_) => vtype::F32,
            MetaValue::Bool(_) => vtype::BOOL,
            MetaValue::String(_) => vtype::STRING,
            MetaValue::Array(_) => vtype::ARRAY,
            MetaValue::U64(_) => vtype::U64,
            MetaValue::I64(_) => vtype::I64,
            MetaValue::F64(_) => vtype::F64,
        }
    }

    /// The gguf type name (`u32`, `string`, `array`, ...), for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::F32(_) => "f32",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F64(_) => "f64",
        }
    }
}

/// One tensor's entry in the tensor-info table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the row length (numpy's shape reversed).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Relative to the start of its shard's data section.
    pub offset: u64,
    pub nbytes: u64,
    /// The file holding the data: an index into [`GgufFile::shards`] (0 unless split).
    pub shard: usize,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // validated at open to fit; saturating keeps hand-built infos from panicking
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }

    /// Values per row (`dims[0]`; 1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.dims
            .first()
            .map_or(1, |&d| usize::try_from(d).unwrap_or(usize::MAX))
    }

    /// Number of rows: the product of all dims but the first.
    pub fn n_rows(&self) -> usize {
        let rows = self
            .dims
            .iter()
            .skip(1)
            .fold(1u64, |a, &d| a.saturating_mul(d));
        usize::try_from(rows).unwrap_or(usize::MAX)
    }
}

/// Round `x` up to a multiple of `align` (a power of two); `None` on overflow.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    x.checked_add(align - 1).map(|v| v & !(align - 1))
}
