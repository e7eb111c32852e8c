//! Prefill timings of any backend on a model, next to the floors they compare with
//! (`falsifier bench`; BENCHMARKS.md).
//!
//! A timing is the median of several forwards after a warm-up, untraced (empty plan) and
//! traced (every stage of every layer returned). Its floors: the weights the forward touches,
//! read once at a copy bandwidth, and its multiply-adds at an FMA rate. What the forward
//! touches depends on the routing, so it is counted from a traced run's `topk_ids`.

use std::time::Instant;

use crate::backend::schedule::KvDtype;
use crate::backend::{Backend, ForwardRequest, Schedule};
use crate::error::{Error, Result};
use crate::model::arch::{Dim, Role};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};
use crate::trace::trace::Trace;

/// What one prefill reads and computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Work {
    /// Bytes of weights touched, each once: attention and router matrices, the experts any
    /// token was routed to, the lm_head.
    pub weight_bytes: f64,
    /// Multiply-adds of the matmuls and of attention's two products over the causal triangle.
    pub macs: f64,
}

/// Rates to turn [`Work`] into floors, and where they come from.
#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    /// Bytes a second that a device-to-device copy moves, read plus write.
    pub copy_bytes_per_s: f64,
    /// Multiply-adds a second of the instruction the kernels use.
    pub fma_per_s: f64,
    /// "measured on NVIDIA H100 ...", "data sheet", ...
    pub source: String,
}

impl Rates {
    /// Floors in ms: (bandwidth, arithmetic).
    pub fn floors_ms(&self, w: &Work) -> (f64, f64) {
        self.floors_of_ms(w.weight_bytes, w.macs)
    }

    /// Floors in ms of reading `bytes` and doing `macs` multiply-adds: (bandwidth, arithmetic).
    pub fn floors_of_ms(&self, bytes: f64, macs: f64) -> (f64, f64) {
        (
            bytes / self.copy_bytes_per_s * 1e3,
            macs / self.fma_per_s * 1e3,
        )
    }
}

impl From<crate::backend::cuda::rates::CardRates> for Rates {
    fn from(r: crate::backend::cuda::rates::CardRates) -> Rates {
        Rates {
            copy_bytes_per_s: r.copy_bytes_per_s,
            fma_per_s: r.fma_per_s,
            source: format!("this card's measured rates ({})", r.card),
        }
    }
}

/// One prompt length's timing.
#[derive(Clone, Debug)]
pub struct Timing {
    pub tokens: usize,
    pub untraced_ms: f64,
    pub traced_ms: f64,
    /// Bytes the traced forward returned.
    pub captured_bytes: usize,
    pub work: Work,
}

/// The `t` prompt tokens the bench feeds: spread over the vocabulary, the same every run.
pub fn bench_tokens(t: usize, vocab: usize) -> Vec<u32> {
    (0..t)
        .map(|i| ((i * 7919 + 13) % vocab.max(1)) as u32)
        .collect()
}

/// Medians of paired forwards ([`time_paired`]).
struct Paired {
    base_ms: f64,
    sched_ms: f64,
    /// The median of the per-pair differences `sched − base` (`sched_ms` without a base).
    diff_ms: f64,
    trace: Trace,
}

fn median(mut ms: Vec<f64>) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// Time `runs` pairs of forwards (after one warm-up of each): `base` (when given) and then
/// `sched`, back to back, so that both see the same machine state; the difference of each pair
/// is taken before the median. Each trace is freed before the next clock starts; the last of
/// `sched` is returned.
fn time_paired(
    backend: &mut dyn Backend,
    base: Option<&ForwardRequest>,
    sched: &ForwardRequest,
    runs: usize,
) -> Result<Paired> {
    if let Some(b) = base {
        drop(backend.forward(b)?);
    }
    let mut last = backend.forward(sched)?;
    let (mut base_ms, mut sched_ms, mut diff_ms) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        drop(last);
        let b = match base {
            Some(b) => {
                let start = Instant::now();
                let tr = backend.forward(b)?;
                let ms = start.elapsed().as_secs_f64() * 1e3;
                drop(tr);
                ms
            }
            None => 0.0,
        };
        let start = Instant::now();
        last = backend.forward(sched)?;
        let s = start.elapsed().as_secs_f64() * 1e3;
        base_ms.push(b);
        sched_ms.push(s);
        diff_ms.push(s - b);
    }
    Ok(Paired {
        base_ms: median(base_ms),
        sched_ms: median(sched_ms),
        diff_ms: median(diff_ms),
        trace: last,
    })
}

