//! Capture of planned stages: asynchronous device-to-host copies into one pinned host arena,
//! queued on the forward's stream right after each stage is final, and read back after the one
//! synchronisation at the end of the forward, by all host cores at once.
//!
//! The arena is sized up front from the plan (every stage's shape is known from the model and
//! the prompt length) and kept by the backend between forwards, so a traced forward allocates
//! pinned memory at most once. A forward with an empty plan never touches it.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaSlice, DevicePtr, PinnedHostSlice};
use rayon::prelude::*;

use super::device::Device;
use crate::error::{Error, Result};
use crate::trace::stage::{Key, StageDtype};
use crate::trace::tensor::Tensor;

/// Pinned host memory reused across forwards.
#[derive(Default)]
pub struct Arena {
    buf: Option<PinnedHostSlice<f32>>,
}

impl Arena {
    /// A host region of at least `n` words, growing the arena when needed.
    fn ensure(&mut self, ctx: &Arc<CudaContext>, n: usize) -> Result<*mut f32> {
        let fits = self.buf.as_ref().is_some_and(|b| b.len() >= n);
        if !fits {
            self.buf = None;
            // SAFETY: the memory is only read after the device has written it (after the
            // forward's synchronisation); flags 0 = plain page-locked memory, cached for reads.
            let b = unsafe { ctx.alloc_pinned_with_flags::<f32>(n.max(1), 0) }.map_err(|e| {
                Error::internal(format!(
                    "CUDA: cannot allocate {n} words of pinned host memory: {e:?}"
                ))
            })?;
            self.buf = Some(b);
        }
        let buf = self
            .buf
            .as_mut()
            .ok_or_else(|| Error::internal("pinned arena missing"))?;
        buf.as_mut_ptr()
            .map_err(|e| Error::internal(format!("CUDA: pinned arena: {e:?}")))
    }
}

struct Item {
    key: Key,
    shape: Vec<usize>,
    dtype: StageDtype,
    off: usize,
    len: usize,
}

/// The captures of one forward.
pub struct Capture {
    base: *mut f32,
    cap: usize,
    used: usize,
    items: Vec<Item>,
}

impl Capture {
    /// Reserve room for `words` 4-byte values (the sum of all planned stages' sizes).
    pub fn new(arena: &mut Arena, ctx: &Arc<CudaContext>, words: usize) -> Result<Capture> {
        let base = if words == 0 {
            std::ptr::null_mut()
        } else {
            arena.ensure(ctx, words)?
        };
        Ok(Capture {
            base,
            cap: words,
            used: 0,
            items: Vec::new(),
        })
    }

    /// Queue the copy of the first `len` elements of `src` (f32 or i32) as `key`.
    pub fn copy<T>(
        &mut self,
        dev: &Device,
        key: Key,
        shape: Vec<usize>,
        src: &CudaSlice<T>,
    ) -> Result<()> {
        let len: usize = shape.iter().product();
        if std::mem::size_of::<T>() != 4 || len > src.len() || self.used + len > self.cap {
            return Err(Error::internal(format!(
                "capture of {key}: {len} values do not fit (buffer {}, arena {} of {} used)",
                src.len(),
                self.used,
                self.cap
            )));
        }
        let dtype = key.stage.dtype();
        if len > 0 {
            // SAFETY: [used, used + len) lies inside the arena (checked above), no other
            // reference to it exists, and it is read only after the stream is synchronised.
            let dst = unsafe { std::slice::from_raw_parts_mut(self.base.add(self.used), len) };
            let (ptr, _sync) = src.device_ptr(&dev.stream);
            dev.timed("copy to host", &key.to_string(), || {
                // SAFETY: `src` holds at least `len` 4-byte values; the copy is ordered on the
                // stream after the kernel that wrote them.
                unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(dst, ptr, dev.stream.cu_stream())
                }
                .map_err(|e| Error::internal(format!("CUDA: capture copy of {key}: {e:?}")))
            })?;
        }
        self.items.push(Item {
            key,
            shape,
            dtype,
            off: self.used,
            len,
        });
        self.used += len;
        Ok(())
    }

    /// The captured tensors. Call only after the stream has been synchronised.
    pub fn collect(self) -> Vec<(Key, Tensor)> {
        let words: &[f32] = if self.used == 0 {
            &[]
        } else {
            // SAFETY: the arena holds `cap >= used` initialised words once the copies completed.
            unsafe { std::slice::from_raw_parts(self.base, self.used) }
        };
        // the copies out of the pinned arena into fresh vectors are page-fault bound (tens of
        // MB a layer at long prompts, hundreds for the logits): spread them over the host's
        // cores, large tensors in slices, so that one big stage does not serialise the rest
        self.items
            .into_par_iter()
            .map(|it| {
                let w = &words[it.off..it.off + it.len];
                let t = match it.dtype {
                    StageDtype::F32 => Tensor::f32(it.shape, parallel_copy(w)),
                    StageDtype::I32 => {
                        Tensor::i32(it.shape, w.iter().map(|v| v.to_bits() as i32).collect())
                    }
                };
                (it.key, t)
            })
            .collect()
    }
}

/// `src.to_vec()`, in slices over the host's cores. The zeroed vector comes from fresh pages
/// that are only faulted in by the copy, so the faults are spread too.
fn parallel_copy(src: &[f32]) -> Vec<f32> {
    const SLICE: usize = 1 << 18; // 1 MiB
    if src.len() <= SLICE {
        return src.to_vec();
    }
    let mut dst = vec![0f32; src.len()];
    dst.par_chunks_mut(SLICE)
        .zip(src.par_chunks(SLICE))
        .for_each(|(d, s)| d.copy_from_slice(s));
    dst
}

#[cfg(test)]
mod tests {
    #[test]
    fn parallel_copy_copies_every_value() {
        for n in [0, 5, (1 << 18) + 3, 3 << 18] {
            let src: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            assert_eq!(super::parallel_copy(&src), src, "{n} values");
        }
    }
}
