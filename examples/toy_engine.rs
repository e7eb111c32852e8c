//! Your own engine against the reference: a toy Qwen3-MoE engine written from scratch (naive
//! loops, f32 throughout), wrapped as a falsifier [`Backend`], with one realistic planted bug.
//!
//!     cargo run --release --example toy_engine                 # clean: every stage Matches
//!     cargo run --release --example toy_engine -- --bug        # RoPE theta wrong in layer 1
//!     cargo run --release --example toy_engine -- --bug --model M.gguf --report-dir DIR
//!     cargo run --release --example toy_engine -- --bug --trace-out toy.safetensors
//!
//! `--trace-out` also writes the toy engine's own trace, for `falsifier diff` against any other
//! trace (a transformers one, see docs/walkthrough.md).
//! The example registers the engine under the name `toy` (so `falsifier::backend::open("toy",
//! path)` opens it like a shipped backend), runs the CPU reference and the toy engine over the
//! same prompt, diffs every layer x stage, replays the toy engine teacher-forced to find the
//! stage that *causes* the first divergence, prints the verdict and writes report.json / .md /
//! .html. Exit status: 0 when every stage matches, 1 on a divergence.
//!
//! The planted bug: the engine reads RoPE's base frequency per layer, and one layer falls back to
//! Llama's default 10 000 instead of the model's `rope.freq_base` (1e6 for the fixture). Position
//! 0 is unaffected (angle 0), every later position of q and k is rotated by the wrong angle.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use falsifier::backend::{self, Backend, ForwardRequest};
use falsifier::diff::{DiffOptions, DiffReport, diff};
use falsifier::model::config::Arch;
use falsifier::model::config::ModelConfig;
use falsifier::model::gguf::GgufFile;
use falsifier::model::weights::{FfnWeights, ModelWeights, QTensor};
use falsifier::trace::{CapturePlan, Key, Stage, Tensor, Trace, TraceMeta};
use falsifier::{Error, Result};

/// A planted bug of the toy engine.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bug {
    /// Layer `layer` uses RoPE θ = 10 000 (Llama's default) instead of the model's.
    RopeThetaDefault { layer: usize },
}

/// One block's weights, dequantized to f32, row-major `[out][in]` as in the GGUF.
struct Layer {
    attn_norm: Vec<f32>,
    wq: Vec<f32>,
    wk: Vec<f32>,
    wv: Vec<f32>,
    wo: Vec<f32>,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    router: Vec<f32>,
    /// `[E][F][H]`, `[E][F][H]`, `[E][H][F]`.
    gate: Vec<f32>,
    up: Vec<f32>,
    down: Vec<f32>,
}

/// The toy engine: the whole model in f32 memory, one naive forward.
pub struct ToyEngine {
    path: PathBuf,
    cfg: ModelConfig,
    embd: Vec<f32>,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Vec<f32>,
    bug: Option<Bug>,
}

fn f32s(t: &QTensor) -> Result<Vec<f32>> {
    t.to_f32()
}

/// A per-head norm gain qwen3moe always has.
fn norm_of(gain: &Option<Vec<f32>>, name: &str) -> Result<Vec<f32>> {
    gain.clone()
        .ok_or_else(|| Error::input(format!("a qwen3moe layer without {name}")))
}

impl ToyEngine {
    /// Read a qwen3moe GGUF through falsifier's model reader and dequantize every weight.
    pub fn open(path: &Path, bug: Option<Bug>) -> Result<ToyEngine> {
        let file = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&file)?;
        if cfg.arch != Arch::Qwen3Moe {
            return Err(Error::input(format!(
                "{}: the toy engine runs qwen3moe only, this is {}",
                path.display(),
                cfg.arch
            )));
        }
        let w = ModelWeights::load(&file, &cfg)?;
        let mut layers = Vec::new();
        for l in &w.layers {
            let FfnWeights::Moe {
                ffn_gate_inp,
                ffn_gate_exps,
                ffn_up_exps,
                ffn_down_exps,
                ..
            } = &l.ffn
            else {
                return Err(Error::input("a dense layer in a qwen3moe model"));
            };
            layers.push(Layer {
                attn_norm: l.attn_norm.clone(),
                wq: f32s(&l.attn_q)?,
                wk: f32s(&l.attn_k)?,
                wv: f32s(&l.attn_v)?,
                wo: f32s(&l.attn_output)?,
                q_norm: norm_of(&l.attn_q_norm, "attn_q_norm")?,
                k_norm: norm_of(&l.attn_k_norm, "attn_k_norm")?,
                ffn_norm: l.ffn_norm.clone(),
                router: f32s(ffn_gate_inp)?,
                gate: f32s(ffn_gate_exps)?,
                up: f32s(ffn_up_exps)?,
                down: f32s(ffn_down_exps)?,
            });
        }
        Ok(ToyEngine {
            path: path.to_path_buf(),
            embd: f32s(&w.token_embd)?,
            out_norm: w.output_norm.clone(),
            output: f32s(&w.output)?,
            layers,
            cfg,
            bug,
        })
    }

    fn rope_theta(&self, layer: usize) -> f32 {
        match self.bug {
            Some(Bug::RopeThetaDefault { layer: l }) if l == layer => 10_000.0,
            _ => self.cfg.rope_theta,
        }
    }
}