fn request<'a>(tokens: &'a [u32], plan: &'a CapturePlan, schedule: Schedule) -> ForwardRequest<'a> {
    ForwardRequest {
        tokens,
        plan,
        teacher: None,
        faults: &[],
        schedule,
    }
}

/// Time a prefill of `t` tokens on `backend`: the median of `runs` forwards (after one
/// warm-up) untraced and traced. Each trace is freed before the next clock starts.
pub fn time_prefill(
    backend: &mut dyn Backend,
    file: &GgufFile,
    cfg: &ModelConfig,
    t: usize,
    runs: usize,
) -> Result<Timing> {
    if t == 0 || runs == 0 {
        return Err(Error::input(
            "bench: prompt length and runs must be positive",
        ));
    }
    let tokens = bench_tokens(t, cfg.vocab);
    let (none, all) = (CapturePlan::none(), CapturePlan::all());
    let untraced = time_paired(
        backend,
        None,
        &request(&tokens, &none, Schedule::full()),
        runs,
    )?;
    drop(untraced.trace);
    let traced = time_paired(
        backend,
        None,
        &request(&tokens, &all, Schedule::full()),
        runs,
    )?;
    let work = prefill_work(file, cfg, t, &traced.trace)?;
    Ok(Timing {
        tokens: t,
        untraced_ms: untraced.sched_ms,
        traced_ms: traced.sched_ms,
        captured_bytes: traced.trace.nbytes(),
        work,
    })
}

/// A chunked prefill (prefill chunks of C tokens through the KV cache) timed against the full
/// forward of the same prompt.
#[derive(Clone, Debug)]
pub struct ChunkTiming {
    pub tokens: usize,
    pub chunk: usize,
    /// Medians of the chunked forward.
    pub untraced_ms: f64,
    pub traced_ms: f64,
    /// Medians of the full forward (one step), timed in the same pairs.
    pub full_untraced_ms: f64,
    pub full_traced_ms: f64,
    /// Bytes the traced chunked forward returned.
    pub captured_bytes: usize,
    /// The chunked prefill's work: every chunk reads the weights again.
    pub work: Work,
    /// The full forward's ([`prefill_work`]).
    pub full_work: Work,
}

/// Time the prefill of `t` tokens in chunks of `chunk` against the full forward: `runs` pairs
/// (full, then chunked) after a warm-up of each, untraced and traced; medians of each.
pub fn time_chunked(
    backend: &mut dyn Backend,
    file: &GgufFile,
    cfg: &ModelConfig,
    t: usize,
    chunk: usize,
    kv: KvDtype,
    runs: usize,
) -> Result<ChunkTiming> {
    if t == 0 || runs == 0 {
        return Err(Error::input(
            "bench: prompt length and runs must be positive",
        ));
    }
    let schedule = Schedule::new(Some(chunk), 0).with_kv(kv);
    schedule.check(t).map_err(Error::input)?;
    let tokens = bench_tokens(t, cfg.vocab);
    let mut both = |plan: &CapturePlan| {
        time_paired(
            backend,
            Some(&request(&tokens, plan, Schedule::full().with_kv(kv))),
            &request(&tokens, plan, schedule),
            runs,
        )
    };
    let untraced = both(&CapturePlan::none())?;
    drop(untraced.trace);
    let traced = both(&CapturePlan::all())?;
    Ok(ChunkTiming {
        tokens: t,
        chunk,
        untraced_ms: untraced.sched_ms,
        traced_ms: traced.sched_ms,
        full_untraced_ms: untraced.base_ms,
        full_traced_ms: traced.base_ms,
        captured_bytes: traced.trace.nbytes(),
        work: schedule_work(file, cfg, &traced.trace, schedule, t)?,
        full_work: prefill_work(file, cfg, t, &traced.trace)?,
    })
}

/// Per-token decode timing of a schedule (prefill chunks, then N decode steps).
#[derive(Clone, Debug)]
pub struct DecodeTiming {
    pub tokens: usize,
    pub schedule: Schedule,
    /// Runs per median.
    pub runs: usize,
    /// ms per decode token: the median over the runs of (scheduled forward − prefill alone),
    /// each pair timed back to back, divided by N.
    pub untraced_per_token_ms: f64,
    pub traced_per_token_ms: f64,
    /// Median of the prefill alone (the first T − N tokens, same chunks); 0 when N = T.
    pub prefill_untraced_ms: f64,
    pub prefill_traced_ms: f64,
    /// Median of the whole scheduled forward.
    pub scheduled_untraced_ms: f64,
    pub scheduled_traced_ms: f64,
    /// Bytes the traced scheduled forward returned.
    pub captured_bytes: usize,
    /// What one decode token reads and computes, averaged over the N steps.
    pub work: DecodeWork,
}

