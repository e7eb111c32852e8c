//! What a card reaches, for the floors of `falsifier bench` (`crate::bench` turns a
//! [`CardRates`] into its `Rates`; this module knows nothing of the bench): f32 FMAs a
//! second (8 independent FMA chains per thread, 16 blocks of 256 threads per multiprocessor,
//! timed by events: the instruction the matmul kernels use) and device-to-device copy bytes a
//! second counting read plus write (how the issue's 3.0 TB/s for the H100 was measured). Each
//! is the best of three runs.

use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::device::Device;
use crate::error::{Error, Result};

/// What one card measurably reaches.
#[derive(Clone, Debug, PartialEq)]
pub struct CardRates {
    /// Bytes a second that a device-to-device copy moves, read plus write.
    pub copy_bytes_per_s: f64,
    /// f32 FMAs a second.
    pub fma_per_s: f64,
    /// The card's description (name, driver, compute capability).
    pub card: String,
}

const FMA_KERNEL: &str = r#"
extern "C" __global__ void fma_rate(float* out, int iters) {
    float a[8];
    for (int j = 0; j < 8; ++j) a[j] = threadIdx.x * 1e-3f + j;
    float b = 0.999f, c = 1e-3f;
    for (int i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) a[j] = fmaf(a[j], b, c);
    }
    float s = 0.0f;
    for (int j = 0; j < 8; ++j) s += a[j];
    out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}
"#;

/// Measure `dev`'s f32 FMA rate and copy bandwidth.
pub fn measure(dev: &Device) -> Result<CardRates> {
    let cuda = |what: &str, e: &dyn std::fmt::Debug| {
        Error::internal(format!("CUDA rate measurement: {what}: {e:?}"))
    };
    let ptx = cudarc::nvrtc::compile_ptx(FMA_KERNEL).map_err(|e| cuda("compiling", &e))?;
    let module = dev.ctx.load_module(ptx).map_err(|e| cuda("loading", &e))?;
    let f = module
        .load_function("fma_rate")
        .map_err(|e| cuda("loading", &e))?;
    let blocks = u32::try_from(dev.sms * 16).map_err(|e| cuda("grid", &e))?;
    let (threads, iters) = (256u32, 1i32 << 15);
    let out = dev.zeros::<f32>((blocks * threads) as usize, "fma rate output")?;
    let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let event = || dev.ctx.new_event(timing).map_err(|e| cuda("event", &e));
    let elapsed_s = |queue: &dyn Fn() -> Result<()>| -> Result<f64> {
        let (e0, e1) = (event()?, event()?);
        e0.record(&dev.stream).map_err(|e| cuda("event", &e))?;
        queue()?;
        e1.record(&dev.stream).map_err(|e| cuda("event", &e))?;
        let ms = e0.elapsed_ms(&e1).map_err(|e| cuda("event", &e))?;
        Ok(f64::from(ms) * 1e-3)
    };
    let mut fma_per_s = 0f64;
    for _ in 0..3 {
        let s = elapsed_s(&|| {
            let mut l = dev.stream.launch_builder(&f);
            l.arg(&out).arg(&iters);
            // SAFETY: the kernel writes one float per thread into `out`, sized for the grid.
            unsafe {
                l.launch(LaunchConfig {
                    grid_dim: (blocks, 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                })
            }
            .map(|_| ())
            .map_err(|e| cuda("launch", &e))
        })?;
        let fmas = f64::from(blocks) * f64::from(threads) * 8.0 * f64::from(iters);
        fma_per_s = fma_per_s.max(fmas / s);
    }
    let n = 1usize << 28; // 1 GiB of f32
    let src = dev.zeros::<f32>(n, "copy source")?;
    let dst = std::cell::RefCell::new(dev.zeros::<f32>(n, "copy destination")?);
    let mut copy_bytes_per_s = 0f64;
    for _ in 0..3 {
        let s = elapsed_s(&|| {
            dev.stream
                .memcpy_dtod(&src, &mut *dst.borrow_mut())
                .map_err(|e| cuda("copy", &e))
        })?;
        copy_bytes_per_s = copy_bytes_per_s.max(2.0 * (n * 4) as f64 / s);
    }
    Ok(CardRates {
        copy_bytes_per_s,
        fma_per_s,
        card: dev.description.clone(),
    })
}
