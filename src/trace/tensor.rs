//! Captured tensors: owned (what a backend produces) and borrowed (what a reader maps).

use std::borrow::Cow;

/// Data of a captured tensor. Stages are f32 except `tokens` and `topk_ids` (i32).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// An owned, row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    pub fn i32(shape: Vec<usize>, data: Vec<i32>) -> Tensor {
        debug_assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?}"
        );
        Tensor {
            shape,
            data: TensorData::I32(data),
        }
    }

    pub fn len(&self) -> usize {
        match &self.data {
            TensorData::F32(v) => v.len(),
            TensorData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(v) => Some(v),
            TensorData::I32(_) => None,
        }
    }

    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            TensorData::I32(v) => Some(v),
            TensorData::F32(_) => None,
        }
    }

    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: Some(Cow::Borrowed(&self.shape)),
            data: match &self.data {
                TensorData::F32(v) => ViewData::F32(Cow::Borrowed(v)),
                TensorData::I32(v) => ViewData::I32(Cow::Borrowed(v)),
            },
        }
    }

    /// Little-endian bytes of the data (the on-disk layout of safetensors, npy and APRT).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            TensorData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            TensorData::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Data of a borrowed tensor: zero-copy where the source was aligned, owned otherwise.
#[derive(Clone, Debug)]
pub enum ViewData<'a> {
    F32(Cow<'a, [f32]>),
    I32(Cow<'a, [i32]>),
}

/// A tensor as read from a trace source. `shape` is `None` when the source carries none
/// (APRT dumps hold only an element count).
#[derive(Clone, Debug)]
pub struct TensorView<'a> {
    pub shape: Option<Cow<'a, [usize]>>,
    pub data: ViewData<'a>,
}

impl TensorView<'_> {
    pub fn len(&self) -> usize {
        match &self.data {
            ViewData::F32(v) => v.len(),
            ViewData::I32(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn to_owned_tensor(&self) -> Tensor {
        let shape = match &self.shape {
            Some(s) => s.to_vec(),
            None => vec![self.len()],
        };
        match &self.data {
            ViewData::F32(v) => Tensor::f32(shape, v.to_vec()),
            ViewData::I32(v) => Tensor::i32(shape, v.to_vec()),
        }
    }
}

/// Reinterpret little-endian bytes as f32 without copying when the slice is 4-byte aligned
/// (memory maps are page aligned, and safetensors/APRT payloads are 4-byte aligned in practice);
/// otherwise decode into an owned vector. `bytes.len()` must be a multiple of 4.
pub fn f32_from_le_bytes(bytes: &[u8]) -> Cow<'_, [f32]> {
    debug_assert_eq!(bytes.len() % 4, 0);
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid f32, and align_to only yields the aligned middle.
        let (head, mid, tail) = unsafe { bytes.align_to::<f32>() };
        if head.is_empty() && tail.is_empty() {
            return Cow::Borrowed(mid);
        }
    }
    Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

/// Same as [`f32_from_le_bytes`] for i32.
pub fn i32_from_le_bytes(bytes: &[u8]) -> Cow<'_, [i32]> {
    debug_assert_eq!(bytes.len() % 4, 0);
    #[cfg(target_endian = "little")]
    {
        // SAFETY: every bit pattern is a valid i32, and align_to only yields the aligned middle.
        let (head, mid, tail) = unsafe { bytes.align_to::<i32>() };
        if head.is_empty() && tail.is_empty() {
            return Cow::Borrowed(mid);
        }
    }
    Cow::Owned(
        bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn le_bytes_zero_copy_when_aligned() {
        let t = Tensor::f32(vec![2, 2], vec![1.0, -2.5, f32::NAN, 0.0]);
        let bytes = t.to_le_bytes();
        let back = f32_from_le_bytes(&bytes);
        assert_eq!(back.len(), 4);
        assert_eq!(back[1], -2.5);
        assert!(back[2].is_nan());
        // misaligned input still decodes
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let back = f32_from_le_bytes(&shifted[1..]);
        assert!(matches!(back, Cow::Owned(_)));
        assert_eq!(back[1], -2.5);
    }
}
