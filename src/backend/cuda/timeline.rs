//! Where a forward's GPU time goes when its launches overlap (programmatic dependent launch):
//! a developer's instrument, on only with `FALSIFIER_CUDA_TIMELINE=<file>`.
//!
//! Per-launch event timing (`FALSIFIER_CUDA_PROFILE`) and Nsight Compute time each kernel
//! alone; under PDL a kernel's blocks start, prefetch and wait while the one before still runs,
//! so a kernel's own duration is not what it adds to a step. With this on, the kernels are
//! compiled with `FALSIFIER_TIMELINE` (kernels/common.cuh): every block's thread 0 notes, in
//! the table slot of its launch, when it reached `pdl_wait` and when it got past it. After each
//! forward the table is matched with the launches in the order the host queued them (a CUDA
//! graph's replays expanded into the launches it recorded) and appended to the file as CSV:
//! the time from one launch's first release to the next one's is what that launch adds to
//! the critical path. `tools/gpu/timeline.py` sums it by kernel.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use cudarc::driver::{CudaModule, CudaSlice, CudaStream};

use crate::error::{Error, Result};

/// Slots of the device table (`TIMELINE_SLOTS`) and words a slot (`TIMELINE_WORDS`).
const SLOTS: usize = 1 << 18;
const WORDS: usize = 6;
/// The device symbol each module's table pointer lives in.
const SYMBOL: &str = "falsifier_timeline";
/// The NVRTC define that compiles the notes in.
pub const DEFINE: &str = "-DFALSIFIER_TIMELINE";

/// The file named by `FALSIFIER_CUDA_TIMELINE`, when set and not empty.
pub fn requested() -> Option<PathBuf> {
    std::env::var_os("FALSIFIER_CUDA_TIMELINE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// One launch as the host queued it.
#[derive(Clone, Debug)]
struct Launch {
    kernel: String,
    stage: String,
    blocks: u64,
    /// Which replay of the recorded graph queued it (0: queued directly).
    replay: usize,
}

/// What the host queued since the last flush: launches, and replays of the recorded graph.
#[derive(Default)]
struct Log {
    queued: Vec<Launch>,
    /// The launches of the graph being recorded (queued as they replay).
    recording: Option<Vec<Launch>>,
    recorded: Vec<Launch>,
    replays: usize,
    forwards: usize,
}

/// The device table and the host's launch log.
pub struct Timeline {
    table: CudaSlice<u64>,
    path: PathBuf,
    log: Mutex<Log>,
}

impl Timeline {
    /// A zeroed table on `stream`, the CSV to go to `path` (truncated now).
    pub fn new(stream: &std::sync::Arc<CudaStream>, path: PathBuf) -> Result<Timeline> {
        let table = stream
            .alloc_zeros::<u64>(SLOTS * WORDS)
            .map_err(|e| Error::internal(format!("CUDA: timeline table: {e:?}")))?;
        let mut f = std::fs::File::create(&path)
            .map_err(|e| Error::io(&path, "creating the timeline", e))?;
        writeln!(
            f,
            "forward,replay,seq,gridid,kernel,stage,blocks,blocks_seen,entered_min_ns,released_min_ns,released_max_ns"
        )
        .map_err(|e| Error::io(&path, "writing the timeline", e))?;
        Ok(Timeline {
            table,
            path,
            log: Mutex::new(Log::default()),
        })
    }

    /// Point `module`'s table symbol at the table.
    pub fn attach(
        &self,
        module: &std::sync::Arc<CudaModule>,
        stream: &std::sync::Arc<CudaStream>,
    ) -> Result<()> {
        let err = |e: cudarc::driver::DriverError| {
            Error::internal(format!("CUDA: timeline symbol {SYMBOL}: {e:?}"))
        };
        let (addr, _sync) = cudarc::driver::DevicePtr::device_ptr(&self.table, stream);
        let mut sym = module.get_global(SYMBOL, stream).map_err(err)?;
        // SAFETY: the symbol is one `unsigned long long*` (8 bytes), written as one u64.
        let mut word = unsafe { sym.transmute_mut::<u64>(1) }.ok_or_else(|| {
            Error::internal(format!("CUDA: timeline symbol {SYMBOL} is not 8 bytes"))
        })?;
        stream.memcpy_htod(&[addr], &mut word).map_err(err)?;
        stream.synchronize().map_err(err)
    }

    fn with_log(&self, f: impl FnOnce(&mut Log)) {
        if let Ok(mut log) = self.log.lock() {
            f(&mut log);
        }
    }

    /// A launch queued (or recorded, while a graph is).
    pub fn launched(&self, kernel: &str, stage: &str, grid: (u32, u32, u32)) {
        let l = Launch {
            kernel: kernel.to_string(),
            stage: stage.to_string(),
            blocks: u64::from(grid.0) * u64::from(grid.1) * u64::from(grid.2),
            replay: 0,
        };
        self.with_log(|log| match log.recording.as_mut() {
            Some(r) => r.push(l),
            None => log.queued.push(l),
        });
    }

    /// A graph recording begins (`true`) or ends (`false`).
    pub fn recording(&self, on: bool) {
        self.with_log(|log| {
            if on {
                log.recording = Some(Vec::new());
            } else if let Some(r) = log.recording.take() {
                log.recorded = r;
            }
        });
    }

    /// The recorded graph replayed: its launches queued again.
    pub fn replayed(&self) {
        self.with_log(|log| {
            log.replays += 1;
            let replay = log.replays;
            let r: Vec<Launch> = log
                .recorded
                .iter()
                .map(|l| Launch {
                    replay,
                    ..l.clone()
                })
                .collect();
            log.queued.extend(r);
        });
    }

    /// After a forward's work finished: its launches with their notes appended to the file, the
    /// table zeroed and the log emptied (a recorded graph stays known for the next replays).
    pub fn flush(&mut self, stream: &std::sync::Arc<CudaStream>) -> Result<()> {
        let err =
            |e: cudarc::driver::DriverError| Error::internal(format!("CUDA: timeline: {e:?}"));
        let words = stream.clone_dtoh(&self.table).map_err(err)?;
        stream.memset_zeros(&mut self.table).map_err(err)?;
        let mut notes: Vec<&[u64]> = words.chunks_exact(WORDS).filter(|s| s[4] > 0).collect();
        notes.sort_by_key(|s| s[0]);
        let (queued, forward) = match self.log.lock() {
            Ok(mut log) => {
                log.forwards += 1;
                log.replays = 0;
                (std::mem::take(&mut log.queued), log.forwards)
            }
            Err(_) => return Err(Error::internal("timeline log lock poisoned")),
        };
        let mut out = String::new();
        let n = notes.len().max(queued.len());
        for seq in 0..n {
            let (kernel, stage, blocks, replay) = queued.get(seq).map_or(("?", "?", 0, 0), |l| {
                (l.kernel.as_str(), l.stage.as_str(), l.blocks, l.replay)
            });
            let (grid, seen, entered, released, last) = notes
                .get(seq)
                .map_or((0, 0, 0, 0, 0), |s| (s[0], s[4], !s[1], !s[2], s[3]));
            out.push_str(&format!(
                "{forward},{replay},{seq},{grid},{kernel},{stage},{blocks},{seen},{entered},{released},{last}\n"
            ));
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, "opening the timeline", e))?;
        f.write_all(out.as_bytes())
            .map_err(|e| Error::io(&self.path, "writing the timeline", e))
    }
}
