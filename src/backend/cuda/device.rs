//! The CUDA device: probing for a driver and a card, compiling the kernels with NVRTC (once per
//! process and architecture), loading them, and launching them with errors that name the kernel
//! and the stage.
//!
//! cudarc loads libcuda and libnvrtc at run time and panics when they are absent, so
//! [`Device::open`] asks `is_culib_present` for both before touching anything else: a machine
//! without them gets `ErrorKind::NoDevice`, never a panic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::error::{Error, Result};

/// The kernels' CUDA C, compiled as one program. `common.cuh` first: the others use its types
/// and decoders.
const FILES: [&str; 5] = [
    "common.cuh",
    "matmul.cu",
    "ops.cu",
    "attention.cu",
    "moe.cu",
];
const SOURCES: [&str; 5] = [
    include_str!("kernels/common.cuh"),
    include_str!("kernels/matmul.cu"),
    include_str!("kernels/ops.cu"),
    include_str!("kernels/attention.cu"),
    include_str!("kernels/moe.cu"),
];

/// Every kernel the forward launches (loaded up front, so a missing one fails at open).
const KERNELS: &[&str] = &[
    "sum_splits",
    "rms_norm",
    "rope_table",
    "rope",
    "add",
    "silu_mul",
    "scale_inplace",
    "add_bias_rows",
    "sigmoid",
    "scale_rows",
    "accumulate",
    "set_nan",
    "round_q8_0",
    "attn_probs",
    "attn_ctx",
    "attn_tile_scores",
    "attn_softmax_rows",
    "attn_ctx_tiled",
    "softmax_rows",
    "topk",
    "moe_group",
    "moe_combine",
];

/// Block-type suffixes of the `matmul_*` and `gather_*` kernels.
pub const TYPE_SUFFIXES: &[&str] = &[
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k",
];

/// PTX per target architecture, compiled at most once per process.
fn ptx_cache() -> &'static Mutex<HashMap<String, String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The kernels' text: built in, or read from the directory `FALSIFIER_CUDA_KERNELS` names (for
/// kernel development on a GPU machine without rebuilding the binary).
fn kernel_source() -> Result<String> {
    match std::env::var_os("FALSIFIER_CUDA_KERNELS") {
        None => Ok(SOURCES.join("\n")),
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let mut parts = Vec::new();
            for f in FILES {
                let p = dir.join(f);
                parts.push(
                    std::fs::read_to_string(&p)
                        .map_err(|e| Error::io(&p, "reading a CUDA kernel source", e))?,
                );
            }
            Ok(parts.join("\n"))
        }
    }
}