/// `y[t][r] = Σ_c x[t][c] · w[r][c]` for `x: [T][cols]`, `w: [rows][cols]`.
fn matmul(x: &[f32], w: &[f32], cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let mut y = Vec::with_capacity(x.len() / cols * rows);
    for xt in x.chunks_exact(cols) {
        for wr in w.chunks_exact(cols) {
            y.push(xt.iter().zip(wr).map(|(a, b)| a * b).sum());
        }
    }
    y
}

/// RMSNorm of each `g.len()`-long row.
fn rms_norm(x: &[f32], g: &[f32], eps: f32) -> Vec<f32> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks_exact(g.len()) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / g.len() as f32;
        let s = 1.0 / (ms + eps).sqrt();
        y.extend(row.iter().zip(g).map(|(v, w)| v * s * w));
    }
    y
}

/// NeoX RoPE (rotate-half pairing `(j, j + D/2)`) on `[T][heads][D]`, position = token index.
fn rope(x: &mut [f32], d: usize, heads: usize, theta: f32) {
    for (pos, tok) in x.chunks_exact_mut(heads * d).enumerate() {
        for head in tok.chunks_exact_mut(d) {
            for j in 0..d / 2 {
                let angle = pos as f64 * (theta as f64).powf(-2.0 * j as f64 / d as f64);
                let (s, c) = (angle.sin() as f32, angle.cos() as f32);
                let (a, b) = (head[j], head[j + d / 2]);
                head[j] = a * c - b * s;
                head[j + d / 2] = a * s + b * c;
            }
        }
    }
}

fn softmax(row: &mut [f32]) {
    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|v| *v = (*v - m).exp());
    let s: f32 = row.iter().sum();
    row.iter_mut().for_each(|v| *v /= s);
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// What one forward keeps: the planned stages.
struct Capture<'a> {
    plan: &'a CapturePlan,
    tensors: std::collections::BTreeMap<Key, Tensor>,
}

impl Capture<'_> {
    fn f32(&mut self, layer: Option<usize>, stage: Stage, shape: &[usize], data: &[f32]) {
        if self.plan.wants(layer, stage) {
            let key = Key { layer, stage };
            self.tensors
                .insert(key, Tensor::f32(shape.to_vec(), data.to_vec()));
        }
    }
}

/// The teacher's `[T, H]` tensor `key` (teacher forcing), if a teacher is given.
fn teacher(req: &ForwardRequest, key: Key, len: usize) -> Result<Option<Vec<f32>>> {
    let Some(t) = req.teacher else {
        return Ok(None);
    };
    match t.get(&key).and_then(|x| x.as_f32()) {
        Some(v) if v.len() == len => Ok(Some(v.to_vec())),
        _ => Err(Error::input(format!(
            "teacher trace lacks `{key}` as {len} f32 values"
        ))),
    }
}

impl Backend for ToyEngine {
    fn name(&self) -> &str {
        "toy"
    }

    fn describe(&self) -> String {
        format!("toy engine (naive f32 loops; bug: {:?})", self.bug)
    }

