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
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaModule, CudaSlice, CudaStream};

use crate::error::{Error, Result};

/// Slots of the device table (`TIMELINE_SLOTS`) and words a slot (`TIMELINE_WORDS`).
const SLOTS: usize = 1 << 18;
const WORDS: usize = 8;
/// Blocks at each end of a launch that note (`TIMELINE_EDGE`).
const EDGE: u64 = 32;
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
    /// The table's epoch word (bumped before each replay, and before the first direct launch
    /// after one) and whether the last thing queued was a replay.
    epoch: u64,
    after_replay: bool,
}

/// The device table and the host's launch log.
pub struct Timeline {
    table: CudaSlice<u64>,
    path: PathBuf,
    log: Mutex<Log>,
}

impl Timeline {
    /// A zeroed table on `stream`, the CSV to go to `path` (truncated now).
    pub fn new(stream: &Arc<CudaStream>, path: PathBuf) -> Result<Timeline> {
        let table = stream
            .alloc_zeros::<u64>(SLOTS * WORDS)
            .map_err(|e| Error::internal(format!("CUDA: timeline table: {e:?}")))?;
        let mut f = std::fs::File::create(&path)
            .map_err(|e| Error::io(&path, "creating the timeline", e))?;
        writeln!(
            f,
            "forward,replay,seq,gridid,kernel,stage,blocks,blocks_noting,blocks_noted,entered_min_ns,released_min_ns,released_max_ns"
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

    fn with_log<R>(&self, f: impl FnOnce(&mut Log) -> R) -> Result<R> {
        let mut log = self
            .log
            .lock()
            .map_err(|_| Error::internal("timeline log lock poisoned"))?;
        Ok(f(&mut log))
    }

    /// Queue the write of the table's epoch word.
    fn set_epoch(&mut self, epoch: u64, stream: &Arc<CudaStream>) -> Result<()> {
        let mut word = self.table.slice_mut(0..1);
        stream
            .memcpy_htod(&[epoch], &mut word)
            .map_err(|e| Error::internal(format!("CUDA: timeline epoch: {e:?}")))
    }

    /// A launch about to be queued (or recorded, while a graph is).
    pub fn launched(
        &mut self,
        kernel: &str,
        stage: &str,
        grid: (u32, u32, u32),
        stream: &Arc<CudaStream>,
    ) -> Result<()> {
        let l = Launch {
            kernel: kernel.to_string(),
            stage: stage.to_string(),
            blocks: u64::from(grid.0) * u64::from(grid.1) * u64::from(grid.2),
            replay: 0,
        };
        let bump = self.with_log(|log| match log.recording.as_mut() {
            Some(r) => {
                r.push(l);
                None
            }
            None => {
                log.queued.push(l);
                let after = std::mem::take(&mut log.after_replay);
                after.then(|| {
                    log.epoch += 1;
                    log.epoch
                })
            }
        })?;
        match bump {
            Some(epoch) => self.set_epoch(epoch, stream),
            None => Ok(()),
        }
    }

    /// A graph recording begins (`true`) or ends (`false`).
    pub fn recording(&mut self, on: bool) -> Result<()> {
        self.with_log(|log| {
            if on {
                log.recording = Some(Vec::new());
            } else if let Some(r) = log.recording.take() {
                log.recorded = r;
            }
        })
    }

    /// The recorded graph about to be replayed: its launches queued again, in a new epoch.
    pub fn replayed(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let epoch = self.with_log(|log| {
            log.replays += 1;
            log.epoch += 1;
            log.after_replay = true;
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
            log.epoch
        })?;
        self.set_epoch(epoch, stream)
    }

    /// After a forward's work finished: its launches with their notes appended to the file, the
    /// table zeroed and the log emptied (a recorded graph stays known for the next replays).
    pub fn flush(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let err =
            |e: cudarc::driver::DriverError| Error::internal(format!("CUDA: timeline: {e:?}"));
        let words = stream.clone_dtoh(&self.table).map_err(err)?;
        stream.memset_zeros(&mut self.table).map_err(err)?;
        // slot 0 is the epoch word; a slot: gridid, epoch, !entered_min, !released_min,
        // released_max, blocks noted, blocks
        let mut notes: Vec<&[u64]> = words
            .chunks_exact(WORDS)
            .skip(1)
            .filter(|s| s[5] > 0)
            .collect();
        notes.sort_by_key(|s| (s[1], s[0]));
        let (queued, forward) = self.with_log(|log| {
            log.forwards += 1;
            log.replays = 0;
            log.epoch = 0;
            log.after_replay = false;
            (std::mem::take(&mut log.queued), log.forwards)
        })?;
        let mut out = String::new();
        let n = notes.len().max(queued.len());
        for seq in 0..n {
            let (kernel, stage, blocks, replay) = queued.get(seq).map_or(("?", "?", 0, 0), |l| {
                (l.kernel.as_str(), l.stage.as_str(), l.blocks, l.replay)
            });
            let (grid, seen, entered, released, last) = notes
                .get(seq)
                .map_or((0, 0, 0, 0, 0), |s| (s[0], s[5], !s[2], !s[3], s[4]));
            let expected = blocks.min(2 * EDGE);
            // (the stage may hold commas: quoted)
            let stage = stage.replace('"', "'");
            out.push_str(&format!(
                "{forward},{replay},{seq},{grid},{kernel},\"{stage}\",{blocks},{expected},{seen},{entered},{released},{last}\n"
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
