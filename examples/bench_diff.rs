//! Diff throughput on a trace pair the size of Qwen3-30B-A3B's (48 layers, every stage,
//! T = 32: about 220 MB a side). Writes both traces to the temp directory, then times
//! `diff` over the memory-mapped files with 1 and 2 rayon threads and prints GB/s
//! (payload bytes of both sides / wall time).
//!
//!     cargo run --release --example bench_diff [-- LAYERS T REPS]

use std::time::Instant;

use falsifier::diff::{DiffOptions, diff};
use falsifier::trace::io::{TraceFile, write_trace};
use falsifier::trace::{Key, Stage, Tensor, Trace, TraceMeta};

/// Shapes of one capture of the 30B-A3B model at T positions.
fn shapes(t: usize, layers: usize) -> Vec<(Option<usize>, Stage, Vec<usize>)> {
    let (h, nh, nkv, d, e, k, v) = (2048, 32, 4, 128, 128, 8, 151_936);
    let mut out = vec![
        (None, Stage::Tokens, vec![t]),
        (None, Stage::Embedding, vec![t, h]),
    ];
    for l in 0..layers {
        let l = Some(l);
        for (s, shape) in [
            (Stage::AttnNorm, vec![t, h]),
            (Stage::QProj, vec![t, nh, d]),
            (Stage::KProj, vec![t, nkv, d]),
            (Stage::VProj, vec![t, nkv, d]),
            (Stage::QNorm, vec![t, nh, d]),
            (Stage::KNorm, vec![t, nkv, d]),
            (Stage::QRope, vec![t, nh, d]),
            (Stage::KRope, vec![t, nkv, d]),
            (Stage::AttnProbs, vec![nh, t, t]),
            (Stage::AttnCtx, vec![t, nh * d]),
            (Stage::AttnOut, vec![t, h]),
            (Stage::AttnResidual, vec![t, h]),
            (Stage::FfnNorm, vec![t, h]),
            (Stage::RouterLogits, vec![t, e]),
            (Stage::RouterProbs, vec![t, e]),
            (Stage::TopkIds, vec![t, k]),
            (Stage::TopkWeights, vec![t, k]),
            (Stage::FfnOut, vec![t, h]),
            (Stage::LayerOut, vec![t, h]),
        ] {
            out.push((l, s, shape));
        }
    }
    out.push((None, Stage::FinalNorm, vec![t, h]));
    out.push((None, Stage::Logits, vec![t, v]));
    out
}

fn synth(t: usize, layers: usize, seed: u64, perturb: f32) -> Trace {
    let mut trace = Trace::new(TraceMeta {
        backend: if perturb == 0.0 { "cpu" } else { "cuda" }.into(),
        ..Default::default()
    });
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut p = seed;
    for (layer, stage, shape) in shapes(t, layers) {
        let n: usize = shape.iter().product();
        let key = Key { layer, stage };
        let tensor = if stage == Stage::TopkIds {
            Tensor::i32(
                shape,
                (0..n)
                    .map(|i| (i % 8) as i32 + 8 * (i / 64 % 16) as i32)
                    .collect(),
            )
        } else if stage == Stage::Tokens {
            Tensor::i32(shape, (0..n as i32).collect())
        } else {
            let v = (0..n)
                .map(|_| {
                    let r = next();
                    p = p.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let x = ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                    let d = ((p >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                    x * (1.0 + perturb * d)
                })
                .collect();
            Tensor::f32(shape, v)
        };
        trace.insert(key, tensor);
    }
    trace
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let layers = args.first().copied().unwrap_or(48);
    let t = args.get(1).copied().unwrap_or(32);
    let reps = args.get(2).copied().unwrap_or(5);
    let dir = std::env::temp_dir().join(format!("falsifier-bench-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (rp, cp) = (dir.join("ref.safetensors"), dir.join("cand.safetensors"));
    write_trace(&rp, &synth(t, layers, 1, 0.0)).unwrap();
    write_trace(&cp, &synth(t, layers, 2, 1e-6)).unwrap();
    let bytes = std::fs::metadata(&rp).unwrap().len() + std::fs::metadata(&cp).unwrap().len();
    println!(
        "trace pair: {layers} layers, T = {t}: {:.1} MB a side, {:.1} MB in all",
        bytes as f64 / 2e6,
        bytes as f64 / 1e6
    );
    let r = TraceFile::open(&rp).unwrap();
    let c = TraceFile::open(&cp).unwrap();
    let opts = DiffOptions::default();
    // warm the page cache and the maps
    let warm = diff(&r, &c, &opts).unwrap();
    println!(
        "rows {}, compared {}, holds {}",
        warm.rows.len(),
        warm.summary().compared,
        warm.holds
    );
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..reps {
            let start = Instant::now();
            let report = pool.install(|| diff(&r, &c, &opts)).unwrap();
            times.push(start.elapsed().as_secs_f64());
            assert!(report.summary().compared > 0);
        }
        times.sort_by(f64::total_cmp);
        let best = times[0];
        let median = times[times.len() / 2];
        println!(
            "{threads} thread(s): best {:.1} ms ({:.2} GB/s, {:.2} GB/s per core), median {:.1} ms ({:.2} GB/s)",
            best * 1e3,
            bytes as f64 / best / 1e9,
            bytes as f64 / best / 1e9 / threads as f64,
            median * 1e3,
            bytes as f64 / median / 1e9
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
