//! Capture of planned stages: asynchronous device-to-host copies into one pinned host arena,
//! queued on the forward's stream right after each stage is final, and read back after the one
//! synchronisation at the end of the forward, by all host cores at once.
//!
//! The arena is sized up front from the plan (every stage's shape is known from the model and
//! the prompt length) and kept by the backend between forwards, so a traced forward allocates
//! pinned memory at most once. A forward with an empty plan never touches it.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUDA_MEMCPY2D, CUmemorytype};
use cudarc::driver::{CudaContext, CudaSlice, DevicePtr, PinnedHostSlice};
use rayon::prelude::*;

use super::device::Device;
use crate::backend::rows::StepRows;
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
    /// Index into `items` by key: the steps of a schedule copy their rows into one item.
    index: BTreeMap<Key, usize>,
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
            index: BTreeMap::new(),
        })
    }

    /// Queue the copy of one step's rows of `key` (`[outer, rows, inner]` at the start of
    /// `src`) into rows `start..` of the whole prompt's tensor (`shape`, `t` positions). The
    /// first step to copy a key reserves the whole tensor; the steps of a schedule tile the
    /// prompt, so each of its values is written by exactly one copy.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_rows<T>(
        &mut self,
        dev: &Device,
        key: Key,
        shape: Vec<usize>,
        rows: StepRows,
        t: usize,
        start: usize,
        src: &CudaSlice<T>,
    ) -> Result<()> {
        let whole: usize = shape.iter().product();
        let bad = |why: String| Error::internal(format!("capture of {key}: {why}"));
        if std::mem::size_of::<T>() != 4 || rows.len() > src.len() {
            return Err(bad(format!(
                "{} values do not fit the buffer of {}",
                rows.len(),
                src.len()
            )));
        }
        if rows.outer * t * rows.inner != whole || start + rows.rows > t {
            return Err(bad(format!(
                "rows {start}..{} of {t} do not fit {shape:?}",
                start + rows.rows
            )));
        }
        let at = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                if self.used + whole > self.cap {
                    return Err(bad(format!(
                        "{whole} values do not fit the arena ({} of {} used)",
                        self.used, self.cap
                    )));
                }
                self.items.push(Item {
                    key,
                    dtype: key.stage.dtype(),
                    shape,
                    off: self.used,
                    len: whole,
                });
                self.used += whole;
                self.index.insert(key, self.items.len() - 1);
                self.items.len() - 1
            }
        };
        if rows.is_empty() {
            return Ok(());
        }
        let off = self.items[at].off;
        let (ptr, _sync) = src.device_ptr(&dev.stream);
        let block = rows.rows * rows.inner;
        // contiguous in the whole tensor: one copy (the full forward, and [T, ..] stages)
        let contiguous = rows.outer == 1 || rows.rows == t;
        let base = self.base;
        dev.timed("copy to host", &key.to_string(), || {
            if contiguous {
                let n = rows.len();
                let dst_at = off + rows.whole_offset(t, start, 0);
                // SAFETY: [dst_at, dst_at + n) lies inside this item's region of the arena
                // (checked above), nothing else refers to it, and it is read only after the
                // stream is synchronised; `src` holds at least n 4-byte values.
                let dst = unsafe { std::slice::from_raw_parts_mut(base.add(dst_at), n) };
                // SAFETY: ordered on the stream after the kernel that wrote `src`.
                return unsafe {
                    cudarc::driver::result::memcpy_dtoh_async(dst, ptr, dev.stream.cu_stream())
                }
                .map_err(|e| bad(format!("{e:?}")));
            }
            // strided (a step's query rows of attn_probs [nh, T, T]): `outer` blocks of
            // `block` values, `t * inner` apart in the whole tensor
            let words = |n: usize| n * 4;
            if words(t * rows.inner) > i32::MAX as usize {
                // past the driver's largest 2D pitch (T > 23170 for attn_probs): a copy a block
                for o in 0..rows.outer {
                    let dst_at = off + rows.whole_offset(t, start, o);
                    // SAFETY: as above, block `o` of the step inside this item's region.
                    let dst = unsafe { std::slice::from_raw_parts_mut(base.add(dst_at), block) };
                    let src_at = ptr + (words(o * block) as u64);
                    // SAFETY: `src` holds `outer * block` values; ordered on the stream.
                    unsafe {
                        cudarc::driver::result::memcpy_dtoh_async(
                            dst,
                            src_at,
                            dev.stream.cu_stream(),
                        )
                    }
                    .map_err(|e| bad(format!("{e:?}")))?;
                }
                return Ok(());
            }
            let copy = CUDA_MEMCPY2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: CUmemorytype::CU_MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: ptr,
                srcArray: std::ptr::null_mut(),
                srcPitch: words(block),
                dstXInBytes: 0,
                dstY: 0,
                dstMemoryType: CUmemorytype::CU_MEMORYTYPE_HOST,
                // SAFETY: inside this item's region (offsets checked above)
                dstHost: unsafe { base.add(off + rows.whole_offset(t, start, 0)) }.cast(),
                dstDevice: 0,
                dstArray: std::ptr::null_mut(),
                dstPitch: words(t * rows.inner),
                WidthInBytes: words(block),
                Height: rows.outer,
            };
            // SAFETY: the descriptor names live memory: `outer` rows of `block` values on
            // both sides, the host rows inside this item's region.
            let r =
                unsafe { cudarc::driver::sys::cuMemcpy2DAsync_v2(&copy, dev.stream.cu_stream()) };
            if r == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                Ok(())
            } else {
                Err(bad(format!("strided copy: {r:?}")))
            }
        })
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
