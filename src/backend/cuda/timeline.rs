//! Where a forward's GPU time goes when its launches overlap (programmatic dependent launch):
//! a developer's instrument, on only with `FALSIFIER_CUDA_TIMELINE=<file>`.
//!
//! Per-launch event timing (`FALSIFIER_CUDA_PROFILE`) and Nsight Compute time each kernel
//! alone; under PDL a kernel's blocks start, prefetch and wait while the one before still runs,
//! so a kernel's own duration is not what it adds to a step. With this on, the kernels are
//! compiled with `FALSIFIER_TIMELINE` (kernels/common.cuh): thread 0 of a launch's first and
//! last 32 blocks notes, in the table slot of its launch, when it reached `pdl_wait` and when
//! it got past it. After each
//! forward the table is matched with the launches in the order the host queued them (a CUDA
//! graph's replays expanded into the launches it recorded) and appended to the file as CSV:
//! the time from one launch's first release to the next one's is what that launch adds to
//! the critical path. `tools/gpu/timeline.py` sums it by kernel.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

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

impl Log {
    /// A launch queued (or recorded, while a graph is); the epoch to write first, if any.
    fn launched(&mut self, l: Launch) -> Option<u64> {
        if let Some(r) = self.recording.as_mut() {
            r.push(l);
            return None;
        }
        self.queued.push(l);
        std::mem::take(&mut self.after_replay).then(|| {
            self.epoch += 1;
            self.epoch
        })
    }

    /// A graph recording begins (`true`) or ends (`false`).
    fn recording(&mut self, on: bool) {
        if on {
            self.recording = Some(Vec::new());
        } else if let Some(r) = self.recording.take() {
            self.recorded = r;
        }
    }

    /// The recorded graph replayed: its launches queued again; the epoch to write first.
    fn replayed(&mut self) -> u64 {
        self.replays += 1;
        self.epoch += 1;
        self.after_replay = true;
        let replay = self.replays;
        let again = self.recorded.iter().map(|l| Launch {
            replay,
            ..l.clone()
        });
        self.queued.extend(again);
        self.epoch
    }

    /// The forward's launches, the log emptied for the next one (whose table starts at epoch
    /// 0); the forward's number.
    fn take(&mut self) -> (Vec<Launch>, usize) {
        self.forwards += 1;
        self.replays = 0;
        self.epoch = 0;
        self.after_replay = false;
        (std::mem::take(&mut self.queued), self.forwards)
    }
}