impl DecodeTiming {
    /// Tokens of the prefill part.
    pub fn prefill_tokens(&self) -> usize {
        self.tokens - self.schedule.decode
    }
}

/// Time decode steps: the forward of `t` tokens under `schedule` (chunk C, decode N >= 1, a KV
/// cache type) and the prefill alone (its first `t - N` tokens in the same chunks and cache;
/// nothing when `N == t`), `runs` pairs back to back after a warm-up of each, untraced and traced with
/// every stage. Per token is the median of the pairs' differences over `decode`: a difference
/// per pair cancels what drifts between pairs (the load of a shared machine), which a
/// difference of two medians would not. It holds everything the scheduled forward does beyond
/// the prefill alone: the N steps, and any per-forward cost that grows with the prompt (a
/// cache and a trace sized for T rather than T − N tokens). With few runs on a noisy machine
/// it can come out below the true cost, even negative; it is reported as measured. The work
/// comes from the traced scheduled run's routing.
pub fn time_decode(
    backend: &mut dyn Backend,
    file: &GgufFile,
    cfg: &ModelConfig,
    t: usize,
    schedule: Schedule,
    runs: usize,
) -> Result<DecodeTiming> {
    let Schedule { chunk, decode, kv } = schedule;
    if t == 0 || runs == 0 {
        return Err(Error::input(
            "bench: prompt length and runs must be positive",
        ));
    }
    if decode == 0 {
        return Err(Error::input(
            "bench: time at least one decode step (decode N >= 1)",
        ));
    }
    schedule.check(t).map_err(Error::input)?;
    let tokens = bench_tokens(t, cfg.vocab);
    let prefill = &tokens[..t - decode];
    let mut pair = |plan: &CapturePlan| {
        let base = (!prefill.is_empty())
            .then(|| request(prefill, plan, Schedule::new(chunk, 0).with_kv(kv)));
        time_paired(
            backend,
            base.as_ref(),
            &request(&tokens, plan, schedule),
            runs,
        )
    };
    let untraced = pair(&CapturePlan::none())?;
    drop(untraced.trace);
    let traced = pair(&CapturePlan::all())?;
    let n = decode as f64;
    Ok(DecodeTiming {
        tokens: t,
        schedule,
        runs,
        untraced_per_token_ms: untraced.diff_ms / n,
        traced_per_token_ms: traced.diff_ms / n,
        prefill_untraced_ms: untraced.base_ms,
        prefill_traced_ms: traced.base_ms,
        scheduled_untraced_ms: untraced.sched_ms,
        scheduled_traced_ms: traced.sched_ms,
        captured_bytes: traced.trace.nbytes(),
        work: decode_work(file, cfg, &traced.trace, t, decode, kv)?,
    })
}

/// The work of a prefill of `t` tokens of `file`, routed as `trace` (a traced forward of it)
/// shows: one step over positions `0..t` ([`step_work`]).
pub fn prefill_work(file: &GgufFile, cfg: &ModelConfig, t: usize, trace: &Trace) -> Result<Work> {
    step_work(file, cfg, trace, 0..t)
}

/// The work of a forward of `t` tokens under `schedule`: the sum of its steps' ([`step_work`]),
/// so every prefill chunk and decode step reads the weights again.
pub fn schedule_work(
    file: &GgufFile,
    cfg: &ModelConfig,
    trace: &Trace,
    schedule: Schedule,
    t: usize,
) -> Result<Work> {
    let mut w = Work {
        weight_bytes: 0.0,
        macs: 0.0,
    };
    for st in schedule.steps(t).map_err(Error::input)? {
        let s = step_work(file, cfg, trace, st.start..st.end)?;
        w.weight_bytes += s.weight_bytes;
        w.macs += s.macs;
    }
    Ok(w)
}

/// What one decode token reads and computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeWork {
    /// Bytes of weights its step touches: every dense, attention and router matrix of every
    /// layer, the experts it was routed to, the lm_head, and its embedding row.
    pub weight_bytes: f64,
    /// Bytes of K and V its attention reads from the cache, as f32:
    /// 2 × layers × visible positions × kv heads × head dim × 4.
    pub kv_bytes: f64,
    /// Multiply-adds of its matmuls and of its attention over the visible positions.
    pub macs: f64,
}

impl DecodeWork {
    /// Everything the step reads: weights and cache.
    pub fn bytes(&self) -> f64 {
        self.weight_bytes + self.kv_bytes
    }
}

