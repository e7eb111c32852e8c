//! Contract layer end to end: every lint rule has a failing case with its file:line, the shipped
//! contracts lint clean, and promote keeps every comment, re-lints clean, is idempotent, writes
//! nothing on --dry-run and refuses regressions.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use falsifier::contract::{Source, lint};

const BIN: &str = env!("CARGO_BIN_EXE_falsifier");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A small valid contract; the rule tests mutate one thing each.
const BASE: &str = r#"# a comment
contract: C-TEST-BASE
version: 1.0.1
status: PROPOSED
description: base contract for lint tests
references: [docs/design.md]
models:
  moe: { path: fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf }
  dense: { preset: tiny-dense, quant: f32, seed: 1 }
falsifiers:
  - id: FALSIFY-TEST-001
    rule: r
    prediction: p
    if_fails: f
    models: [moe, dense]
    backends: [cpu, cpu]
    tokens: [1, 2, 3]
    stages: all
    layers: all
    thresholds: { default: 1.0e-4, logits: 1.0e-3 }
    fault: { class: nan, at: layer.1.attn_out, args: [2] }
    expect: { first_divergence: layer.1.attn_out, origin: layer.1.attn_out }
    check: parity
    heavy: false
    status: PROPOSED
  - id: FALSIFY-TEST-002
    rule: r
    prediction: p
    if_fails: f
    models: [moe]
    backends: [cpu, cuda]
    tokens: [1, 2, 3]
    stages: [router_logits, topk_ids]
    layers: 0..2
    check: routing
    status: PROPOSED
amendment_history:
  - { version: 1.0.0, date: 2026-11-25, kind: created, title: t, evidence: null }
  - { version: 1.0.1, date: 2026-11-25, kind: amended, title: t2 }
"#;

fn src(name: &str, text: &str) -> Source {
    Source {
        path: PathBuf::from(format!("mem/{name}.yaml")),
        text: text.to_string(),
    }
}

/// Line (1-based) of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not in text"));
    text[..at].matches('\n').count() + 1
}