/// Compile the kernels for `arch` (`compute_90` for an H100), or return the cached PTX.
fn compile(arch: &str) -> Result<String> {
    let mut cache = ptx_cache()
        .lock()
        .map_err(|_| Error::internal("NVRTC cache lock poisoned"))?;
    if let Some(ptx) = cache.get(arch) {
        return Ok(ptx.clone());
    }
    let src = kernel_source()?;
    let opts = CompileOptions {
        options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
        name: Some("falsifier_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(&src, opts)
        .map_err(|e| Error::internal(format!("NVRTC could not compile the kernels: {e}")))?
        .to_src();
    cache.insert(arch.to_string(), ptx.clone());
    Ok(ptx)
}

/// One kernel argument. Device pointers travel as raw `u64` addresses: every buffer lives until
/// the forward's final synchronisation, and all work runs on one stream, in order.
#[derive(Copy, Clone, Debug)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// A null pointer argument (optional inputs of a kernel).
pub const NULL: Arg = Arg::Ptr(0);

/// An opened device with its kernels loaded.
pub struct Device {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    funcs: HashMap<String, CudaFunction>,
    /// "NVIDIA H100 80GB HBM3, driver 13.0, compute capability 9.0"
    pub description: String,
    /// Multiprocessors on the card (132 on an H100 SXM): how many blocks fill it.
    pub sms: usize,
    /// Synchronise after every launch, so that an asynchronous fault names its kernel
    /// (`FALSIFIER_CUDA_SYNC=1`; slow, for debugging).
    sync_each: bool,
    /// Per-launch GPU time, when profiling (`FALSIFIER_CUDA_PROFILE=1` or [`Device::set_profiling`]).
    profile: Mutex<Option<Vec<Span>>>,
}

/// One timed launch or copy: two events around it on the stream.
struct Span {
    what: String,
    stage: String,
    start: CudaEvent,
    end: CudaEvent,
}

/// GPU time of one kind of work in a forward: a kernel (or "copy to host") at one stage, its
/// layer number folded (`layer.*.q_proj`), summed over the layers.
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    pub what: String,
    pub stage: String,
    pub calls: usize,
    pub ms: f64,
}

impl Device {
    /// Probe for a driver and a device, then compile and load the kernels: the fixed ones and
    /// `matmuls`, the matmul variants by name (`super::matmul::kernel_names`, passed in so that
    /// this module knows nothing of the matmul dispatch; [`super::open_device`] does it).
    pub fn open(ordinal: usize, matmuls: &[String]) -> Result<Device> {
        // SAFETY: only tries to dlopen the libraries; touches no CUDA state.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::no_device(
                "no CUDA device: the CUDA driver library (libcuda) is not installed",
            ));
        }
        let count = cudarc::driver::result::init()
            .and_then(|_| cudarc::driver::result::device::get_count())
            .map_err(|e| Error::no_device(format!("no CUDA device: the driver says {e:?}")))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(Error::no_device(format!(
                "no CUDA device: the driver sees {count} device(s), asked for device {ordinal}"
            )));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::no_device(
                "no CUDA device usable: NVRTC (libnvrtc) is not installed, so the kernels cannot be compiled",
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| {
            Error::no_device(format!(
                "no CUDA device: cannot create a context on device {ordinal}: {e:?}"
            ))
        })?;
        let dev_err = |what: &str, e: cudarc::driver::DriverError| {
            Error::internal(format!("CUDA device {ordinal}: {what}: {e:?}"))
        };
        let name = ctx.name().map_err(|e| dev_err("name", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| dev_err("compute capability", e))?;
        let mut version: std::ffi::c_int = 0;
        // SAFETY: the driver library is present and initialised; the pointer is valid.
        let driver = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        let driver = if driver == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            format!("{}.{}", version / 1000, (version % 1000) / 10)
        } else {
            "unknown".to_string()
        };
        let description =
            format!("{name}, CUDA driver {driver}, compute capability {major}.{minor}");
        let sms = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| dev_err("multiprocessor count", e))?;
        let arch = format!("compute_{major}{minor}");
        let ptx = compile(&arch)?;
        let module = ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| dev_err("loading the kernels' PTX", e))?;
        let mut funcs = HashMap::new();
        let gathers = TYPE_SUFFIXES.iter().map(|t| format!("gather_{t}"));
        let named = KERNELS.iter().map(|k| k.to_string());
        for k in named.chain(gathers).chain(matmuls.iter().cloned()) {
            let f = module
                .load_function(&k)
                .map_err(|e| dev_err(&format!("kernel {k} missing from the module"), e))?;
            funcs.insert(k, f);
        }
        keep_pool_memory(&ctx);
        let stream = ctx.default_stream();
        let sync_each = std::env::var("FALSIFIER_CUDA_SYNC").is_ok_and(|v| v == "1");
        let profiling = std::env::var("FALSIFIER_CUDA_PROFILE").is_ok_and(|v| v == "1");
        Ok(Device {
            ctx,
            stream,
            funcs,
            description,
            sms: usize::try_from(sms).unwrap_or(1).max(1),
            sync_each,
            profile: Mutex::new(profiling.then(Vec::new)),
        })
    }

    /// Launch `kernel` for `stage` (a trace key or a phase name, for the error message).
    pub fn launch(&self, kernel: &str, stage: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        self.timed(kernel, stage, || self.launch_now(kernel, stage, cfg, args))
    }

    /// Turn per-launch timing on (from now, for later [`Device::take_profile`]) or off.
    pub fn set_profiling(&self, on: bool) {
        if let Ok(mut p) = self.profile.lock() {
            *p = on.then(Vec::new);
        }
    }

    /// Run `queue` (which queues work on the stream), timed by events around it when profiling.
    pub fn timed(&self, what: &str, stage: &str, queue: impl FnOnce() -> Result<()>) -> Result<()> {
        let profiling = self.profile.lock().is_ok_and(|p| p.is_some());
        if !profiling {
            return queue();
        }
        let event = || {
            let e = self
                .ctx
                .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| Error::internal(format!("CUDA: profiling event: {e:?}")))?;
            e.record(&self.stream)
                .map_err(|e| Error::internal(format!("CUDA: profiling event: {e:?}")))?;
            Ok::<_, Error>(e)
        };
        let start = event()?;
        queue()?;
        let end = event()?;
        if let Ok(mut p) = self.profile.lock()
            && let Some(spans) = p.as_mut()
        {
            spans.push(Span {
                what: what.to_string(),
                stage: stage.to_string(),
                start,
                end,
            });
        }
        Ok(())
    }

    /// The GPU time of the work timed since profiling began or was last taken, by kind of
    /// work, largest first. Waits for that work to finish. Empty when not profiling.
    pub fn take_profile(&self) -> Result<Vec<ProfileRow>> {
        let spans = match self.profile.lock() {
            Ok(mut p) => p.as_mut().map(std::mem::take).unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut rows: Vec<ProfileRow> = Vec::new();
        let mut at: HashMap<(String, String), usize> = HashMap::new();
        for s in spans {
            let ms = s
                .start
                .elapsed_ms(&s.end)
                .map_err(|e| Error::internal(format!("CUDA: profiling {}: {e:?}", s.what)))?;
            let stage = fold_layer(&s.stage);
            let i = *at
                .entry((s.what.clone(), stage.clone()))
                .or_insert_with(|| {
                    rows.push(ProfileRow {
                        what: s.what,
                        stage,
                        calls: 0,
                        ms: 0.0,
                    });
                    rows.len() - 1
                });
            rows[i].calls += 1;
            rows[i].ms += f64::from(ms);
        }
        rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        Ok(rows)
    }

    fn launch_now(&self, kernel: &str, stage: &str, cfg: LaunchConfig, args: &[Arg]) -> Result<()> {
        let f = self.funcs.get(kernel).ok_or_else(|| {
            Error::internal(format!("kernel {kernel} (stage {stage}) is not loaded"))
        })?;
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(v) => b.arg(v),
                Arg::I64(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
            };
        }
        // SAFETY: argument lists match the kernels' signatures (checked by the GPU tests);
        // every pointer refers to a live allocation sized by the caller for this launch.
        unsafe { b.launch(cfg) }.map_err(|e| {
            Error::internal(format!(
                "CUDA kernel {kernel} failed to launch at stage {stage}: {e:?} (grid {:?}, block {:?})",
                cfg.grid_dim, cfg.block_dim
            ))
        })?;
        if self.sync_each {
            self.stream.synchronize().map_err(|e| {
                Error::internal(format!(
                    "CUDA kernel {kernel} failed at stage {stage}: {e:?}"
                ))
            })?;
        }
        Ok(())
    }

    /// A zeroed device buffer of `n` elements.
    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.stream.alloc_zeros::<T>(n.max(1)).map_err(|e| {
            Error::internal(format!(
                "CUDA: cannot allocate {n} x {} bytes for {what}: {e:?}",
                std::mem::size_of::<T>()
            ))
        })
    }

    /// Copy host data into a new device buffer.
    pub fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        if data.is_empty() {
            return Err(Error::internal(format!("CUDA: empty upload for {what}")));
        }
        self.stream
            .clone_htod(data)
            .map_err(|e| Error::internal(format!("CUDA: cannot upload {what}: {e:?}")))
    }

    /// A device buffer of `n` elements that the caller overwrites before reading.
    pub fn scratch<T: DeviceRepr>(&self, n: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: uninitialised device memory; callers write every element they read.
        unsafe { self.stream.alloc::<T>(n.max(1)) }.map_err(|e| {
            Error::internal(format!(
                "CUDA: cannot allocate {n} x {} bytes for {what}: {e:?}",
                std::mem::size_of::<T>()
            ))
        })
    }

    /// Copy host bytes into a new device buffer followed by `pad` zero bytes.
    pub fn upload_padded(&self, data: &[u8], pad: usize, what: &str) -> Result<CudaSlice<u8>> {
        let mut buf = self.zeros::<u8>(data.len() + pad, what)?;
        let mut head = buf.slice_mut(0..data.len());
        self.stream
            .memcpy_htod(data, &mut head)
            .map_err(|e| Error::internal(format!("CUDA: cannot upload {what}: {e:?}")))?;
        Ok(buf)
    }

    /// The device address of a buffer, for [`Arg::Ptr`].
    pub fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    /// Wait for all queued work; `what` names the phase for the error.
    pub fn sync(&self, what: &str) -> Result<()> {
        self.stream.synchronize().map_err(|e| {
            Error::internal(format!(
                "CUDA error during {what}: {e:?} (rerun with FALSIFIER_CUDA_SYNC=1 to name the kernel)"
            ))
        })
    }
}

