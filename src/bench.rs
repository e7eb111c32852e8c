//! Prefill timings of any backend on a model, next to the floors they compare with
//! (`falsifier bench`; BENCHMARKS.md).
//!
//! A timing is the median of several forwards after a warm-up, untraced (empty plan) and
//! traced (every stage of every layer returned). Its floors: the weights the forward touches,
//! read once at a copy bandwidth, and its multiply-adds at an FMA rate. What the forward
//! touches depends on the routing, so it is counted from a traced run's `topk_ids`.

use std::time::Instant;

use crate::backend::{Backend, ForwardRequest};
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
        (
            w.weight_bytes / self.copy_bytes_per_s * 1e3,
            w.macs / self.fma_per_s * 1e3,
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
    let mut median = |plan: &CapturePlan| -> Result<(f64, Trace)> {
        let req = ForwardRequest {
            tokens: &tokens,
            plan,
            teacher: None,
            faults: &[],
            schedule: crate::backend::Schedule::full(),
        };
        let mut last = backend.forward(&req)?;
        let mut ms = Vec::with_capacity(runs);
        for _ in 0..runs {
            drop(last);
            let start = Instant::now();
            last = backend.forward(&req)?;
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        Ok((ms[ms.len() / 2], last))
    };
    let (untraced_ms, _) = median(&CapturePlan::none())?;
    let (traced_ms, trace) = median(&CapturePlan::all())?;
    let work = prefill_work(file, cfg, t, &trace)?;
    Ok(Timing {
        tokens: t,
        untraced_ms,
        traced_ms,
        captured_bytes: trace.nbytes(),
        work,
    })
}

/// The work of a prefill of `t` tokens of `file`, routed as `trace` (a traced forward of it)
/// shows.
pub fn prefill_work(file: &GgufFile, cfg: &ModelConfig, t: usize, trace: &Trace) -> Result<Work> {
    let label = file.path().display().to_string();
    let tensor = |name: &str| {
        file.tensor(name)
            .ok_or_else(|| Error::input(format!("{label}: no tensor {name}")))
    };
    // a matrix: its bytes, and its multiply-adds per input row (rows x cols of one matrix of
    // a stack of `mats`)
    let matrix = |name: &str, mats: usize| -> Result<(f64, f64)> {
        let ti = tensor(name)?;
        let per_row = ti.n_elements() as f64 / mats.max(1) as f64;
        Ok((ti.nbytes as f64 / mats.max(1) as f64, per_row))
    };
    let (mut bytes, mut macs) = (0f64, 0f64);
    let t_f = t as f64;
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
            let used: std::collections::BTreeSet<i32> = ids.iter().copied().collect();
            let (b, m) = matrix(&name, cfg.n_experts)?;
            bytes += used.len() as f64 * b;
            macs += m * (t * cfg.n_experts_used) as f64;
        } else {
            let (b, m) = matrix(&name, 1)?;
            bytes += b;
            macs += m * t_f;
        }
    }
    // QKᵀ and PV over the causal triangle
    macs +=
        cfg.n_layers as f64 * 2.0 * (cfg.n_heads * cfg.head_dim) as f64 * (t * (t + 1) / 2) as f64;
    // the lm_head: output.weight, or the embedding when the file ties them
    let head = if file.tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let (b, m) = matrix(head, 1)?;
    Ok(Work {
        weight_bytes: bytes + b,
        macs: macs + m * t_f,
    })
}

/// One line of results: times, what was captured, the work, and the floors at each rate set.
pub fn format_timing(tm: &Timing, rates: &[Rates]) -> String {
    let mut line = format!(
        "T={}: untraced {:.2} ms, traced (every stage) {:.2} ms, {:.1} MB captured; weights touched {:.3} GB, {:.3} GMAC",
        tm.tokens,
        tm.untraced_ms,
        tm.traced_ms,
        tm.captured_bytes as f64 / 1e6,
        tm.work.weight_bytes / 1e9,
        tm.work.macs / 1e9
    );
    for r in rates {
        let (bw, fma) = r.floors_ms(&tm.work);
        line += &format!(
            "\n    floors at {}: bandwidth {bw:.3} ms, FMA {fma:.3} ms; untraced / larger floor = {:.1}x",
            r.source,
            tm.untraced_ms / bw.max(fma).max(f64::MIN_POSITIVE)
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