/// The work of one decode step at each of the last `decode` positions of a `t`-token prompt
/// (each a step of one row, [`step_work`], plus its embedding row and its KV cache reads over
/// positions `0..=p`, in `kv`'s bytes a value), averaged over those positions; `trace` is a
/// traced forward over the prompt whose `topk_ids` rows give each position's experts.
pub fn decode_work(
    file: &GgufFile,
    cfg: &ModelConfig,
    trace: &Trace,
    t: usize,
    decode: usize,
    kv: KvDtype,
) -> Result<DecodeWork> {
    if decode == 0 || decode > t {
        return Err(Error::input(format!(
            "bench: {decode} decode steps of a {t}-token prompt (1..={t})"
        )));
    }
    let embd = tensor(file, "token_embd.weight")?;
    let rows = embd.n_elements() / embd.dims.first().copied().unwrap_or(1).max(1);
    let embd_row = embd.nbytes as f64 / rows.max(1) as f64;
    let kv_per_position = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * kv.bytes()) as f64;
    let mut sum = DecodeWork {
        weight_bytes: 0.0,
        kv_bytes: 0.0,
        macs: 0.0,
    };
    for p in t - decode..t {
        let w = step_work(file, cfg, trace, p..p + 1)?;
        sum.weight_bytes += w.weight_bytes + embd_row;
        sum.kv_bytes += kv_per_position * (p + 1) as f64;
        sum.macs += w.macs;
    }
    let n = decode as f64;
    Ok(DecodeWork {
        weight_bytes: sum.weight_bytes / n,
        kv_bytes: sum.kv_bytes / n,
        macs: sum.macs / n,
    })
}

fn tensor<'f>(file: &'f GgufFile, name: &str) -> Result<&'f crate::model::gguf::TensorInfo> {
    file.tensor(name)
        .ok_or_else(|| Error::input(format!("{}: no tensor {name}", file.path().display())))
}

/// The work of one forward step over prompt positions `rows` of `file`, routed as `trace` (a
/// traced forward over at least those positions) shows: every matrix of the architecture's
/// tensor table read once for the step (an expert stack: the experts any of the rows was
/// routed to, read from `topk_ids`), and the lm_head; the multiply-adds of those rows, k
/// experts' each, and attention's two products of row `p` over positions `0..=p`. Embedding
/// rows, norms and biases are not counted.
pub fn step_work(
    file: &GgufFile,
    cfg: &ModelConfig,
    trace: &Trace,
    rows: std::ops::Range<usize>,
) -> Result<Work> {
    if rows.is_empty() {
        return Err(Error::input("bench: a step computes at least one position"));
    }
    // a matrix: its bytes, and its multiply-adds per input row (rows x cols of one matrix of
    // a stack of `mats`)
    let matrix = |name: &str, mats: usize| -> Result<(f64, f64)> {
        let ti = tensor(file, name)?;
        let per_row = ti.n_elements() as f64 / mats.max(1) as f64;
        Ok((ti.nbytes as f64 / mats.max(1) as f64, per_row))
    };
    let n = rows.len();
    let n_f = n as f64;
    let k = cfg.n_experts_used;
    let (mut bytes, mut macs) = (0f64, 0f64);
    // every matrix of the architecture's tensor table; expert stacks count the experts the
    // traced run used (each read once) and k experts' work per token
    for (name, dims, spec) in cfg.tensor_table() {
        let matmul = matches!(spec.role, Role::Produces(_) | Role::Inner);
        if !matmul || spec.role == Role::Produces(Stage::Logits) {
            continue;
        }
        if dims.len() == 3 && spec.dims.last() == Some(&Dim::Experts) {
            let l: usize = name
                .strip_prefix("blk.")
                .and_then(|r| r.split('.').next())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Error::internal(format!("bench: {name} is not a layer tensor")))?;
            let key = Key::layer(l, Stage::TopkIds);
            let ids = trace
                .get(&key)
                .and_then(|x| x.as_i32())
                .ok_or_else(|| Error::input(format!("bench: the traced run has no i32 {key}")))?;
            let ids = ids.get(rows.start * k..rows.end * k).ok_or_else(|| {
                Error::input(format!(
                    "bench: the traced run's {key} holds {} values, not the {k} of each of positions {}..{}",
                    ids.len(),
                    rows.start,
                    rows.end
                ))
            })?;
            let used: std::collections::BTreeSet<i32> = ids.iter().copied().collect();
            let (b, m) = matrix(&name, cfg.n_experts)?;
            bytes += used.len() as f64 * b;
            macs += m * (n * k) as f64;
        } else {
            let (b, m) = matrix(&name, 1)?;
            bytes += b;
            macs += m * n_f;
        }
    }
    // QKᵀ and PV: row p attends over positions 0..=p
    let visible = (rows.end * (rows.end + 1) - rows.start * (rows.start + 1)) / 2;
    macs += cfg.n_layers as f64 * 2.0 * (cfg.n_heads * cfg.head_dim) as f64 * visible as f64;
    // the lm_head: output.weight, or the embedding when the file ties them
    let head = if file.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let (b, m) = matrix(head, 1)?;
    Ok(Work {
        weight_bytes: bytes + b,
        macs: macs + m * n_f,
    })
}

