//! `falsifier bench MODEL.gguf [--backend cpu|cuda] [--tokens-count 32,512] [--runs 5]
//! [--chunk C] [--decode N]`: prefill timings (untraced and traced with every stage) and, on
//! CUDA, the floors they compare with (see [`crate::bench`]); with `--decode N`, per-token
//! decode time through the KV cache; with `--chunk C` alone, the chunked prefill against the
//! full forward. `FALSIFIER_CUDA_PROFILE=1` adds the GPU time per kernel and
//! stage of every forward.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use super::Outcome;
use crate::backend::Schedule;
use crate::backend::schedule::KvDtype;
use crate::bench::{
    Rates, format_chunked, format_decode, format_timing, time_chunked, time_decode, time_prefill,
};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufFile;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The model (GGUF, qwen3moe or qwen3).
    pub model: PathBuf,
    /// Which forward to time: cpu, cpu-f32 or cuda.
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Prompt lengths to time, comma-separated.
    #[arg(long, default_value = "32,512")]
    pub tokens_count: String,
    /// Timed forwards per prompt length and kind (the median is reported), after one warm-up;
    /// with --chunk/--decode, pairs of forwards timed back to back.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Prefill in chunks of C tokens through the KV cache: with --decode, the prefill part's
    /// chunks; alone, the chunked prefill is timed against the full forward.
    #[arg(long, value_name = "C")]
    pub chunk: Option<usize>,
    /// Time decode steps: feed the last N prompt tokens one at a time through the KV cache and
    /// report the time per token (N >= 1 and at most every prompt length).
    #[arg(long, value_name = "N")]
    pub decode: Option<usize>,
    /// The KV cache's type for --chunk/--decode timings (both sides of each pair): f32 or f16.
    #[arg(long, value_name = "f32|f16")]
    pub kv_cache: Option<String>,
}

/// The schedule `--chunk`/`--decode` ask for (`None`: plain prefills), checked against every
/// prompt length before anything runs.
fn schedule(args: &BenchArgs, counts: &[usize]) -> Result<Option<Schedule>> {
    if args.chunk == Some(0) {
        return Err(Error::input(
            "--chunk 0: a prefill chunk holds at least one token",
        ));
    }
    if args.decode == Some(0) {
        return Err(Error::input(
            "--decode 0: give at least one decode step to time (leave --decode out to time prefills)",
        ));
    }
    let kv = match &args.kv_cache {
        Some(text) => text
            .parse::<KvDtype>()
            .map_err(|e| Error::input(format!("--kv-cache: {e}")))?,
        None => KvDtype::F32,
    };
    if args.chunk.is_none() && args.decode.is_none() {
        if args.kv_cache.is_some() {
            return Err(Error::input(
                "--kv-cache applies to the --chunk/--decode timings (a plain prefill keeps no cache)",
            ));
        }
        return Ok(None);
    }
    let s = Schedule::new(args.chunk, args.decode.unwrap_or(0)).with_kv(kv);
    for &t in counts {
        s.check(t)
            .map_err(|e| Error::input(format!("--chunk/--decode at --tokens-count {t}: {e}")))?;
    }
    Ok(Some(s))
}

/// `--tokens-count`: positive prompt lengths, comma-separated, at least one.
pub(super) fn parse_counts(text: &str) -> Result<Vec<usize>> {
    let counts: Vec<usize> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| {
                Error::input(format!(
                    "--tokens-count: `{s}` is not a prompt length (a positive integer)"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if counts.is_empty() {
        return Err(Error::input(
            "--tokens-count: give at least one prompt length",
        ));
    }
    Ok(counts)
}

pub fn run(args: &BenchArgs) -> Result<Outcome> {
    let counts = parse_counts(&args.tokens_count)?;
    if args.runs == 0 {
        return Err(Error::input("bench: --runs must be at least 1"));
    }
    let schedule = schedule(args, &counts)?;
    let start = Instant::now();
    let mut backend = super::open_backend(&args.backend, &args.model)?;
    let file = GgufFile::open(&args.model)?;
    let cfg = ModelConfig::from_gguf(&file)?;
    println!(
        "{} ({} layers) on {}, opened in {:.2?}",
        args.model.display(),
        cfg.n_layers,
        backend.describe(),
        start.elapsed()
    );
    if let Some(s) = &schedule {
        crate::backend::check_schedule(backend.name(), s)?;
    }
    let rates = card_rates(&args.backend)?;
    for r in &rates {
        println!(
            "rates: {:.2} TB/s copy (read + write), {:.1} T FMA/s: {}",
            r.copy_bytes_per_s / 1e12,
            r.fma_per_s / 1e12,
            r.source
        );
    }
    for t in counts {
        let line = match schedule {
            None => format_timing(
                &time_prefill(backend.as_mut(), &file, &cfg, t, args.runs)?,
                &rates,
            ),
            Some(Schedule {
                chunk: Some(c),
                decode: 0,
                kv,
            }) => format_chunked(
                &time_chunked(backend.as_mut(), &file, &cfg, t, c, kv, args.runs)?,
                &rates,
            ),
            Some(s) => format_decode(
                &time_decode(backend.as_mut(), &file, &cfg, t, s, args.runs)?,
                &rates,
            ),
        };
        println!("{line}");
    }
    Ok(Outcome::Holds)
}

/// The rates to give floors at: measured on the card for `cuda`; none for the CPU backends
/// (their floors would be the host's, which this tool does not measure).
fn card_rates(backend: &str) -> Result<Vec<Rates>> {
    if backend != "cuda" {
        return Ok(Vec::new());
    }
    let dev = crate::backend::cuda::open_device(0)?;
    Ok(vec![crate::backend::cuda::rates::measure(&dev)?.into()])
}