    fn forward(&mut self, req: &ForwardRequest<'_>) -> Result<Trace> {
        let c = &self.cfg;
        let (t, h, nh, nkv, d) = (
            req.tokens.len(),
            c.hidden,
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
        );
        let (e, k, f) = (c.n_experts, c.n_experts_used, c.expert_ffn_dim);
        let mut cap = Capture {
            plan: req.plan,
            tensors: Default::default(),
        };

        let mut x = Vec::with_capacity(t * h);
        for &tok in req.tokens {
            let row = self
                .embd
                .get(tok as usize * h..(tok as usize + 1) * h)
                .ok_or_else(|| Error::input(format!("token {tok} out of range")))?;
            x.extend_from_slice(row);
        }
        cap.f32(None, Stage::Embedding, &[t, h], &x);

        for (i, lw) in self.layers.iter().enumerate() {
            let l = Some(i);
            let input_key = match i {
                0 => Key::model(Stage::Embedding),
                _ => Key::layer(i - 1, Stage::LayerOut),
            };
            if let Some(forced) = teacher(req, input_key, t * h)? {
                x = forced;
            }
            // attention
            let xn = rms_norm(&x, &lw.attn_norm, c.rms_eps);
            cap.f32(l, Stage::AttnNorm, &[t, h], &xn);
            let q = matmul(&xn, &lw.wq, h);
            let kk = matmul(&xn, &lw.wk, h);
            let v = matmul(&xn, &lw.wv, h);
            cap.f32(l, Stage::QProj, &[t, nh, d], &q);
            cap.f32(l, Stage::KProj, &[t, nkv, d], &kk);
            cap.f32(l, Stage::VProj, &[t, nkv, d], &v);
            let mut q = rms_norm(&q, &lw.q_norm, c.rms_eps);
            let mut kk = rms_norm(&kk, &lw.k_norm, c.rms_eps);
            cap.f32(l, Stage::QNorm, &[t, nh, d], &q);
            cap.f32(l, Stage::KNorm, &[t, nkv, d], &kk);
            rope(&mut q, d, nh, self.rope_theta(i));
            rope(&mut kk, d, nkv, self.rope_theta(i));
            cap.f32(l, Stage::QRope, &[t, nh, d], &q);
            cap.f32(l, Stage::KRope, &[t, nkv, d], &kk);

            let mut probs = vec![0f32; nh * t * t];
            let mut ctx = vec![0f32; t * nh * d];
            let scale = 1.0 / (d as f32).sqrt();
            for head in 0..nh {
                let kvh = head / (nh / nkv);
                for qi in 0..t {
                    let qv = &q[(qi * nh + head) * d..][..d];
                    let row = &mut probs[(head * t + qi) * t..][..t];
                    for (ki, p) in row.iter_mut().enumerate().take(qi + 1) {
                        let kv = &kk[(ki * nkv + kvh) * d..][..d];
                        *p = qv.iter().zip(kv).map(|(a, b)| a * b).sum::<f32>() * scale;
                    }
                    softmax(&mut row[..=qi]);
                    let out = &mut ctx[(qi * nh + head) * d..][..d];
                    for (ki, p) in row.iter().enumerate().take(qi + 1) {
                        let vv = &v[(ki * nkv + kvh) * d..][..d];
                        out.iter_mut().zip(vv).for_each(|(o, b)| *o += p * b);
                    }
                }
            }
            cap.f32(l, Stage::AttnProbs, &[nh, t, t], &probs);
            cap.f32(l, Stage::AttnCtx, &[t, nh * d], &ctx);
            let attn = matmul(&ctx, &lw.wo, nh * d);
            cap.f32(l, Stage::AttnOut, &[t, h], &attn);
            let resid: Vec<f32> = x.iter().zip(&attn).map(|(a, b)| a + b).collect();
            cap.f32(l, Stage::AttnResidual, &[t, h], &resid);

            // mixture of experts
            let hn = rms_norm(&resid, &lw.ffn_norm, c.rms_eps);
            cap.f32(l, Stage::FfnNorm, &[t, h], &hn);
            let logits = matmul(&hn, &lw.router, h);
            cap.f32(l, Stage::RouterLogits, &[t, e], &logits);
            let mut rprobs = logits.clone();
            rprobs.chunks_exact_mut(e).for_each(softmax);
            cap.f32(l, Stage::RouterProbs, &[t, e], &rprobs);
            let mut ids = Vec::with_capacity(t * k);
            let mut wts = Vec::with_capacity(t * k);
            for row in rprobs.chunks_exact(e) {
                let mut order: Vec<usize> = (0..e).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                let top = &order[..k];
                let sum: f32 = top.iter().map(|&j| row[j]).sum();
                for &j in top {
                    ids.push(j as i32);
                    wts.push(if c.norm_topk_prob {
                        row[j] / sum
                    } else {
                        row[j]
                    });
                }
            }
            if req.plan.wants(l, Stage::TopkIds) {
                let key = Key::layer(i, Stage::TopkIds);
                cap.tensors
                    .insert(key, Tensor::i32(vec![t, k], ids.clone()));
            }
            cap.f32(l, Stage::TopkWeights, &[t, k], &wts);
            let mut y = vec![0f32; t * h];
            for tok in 0..t {
                let xt = &hn[tok * h..][..h];
                for r in 0..k {
                    let ex = ids[tok * k + r] as usize;
                    let g = matmul(xt, &lw.gate[ex * f * h..][..f * h], h);
                    let u = matmul(xt, &lw.up[ex * f * h..][..f * h], h);
                    let act: Vec<f32> = g.iter().zip(&u).map(|(a, b)| silu(*a) * b).collect();
                    let o = matmul(&act, &lw.down[ex * h * f..][..h * f], f);
                    let wgt = wts[tok * k + r];
                    y[tok * h..][..h]
                        .iter_mut()
                        .zip(&o)
                        .for_each(|(a, b)| *a += wgt * b);
                }
            }
            cap.f32(l, Stage::FfnOut, &[t, h], &y);
            x = resid.iter().zip(&y).map(|(a, b)| a + b).collect();
            cap.f32(l, Stage::LayerOut, &[t, h], &x);
        }

        let last = Key::layer(self.layers.len().saturating_sub(1), Stage::LayerOut);
        if let Some(forced) = teacher(req, last, t * h)? {
            x = forced;
        }
        let mut xn = rms_norm(&x, &self.out_norm, c.rms_eps);
        cap.f32(None, Stage::FinalNorm, &[t, h], &xn);
        if let Some(forced) = teacher(req, Key::model(Stage::FinalNorm), t * h)? {
            xn = forced;
        }
        let logits = matmul(&xn, &self.output, h);
        cap.f32(None, Stage::Logits, &[t, c.vocab], &logits);
        if req.plan.wants(None, Stage::Tokens) {
            let toks = req.tokens.iter().map(|&x| x as i32).collect();
            cap.tensors
                .insert(Key::model(Stage::Tokens), Tensor::i32(vec![t], toks));
        }

        let meta = TraceMeta {
            backend: "toy".into(),
            model: self.path.display().to_string(),
            tokens: req.tokens.to_vec(),
            plan: req.plan.to_string(),
            dtype: "f32 weights, activations and accumulation".into(),
            ..Default::default()
        };
        Ok(Trace {
            meta,
            tensors: cap.tensors,
        })
    }
}