/// The CSV rows of forward `forward`: the launches in the order queued, matched with the
/// table's notes in the order of their epoch, then grid id (`words`: the table, slot 0 the
/// epoch word; a slot: gridid, epoch, !entered_min, !released_min, released_max, blocks
/// noted). A launch without notes, or notes without a launch, get zeros or "?".
fn csv_rows(forward: usize, queued: &[Launch], words: &[u64]) -> String {
    let mut notes: Vec<&[u64]> = words
        .chunks_exact(WORDS)
        .skip(1)
        .filter(|s| s[5] > 0)
        .collect();
    notes.sort_by_key(|s| (s[1], s[0]));
    let mut out = String::new();
    for seq in 0..notes.len().max(queued.len()) {
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
    out
}

/// The CSV's first line.
const HEADER: &str = "forward,replay,seq,gridid,kernel,stage,blocks,blocks_noting,blocks_noted,entered_min_ns,released_min_ns,released_max_ns";

/// The device table and the host's launch log (the device keeps it behind its own lock).
pub struct Timeline {
    table: CudaSlice<u64>,
    path: PathBuf,
    log: Log,
}

impl Timeline {
    /// A zeroed table on `stream`, the CSV to go to `path` (truncated now).
    pub fn new(stream: &Arc<CudaStream>, path: PathBuf) -> Result<Timeline> {
        let table = stream
            .alloc_zeros::<u64>(SLOTS * WORDS)
            .map_err(|e| Error::internal(format!("CUDA: timeline table: {e:?}")))?;
        let mut f = std::fs::File::create(&path)
            .map_err(|e| Error::io(&path, "creating the timeline", e))?;
        writeln!(f, "{HEADER}").map_err(|e| Error::io(&path, "writing the timeline", e))?;
        Ok(Timeline {
            table,
            path,
            log: Log::default(),
        })
    }

    /// Point `module`'s table symbol at the table.
    pub fn attach(&self, module: &Arc<CudaModule>, stream: &Arc<CudaStream>) -> Result<()> {
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

    /// Queue the write of the table's epoch word, when there is one to write.
    fn set_epoch(&mut self, epoch: Option<u64>, stream: &Arc<CudaStream>) -> Result<()> {
        let Some(epoch) = epoch else {
            return Ok(());
        };
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
        let epoch = self.log.launched(Launch {
            kernel: kernel.to_string(),
            stage: stage.to_string(),
            blocks: u64::from(grid.0) * u64::from(grid.1) * u64::from(grid.2),
            replay: 0,
        });
        self.set_epoch(epoch, stream)
    }

    /// A graph recording begins (`true`) or ends (`false`).
    pub fn recording(&mut self, on: bool) {
        self.log.recording(on);
    }

    /// The recorded graph about to be replayed: its launches queued again, in a new epoch.
    pub fn replayed(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let epoch = self.log.replayed();
        self.set_epoch(Some(epoch), stream)
    }

    /// After a forward's work finished: its launches with their notes appended to the file, the
    /// table zeroed and the log emptied (a recorded graph stays known for the next replays).
    pub fn flush(&mut self, stream: &Arc<CudaStream>) -> Result<()> {
        let err =
            |e: cudarc::driver::DriverError| Error::internal(format!("CUDA: timeline: {e:?}"));
        let words = stream.clone_dtoh(&self.table).map_err(err)?;
        stream.memset_zeros(&mut self.table).map_err(err)?;
        let (queued, forward) = self.log.take();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, "opening the timeline", e))?;
        f.write_all(csv_rows(forward, &queued, &words).as_bytes())
            .map_err(|e| Error::io(&self.path, "writing the timeline", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(kernel: &str) -> Launch {
        Launch {
            kernel: kernel.to_string(),
            stage: "layer.0.ffn_out (a, b)".to_string(),
            blocks: 100,
            replay: 0,
        }
    }

    /// A table with the notes `(slot, gridid, epoch, entered, released)`, 64 blocks noted.
    fn table(notes: &[(usize, u64, u64, u64, u64)]) -> Vec<u64> {
        let mut w = vec![0u64; 16 * WORDS];
        for &(slot, grid, epoch, entered, released) in notes {
            let s = &mut w[slot * WORDS..(slot + 1) * WORDS];
            s.copy_from_slice(&[grid, epoch, !entered, !released, released + 5, 64, 0, 0]);
        }
        w
    }

    /// Direct launches, a recorded graph (not run while recorded) and two replays, then a
    /// direct launch: the queue expands the replays, and the epochs the table must be told
    /// are one per replay and one for the direct launch after them.
    #[test]
    fn replays_expand_and_bump_the_epoch() {
        let mut log = Log::default();
        assert_eq!(log.launched(launch("prefill")), None);
        log.recording(true);
        assert_eq!(log.launched(launch("a")), None);
        assert_eq!(log.launched(launch("b")), None);
        log.recording(false);
        assert_eq!(log.replayed(), 1);
        assert_eq!(log.replayed(), 2);
        assert_eq!(log.launched(launch("head")), Some(3));
        assert_eq!(log.launched(launch("copy")), None);
        let (queued, forward) = log.take();
        let seen: Vec<(&str, usize)> = queued
            .iter()
            .map(|l| (l.kernel.as_str(), l.replay))
            .collect();
        assert_eq!(
            seen,
            [
                ("prefill", 0),
                ("a", 1),
                ("b", 1),
                ("a", 2),
                ("b", 2),
                ("head", 0),
                ("copy", 0)
            ]
        );
        assert_eq!(forward, 1);
        // the next forward starts over at epoch 0, and still knows the graph
        assert_eq!(log.replayed(), 1);
        assert_eq!(log.take().0.len(), 2);
    }

    /// Notes sort by epoch, then grid id, whatever their slots; the stage is quoted; a launch
    /// without notes gets zeros.
    #[test]
    fn rows_match_launches_with_notes_in_epoch_order() {
        let queued = [launch("x"), launch("y"), launch("z")];
        // y's replay (epoch 1) reuses a grid id below x's (epoch 0)
        let w = table(&[(9, 7, 1, 300, 310), (3, 12, 0, 100, 110)]);
        let rows = csv_rows(4, &queued, &w);
        let lines: Vec<&str> = rows.lines().collect();
        assert_eq!(
            lines,
            [
                "4,0,0,12,x,\"layer.0.ffn_out (a, b)\",100,64,64,100,110,115",
                "4,0,1,7,y,\"layer.0.ffn_out (a, b)\",100,64,64,300,310,315",
                "4,0,2,0,z,\"layer.0.ffn_out (a, b)\",100,64,0,0,0,0",
            ]
        );
    }
}