/// One line of results: times, what was captured, the work, and the floors at each rate set.
pub fn format_timing(tm: &Timing, rates: &[Rates]) -> String {
    let line = format!(
        "T={}: untraced {:.2} ms, traced (every stage) {:.2} ms, {:.1} MB captured; weights touched {:.3} GB, {:.3} GMAC",
        tm.tokens,
        tm.untraced_ms,
        tm.traced_ms,
        tm.captured_bytes as f64 / 1e6,
        tm.work.weight_bytes / 1e9,
        tm.work.macs / 1e9
    );
    line + &floor_lines(&tm.work, tm.untraced_ms, rates)
}

/// The floors of `work` at each rate set, a line each, with `untraced_ms` over the larger.
fn floor_lines(work: &Work, untraced_ms: f64, rates: &[Rates]) -> String {
    rates
        .iter()
        .map(|r| {
            let (bw, fma) = r.floors_ms(work);
            format!(
                "\n    floors at {}: bandwidth {bw:.3} ms, FMA {fma:.3} ms; untraced / larger floor = {:.1}x",
                r.source,
                untraced_ms / bw.max(fma).max(f64::MIN_POSITIVE)
            )
        })
        .collect()
}

/// `1.234 GB`, `56.7 MB`, `8.9 kB`, `12 B` (or MAC): three significant-ish digits for the
/// per-token quantities, which span from a tiny fixture's kilobytes to a model's gigabytes.
pub fn si(x: f64, unit: &str) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.3} G{unit}", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.3} M{unit}", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.3} k{unit}", x / 1e3)
    } else {
        format!("{x:.0} {unit}")
    }
}

/// A chunked prefill's lines: its times next to the full forward's, the work of both, and the
/// floors of the chunked one at each rate set.
pub fn format_chunked(tm: &ChunkTiming, rates: &[Rates]) -> String {
    let line = format!(
        "T={} chunk {}: untraced {:.2} ms, traced (every stage) {:.2} ms, {:.1} MB captured; full forward untraced {:.2} ms, traced {:.2} ms; weights touched {:.3} GB (full forward {:.3} GB), {:.3} GMAC",
        tm.tokens,
        tm.chunk,
        tm.untraced_ms,
        tm.traced_ms,
        tm.captured_bytes as f64 / 1e6,
        tm.full_untraced_ms,
        tm.full_traced_ms,
        tm.work.weight_bytes / 1e9,
        tm.full_work.weight_bytes / 1e9,
        tm.work.macs / 1e9
    );
    line + &floor_lines(&tm.work, tm.untraced_ms, rates)
}