/// Let the device's default memory pool keep freed memory instead of returning it to the
/// driver at each synchronisation: every forward allocates its activation buffers anew (stream
/// ordered), and without this each one maps them again. Best effort: a driver that refuses
/// leaves the default, which is only slower.
fn keep_pool_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep: u64 = u64::MAX;
    // SAFETY: the context is current (just created and used); both pointers are valid for the
    // calls, and the attribute takes a u64.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            );
        }
    }
}

/// 1-D launch over `n` elements, 256 threads a block.
pub fn grid_1d(n: usize) -> Result<LaunchConfig> {
    let blocks = u32::try_from(n.div_ceil(256).max(1))
        .map_err(|_| Error::internal(format!("launch over {n} elements: grid too large")))?;
    Ok(LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// A checked conversion of a size to a kernel's `int` argument.
pub fn int(v: usize, what: &str) -> Result<Arg> {
    i32::try_from(v).map(Arg::I32).map_err(|_| {
        Error::input(format!(
            "{what} = {v} does not fit the kernels' 32-bit sizes"
        ))
    })
}

/// `layer.12.q_proj` -> `layer.*.q_proj`; other names unchanged.
fn fold_layer(stage: &str) -> String {
    match stage.strip_prefix("layer.") {
        Some(rest) => match rest.split_once('.') {
            Some((n, tail)) if n.chars().all(|c| c.is_ascii_digit()) => format!("layer.*.{tail}"),
            _ => stage.to_string(),
        },
        None => stage.to_string(),
    }
}

/// A profile as a table: GPU milliseconds per kind of work, with its share of the total.
pub fn format_profile(rows: &[ProfileRow]) -> String {
    let total: f64 = rows.iter().map(|r| r.ms).sum();
    let mut out = format!(
        "{:>10} {:>6} {:>7}  {:<16} stage\n",
        "GPU ms", "share", "calls", "kernel"
    );
    for r in rows {
        out += &format!(
            "{:>10.3} {:>5.1}% {:>7}  {:<16} {}\n",
            r.ms,
            100.0 * r.ms / total.max(f64::MIN_POSITIVE),
            r.calls,
            r.what,
            r.stage
        );
    }
    out += &format!("{total:>10.3} GPU ms in all\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel the sources define with a plain name is loaded at open (a kernel missing
    /// from KERNELS fails only when a forward first launches it, on a GPU; this runs in CI).
    #[test]
    fn every_defined_kernel_is_loaded() {
        let src = SOURCES.join("\n");
        let mut defined = Vec::new();
        for part in src.split("extern \"C\"").skip(1) {
            // `__global__ void [__launch_bounds__(..)] name(`
            let head = &part[..part.find('(').unwrap_or(0)];
            let head = match part.find("__launch_bounds__") {
                Some(lb) if lb < head.len() + 20 => {
                    let after = &part[lb..];
                    let close = after.find(')').unwrap_or(0) + 1;
                    &after[close..close + after[close..].find('(').unwrap_or(0)]
                }
                _ => head,
            };
            let name = head.split_whitespace().last().unwrap_or("").to_string();
            // the typed matmul/gather families are macro-made (`matmul_##NAME##_##BT`)
            if !name.is_empty() && !name.contains("##") {
                defined.push(name);
            }
        }
        assert!(defined.len() > 20, "{defined:?}");
        for name in defined {
            let typed = TYPE_SUFFIXES
                .iter()
                .any(|t| name.ends_with(&format!("_{t}")) || name.contains(&format!("_{t}_")));
            assert!(
                typed || KERNELS.contains(&name.as_str()),
                "kernel {name} is defined but not in KERNELS"
            );
        }
    }

    #[test]
    fn layer_numbers_fold_for_the_profile() {
        assert_eq!(fold_layer("layer.12.q_proj"), "layer.*.q_proj");
        assert_eq!(
            fold_layer("layer.3.ffn_out (blk.3.ffn_up_exps.weight)"),
            "layer.*.ffn_out (blk.3.ffn_up_exps.weight)"
        );
        assert_eq!(fold_layer("logits"), "logits");
        assert_eq!(fold_layer("layer.x.q"), "layer.x.q");
    }

    #[test]
    fn profile_table_lists_every_row_and_the_total() {
        let rows = [
            ProfileRow {
                what: "matmul_q4_k".into(),
                stage: "layer.*.q_proj".into(),
                calls: 48,
                ms: 3.0,
            },
            ProfileRow {
                what: "rms_norm".into(),
                stage: "layer.*.attn_norm".into(),
                calls: 48,
                ms: 1.0,
            },
        ];
        let t = format_profile(&rows);
        assert!(t.contains("75.0%") && t.contains("layer.*.q_proj"), "{t}");
        assert!(t.contains("4.000 GPU ms in all"), "{t}");
    }
}