/// Lint one mutated contract; assert exactly the problems mention `msg` at `needle`'s line.
fn assert_rejects(text: &str, needle: &str, msg: &str) {
    let (_, diags) = lint::lint(&[src("t", text)]);
    let line = line_of(text, needle);
    assert!(
        diags.iter().any(|d| d.pos.line == line
            && d.msg.contains(msg)
            && d.file == Path::new("mem/t.yaml")),
        "expected `{msg}` at line {line}, got:\n{}",
        diags
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn mutate(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from}");
    BASE.replacen(from, to, 1)
}

#[test]
fn base_is_clean() {
    let (loaded, diags) = lint::lint(&[src("t", BASE)]);
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(loaded.len(), 1);
}

/// Backend names are an open set: an engine a program registers is a backend its contracts can
/// pair, and a name nobody registered is refused at its line, listing the known ones.
#[test]
fn registered_engines_are_contract_backends() {
    let t = mutate("backends: [cpu, cuda]", "backends: [cpu, my-engine]");
    assert_rejects(&t, "my-engine", "unknown backend `my-engine`");
    falsifier::backend::register(
        "my-engine",
        std::sync::Arc::new(|_| Err(falsifier::Error::input("not a real engine"))),
    );
    let (_, diags) = lint::lint(&[src("t", &t)]);
    assert!(
        !diags.iter().any(|d| d.msg.contains("backend")),
        "{diags:?}"
    );
}

#[test]
fn schema_errors_name_the_line() {
    let t = mutate("    heavy: false\n", "    heavy: false\n    bogus_key: 1\n");
    assert_rejects(&t, "bogus_key", "unknown field `bogus_key`");
    let t = mutate("description:", "descripton:");
    assert_rejects(&t, "descripton", "unknown field `descripton`");
    let t = mutate("backends: [cpu, cuda]", "backends: [cpu, rocm]");
    assert_rejects(
        &t,
        "rocm",
        "unknown backend `rocm` (known: cpu, cpu-f32, cuda",
    );
    let t = mutate("check: routing", "check: vibes");
    assert_rejects(&t, "vibes", "unknown variant `vibes`");
    let t = mutate(
        "    status: PROPOSED\namendment",
        "    status: DONE\namendment",
    );
    assert_rejects(&t, "DONE", "unknown variant `DONE`");
    let t = mutate("fault: { class: nan,", "fault: { class: nan, wrong: 1,");
    assert_rejects(&t, "wrong: 1", "unknown field `wrong`");
}

#[test]
fn ids() {
    assert_rejects(&mutate("C-TEST-BASE", "C-test"), "C-test", "must match C-");
    assert_rejects(
        &mutate("FALSIFY-TEST-002", "FALSIFY_TEST_2"),
        "FALSIFY_TEST_2",
        "must match FALSIFY-",
    );
    // duplicate falsifier ids within a file
    let t = mutate("FALSIFY-TEST-002", "FALSIFY-TEST-001");
    let (_, diags) = lint::lint(&[src("t", &t)]);
    let second = line_of(
        &t,
        "id: FALSIFY-TEST-001\n    rule: r\n    prediction: p\n    if_fails: f\n    models: [moe]",
    );
    assert!(
        diags
            .iter()
            .any(|d| d.pos.line == second && d.msg.contains("duplicate falsifier id")),
        "{diags:?}"
    );
}

#[test]
fn duplicate_ids_across_files() {
    let other = BASE.replace("FALSIFY-TEST-002", "FALSIFY-TEST-003");
    let (_, diags) = lint::lint(&[src("a", BASE), src("b", &other)]);
    let msgs: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    assert!(
        msgs.iter().any(|m| m.starts_with("mem/b.yaml:2:")
            && m.contains("duplicate contract id C-TEST-BASE (first at mem/a.yaml:2)")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.starts_with("mem/b.yaml:11:")
            && m.contains("duplicate falsifier id FALSIFY-TEST-001 (first at mem/a.yaml:11)")),
        "{msgs:?}"
    );
}

#[test]
fn unknown_stages_presets_quants() {
    assert_rejects(
        &mutate("[router_logits, topk_ids]", "[router_logits, topk_idz]"),
        "topk_idz",
        "unknown stage `topk_idz`",
    );
    assert_rejects(
        &mutate("preset: tiny-dense", "preset: huge-dense"),
        "huge-dense",
        "unknown preset `huge-dense`",
    );
    assert_rejects(
        &mutate("quant: f32", "quant: q3_k_s"),
        "q3_k_s",
        "unknown quant `q3_k_s`",
    );
    assert_rejects(
        &mutate("logits: 1.0e-3", "logitz: 1.0e-3"),
        "logitz",
        "threshold key `logitz`",
    );
}

#[test]
fn models() {
    assert_rejects(
        &mutate("qwen3moe-tiny-f32.gguf", "nope.gguf"),
        "nope.gguf",
        "not found",
    );
    assert_rejects(
        &mutate("models: [moe, dense]", "models: [moe, densee]"),
        "densee",
        "model `densee` is not defined",
    );
    assert_rejects(
        &mutate(", seed: 1 }", " }"),
        "dense: {",
        "a preset needs a seed",
    );
    assert_rejects(
        &mutate(
            "{ path: fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf }",
            "{ path: fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf, preset: tiny-moe }",
        ),
        "moe: {",
        "either path or preset",
    );
    // shape overrides belong to presets
    assert_rejects(
        &mutate(
            "qwen3moe-tiny-f32.gguf }",
            "qwen3moe-tiny-f32.gguf, hidden: 256 }",
        ),
        "moe: {",
        "hidden only apply to a synthetic preset",
    );
    // overrides that make no model, or experts on a dense preset
    assert_rejects(
        &mutate("seed: 1 }", "seed: 1, heads: 3 }"),
        "dense: {",
        "does not divide",
    );
    assert_rejects(
        &mutate("seed: 1 }", "seed: 1, experts: 4 }"),
        "dense: {",
        "a dense model has no experts",
    );
    // a prompt token outside the vocabulary (the fixture's is 260)
    assert_rejects(
        &mutate("tokens: [1, 2, 3]", "tokens: [1, 260, 3]"),
        "260, 3]",
        "token 260 is outside model moe's vocabulary of 260",
    );
    // a file that is not GGUF
    assert_rejects(
        &mutate(
            "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
            "Cargo.toml",
        ),
        "Cargo.toml",
        "not a GGUF file",
    );
}

#[test]
fn thresholds_out_of_range() {
    for bad in ["0.0", "-1.0e-4", "1.5", ".nan", ".inf"] {
        assert_rejects(
            &mutate("default: 1.0e-4", &format!("default: {bad}")),
            "default:",
            "out of range",
        );
    }
    assert_rejects(
        &mutate("logits: 1.0e-3 }", "logits: 1.0e-3, route_margin: -1 }"),
        "route_margin",
        "route_margin -1 must be finite and >= 0",
    );
}

/// `check: drift`: a second model file of the same shape, bounds on the logits, no fault.
#[test]
fn drift_checks() {
    // a valid drift falsifier in place of FALSIFY-TEST-002
    let drift = BASE.replacen(
        "    stages: [router_logits, topk_ids]\n    layers: 0..2\n    check: routing",
        "    candidate_model: moe8\n    stages: all\n    layers: all\n    thresholds: { kld: 1.0e-3, top1: 0.9 }\n    check: drift",
        1,
    )
    .replacen(
        "  dense: { preset: tiny-dense, quant: f32, seed: 1 }",
        "  dense: { preset: tiny-dense, quant: f32, seed: 1 }\n  moe8: { path: fixtures/qwen3moe-tiny/qwen3moe-tiny-q8_0.gguf }",
        1,
    )
    .replacen("backends: [cpu, cuda]", "backends: [cpu, cpu]", 1);
    let (_, diags) = lint::lint(&[src("t", &drift)]);
    assert!(diags.is_empty(), "{diags:?}");
    let edit = |from: &str, to: &str| {
        assert!(drift.contains(from), "{from}");
        drift.replacen(from, to, 1)
    };
    assert_rejects(
        &edit("    candidate_model: moe8\n", ""),
        "check: drift",
        "name the second in `candidate_model`",
    );
    assert_rejects(
        &edit("candidate_model: moe8", "candidate_model: nope"),
        "candidate_model: nope",
        "candidate_model `nope` is not defined",
    );
    assert_rejects(
        &edit("candidate_model: moe8", "candidate_model: dense"),
        "candidate_model: dense",
        "not the same architecture and shape as model moe (architecture: qwen3moe vs qwen3)",
    );
    assert_rejects(
        &edit("{ kld: 1.0e-3, top1: 0.9 }", "{ default: 1.0e-3 }"),
        "{ default: 1.0e-3 }",
        "check drift needs a bound on the logits",
    );
    assert_rejects(
        &edit("top1: 0.9", "top1: 1.5"),
        "top1: 1.5",
        "top1 1.5 must be within 0..=1",
    );
    assert_rejects(
        &edit("kld: 1.0e-3", "kld: -1"),
        "kld: -1",
        "kld -1 must be finite and >= 0",
    );
    assert_rejects(
        &edit(
            "    stages: all\n    layers: all\n    thresholds: { kld",
            "    stages: [layer_out]\n    layers: all\n    thresholds: { kld",
        ),
        "stages: [layer_out]",
        "check drift needs the logits stage captured",
    );
    // logits bounds belong to drift checks only
    assert_rejects(
        &mutate("logits: 1.0e-3 }", "logits: 1.0e-3, kld: 0.1 }"),
        "kld: 0.1",
        "`kld` bounds the logits of a drift check",
    );
}

#[test]
fn planted_fault_places() {
    // the fixture MoE and the dense preset both have 3 layers
    assert_rejects(
        &mutate("at: layer.1.attn_out", "at: layer.3.attn_out"),
        "at: layer.3",
        "has 3 layers",
    );
    // dense-only stage on an MoE model
    let t = mutate("nan, at: layer.1.attn_out", "nan, at: layer.1.ffn_gate").replace(
        "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
        "first_divergence: layer.1.ffn_gate",
    );
    assert_rejects(
        &t,
        "at: layer.1.ffn_gate",
        "model moe is MoE (qwen3moe) and has no ffn_gate stage",
    );
    // MoE-only stage on a dense model
    let t = mutate(
        "class: nan, at: layer.1.attn_out, args: [2]",
        "class: no_topk_renorm, at: layer.1.topk_weights",
    )
    .replace(
        "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
        "first_divergence: layer.1.topk_weights",
    );
    assert_rejects(
        &t,
        "at: layer.1.topk",
        "model dense is dense (qwen3) and has no topk_weights stage",
    );
    // unknown class, and a class at a stage it cannot live at
    assert_rejects(
        &mutate("class: nan", "class: bitflip"),
        "bitflip",
        "unknown fault class `bitflip`",
    );
    assert_rejects(
        &mutate(
            "class: nan, at: layer.1.attn_out, args: [2]",
            "class: rope_pair_swap, at: layer.1.attn_out",
        ),
        "rope_pair_swap",
        "cannot be planted at stage attn_out",
    );
    // experts beyond the model's expert count (the fixture has 8)
    let t = BASE
        .replace("models: [moe, dense]", "models: [moe]")
        .replace(
            "class: nan, at: layer.1.attn_out, args: [2]",
            "class: expert_swap, at: layer.1.ffn_out, args: [3, 8]",
        )
        .replace(
            "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
            "first_divergence: layer.1.ffn_out",
        );
    assert_rejects(
        &t,
        "    fault: {",
        "model moe: expert 8 out of range (the model has 8 experts)",
    );
    // no_topk_renorm where the router does not renormalise (qwen2moe): it would change nothing
    let t = BASE
        .replace(
            "dense: { preset: tiny-dense, quant: f32, seed: 1 }",
            "dense: { preset: tiny-qwen2moe, quant: f32, seed: 1 }",
        )
        .replace(
            "class: nan, at: layer.1.attn_out, args: [2]",
            "class: no_topk_renorm, at: layer.1.topk_weights",
        )
        .replace(
            "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
            "first_divergence: layer.1.topk_weights",
        );
    assert_rejects(
        &t,
        "    fault: {",
        "model dense: a qwen2moe router does not renormalise its top-k weights",
    );
    // q6k_as_q4k on a synthetic model without Q6_K tensors
    let t = BASE
        .replace("models: [moe, dense]", "models: [dense]")
        .replace(
            "class: nan, at: layer.1.attn_out, args: [2]",
            "class: q6k_as_q4k, at: layer.1.v_proj",
        )
        .replace(
            "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
            "first_divergence: layer.1.v_proj",
        );
    assert_rejects(
        &t,
        "    fault: {",
        "model dense's blk.1.attn_v.weight is F32, not Q6_K",
    );
    // q6k_as_q4k on a file model whose weight there is not Q6_K
    let t = BASE
        .replace("qwen3moe-tiny-f32.gguf", "qwen3moe-tiny-q8_0.gguf")
        .replace("models: [moe, dense]", "models: [moe]")
        .replace(
            "class: nan, at: layer.1.attn_out, args: [2]",
            "class: q6k_as_q4k, at: layer.2.ffn_out",
        )
        .replace(
            "first_divergence: layer.1.attn_out, origin: layer.1.attn_out",
            "first_divergence: layer.2.ffn_out",
        );
    assert_rejects(
        &t,
        "    fault: {",
        "model moe's blk.2.ffn_down_exps.weight is Q8_0, not Q6_K",
    );
    // layers of the capture plan out of range
    assert_rejects(
        &mutate("layers: 0..2", "layers: 0..5"),
        "layers: 0..5",
        "layer 4 is out of range",
    );
    // routing check on a dense model
    assert_rejects(
        &mutate(
            "models: [moe]\n    backends: [cpu, cuda]",
            "models: [dense]\n    backends: [cpu, cuda]",
        )
        .replace("[router_logits, topk_ids]", "[logits]"),
        "check: routing",
        "needs an MoE model; dense is dense",
    );
}

#[test]
fn fault_and_expect_go_together() {
    let t = mutate(
        "    expect: { first_divergence: layer.1.attn_out, origin: layer.1.attn_out }\n",
        "",
    );
    assert_rejects(&t, "    fault: {", "needs an `expect`");
    let t = mutate(
        "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n",
        "",
    );
    assert_rejects(&t, "expect:", "`expect` without a planted fault");
    let t = mutate("origin: layer.1.attn_out", "origin: layer.9.attn_out");
    assert_rejects(&t, "expect:", "has 3 layers");
    // the expected place must be captured, or the run cannot find it there
    let t = mutate(
        "    stages: all
    layers: all
    thresholds",
        "    stages: all
    layers: 0..1
    thresholds",
    );
    assert_rejects(&t, "expect:", "expected layer.1.attn_out is not captured");
    // a routing check needs router_logits and topk_ids captured
    let t = mutate("[router_logits, topk_ids]", "[topk_ids]");
    assert_rejects(&t, "[topk_ids]", "needs the router_logits stage captured");
}

#[test]
fn backends_and_prompt() {
    assert_rejects(
        &mutate("backends: [cpu, cuda]", "backends: [cpu]"),
        "backends: [cpu]\n",
        "must be a pair",
    );
    assert_rejects(
        &mutate(
            "tokens: [1, 2, 3]\n    stages: all",
            "tokens: []\n    stages: all",
        ),
        "tokens: []",
        "empty prompt",
    );
}

#[test]
fn statuses_need_evidence_and_contract_status_is_derived() {
    // a falsifier claiming FUNCTIONAL with no evidence
    let t = mutate(
        "    status: PROPOSED\n  - id: FALSIFY-TEST-002",
        "    status: FUNCTIONAL\n  - id: FALSIFY-TEST-002",
    );
    assert_rejects(
        &t,
        "status: FUNCTIONAL",
        "no amendment_history entry has evidence",
    );
    // evidence that shows less than claimed
    let t = t.replace(
        "  - { version: 1.0.1, date: 2026-11-25, kind: amended, title: t2 }",
        "  - { version: 1.0.1, date: 2026-11-25, kind: promotion, title: t2, evidence: { report: r.json, levels: { FALSIFY-TEST-001: ACTIVE_ALGORITHM_LEVEL } } }",
    );
    assert_rejects(
        &t,
        "status: FUNCTIONAL",
        "claims more than the last evidence shows (ACTIVE_ALGORITHM_LEVEL)",
    );
    // enough evidence: only the derived contract status is then wrong (min is PROPOSED: fine)
    let ok = t.replace(
        "FALSIFY-TEST-001: ACTIVE_ALGORITHM_LEVEL",
        "FALSIFY-TEST-001: FUNCTIONAL",
    );
    let (_, diags) = lint::lint(&[src("t", &ok)]);
    assert!(diags.is_empty(), "{diags:?}");
    // a later entry with a lower level is the one that counts
    let later = ok.clone()
        + "  - { version: 1.0.2, date: 2026-11-26, kind: promotion, title: t3, evidence: { report: r2.json, levels: { FALSIFY-TEST-001: ACTIVE_ALGORITHM_LEVEL } } }\n";
    let later = later.replace("version: 1.0.1\nstatus", "version: 1.0.2\nstatus");
    assert_rejects(
        &later,
        "status: FUNCTIONAL",
        "claims more than the last evidence shows",
    );
    // contract status above its weakest falsifier
    assert_rejects(
        &mutate(
            "status: PROPOSED\ndescription",
            "status: FUNCTIONAL\ndescription",
        ),
        "status: FUNCTIONAL",
        "must be their minimum, PROPOSED",
    );
}

#[test]
fn history_rules() {
    assert_rejects(
        &mutate("version: 1.0.1\nstatus", "version: 1.0.7\nstatus"),
        "version: 1.0.7",
        "differs from the last amendment",
    );
    assert_rejects(
        &mutate("version: 1.0.1, date", "version: 1.0.0, date"),
        "version: 1.0.0, date: 2026-11-25, kind: amended",
        "does not increase",
    );
    assert_rejects(
        &mutate(
            "date: 2026-11-25, kind: amended",
            "date: 25.11.2026, kind: amended",
        ),
        "25.11.2026",
        "not YYYY-MM-DD",
    );
    assert_rejects(
        &mutate("kind: created", "kind: amended"),
        "title: t,",
        "first amendment must be `created`",
    );
    assert_rejects(
        &mutate("kind: amended, title: t2 }", "kind: promotion, title: t2 }"),
        "title: t2",
        "must name its evidence",
    );
}

// ---- CLI: exit codes, and promote on a copy of contracts/ ---------------------------------

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run falsifier")
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "falsifier-contract-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Copy contracts/ into a temp dir, plus a one-falsifier contract whose status can move.
/// The shipped contracts as they were created: every status PROPOSED, promotion entries
/// dropped. The promote tests start from there whatever the real contracts have reached since
/// (they are promoted on real evidence), keeping every comment and the key order.
fn as_created(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("kind: promotion"))
        .collect();
    // the contract's version is its last remaining amendment's
    let created_version = kept
        .iter()
        .rev()
        .filter(|l| l.trim_start().starts_with("- { version: "))
        .find_map(|l| l.split("version: ").nth(1)?.split(',').next())
        .unwrap_or("1.0.0")
        .to_string();
    let mut out = String::new();
    for line in kept {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let replaced = |key: &str, value: &str| -> Option<String> {
            let rest = trimmed.strip_prefix(key)?;
            let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
            Some(format!("{indent}{key}{value}{}", &rest[end..]))
        };
        let new = if line.starts_with("version: ") {
            replaced("version: ", &created_version)
        } else {
            replaced("status: ", "PROPOSED")
        };
        out.push_str(new.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn copy_contracts(tag: &str) -> PathBuf {
    let d = temp_dir(tag);
    for e in std::fs::read_dir(Path::new(ROOT).join("contracts")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(d.join(p.file_name().unwrap()), as_created(&text)).unwrap();
    }
    std::fs::write(
        d.join("single.yaml"),
        "# single falsifier: the contract status follows it\ncontract: C-SINGLE\nversion: 0.1.0\nstatus: PROPOSED # derived\ndescription: one check\nmodels:\n  moe: { path: fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf }  # fixture\nfalsifiers:\n  # the only one\n  - id: FALSIFY-SINGLE-001\n    rule: r\n    prediction: p\n    if_fails: f\n    models: [moe]\n    backends: [cpu, cuda]\n    tokens: [1, 2]\n    status: PROPOSED # moves\namendment_history:\n  # creation\n  - version: 0.1.0\n    date: 2026-11-25\n    kind: created\n    title: made\n",
    )
    .unwrap();
    git_commit(&d);
    d
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Make `dir` a git repository holding its files in one commit: promote checks the evidence's
/// commit against the contracts' repository. Returns the commit.
fn git_commit(dir: &Path) -> String {
    git(dir, &["init", "-q"]);
    git(dir, &["add", "."]);
    git(dir, &["commit", "-q", "-m", "contracts"]);
    git(dir, &["rev-parse", "HEAD"])
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<(PathBuf, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.ends_with(".git"))
        .map(|p| {
            let t = std::fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    v.sort();
    v
}

/// The comment text of every line, in order (`#` at line start or after white space).
fn comments(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let b = l.as_bytes();
            (0..b.len())
                .find(|&i| b[i] == b'#' && (i == 0 || b[i - 1] == b' '))
                .map(|i| l[i..].to_string())
        })
        .collect()
}

/// A run report over the contracts in `contracts` (made at their repository's HEAD, on a card),
/// one row per (contract, falsifier, model, holds, level): each row carries its falsifier's
/// backend pair and planted-fault expectation as `falsifier run` writes them.
fn evidence(
    contracts: &Path,
    dir: &Path,
    rows: &[(&str, &str, &str, bool, Option<&str>)],
) -> PathBuf {
    let head = git(contracts, &["rev-parse", "HEAD"]);
    evidence_at(contracts, dir, &format!("\"{head}\""), rows)
}

/// [`evidence`] with `environment.commit` as given (JSON).
fn evidence_at(
    contracts: &Path,
    dir: &Path,
    commit: &str,
    rows: &[(&str, &str, &str, bool, Option<&str>)],
) -> PathBuf {
    let sources = falsifier::contract::read_sources(
        &falsifier::contract::collect_files(&[contracts.to_path_buf()]).unwrap(),
    )
    .unwrap();
    let (loaded, _) = lint::lint(&sources);
    let q = |s: Option<String>| s.map_or("null".to_string(), |s| format!("\"{s}\""));
    let rows: Vec<String> = rows
        .iter()
        .map(|(c, id, m, holds, level)| {
            let f = loaded
                .iter()
                .filter(|l| l.contract.contract == *c)
                .flat_map(|l| &l.contract.falsifiers)
                .find(|f| f.id == *id);
            let (backends, expected) = match f {
                Some(f) => {
                    let names: Vec<String> =
                        f.backends.iter().map(|b| format!("\"{}\"", b.name())).collect();
                    (names.join(","), f.expected_text())
                }
                None => (r#""cpu","cuda""#.to_string(), None),
            };
            format!(
                r#"{{"id":"{id}","contract":"{c}","model":"{m}","backends":[{backends}],"holds":{holds},"expected":{},"level":{},"first_divergence":null,"report_dir":"reports/x/{id}"}}"#,
                q(expected),
                q(level.map(str::to_string))
            )
        })
        .collect();
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = dir.join(format!("report-{}.json", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(
        &p,
        format!(
            r#"{{"schema":"falsifier-report/1","created":"2026-11-25T19:00:00Z","command":"falsifier run contracts --report-dir reports/x","environment":{{"host":"h","card":"NVIDIA H100 80GB HBM3","driver":"580.1","commit":{commit}}},"holds":true,"rows_we_ignore":[],"falsifiers":[{}]}}"#,
            rows.join(",")
        ),
    )
    .unwrap();
    p
}

#[test]
fn shipped_contracts_lint_clean() {
    let out = run(&["lint", "contracts"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unknown_key_exits_2_with_file_line() {
    let d = temp_dir("unknown");
    let f = d.join("bad.yaml");
    std::fs::write(
        &f,
        mutate("    heavy: false\n", "    heavy: false\n    colour: red\n"),
    )
    .unwrap();
    let out = run(&["lint", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = line_of(&std::fs::read_to_string(&f).unwrap(), "colour");
    assert!(
        err.contains(&format!("{}:{line}:", f.display())) && err.contains("unknown field `colour`"),
        "{err}"
    );
}

#[test]
fn promote_keeps_comments_is_idempotent_and_refuses_regressions() {
    let d = copy_contracts("promote");
    let ev_dir = temp_dir("promote-ev");
    let ev = evidence(
        &d,
        &ev_dir,
        &[
            (
                "C-SINGLE",
                "FALSIFY-SINGLE-001",
                "moe",
                true,
                Some("ACTIVE_ALGORITHM_LEVEL"),
            ),
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-NAN-001",
                "moe-f32",
                true,
                Some("ACTIVE_ALGORITHM_LEVEL"),
            ),
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-NAN-001",
                "dense-f32",
                true,
                Some("ACTIVE_ALGORITHM_LEVEL"),
            ),
            // one of two models only: partial evidence still proves its level (capped at FUNCTIONAL)
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-CLEAN-001",
                "moe-f32",
                true,
                Some("ACTIVE_ALGORITHM_LEVEL"),
            ),
            (
                "C-TRACE-MOE-GPU-SUB-STAGES",
                "FALSIFY-MOE-SUB-002",
                "moe-f32",
                true,
                Some("FUNCTIONAL"),
            ),
            (
                "C-TRACE-MOE-GPU-SUB-STAGES",
                "FALSIFY-MOE-SUB-002",
                "moe-q8",
                true,
                Some("FUNCTIONAL"),
            ),
            (
                "C-TRACE-MOE-GPU-SUB-STAGES",
                "FALSIFY-MOE-SUB-002",
                "moe-q4km",
                true,
                Some("FUNCTIONAL"),
            ),
            // a failing PROPOSED falsifier is no regression
            (
                "C-TRACE-MOE-GPU-SUB-STAGES",
                "FALSIFY-MOE-SUB-001",
                "moe-f32",
                false,
                None,
            ),
            (
                "C-NOT-HERE",
                "FALSIFY-NOT-HERE",
                "m",
                true,
                Some("FUNCTIONAL"),
            ),
        ],
    );
    let before = snapshot(&d);
    let dstr = d.to_str().unwrap();
    let evs = ev.to_str().unwrap();

    // dry run: prints a diff, writes nothing
    let out = run(&[
        "promote",
        "--evidence",
        evs,
        "--contracts",
        dstr,
        "--dry-run",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        so.contains("-    status: PROPOSED # moves\n+    status: ACTIVE_ALGORITHM_LEVEL # moves"),
        "{so}"
    );
    assert_eq!(snapshot(&d), before, "dry run wrote");

    // real run
    let out = run(&["promote", "--evidence", evs, "--contracts", dstr]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FALSIFY-SELF-CLEAN-001: no level for model(s) moe-q8"),
        "{err}"
    );
    let so = String::from_utf8_lossy(&out.stdout);
    for line in [
        "FALSIFY-SELF-CLEAN-001 PROPOSED -> ACTIVE_ALGORITHM_LEVEL",
        "FALSIFY-SELF-NAN-001 PROPOSED -> ACTIVE_ALGORITHM_LEVEL",
        // FUNCTIONAL on every model of the falsifier
        "FALSIFY-MOE-SUB-002 PROPOSED -> DISCHARGED",
    ] {
        assert!(so.contains(line), "{line}: {so}");
    }
    assert!(err.contains("FALSIFY-NOT-HERE of C-NOT-HERE"), "{err}");
    let after = snapshot(&d);
    assert_eq!(before.len(), after.len(), "temp files left behind");
    let mut changed = 0;
    for ((p, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(comments(old), comments(new), "comments of {}", p.display());
        if old != new {
            changed += 1;
            // only additions and replaced status/version scalars: old line count + 1 entry
            assert_eq!(
                new.lines().count(),
                old.lines().count() + 1,
                "{}",
                p.display()
            );
        }
    }
    assert_eq!(changed, 3);
    let single = std::fs::read_to_string(d.join("single.yaml")).unwrap();
    assert!(
        single.contains("status: ACTIVE_ALGORITHM_LEVEL # derived\n"),
        "{single}"
    );
    assert!(single.contains("version: 0.1.1\n"), "{single}");
    assert!(single.contains("  - { version: 0.1.1, date: "), "{single}");
    assert!(
        single.contains(r#"title: "FALSIFY-SINGLE-001: PROPOSED -> ACTIVE_ALGORITHM_LEVEL""#),
        "{single}"
    );
    assert!(
        single.contains(&format!(r#"commit: "{}""#, git(&d, &["rev-parse", "HEAD"])))
            && single.contains(r#"card: "NVIDIA H100 80GB HBM3""#),
        "{single}"
    );
    assert!(
        single.contains("levels: { FALSIFY-SINGLE-001: ACTIVE_ALGORITHM_LEVEL }"),
        "{single}"
    );
    let sub = std::fs::read_to_string(d.join("trace-moe-gpu-sub-stages.yaml")).unwrap();
    assert!(
        sub.contains("status: PROPOSED   # derived from"),
        "contract stays at its weakest: {sub}"
    );
    // lints clean afterwards
    let out = run(&["lint", dstr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // second promote with the same evidence: byte-identical, no new history entry
    let out = run(&["promote", "--evidence", evs, "--contracts", dstr]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to promote"));
    assert_eq!(snapshot(&d), after);

    // a regression: reported, exit 1, not applied
    let bad = evidence(
        &d,
        &ev_dir,
        &[
            ("C-SINGLE", "FALSIFY-SINGLE-001", "moe", false, None),
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-NAN-002",
                "moe-f32",
                true,
                Some("ACTIVE_ALGORITHM_LEVEL"),
            ),
        ],
    );
    let out = run(&[
        "promote",
        "--evidence",
        bad.to_str().unwrap(),
        "--contracts",
        dstr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("REGRESSION FALSIFY-SINGLE-001"), "{err}");
    assert_eq!(
        std::fs::read_to_string(d.join("single.yaml")).unwrap(),
        single
    );
    // the other falsifier's promotion rests on its own evidence and is applied
    let selftest = std::fs::read_to_string(d.join("harness-self-test.yaml")).unwrap();
    assert!(
        selftest.contains("FALSIFY-SELF-NAN-002: PROPOSED -> ACTIVE_ALGORITHM_LEVEL"),
        "{selftest}"
    );

    // never backwards: FUNCTIONAL on the only model of an ACTIVE_ALGORITHM_LEVEL falsifier
    // discharges it; ACTIVE evidence afterwards changes nothing
    let up = evidence(
        &d,
        &ev_dir,
        &[(
            "C-SINGLE",
            "FALSIFY-SINGLE-001",
            "moe",
            true,
            Some("FUNCTIONAL"),
        )],
    );
    let out = run(&[
        "promote",
        "--evidence",
        up.to_str().unwrap(),
        "--contracts",
        dstr,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let single2 = std::fs::read_to_string(d.join("single.yaml")).unwrap();
    assert!(single2.contains("status: DISCHARGED # moves"), "{single2}");
    assert!(
        single2.contains("status: DISCHARGED # derived"),
        "{single2}"
    );
    assert!(single2.contains("version: 0.1.2\n"), "{single2}");
    let down = evidence(
        &d,
        &ev_dir,
        &[(
            "C-SINGLE",
            "FALSIFY-SINGLE-001",
            "moe",
            true,
            Some("ACTIVE_ALGORITHM_LEVEL"),
        )],
    );
    let out = run(&[
        "promote",
        "--evidence",
        down.to_str().unwrap(),
        "--contracts",
        dstr,
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(d.join("single.yaml")).unwrap(),
        single2
    );
    let out = run(&["lint", dstr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&ev_dir);
}

#[test]
fn promote_rejects_bad_evidence() {
    let d = copy_contracts("badev");
    let f = d.join("not-a-report.json");
    std::fs::write(
        &f,
        r#"{"schema":"something-else/2","holds":true,"falsifiers":[]}"#,
    )
    .unwrap();
    let out = run(&[
        "promote",
        "--evidence",
        f.to_str().unwrap(),
        "--contracts",
        d.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `falsifier-report/1`"));
    let _ = std::fs::remove_dir_all(&d);
}

fn promote(ev: &Path, d: &Path) -> Output {
    run(&[
        "promote",
        "--evidence",
        ev.to_str().unwrap(),
        "--contracts",
        d.to_str().unwrap(),
    ])
}

/// Once, evidence that says it holds, with a made-up commit, was accepted. The commit
/// must be a full id that the contracts' repository holds; nothing is written otherwise.
#[test]
fn promote_checks_the_evidence_commit() {
    let d = copy_contracts("commit");
    let ev_dir = temp_dir("commit-ev");
    let rows = [(
        "C-SINGLE",
        "FALSIFY-SINGLE-001",
        "moe",
        true,
        Some("FUNCTIONAL"),
    )];
    let before = snapshot(&d);
    for (commit, want) in [
        ("null", "environment.commit is null"),
        (
            "\"0000000000000000000000000000000000000000\"",
            "is not a full commit id",
        ),
        ("\"abc1234\"", "is not a full commit id"),
        (
            "\"1234567890abcdef1234567890abcdef12345678\"",
            "is not in the git repository of",
        ),
    ] {
        let ev = evidence_at(&d, &ev_dir, commit, &rows);
        let out = promote(&ev, &d);
        assert_eq!(out.status.code(), Some(2), "{commit}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{commit}: {err}");
        assert_eq!(snapshot(&d), before, "{commit}: wrote");
    }
    // contracts outside any git repository: refused, saying so (when the temp dir really is
    // outside one)
    let plain = temp_dir("commit-plain");
    std::fs::copy(d.join("single.yaml"), plain.join("single.yaml")).unwrap();
    let outside = Command::new("git")
        .arg("-C")
        .arg(&plain)
        .args(["rev-parse", "--git-dir"])
        .output()
        .is_ok_and(|o| !o.status.success());
    if outside {
        let ev = evidence(&d, &ev_dir, &rows);
        let out = promote(&ev, &plain);
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not in a git repository"), "{err}");
    }
    // the real commit promotes
    let ev = evidence(&d, &ev_dir, &rows);
    let out = promote(&ev, &d);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        std::fs::read_to_string(d.join("single.yaml"))
            .unwrap()
            .contains("status: DISCHARGED # moves")
    );
    for x in [&d, &ev_dir, &plain] {
        let _ = std::fs::remove_dir_all(x);
    }
}

/// Once, a cpu-vs-cpu-f32 row claiming FUNCTIONAL was written as DISCHARGED. Levels are
/// recomputed from the rows: a CPU pair proves ACTIVE_ALGORITHM_LEVEL; a GPU pair proves
/// nothing without a card; a row of another backend pair proves nothing.
#[test]
fn promote_recomputes_levels_from_the_rows() {
    let d = copy_contracts("recompute");
    let ev_dir = temp_dir("recompute-ev");
    let ev = evidence(
        &d,
        &ev_dir,
        &[
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-CLEAN-003",
                "moe-f32",
                true,
                Some("FUNCTIONAL"),
            ),
            (
                "C-HARNESS-SELF-TEST",
                "FALSIFY-SELF-CLEAN-003",
                "dense-f32",
                true,
                Some("DISCHARGED"),
            ),
        ],
    );
    let out = promote(&ev, &d);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        so.contains("FALSIFY-SELF-CLEAN-003 PROPOSED -> ACTIVE_ALGORITHM_LEVEL"),
        "{so}"
    );
    let text = std::fs::read_to_string(d.join("harness-self-test.yaml")).unwrap();
    assert!(
        text.contains("levels: { FALSIFY-SELF-CLEAN-003: ACTIVE_ALGORITHM_LEVEL }"),
        "{text}"
    );

    // the same rows edited to another pair, on the GPU contract: they prove nothing
    let text = std::fs::read_to_string(&ev).unwrap();
    let forged = ev_dir.join("forged.json");
    std::fs::write(
        &forged,
        text.replace("FALSIFY-SELF-CLEAN-003", "FALSIFY-SINGLE-001")
            .replace("C-HARNESS-SELF-TEST", "C-SINGLE")
            .replace("\"moe-f32\"", "\"moe\"")
            .replace("\"dense-f32\"", "\"moe\""),
    )
    .unwrap();
    let before = snapshot(&d);
    let out = promote(&forged, &d);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the row ran [cpu, cpu-f32], the contract names [cpu, cuda]"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to promote"));
    assert_eq!(snapshot(&d), before);
    // and a GPU pair's FUNCTIONAL without a card behind it proves nothing
    let ev = evidence(
        &d,
        &ev_dir,
        &[(
            "C-SINGLE",
            "FALSIFY-SINGLE-001",
            "moe",
            true,
            Some("FUNCTIONAL"),
        )],
    );
    let nocard = ev_dir.join("nocard.json");
    std::fs::write(
        &nocard,
        std::fs::read_to_string(&ev)
            .unwrap()
            .replace(r#""card":"NVIDIA H100 80GB HBM3""#, r#""card":null"#),
    )
    .unwrap();
    let out = promote(&nocard, &d);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the report names no card"),
        "{out:?}"
    );
    assert_eq!(snapshot(&d), before);
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&ev_dir);
}

/// Once, killed promotions left `*.yaml.PID.N.tmp` files. A promote removes those of
/// writers that are gone (a dry run only names them).
#[test]
fn promote_removes_orphan_temp_files() {
    let d = copy_contracts("orphans");
    let ev_dir = temp_dir("orphans-ev");
    // pid 4194305 is above Linux's largest: no such process
    let orphan = d.join("single.yaml.4194305.0.tmp");
    std::fs::write(&orphan, "half a contract").unwrap();
    let other = d.join("notes.txt.4194305.0.tmp");
    std::fs::write(&other, "not ours").unwrap();
    let ev = evidence(&d, &ev_dir, &[]);
    let dry = run(&[
        "promote",
        "--evidence",
        ev.to_str().unwrap(),
        "--contracts",
        d.to_str().unwrap(),
        "--dry-run",
    ]);
    assert_eq!(dry.status.code(), Some(0), "{dry:?}");
    assert!(orphan.exists(), "a dry run removes nothing");
    let out = promote(&ev, &d);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("temp file of a promotion killed"), "{err}");
    assert!(!orphan.exists());
    assert!(other.exists(), "only promotion temps are touched");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&ev_dir);
}

/// Once, a promotion killed between its renames left one file new and another old. Its
/// journal makes every command refuse the half-promoted set, and the next promote completes it
/// before anything else (even before it reads its report).
#[test]
fn a_promotion_killed_after_its_journal_is_completed() {
    let d = copy_contracts("journal");
    let target = std::path::absolute(d.join("single.yaml")).unwrap();
    let promoted = std::fs::read_to_string(&target)
        .unwrap()
        .replace("status: PROPOSED # moves", "status: PROPOSED # moved");
    // what a promote killed after writing its journal, before renaming, leaves on disk
    let tmp = std::path::absolute(d.join("single.yaml.4194305.0.tmp")).unwrap();
    std::fs::write(&tmp, &promoted).unwrap();
    std::fs::write(
        d.join(".falsifier-promote.journal"),
        serde_json::json!({ "pid": 4194305, "renames": [[tmp, target]] }).to_string(),
    )
    .unwrap();
    let out = run(&["lint", d.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("half promoted"), "{err}");
    let out = run(&[
        "promote",
        "--evidence",
        "no-such-report.json",
        "--contracts",
        d.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "the report is still missing");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), promoted);
    assert!(!tmp.exists());
    assert!(!d.join(".falsifier-promote.journal").exists());
    let out = run(&["lint", d.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let _ = std::fs::remove_dir_all(&d);
}

/// Lint never panics: random byte edits of the shipped contracts (YAML punctuation inserted,
/// characters deleted) give diagnostics or a clean result, never a crash.
#[test]
fn lint_survives_mangled_contracts() {
    let texts: Vec<String> = [
        "harness-self-test",
        "trace-moe-gpu-sub-stages",
        "qwen3-moe-forward-gpu",
    ]
    .iter()
    .map(|n| std::fs::read_to_string(Path::new(ROOT).join(format!("contracts/{n}.yaml"))).unwrap())
    .collect();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed as usize
    };
    let alphabet = b":-[]{}#\n '\"!&*|>,?%@`\t0.e";
    let mut rejected = 0;
    for _ in 0..300 {
        let mut b = texts[rnd() % texts.len()].as_bytes().to_vec();
        for _ in 0..1 + rnd() % 4 {
            let pos = rnd() % (b.len() + 1);
            if rnd() % 3 == 0 && pos < b.len() {
                b.remove(pos);
            } else {
                b.insert(pos, alphabet[rnd() % alphabet.len()]);
            }
        }
        let text = String::from_utf8_lossy(&b).into_owned();
        let (_, diags) = lint::lint(&[src("m", &text)]);
        rejected += usize::from(!diags.is_empty());
        for d in &diags {
            assert!(
                d.pos.line >= 1 && d.pos.line <= text.lines().count().max(1) + 1,
                "{d}"
            );
        }
    }
    // most random edits break something; the test would be vacuous if none were caught
    assert!(
        rejected > 100,
        "only {rejected} of 300 mangled files rejected"
    );
}

// ---- hostile input: never a panic, a hang or an exhausted machine --------------

/// Item 14/17: preset overrides past the bounds are lint errors at the model's line, before lint
/// lists a tensor of them (`layers: 1000000000000` grew memory until the machine died).
#[test]
fn absurd_preset_shapes_are_lint_errors() {
    for (over, msg) in [
        (
            "layers: 1000000000000",
            "--layers 1000000000000 exceeds the limit of 4096",
        ),
        (
            "vocab: 18446744073709551615",
            "--vocab 18446744073709551615 exceeds the limit of 16777216",
        ),
        (
            "heads: 4294967296, head_dim: 4294967296",
            "--heads 4294967296 exceeds the limit",
        ),
    ] {
        assert_rejects(
            &mutate("seed: 1 }", &format!("seed: 1, {over} }}")),
            "dense: {",
            msg,
        );
    }
}

/// Item 15: a huge layer range is one range, checked against the models' layer counts.
#[test]
fn huge_layer_ranges_are_lint_errors() {
    let start = std::time::Instant::now();
    assert_rejects(
        &mutate("layers: 0..2", "layers: \"0..1000000000000\""),
        "layers: \"0..1000000000000\"",
        "layer 999999999999 is out of range: model moe has 3 layers",
    );
    assert!(start.elapsed().as_secs_f64() < 10.0);
}

/// Item 16: a prompt longer than a model's context length is a lint error.
#[test]
fn prompts_longer_than_the_context_are_lint_errors() {
    let long: Vec<String> = (0..257).map(|i| (i % 200).to_string()).collect();
    let text = mutate(
        "tokens: [1, 2, 3]",
        &format!("tokens: [{}]", long.join(", ")),
    );
    assert_rejects(
        &text,
        "tokens: [0, 1",
        "the prompt has 257 tokens, more than model moe's context length of 256",
    );
    assert_rejects(
        &text,
        "tokens: [0, 1",
        "model dense's context length of 256",
    );
}

/// Item 18: a 100,000-token prompt lints in linear time (it took 113 s when every key lookup
/// rebuilt the line table), and flow nesting past 64 levels is refused before the YAML scanner
/// (super-linear in depth) sees it: depth 100,000 in a 200 KB file.
#[test]
fn huge_and_deep_contracts_lint_quickly() {
    let long: Vec<String> = (0..100_000).map(|i| (i % 200).to_string()).collect();
    let text = mutate(
        "tokens: [1, 2, 3]",
        &format!("tokens: [{}]", long.join(", ")),
    );
    let start = std::time::Instant::now();
    let (_, diags) = lint::lint(&[src("t", &text)]);
    let took = start.elapsed();
    assert!(
        diags.iter().any(|d| d.msg.contains("100000 tokens")),
        "{diags:?}"
    );
    assert!(took.as_secs_f64() < 20.0, "lint took {took:?}");

    let d = 100_000;
    let deep = mutate(
        "tokens: [1, 2, 3]",
        &format!("tokens: {}{}", "[".repeat(d), "]".repeat(d)),
    );
    assert!(deep.len() > 200_000);
    let start = std::time::Instant::now();
    let (loaded, diags) = lint::lint(&[src("t", &deep)]);
    let took = start.elapsed();
    assert!(loaded.is_empty());
    let line = line_of(&deep, "tokens: [[");
    assert!(
        diags.iter().any(|d| d.pos.line == line
            && d.pos.column == 13 + 64
            && d.msg.contains("nest deeper than 64 levels")),
        "{diags:?}"
    );
    assert!(took.as_secs_f64() < 5.0, "lint took {took:?}");
    // nesting within the bound still reaches the parser (and its own type error)
    let shallow = mutate("tokens: [1, 2, 3]", "tokens: [[[[1]]]]");
    let (_, diags) = lint::lint(&[src("t", &shallow)]);
    assert!(
        diags.iter().all(|d| !d.msg.contains("nest deeper")),
        "{diags:?}"
    );
}

// ---- text prompts ------------------------------------------------------------------------

#[test]
fn a_falsifier_gives_exactly_one_of_tokens_and_prompt() {
    assert_rejects(
        &mutate(
            "tokens: [1, 2, 3]\n    stages: all",
            "tokens: [1, 2, 3]\n    prompt: Hi\n    stages: all",
        ),
        "prompt: Hi",
        "give exactly one of tokens: (ids) and prompt: (text), not both",
    );
    assert_rejects(
        &mutate("tokens: [1, 2, 3]\n    stages: all", "stages: all"),
        "- id: FALSIFY-TEST-001",
        "empty prompt: give exactly one of tokens: (ids) and prompt: (text)",
    );
    assert_rejects(
        &mutate(
            "tokens: [1, 2, 3]\n    stages: all",
            "prompt: \"\"\n    stages: all",
        ),
        "prompt: \"\"",
        "empty prompt",
    );
    let (_, diags) = lint::lint(&[src(
        "t",
        &mutate(
            "tokens: [1, 2, 3]\n    stages: all",
            "prompt: \"Hi <|im_start|>\"\n    stages: all",
        ),
    )]);
    assert!(diags.is_empty(), "{diags:?}");

    // a file model whose tokenizer metadata cannot be used: named at the prompt's line
    use falsifier::model::gguf::{GgufFile, GgufWriter, MetaValue};
    let fixture = Path::new(ROOT).join("fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let src_model = GgufFile::open(&fixture).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src_model.metadata() {
        let v = match k.as_str() {
            "tokenizer.ggml.model" => MetaValue::String("wordpiece".into()),
            _ => v.clone(),
        };
        w.add_kv(k, v);
    }
    for t in src_model.tensors() {
        w.add_tensor(&t.name, t.dims.clone(), t.ty).unwrap();
    }
    let dir = temp_dir("lint-prompt");
    let bad = dir.join("bad-tok.gguf");
    w.write_file(&bad, |i, sink| {
        let t = &src_model.tensors()[i];
        sink.write_all(src_model.tensor_data(t))
            .map_err(|e| falsifier::Error::internal(e.to_string()))
    })
    .unwrap();
    let text = mutate(
        "tokens: [1, 2, 3]\n    stages: all",
        "prompt: \"Hi\"\n    stages: all",
    )
    .replace(
        "fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf",
        bad.to_str().unwrap(),
    );
    assert_rejects(
        &text,
        "prompt: \"Hi\"",
        "key 'tokenizer.ggml.model': tokenizer model `wordpiece` is not supported",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `prompt:` end to end: the runner tokenizes it with the model's own tokenizer, the planted
/// NaN is found where planted, and every report names the position with its token's text.
#[test]
fn a_prompt_contract_runs_and_reports_name_positions_by_their_text() {
    let dir = temp_dir("prompt");
    let model = Path::new(ROOT).join("fixtures/qwen3moe-tiny/qwen3moe-tiny-f32.gguf");
    let contract = format!(
        r#"contract: C-TEST-PROMPT
version: 1.0.0
status: PROPOSED
description: a text prompt
models:
  moe: {{ path: "{}" }}
falsifiers:
  - id: FALSIFY-TEST-PROMPT-001
    rule: r
    prediction: p
    if_fails: f
    models: [moe]
    backends: [cpu, cpu]
    prompt: "Qwen3 <|im_start|>"
    fault: {{ class: nan, at: layer.1.attn_out, args: [66] }}
    expect: {{ first_divergence: layer.1.attn_out }}
    status: PROPOSED
amendment_history:
  - {{ version: 1.0.0, date: 2026-12-02, kind: created, title: t }}
"#,
        model.display()
    );
    let file = dir.join("prompt.yaml");
    std::fs::write(&file, contract).unwrap();
    let lint_out = run(&["lint", file.to_str().unwrap()]);
    assert_eq!(lint_out.status.code(), Some(0), "{lint_out:?}");
    let reports = dir.join("reports");
    let out = run(&[
        "run",
        file.to_str().unwrap(),
        "--report-dir",
        reports.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // flat index 66 of [T, 64] is position 1, feature 2: the token "w"
    let mut found = Vec::new();
    let mut stack = vec![reports.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                found.push(p);
            }
        }
    }
    let trial = |name: &str| {
        found
            .iter()
            .find(|p| p.file_name().unwrap() == name && p.parent().unwrap() != reports.as_path())
            .unwrap_or_else(|| panic!("no trial {name} in {found:?}"))
    };
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(trial("report.json")).unwrap()).unwrap();
    let ids: Vec<u64> = "Qwen3 ".bytes().map(u64::from).chain([257]).collect();
    assert_eq!(json["reference"]["tokens"], serde_json::json!(ids));
    assert_eq!(
        json["reference"]["pieces"],
        serde_json::json!(["Q", "w", "e", "n", "3", " ", "<|im_start|>"])
    );
    let md = std::fs::read_to_string(trial("report.md")).unwrap();
    assert!(md.contains("position 1 \"w\", feature 2"), "{md}");
    let html = std::fs::read_to_string(trial("report.html")).unwrap();
    assert!(
        html.contains("position 1 &quot;w&quot;, feature 2"),
        "{html}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Schedules: chunk >= 1, decode <= prompt length, only on CPU backends; a KV-cache fault needs
/// a schedule on its side under which it fires; expect.position inside the prompt.
#[test]
fn schedules_and_cache_faults() {
    let sched = |s: &str| {
        mutate(
            "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n",
            &format!(
                "    schedule: {s}\n    fault: {{ class: nan, at: layer.1.attn_out, args: [2] }}\n"
            ),
        )
    };
    let (_, diags) = lint::lint(&[src("t", &sched("{ chunk: 2, decode: 1 }"))]);
    assert!(diags.is_empty(), "{diags:?}");
    let t = sched("{ chunk: 0 }");
    assert_rejects(
        &t,
        "schedule:",
        "the prefill chunk must be at least 1 token",
    );
    let t = sched("{ decode: 4 }");
    assert_rejects(
        &t,
        "schedule:",
        "4 decode steps, but the prompt has only 3 tokens",
    );
    let t = mutate(
        "    check: routing\n",
        "    check: routing\n    schedule: { decode: 1 }\n",
    );
    // the CUDA backend walks a KV cache too
    let (_, diags) = lint::lint(&[src("t", &t)]);
    assert!(diags.is_empty(), "{diags:?}");
    let cache_fault = |s: &str, class: &str| {
        mutate(
            "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n    expect: { first_divergence: layer.1.attn_out, origin: layer.1.attn_out }\n",
            &format!(
                "{s}    fault: {{ class: {class}, at: layer.1.attn_probs }}\n    expect: {{ first_divergence: layer.1.attn_probs, position: 2 }}\n"
            ),
        )
    };
    let (_, diags) = lint::lint(&[src(
        "t",
        &cache_fault("    schedule: { decode: 1 }\n", "kv_stale"),
    )]);
    assert!(diags.is_empty(), "{diags:?}");
    let t = cache_fault("", "kv_stale");
    assert_rejects(
        &t,
        "fault: { class: kv_stale",
        "needs at least one decode step",
    );
    let t = cache_fault("    schedule: { chunk: 1 }\n", "kv_slot_off_by_one");
    assert_rejects(
        &t,
        "fault: { class: kv_slot",
        "needs at least one decode step",
    );
    let t = cache_fault("    schedule: { chunk: 2, decode: 1 }\n", "chunk_mask");
    assert_rejects(&t, "fault: { class: chunk_mask", "two prefill chunks");
    let t = cache_fault("    schedule: { decode: 1 }\n", "kv_stale")
        .replace("position: 2", "position: 3");
    assert_rejects(
        &t,
        "expect: {",
        "expect.position 3 is past the prompt (3 tokens)",
    );
}

/// `kv_cache` in a schedule is `f32` or `f16`: anything else is refused at its place, naming
/// the known values; an f16 cache is a schedule CUDA does not run yet, and alone (one step)
/// it gives a KV-cache fault no step to fire in.
#[test]
fn kv_cache_types() {
    let sched = |side: &str, s: &str| {
        mutate(
            "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n",
            &format!(
                "    {side}: {s}\n    fault: {{ class: nan, at: layer.1.attn_out, args: [2] }}\n"
            ),
        )
    };
    for side in ["schedule", "reference_schedule"] {
        for ok in [
            "{ kv_cache: f16 }",
            "{ kv_cache: f32 }",
            "{ chunk: 2, decode: 1, kv_cache: f16 }",
        ] {
            let (loaded, diags) = lint::lint(&[src("t", &sched(side, ok))]);
            assert!(diags.is_empty(), "{side} {ok}: {diags:?}");
            let f = &loaded[0].contract.falsifiers[0];
            let (r, c) = f.schedules();
            let s = if side == "schedule" { c } else { r };
            let want = if ok.contains("f16") { "f16" } else { "f32" };
            assert_eq!(s.kv.to_string(), want, "{side} {ok}");
        }
        for bad in ["f8", "F16", "bf16", "1"] {
            let t = sched(side, &format!("{{ chunk: 2, kv_cache: {bad} }}"));
            assert_rejects(
                &t,
                "kv_cache:",
                &format!(
                    "falsifiers[0].{side}.kv_cache: unknown KV cache type `{bad}` (known: f32, f16)"
                ),
            );
        }
    }
    // the error points at the value itself
    let t = sched("schedule", "{ chunk: 2, kv_cache: f8 }");
    let (_, diags) = lint::lint(&[src("t", &t)]);
    let line = t.lines().find(|l| l.contains("kv_cache")).unwrap();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(
        diags[0].pos.column,
        line.find("f8").unwrap() + 1,
        "{diags:?}"
    );
    let t = mutate(
        "    check: routing\n",
        "    check: routing\n    schedule: { kv_cache: f16 }\n",
    );
    // the CUDA backend keeps an f16 cache too
    let (_, diags) = lint::lint(&[src("t", &t)]);
    assert!(diags.is_empty(), "{diags:?}");
    let t = mutate(
        "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n    expect: { first_divergence: layer.1.attn_out, origin: layer.1.attn_out }\n",
        "    schedule: { kv_cache: f16 }\n    fault: { class: kv_stale, at: layer.1.attn_probs }\n    expect: { first_divergence: layer.1.attn_probs }\n",
    );
    assert_rejects(
        &t,
        "fault: { class: kv_stale",
        "schedule `kv=f16`: fault kv_stale needs at least one decode step",
    );
    // a clean falsifier may expect a divergence only where the sides' caches differ
    let clean = |schedules: &str| {
        mutate(
            "    fault: { class: nan, at: layer.1.attn_out, args: [2] }\n    expect: { first_divergence: layer.1.attn_out, origin: layer.1.attn_out }\n",
            &format!("{schedules}    expect: {{ first_divergence: layer.0.attn_ctx }}\n"),
        )
    };
    for ok in [
        "    schedule: { kv_cache: f16 }\n",
        "    reference_schedule: { kv_cache: f16 }\n",
        "    reference_schedule: { chunk: 1 }\n    schedule: { decode: 2, kv_cache: f16 }\n",
    ] {
        let (_, diags) = lint::lint(&[src("t", &clean(ok))]);
        assert!(diags.is_empty(), "{ok}: {diags:?}");
    }
    for same in [
        "",
        "    schedule: { chunk: 2 }\n",
        "    reference_schedule: { kv_cache: f16 }\n    schedule: { decode: 1, kv_cache: f16 }\n",
        "    schedule: { kv_cache: f32 }\n",
    ] {
        assert_rejects(
            &clean(same),
            "expect:",
            "`expect` without a planted fault (a clean run expects every stage to Match; only sides whose schedules' kv_cache differ",
        );
    }
}