/// A decode timing's lines: per-token times, the prefill part's, the per-token work; how it
/// was measured and the whole scheduled forward; the per-token floors at each rate set (the
/// ratio is to the larger floor, named).
pub fn format_decode(tm: &DecodeTiming, rates: &[Rates]) -> String {
    let n = tm.schedule.decode;
    let mut chunk = match tm.schedule.chunk {
        Some(c) => format!("chunk {c}"),
        None => "prefill in one chunk".to_string(),
    };
    if tm.schedule.kv != KvDtype::F32 {
        chunk += &format!(", {} KV cache", tm.schedule.kv);
    }
    let prefill = match tm.prefill_tokens() {
        0 => "no prefill (N = T)".to_string(),
        p => format!(
            "prefill {p} tokens untraced {:.2} ms, traced {:.2} ms",
            tm.prefill_untraced_ms, tm.prefill_traced_ms
        ),
    };
    let mut line = format!(
        "T={} decode {n} ({chunk}): per token untraced {:.3} ms, traced (every stage) {:.3} ms; {prefill}; per token weights touched {}, KV cache read {}, {}",
        tm.tokens,
        tm.untraced_per_token_ms,
        tm.traced_per_token_ms,
        si(tm.work.weight_bytes, "B"),
        si(tm.work.kv_bytes, "B"),
        si(tm.work.macs, "MAC"),
    );
    line += &format!(
        "\n    per token = median over {} back-to-back pairs of (scheduled forward - prefill alone) / {n}; scheduled forward untraced {:.2} ms, traced {:.2} ms, {:.1} MB captured",
        tm.runs,
        tm.scheduled_untraced_ms,
        tm.scheduled_traced_ms,
        tm.captured_bytes as f64 / 1e6
    );
    for r in rates {
        let (bw, fma) = r.floors_of_ms(tm.work.bytes(), tm.work.macs);
        let (which, floor) = if bw >= fma {
            ("bandwidth", bw)
        } else {
            ("FMA", fma)
        };
        line += &format!(
            "\n    floors per token at {}: bandwidth {bw:.4} ms (weights + KV cache), FMA {fma:.4} ms; untraced / {which} floor = {:.1}x",
            r.source,
            tm.untraced_per_token_ms / floor.max(f64::MIN_POSITIVE)
        );
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The work comes from the architecture's tensor table: a dense model reads every matrix
    /// once (qwen2, its biases and norms not counted, its tied embedding as the lm_head); an
    /// expert model adds the shared expert's matrices (qwen2moe) in full and the routed experts
    /// the trace used.
    #[test]
    fn work_counts_every_matrix_of_the_architecture() {
        use crate::backend::cpu::CpuBackend;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
        for (name, dense) in [("qwen2", true), ("qwen2moe", false), ("llama3", true)] {
            let path = dir.join(format!("{name}-tiny/{name}-tiny-q8_0.gguf"));
            let file = GgufFile::open(&path).unwrap();
            let cfg = ModelConfig::from_gguf(&file).unwrap();
            let tokens = [5u32, 9, 77, 3];
            let trace = CpuBackend::open(&path)
                .unwrap()
                .forward(&ForwardRequest::new(&tokens, &CapturePlan::all()))
                .unwrap();
            let w = prefill_work(&file, &cfg, tokens.len(), &trace).unwrap();
            let matrices: f64 = file
                .tensors()
                .iter()
                .filter(|t| {
                    t.dims.len() == 2
                        && (t.name != "token_embd.weight" || file.tensor("output.weight").is_none())
                })
                .map(|t| t.nbytes as f64)
                .sum();
            if dense {
                assert_eq!(w.weight_bytes, matrices, "{name}");
            } else {
                let shexp: f64 = file
                    .tensors()
                    .iter()
                    .filter(|t| t.name.contains("_shexp"))
                    .map(|t| t.nbytes as f64)
                    .sum();
                assert!(shexp > 0.0 && w.weight_bytes > matrices, "{name}");
            }
        }
    }

    fn open(rel: &str) -> (std::path::PathBuf, GgufFile, ModelConfig) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(rel);
        let file = GgufFile::open(&path).unwrap();
        let cfg = ModelConfig::from_gguf(&file).unwrap();
        (path, file, cfg)
    }

    fn traced(path: &std::path::Path, tokens: &[u32]) -> Trace {
        use crate::backend::cpu::CpuBackend;
        CpuBackend::open(path)
            .unwrap()
            .forward(&ForwardRequest::new(tokens, &CapturePlan::all()))
            .unwrap()
    }

    /// One decode token of the tiny MoE, counted by hand from the file's tensor table: every
    /// 2-D matrix but the embedding (it has its own lm_head) in full, k of each layer's
    /// expert stacks' n experts, one embedding row; the multiply-adds of the same matrices for
    /// one row plus attention over the visible positions; K and V of the visible positions.
    #[test]
    fn decode_work_is_one_token_counted_by_hand() {
        let (path, file, cfg) = open("qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf");
        assert!(file.tensor("output.weight").is_some());
        let (t, n) = (8, 3);
        let trace = traced(&path, &bench_tokens(t, cfg.vocab));
        let w = decode_work(&file, &cfg, &trace, t, n, KvDtype::F32).unwrap();
        let tensors = file.tensors();
        let mats = || {
            tensors
                .iter()
                .filter(|x| x.dims.len() == 2 && x.name != "token_embd.weight")
        };
        let stacks = || tensors.iter().filter(|x| x.dims.len() == 3);
        let (e, k) = (cfg.n_experts as f64, cfg.n_experts_used as f64);
        assert!(stacks().count() == 3 * cfg.n_layers && k >= 2.0 && e > k);
        let embd = file.tensor("token_embd.weight").unwrap();
        let bytes = mats().map(|x| x.nbytes as f64).sum::<f64>()
            + stacks().map(|x| x.nbytes as f64 / e * k).sum::<f64>()
            + embd.nbytes as f64 / cfg.vocab as f64;
        assert_eq!(w.weight_bytes, bytes);
        // positions 5, 6, 7 see 6, 7 and 8 positions: 7 on average
        let per_position = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4) as f64;
        assert_eq!(w.kv_bytes, per_position * 7.0);
        assert_eq!(w.bytes(), bytes + per_position * 7.0);
        let attn = (cfg.n_layers * 2 * cfg.n_heads * cfg.head_dim) as f64 * 7.0;
        let macs = mats().map(|x| x.n_elements() as f64).sum::<f64>()
            + stacks().map(|x| x.n_elements() as f64 / e * k).sum::<f64>()
            + attn;
        assert_eq!(w.macs, macs);
        // a dense model's token reads what a one-token prefill does, plus its embedding row
        let (path, file, cfg) = open("qwen3-tiny/qwen3-tiny-q8_0.gguf");
        let trace = traced(&path, &bench_tokens(4, cfg.vocab));
        let one = decode_work(&file, &cfg, &trace, 4, 1, KvDtype::F32).unwrap();
        let p1 = prefill_work(&file, &cfg, 1, &trace).unwrap();
        let embd = file.tensor("token_embd.weight").unwrap();
        assert_eq!(
            one.weight_bytes,
            p1.weight_bytes + embd.nbytes as f64 / cfg.vocab as f64
        );
    }

    /// The KV cache a token reads grows by one position's K and V per position; the weights
    /// of a dense model do not change.
    #[test]
    fn kv_bytes_grow_with_position() {
        let (path, file, cfg) = open("qwen3-tiny/qwen3-tiny-f32.gguf");
        let t = 12;
        let trace = traced(&path, &bench_tokens(t, cfg.vocab));
        let per_position = (2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 4) as f64;
        let mut last: Option<DecodeWork> = None;
        // the last token of prompts of 1..=t tokens: position t-1 sees t positions
        for n in (1..=t).rev() {
            let w = decode_work(&file, &cfg, &trace, t - n + 1, 1, KvDtype::F32).unwrap();
            assert_eq!(w.kv_bytes, per_position * (t - n + 1) as f64);
            if let Some(prev) = last {
                assert!(w.kv_bytes > prev.kv_bytes && w.macs > prev.macs);
                assert_eq!(w.weight_bytes, prev.weight_bytes);
            }
            last = Some(w);
        }
        // an f16 cache reads half the KV bytes, the same weights
        let w32 = decode_work(&file, &cfg, &trace, t, 3, KvDtype::F32).unwrap();
        let w16 = decode_work(&file, &cfg, &trace, t, 3, KvDtype::F16).unwrap();
        assert_eq!(w16.kv_bytes * 2.0, w32.kv_bytes);
        assert_eq!(w16.weight_bytes, w32.weight_bytes);
        assert!(decode_work(&file, &cfg, &trace, 4, 5, KvDtype::F32).is_err());
        assert!(decode_work(&file, &cfg, &trace, 4, 0, KvDtype::F32).is_err());
        // routing rows past the traced prompt are an error, not a panic
        let (path, file, cfg) = open("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
        let short = traced(&path, &[1, 2]);
        let e = decode_work(&file, &cfg, &short, 4, 1, KvDtype::F32).unwrap_err();
        assert!(e.to_string().contains("topk_ids"), "{e}");
    }

    /// A schedule's work is the sum of its steps': the full schedule is the prefill's; chunks
    /// read a dense model's weights once each, with the multiply-adds unchanged.
    #[test]
    fn chunks_read_the_weights_again() {
        let (path, file, cfg) = open("qwen3-tiny/qwen3-tiny-q8_0.gguf");
        let t = 7;
        let trace = traced(&path, &bench_tokens(t, cfg.vocab));
        let full = prefill_work(&file, &cfg, t, &trace).unwrap();
        assert_eq!(
            schedule_work(&file, &cfg, &trace, Schedule::full(), t).unwrap(),
            full
        );
        let chunked = schedule_work(&file, &cfg, &trace, Schedule::new(Some(2), 0), t).unwrap();
        assert_eq!(chunked.weight_bytes, 4.0 * full.weight_bytes);
        assert!((chunked.macs - full.macs).abs() <= 1e-9 * full.macs);
    }

    /// Decode timing on the CPU: the prefill alone is not run when N = T; bad schedules are
    /// input errors before anything runs.
    #[test]
    fn time_decode_reports_per_token_and_the_prefill_part() {
        use crate::backend::cpu::CpuBackend;
        let (path, file, cfg) = open("qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
        let mut be = CpuBackend::open(&path).unwrap();
        let tm = time_decode(&mut be, &file, &cfg, 6, Schedule::new(Some(2), 3), 1).unwrap();
        assert_eq!(tm.prefill_tokens(), 3);
        assert!(tm.prefill_untraced_ms > 0.0 && tm.scheduled_traced_ms > 0.0);
        assert!(tm.untraced_per_token_ms.is_finite() && tm.captured_bytes > 0);
        assert!(tm.work.weight_bytes > 0.0 && tm.work.kv_bytes > 0.0);
        let all = time_decode(&mut be, &file, &cfg, 3, Schedule::new(None, 3), 1).unwrap();
        assert_eq!((all.prefill_untraced_ms, all.prefill_traced_ms), (0.0, 0.0));
        assert_eq!(all.untraced_per_token_ms, all.scheduled_untraced_ms / 3.0);
        for (t, chunk, n) in [(4, Some(2), 5), (4, Some(0), 1), (4, None, 0)] {
            let e = time_decode(&mut be, &file, &cfg, t, Schedule::new(chunk, n), 1).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::Input, "{e}");
        }
        let c = time_chunked(&mut be, &file, &cfg, 5, 2, KvDtype::F32, 1).unwrap();
        assert!(c.work.weight_bytes > c.full_work.weight_bytes);
        assert!(time_chunked(&mut be, &file, &cfg, 5, 0, KvDtype::F32, 1).is_err());
    }

    #[test]
    fn decode_lines_name_their_method_and_floor() {
        let r = Rates {
            copy_bytes_per_s: 1e12,
            fma_per_s: 1e12,
            source: "test".into(),
        };
        let mut tm = DecodeTiming {
            tokens: 32,
            schedule: Schedule::new(Some(8), 16),
            runs: 5,
            untraced_per_token_ms: 4.0,
            traced_per_token_ms: 5.0,
            prefill_untraced_ms: 10.0,
            prefill_traced_ms: 12.0,
            scheduled_untraced_ms: 74.0,
            scheduled_traced_ms: 92.0,
            captured_bytes: 2_000_000,
            work: DecodeWork {
                weight_bytes: 1.5e9,
                kv_bytes: 0.5e9,
                macs: 1e9,
            },
        };
        let line = format_decode(&tm, std::slice::from_ref(&r));
        assert!(
            line.starts_with("T=32 decode 16 (chunk 8): per token untraced 4.000 ms, traced (every stage) 5.000 ms; prefill 16 tokens untraced 10.00 ms, traced 12.00 ms; per token weights touched 1.500 GB, KV cache read 500.000 MB, 1.000 GMAC"),
            "{line}"
        );
        assert!(line.contains("median over 5 back-to-back pairs"), "{line}");
        assert!(line.contains("bandwidth 2.0000 ms (weights + KV cache), FMA 1.0000 ms; untraced / bandwidth floor = 2.0x"), "{line}");
        tm.schedule = Schedule::new(None, 32);
        let line = format_decode(&tm, &[]);
        assert!(line.contains("(prefill in one chunk)") && line.contains("no prefill (N = T)"));
        assert!(!line.contains("floors"), "{line}");
        assert_eq!(si(1234.0, "B"), "1.234 kB");
        assert_eq!(si(12.0, "MAC"), "12 MAC");
    }

    #[test]
    fn floors_divide_work_by_rates() {
        let r = Rates {
            copy_bytes_per_s: 2e12,
            fma_per_s: 1e12,
            source: "test".into(),
        };
        let w = Work {
            weight_bytes: 4e9,
            macs: 3e9,
        };
        assert_eq!(r.floors_ms(&w), (2.0, 3.0));
        let tm = Timing {
            tokens: 8,
            untraced_ms: 6.0,
            traced_ms: 9.0,
            captured_bytes: 1_500_000,
            work: w,
        };
        let line = format_timing(&tm, &[r]);
        assert!(line.contains("T=8: untraced 6.00 ms"), "{line}");
        assert!(line.contains("untraced / larger floor = 2.0x"), "{line}");
    }

    #[test]
    fn bench_tokens_stay_in_the_vocabulary() {
        let t = bench_tokens(600, 151_936);
        assert_eq!(t.len(), 600);
        assert!(t.iter().all(|&x| (x as usize) < 151_936));
        assert_eq!(bench_tokens(3, 10), vec![3, 2, 1]);
    }
}