/// Reference vs toy over `tokens`: the diff (with the teacher-forced origin when it diverges).
pub fn compare(model: &Path, bug: Option<Bug>, tokens: &[u32]) -> Result<DiffReport> {
    let mut reference = backend::open("cpu", model)?;
    let mut toy = ToyEngine::open(model, bug)?;
    let plan = falsifier::runner::attribution::reference_plan(&CapturePlan::all());
    let ref_trace = reference.forward(&ForwardRequest::new(tokens, &plan))?;
    let toy_trace = toy.forward(&ForwardRequest::new(tokens, &plan))?;
    let opts = DiffOptions {
        labels: Some(("cpu".into(), "toy".into())),
        ..Default::default()
    };
    let mut report = diff(&ref_trace, &toy_trace, &opts)?;
    if report.first().is_some() {
        let (origin, _) = falsifier::runner::attribution::attribute(
            &mut toy,
            &ref_trace,
            tokens,
            &plan,
            &[],
            falsifier::backend::Schedule::full(),
            &opts,
        )?;
        report.origin = origin;
    }
    Ok(report)
}

/// `backend::open("toy", path)` opens the toy engine (clean) once this ran.
pub fn register() {
    backend::register(
        "toy",
        Arc::new(|p: &Path| Ok(Box::new(ToyEngine::open(p, None)?) as Box<dyn Backend>)),
    );
}

#[allow(dead_code)] // the tests include this file for its engine, not for main
fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let model = PathBuf::from(
        value("--model").unwrap_or_else(|| "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf".into()),
    );
    let dir = PathBuf::from(value("--report-dir").unwrap_or_else(|| "reports/toy-engine".into()));
    let bug = args
        .iter()
        .any(|a| a == "--bug")
        .then_some(Bug::RopeThetaDefault { layer: 1 });
    let tokens = [81, 119, 101, 110, 51, 77, 111, 69];

    register();
    let run = || -> Result<DiffReport> {
        // the registry at work: the same engine, opened by name like a shipped backend
        let opened = backend::open("toy", &model)?;
        println!(
            "backend::open(\"toy\", ..) opens the registered engine: {}",
            opened.describe()
        );
        if let Some(out) = value("--trace-out") {
            let plan = CapturePlan::all();
            let trace =
                ToyEngine::open(&model, bug)?.forward(&ForwardRequest::new(&tokens, &plan))?;
            falsifier::trace::io::write_trace(Path::new(&out), &trace)?;
            println!("wrote the toy engine's trace to {out}");
        }
        let report = compare(&model, bug, &tokens)?;
        let mut ctx = falsifier::report::ReportContext::new(format!(
            "cargo run --example toy_engine -- {}",
            args.join(" ")
        ));
        ctx.environment = falsifier::report::Environment::detect();
        falsifier::report::write_reports(&dir, &report, &ctx)?;
        Ok(report)
    };
    match run() {
        Ok(report) => {
            print!(
                "{}",
                falsifier::report::terminal::render(&report, false, Some(&dir))
            );
            if report.holds {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
