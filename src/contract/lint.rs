//! `falsifier lint`: every rule a set of contracts must satisfy. All errors are collected (not
//! just the first), each with file:line:column.
//!
//! Rules, per contract file:
//! - the schema (unknown keys, wrong types, unknown checks/statuses: from yaml_serde);
//! - backend names known to this program's backend registry (shipped or registered);
//! - ids: `C-[A-Z0-9-]+` and `FALSIFY-[A-Z0-9-]+`, each unique across all files;
//! - version `MAJOR.MINOR.PATCH`, equal to the last amendment's version; amendment versions
//!   strictly increase; dates `YYYY-MM-DD`; the first amendment is `created`;
//! - models: exactly one of `path` (a GGUF file that exists and validates: metadata and tensor
//!   table) or `preset` (known, with a known `quant`, a `seed`, and overrides that make a model);
//!   shape overrides only for presets;
//! - falsifiers: models defined in `models`; exactly two backends; exactly one of `tokens` (a
//!   non-empty list of ids inside every model's vocabulary) and `prompt` (non-empty text that
//!   every file model's own tokenizer can tokenize within its context); known stages; layers within every model's layer
//!   count; thresholds finite with 0 < t <= 1 (`route_margin`: finite, >= 0), keyed by
//!   `default`, a stage or `route_margin`; `kld` (>= 0) and `top1` (0..=1) only for `check:
//!   drift`;
//! - planted faults: a known class at a place the class can live, at a stage and layer every
//!   model of the falsifier has (dense models have no router/top-k, MoE models no
//!   ffn_gate/ffn_up/ffn_act), expert indices below the expert count, and `q6k_as_q4k` only
//!   where the weight really is Q6_K (read from the file, or from the generator's Q4_K_M rule
//!   for a preset); a fault needs an `expect` and an `expect` needs a fault (or sides whose
//!   schedules' `kv_cache` differ: a declared difference, expected to show); expected keys must
//!   exist in every model and be captured by the falsifier's stages/layers;
//! - schedules (`schedule`, `reference_schedule`): a chunk of at least 1 token, no more decode
//!   steps than a `tokens:` prompt has (a text prompt's length is checked at run time), a
//!   `kv_cache` of `f32` or `f16` (from the schema), only on the built-in backends (cpu,
//!   cpu-f32, cuda: a registered engine's forward would run the whole prompt at once); a
//!   KV-cache fault
//!   (`kv_stale`, `kv_slot_off_by_one`, `rope_pos_reset`, `chunk_mask`) needs a schedule on
//!   its side with the steps it acts in; `expect.position` inside the prompt;
//! - `check: routing` only on MoE models, with router_logits and topk_ids captured;
//! - `candidate_model` defined, of the same architecture and shape as every trial model;
//!   `check: drift` with a `candidate_model`, a `kld` or `top1` bound, logits captured and no
//!   planted fault;
//! - statuses: no falsifier claims more than its last evidence shows (see [`super`]), and the
//!   contract status is the minimum of its falsifiers'.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::schema::{AmendmentKind, Check, Falsifier, ModelSpec, Selection, Status, parse_version};
use super::shape::{ModelShape, preset_shape, read_shape};
use super::{Diag, LoadedContract, Source, parse, resolve_model_path};
use crate::backend::FaultKind;
use crate::diff::LogitBounds;
use crate::model::quant::GgmlType;
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};

/// Lint a set of contract texts. Returns the contracts that parsed and every problem found.
pub fn lint(sources: &[Source]) -> (Vec<LoadedContract>, Vec<Diag>) {
    let mut diags = Vec::new();
    let mut loaded = Vec::new();
    for s in sources {
        match parse(s) {
            Ok(c) => loaded.push(c),
            Err(d) => diags.push(d),
        }
    }
    let mut shapes = ShapeCache::default();
    for c in &loaded {
        lint_one(c, &mut shapes, &mut diags);
    }
    duplicates(&loaded, &mut diags);
    (loaded, diags)
}

/// Lint files and directories from disk (none: `contracts/`).
pub fn lint_paths(paths: &[PathBuf]) -> crate::Result<Vec<Diag>> {
    let sources = super::read_sources(&super::collect_files(paths)?)?;
    Ok(lint(&sources).1)
}

fn id_ok(id: &str, prefix: &str) -> bool {
    match id.strip_prefix(prefix) {
        Some(rest) => {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        }
        None => false,
    }
}

fn date_ok(d: &str) -> bool {
    let b = d.as_bytes();
    b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        })
        && matches!(d[5..7].parse::<u32>(), Ok(1..=12))
        && matches!(d[8..10].parse::<u32>(), Ok(1..=31))
}

fn duplicates(loaded: &[LoadedContract], diags: &mut Vec<Diag>) {
    // id -> where it was first seen
    let mut contracts: HashMap<&str, (PathBuf, usize)> = HashMap::new();
    let mut falsifiers: HashMap<&str, (PathBuf, usize)> = HashMap::new();
    let first = |(file, line): &(PathBuf, usize)| format!("first at {}:{line}", file.display());
    for c in loaded {
        let id = c.contract.contract.as_str();
        match contracts.get(id) {
            Some(f) => diags.push(c.diag(
                "contract",
                format!("duplicate contract id {id} ({})", first(f)),
            )),
            None => {
                contracts.insert(id, (c.path.clone(), c.index.find("contract").line));
            }
        }
        for (i, f) in c.contract.falsifiers.iter().enumerate() {
            let at = format!("falsifiers[{i}].id");
            match falsifiers.get(f.id.as_str()) {
                Some(seen) => diags.push(c.diag(
                    &at,
                    format!("duplicate falsifier id {} ({})", f.id, first(seen)),
                )),
                None => {
                    falsifiers.insert(f.id.as_str(), (c.path.clone(), c.index.find(&at).line));
                }
            }
        }
    }
}

/// Model shapes, read once per file.
#[derive(Default)]
struct ShapeCache {
    files: HashMap<PathBuf, Result<ModelShape, String>>,
}

impl ShapeCache {
    fn file(&mut self, path: &Path) -> Result<ModelShape, String> {
        self.files
            .entry(path.to_path_buf())
            .or_insert_with(|| read_shape(path).map_err(|e| e.to_string()))
            .clone()
    }
}

/// Check a model spec; returns its shape when it is known.
fn lint_model(
    c: &LoadedContract,
    name: &str,
    m: &ModelSpec,
    shapes: &mut ShapeCache,
    diags: &mut Vec<Diag>,
) -> Option<ModelShape> {
    let at = format!("models.{name}");
    match (&m.path, &m.preset) {
        (Some(_), Some(_)) => {
            diags.push(c.diag(
                &at,
                format!("model {name}: give either path or preset, not both"),
            ));
            None
        }
        (None, None) => {
            diags.push(c.diag(&at, format!("model {name}: needs a path or a preset")));
            None
        }
        (Some(path), None) => {
            let mut extra: Vec<&str> = m.overrides().into_iter().map(|(k, _)| k).collect();
            if m.quant.is_some() {
                extra.push("quant");
            }
            if m.seed.is_some() {
                extra.push("seed");
            }
            if !extra.is_empty() {
                diags.push(c.diag(
                    &at,
                    format!(
                        "model {name}: {} only apply to a synthetic preset, not a file",
                        extra.join(", ")
                    ),
                ));
            }
            let full = resolve_model_path(&c.path, path);
            if !full.is_file() {
                diags.push(c.diag(
                    &format!("{at}.path"),
                    format!(
                        "model {name}: file {} not found (paths are relative to the repository root)",
                        full.display()
                    ),
                ));
                return None;
            }
            match shapes.file(&full) {
                Ok(s) => Some(s),
                Err(e) => {
                    diags.push(c.diag(&format!("{at}.path"), format!("model {name}: {e}")));
                    None
                }
            }
        }
        (None, Some(_)) => {
            if m.seed.is_none() {
                diags.push(c.diag(&at, format!("model {name}: a preset needs a seed")));
            }
            match preset_shape(m) {
                Ok(s) if m.seed.is_some() => Some(s),
                Ok(_) => None,
                Err(e) => {
                    let key = if e.starts_with("unknown preset") {
                        "preset"
                    } else if e.starts_with("unknown quant") {
                        "quant"
                    } else {
                        ""
                    };
                    let here = if key.is_empty() {
                        at.clone()
                    } else {
                        format!("{at}.{key}")
                    };
                    diags.push(c.diag(&here, format!("model {name}: {e}")));
                    None
                }
            }
        }
    }
}

/// Check that a key exists in a model: the stage is one the architecture computes and the layer
/// is in range.
fn key_in_model(key: &Key, name: &str, shape: &ModelShape) -> Result<(), String> {
    if !shape.has_stage(key.stage) {
        return Err(format!(
            "{key}: model {name} is {} ({}) and has no {} stage",
            if shape.is_moe() { "MoE" } else { "dense" },
            shape.arch(),
            key.stage
        ));
    }
    if let Some(l) = key.layer
        && l >= shape.layers()
    {
        return Err(format!(
            "{key}: model {name} has {} layers (0..{})",
            shape.layers(),
            shape.layers()
        ));
    }
    Ok(())
}

fn lint_one(c: &LoadedContract, shapes: &mut ShapeCache, diags: &mut Vec<Diag>) {
    let k = &c.contract;
    if !id_ok(&k.contract, "C-") {
        diags.push(c.diag(
            "contract",
            format!("contract id `{}` must match C-[A-Z0-9-]+", k.contract),
        ));
    }
    if parse_version(&k.version).is_none() {
        diags.push(c.diag(
            "version",
            format!("version `{}` is not MAJOR.MINOR.PATCH", k.version),
        ));
    }
    if k.description.trim().is_empty() {
        diags.push(c.diag("description", "description is empty"));
    }

    // models
    let mut model_shapes: BTreeMap<&str, Option<ModelShape>> = BTreeMap::new();
    for (name, m) in &k.models {
        let shape = lint_model(c, name, m, shapes, diags);
        model_shapes.insert(name.as_str(), shape);
    }

    // falsifiers
    if k.falsifiers.is_empty() {
        diags.push(c.diag("falsifiers", "a contract needs at least one falsifier"));
    }
    for (i, f) in k.falsifiers.iter().enumerate() {
        lint_falsifier(c, i, f, &model_shapes, diags);
    }

    // history and evidence
    lint_history(c, diags);

    // derived contract status
    if let Some(min) = k.falsifiers.iter().map(|f| f.status).min()
        && k.status != min
    {
        diags.push(c.diag(
            "status",
            format!(
                "contract status {} disagrees with its falsifiers: it must be their minimum, {min}",
                k.status
            ),
        ));
    }
}

/// Every rule of one falsifier (`falsifiers[i]`), one function per rule below, in the order of
/// the module's rule list.
fn lint_falsifier(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    model_shapes: &BTreeMap<&str, Option<ModelShape>>,
    diags: &mut Vec<Diag>,
) {
    lint_id_and_text(c, i, f, diags);
    let models = falsifier_models(c, i, f, model_shapes, diags);
    lint_backends_and_tokens(c, i, f, &models, diags);
    lint_text_prompt(c, i, f, diags);
    let plan = lint_stages_and_layers(c, i, f, &models, diags);
    lint_thresholds(c, i, f, diags);
    lint_fault(c, i, f, &models, diags);
    lint_schedule(c, i, f, diags);
    lint_expect(c, i, f, &models, &plan, diags);
    lint_routing_check(c, i, f, &models, &plan, diags);
    lint_drift_check(c, i, f, &models, model_shapes, &plan, diags);
    lint_status_evidence(c, i, f, diags);
}

/// The id's form, and a non-empty rule, prediction and if_fails.
fn lint_id_and_text(c: &LoadedContract, i: usize, f: &Falsifier, diags: &mut Vec<Diag>) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if !id_ok(id, "FALSIFY-") {
        diags.push(c.diag(
            &at("id"),
            format!("falsifier id `{id}` must match FALSIFY-[A-Z0-9-]+"),
        ));
    }
    for (k, v) in [
        ("rule", &f.rule),
        ("prediction", &f.prediction),
        ("if_fails", &f.if_fails),
    ] {
        if v.trim().is_empty() {
            diags.push(c.diag(&at(k), format!("{id}: {k} is empty")));
        }
    }
}

/// The falsifier's models: defined in `models`, each once. Returns those with a known shape.
fn falsifier_models<'a>(
    c: &LoadedContract,
    i: usize,
    f: &'a Falsifier,
    model_shapes: &'a BTreeMap<&str, Option<ModelShape>>,
    diags: &mut Vec<Diag>,
) -> Vec<(&'a str, &'a ModelShape)> {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    let mut models: Vec<(&str, &ModelShape)> = Vec::new();
    if f.models.is_empty() {
        diags.push(c.diag(&at("models"), format!("{id}: names no model")));
    }
    for (j, m) in f.models.iter().enumerate() {
        match model_shapes.get(m.as_str()) {
            None => {
                let known: Vec<&str> = model_shapes.keys().copied().collect();
                diags.push(c.diag(
                    &format!("falsifiers[{i}].models[{j}]"),
                    format!(
                        "{id}: model `{m}` is not defined in `models` (defined: {})",
                        known.join(", ")
                    ),
                ));
            }
            Some(Some(shape)) => models.push((m.as_str(), shape)),
            Some(None) => {} // already reported at the model
        }
        if f.models[..j].contains(m) {
            diags.push(c.diag(
                &format!("falsifiers[{i}].models[{j}]"),
                format!("{id}: model `{m}` listed twice"),
            ));
        }
    }
    models
}

/// Exactly two backends; a non-empty prompt inside every model's vocabulary.
fn lint_backends_and_tokens(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    diags: &mut Vec<Diag>,
) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if f.backends.len() != 2 {
        diags.push(c.diag(
            &at("backends"),
            format!(
                "{id}: backends must be a pair [reference, candidate], got {}",
                f.backends.len()
            ),
        ));
    }
    // the set of backends is open: the registry of this program says which names exist
    for (j, b) in f.backends.iter().enumerate() {
        if !crate::backend::is_known(b.name()) {
            diags.push(c.diag(
                &at(&format!("backends[{j}]")),
                format!("{id}: {}", crate::backend::unknown_backend(b.name())),
            ));
        }
    }
    match (&f.prompt, f.tokens.is_empty()) {
        (Some(_), false) => diags.push(c.diag(
            &at("prompt"),
            format!("{id}: give exactly one of tokens: (ids) and prompt: (text), not both"),
        )),
        (Some(text), true) if text.is_empty() => {
            diags.push(c.diag(&at("prompt"), format!("{id}: empty prompt")));
        }
        (Some(_), true) => {}
        (None, true) => diags.push(c.diag(
            &at("tokens"),
            format!("{id}: empty prompt: give exactly one of tokens: (ids) and prompt: (text)"),
        )),
        (None, false) => {}
    }
    for (name, shape) in models {
        if let Some((j, t)) = f
            .tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= shape.config.vocab)
        {
            diags.push(c.diag(
                &format!("falsifiers[{i}].tokens[{j}]"),
                format!(
                    "{id}: token {t} is outside model {name}'s vocabulary of {}",
                    shape.config.vocab
                ),
            ));
        }
        let ctx = shape.config.context_length;
        if f.tokens.len() > ctx {
            diags.push(c.diag(
                &at("tokens"),
                format!(
                    "{id}: the prompt has {} tokens, more than model {name}'s context length of {ctx}",
                    f.tokens.len()
                ),
            ));
        }
    }
}

/// A text prompt tokenizes with every file model's own tokenizer, within its context length.
/// (Synthetic presets are generated at run time; the runner tokenizes for them.)
fn lint_text_prompt(c: &LoadedContract, i: usize, f: &Falsifier, diags: &mut Vec<Diag>) {
    let Some(text) = f.prompt.as_deref().filter(|t| !t.is_empty()) else {
        return;
    };
    let at = format!("falsifiers[{i}].prompt");
    let id = &f.id;
    for name in &f.models {
        let Some(path) = c.model(name).and_then(|m| m.path.as_deref()) else {
            continue;
        };
        let full = resolve_model_path(&c.path, path);
        if !full.is_file() {
            continue; // lint_model says so at the model
        }
        match crate::model::tokenizer::Prompt::from_text(&full, text) {
            Err(e) => diags.push(c.diag(&at, format!("{id}: model {name}: {e}"))),
            Ok(p) => {
                if let Ok(shape) = read_shape(&full)
                    && p.tokens.len() > shape.config.context_length
                {
                    diags.push(c.diag(
                        &at,
                        format!(
                            "{id}: the prompt has {} tokens with model {name}'s tokenizer, more than its context length of {}",
                            p.tokens.len(),
                            shape.config.context_length
                        ),
                    ));
                }
            }
        }
    }
}

/// Known stages, and layers within every model's layer count. Returns the capture plan.
fn lint_stages_and_layers(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    diags: &mut Vec<Diag>,
) -> Result<CapturePlan, String> {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    match &f.stages {
        Selection::Text(t) if t == "all" => {}
        Selection::Text(t) => {
            for s in t.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                if let Err(e) = s.parse::<Stage>() {
                    diags.push(c.diag(&at("stages"), format!("{id}: {e}")));
                }
            }
        }
        Selection::List(l) => {
            if l.is_empty() {
                diags.push(c.diag(&at("stages"), format!("{id}: no stages")));
            }
            for (j, s) in l.iter().enumerate() {
                if let Err(e) = s.parse::<Stage>() {
                    diags.push(c.diag(
                        &format!("falsifiers[{i}].stages[{j}]"),
                        format!("{id}: {e}"),
                    ));
                }
            }
        }
    }
    let plan = f.plan();
    match &plan {
        Err(e) => {
            // unknown stages are reported above with a finer position
            if !e.contains("unknown stage") {
                diags.push(c.diag(&at("layers"), format!("{id}: {e}")));
            }
        }
        Ok(plan) => {
            if let Some(max) = plan.layers().max() {
                for (name, shape) in models {
                    if max >= shape.layers() {
                        diags.push(c.diag(
                            &at("layers"),
                            format!(
                                "{id}: layer {max} is out of range: model {name} has {} layers",
                                shape.layers()
                            ),
                        ));
                    }
                }
            }
        }
    }
    plan
}

/// Thresholds: finite, 0 < t <= 1 (`route_margin`: finite, >= 0; `kld`: finite, >= 0; `top1`:
/// 0..=1, the last two only with `check: drift`), keyed by `default`, a stage, `route_margin`,
/// `kld` or `top1`.
fn lint_thresholds(c: &LoadedContract, i: usize, f: &Falsifier, diags: &mut Vec<Diag>) {
    let id = &f.id;
    for (key, v) in &f.thresholds {
        let here = format!("falsifiers[{i}].thresholds.{key}");
        let bad = |what: &str| format!("{id}: {key} {v} must be {what}");
        match key.as_str() {
            "route_margin" => {
                if !v.is_finite() || *v < 0.0 {
                    diags.push(c.diag(&here, bad("finite and >= 0")));
                }
                continue;
            }
            "kld" | "top1" => {
                if f.check != Check::Drift {
                    diags.push(c.diag(
                        &here,
                        format!("{id}: `{key}` bounds the logits of a drift check; this falsifier's check is not `drift`"),
                    ));
                }
                let ok = if key == "kld" {
                    LogitBounds::kld_ok(*v)
                } else {
                    LogitBounds::top1_ok(*v)
                };
                if !ok {
                    diags.push(c.diag(
                        &here,
                        bad(if key == "kld" {
                            "finite and >= 0 (a mean KL divergence in nats)"
                        } else {
                            "within 0..=1 (a fraction of positions)"
                        }),
                    ));
                }
                continue;
            }
            _ => {}
        }
        if key != "default" && key.parse::<Stage>().is_err() {
            diags.push(c.diag(
                &here,
                format!(
                    "{id}: threshold key `{key}` is not `default`, `route_margin`, `kld`, `top1` or a stage name"
                ),
            ));
        }
        if !v.is_finite() || *v <= 0.0 || *v > 1.0 {
            diags.push(c.diag(
                &here,
                format!("{id}: threshold {key} = {v} is out of range (a relative L2 error bound: 0 < t <= 1)"),
            ));
        }
    }
}

/// Whether the two sides' KV caches store different types (`kv_cache` of `schedule` and
/// `reference_schedule`): the one clean falsifier that may carry an `expect`.
fn kv_caches_differ(f: &Falsifier) -> bool {
    let (r, c) = f.schedules();
    r.kv != c.kv
}

/// A planted fault and its `expect` come together (an `expect` without a fault only where the
/// sides' KV caches store different types); the fault is of a known class, at a place every
/// model has, with arguments the models allow.
fn lint_fault(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    diags: &mut Vec<Diag>,
) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    match (&f.fault, &f.expect) {
        (Some(_), None) => diags.push(c.diag(
            &at("fault"),
            format!("{id}: a planted fault needs an `expect` (where must the harness find it?)"),
        )),
        // the sides' caches store different types: a declared difference, expected to show
        // where the cache is first read
        (None, Some(_)) if kv_caches_differ(f) => {}
        (None, Some(_)) => diags.push(c.diag(
            &at("expect"),
            format!(
                "{id}: `expect` without a planted fault (a clean run expects every stage to Match; only sides whose schedules' kv_cache differ may expect a divergence without one)"
            ),
        )),
        _ => {}
    }
    if let Some(spec) = &f.fault {
        if !FaultKind::CLASSES.contains(&spec.class.as_str()) {
            diags.push(c.diag(
                &at("fault.class"),
                format!(
                    "{id}: unknown fault class `{}` (known: {})",
                    spec.class,
                    FaultKind::CLASSES.join(", ")
                ),
            ));
        } else {
            match spec.fault() {
                Err(e) => diags.push(c.diag(&at("fault"), format!("{id}: {e}"))),
                Ok(fault) => {
                    let key = Key {
                        layer: fault.layer,
                        stage: fault.stage,
                    };
                    for (name, shape) in models {
                        if let Err(e) = key_in_model(&key, name, shape) {
                            diags.push(c.diag(&at("fault.at"), format!("{id}: fault at {e}")));
                            continue;
                        }
                        // what the class needs of the model (experts in range, a router that
                        // renormalises, a matmul at the place): the check every backend makes
                        if let Err(e) = fault.check_model(&shape.config) {
                            diags.push(
                                c.diag(&at("fault"), format!("{id}: {fault}: model {name}: {e}")),
                            );
                        }
                    }
                    if matches!(fault.kind, FaultKind::Q6kAsQ4k) {
                        // the weight at the place must really be Q6_K (in the file, or in what the
                        // generator writes for a preset), or the fault changes nothing
                        for (name, shape) in models {
                            if let Some((tensor, ty)) = shape.weight_type(fault.layer, fault.stage)
                                && ty != GgmlType::Q6_K
                            {
                                diags.push(c.diag(
                                    &at("fault.at"),
                                    format!("{id}: q6k_as_q4k at {}: model {name}'s {tensor} is {ty}, not Q6_K (the fault would change nothing)", spec.at),
                                ));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Schedules fit the prompt and the backend of their side, and a planted KV-cache fault has a
/// schedule on its side under which it fires.
fn lint_schedule(c: &LoadedContract, i: usize, f: &Falsifier, diags: &mut Vec<Diag>) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    // a text prompt's length depends on each model's tokenizer: the runner checks it
    let t = (!f.tokens.is_empty()).then_some(f.tokens.len());
    let (ref_s, cand_s) = f.schedules();
    let names: Vec<&str> = f.backends.iter().map(|b| b.name()).collect();
    let sides = [
        (
            "reference_schedule",
            f.reference_schedule.is_some(),
            ref_s,
            names.first(),
        ),
        ("schedule", f.schedule.is_some(), cand_s, names.get(1)),
    ];
    for (key, given, sched, backend) in sides {
        if !given {
            continue;
        }
        if sched.chunk == Some(0) {
            diags.push(c.diag(
                &at(&format!("{key}.chunk")),
                format!("{id}: {key}: the prefill chunk must be at least 1 token"),
            ));
        }
        if let Some(t) = t
            && sched.decode > t
        {
            diags.push(c.diag(
                &at(&format!("{key}.decode")),
                format!(
                    "{id}: {key}: {} decode steps, but the prompt has only {t} tokens",
                    sched.decode
                ),
            ));
        }
        if let Some(b) = backend
            && !sched.is_full()
            && !crate::backend::BACKENDS.contains(b)
        {
            diags.push(c.diag(
                &at(key),
                format!("{id}: {key} `{sched}`: backend {b} does not run schedules (only the built-in backends walk a KV cache: {})", crate::backend::BACKENDS.join(", ")),
            ));
        }
    }
    if let Some(spec) = &f.fault
        && let Ok(fault) = spec.fault()
        && fault.kind.needs_schedule()
    {
        let (side, key, sched) = match spec.side {
            super::schema::Side::Reference => ("reference", "reference_schedule", ref_s),
            super::schema::Side::Candidate => ("candidate", "schedule", cand_s),
        };
        let why = match t {
            Some(t) => sched
                .steps(t)
                .ok()
                .and_then(|steps| fault.check_schedule(&steps).err()),
            // a text prompt: only a schedule that is one step over any prompt is sure not to
            // have the steps (an f16 cache changes no step)
            None if sched.is_one_step() => {
                Some(format!("fault {} needs a schedule", fault.kind.class()))
            }
            None => None,
        };
        if let Some(e) = why {
            diags.push(c.diag(
                &at("fault"),
                format!("{id}: {fault} on the {side} side, {key} `{sched}`: {e}"),
            ));
        }
    }
    if let (Some(e), Some(t)) = (&f.expect, t)
        && let Some(p) = e.position.filter(|&p| p >= t)
    {
        diags.push(c.diag(
            &at("expect.position"),
            format!("{id}: expect.position {p} is past the prompt ({t} tokens)"),
        ));
    }
}

/// Expected keys exist in every model and are captured by the falsifier's plan.
fn lint_expect(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    plan: &Result<CapturePlan, String>,
    diags: &mut Vec<Diag>,
) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if let Some(e) = &f.expect {
        for (k, r) in [
            ("first_divergence", e.first_divergence_key()),
            ("origin", e.origin_key()),
        ] {
            match r {
                Err(err) => diags.push(c.diag(&at(&format!("expect.{k}")), format!("{id}: {err}"))),
                Ok(key) => {
                    if let Ok(plan) = plan
                        && !plan.wants_key(&key)
                    {
                        diags.push(c.diag(
                            &at(&format!("expect.{k}")),
                            format!("{id}: expected {key} is not captured (not in this falsifier's stages/layers)"),
                        ));
                    }
                    for (name, shape) in models {
                        if let Err(err) = key_in_model(&key, name, shape) {
                            diags.push(c.diag(
                                &at(&format!("expect.{k}")),
                                format!("{id}: expected {err}"),
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// `check: routing` only on MoE models, with router_logits and topk_ids captured.
fn lint_routing_check(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    plan: &Result<CapturePlan, String>,
    diags: &mut Vec<Diag>,
) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if f.check == Check::Routing {
        if let Ok(plan) = plan {
            for need in [Stage::RouterLogits, Stage::TopkIds] {
                if !plan.stages().any(|s| s == need) {
                    diags.push(c.diag(
                        &at("stages"),
                        format!("{id}: check routing needs the {need} stage captured (margins come from router_logits)"),
                    ));
                }
            }
        }
        for (name, shape) in models {
            if !shape.is_moe() {
                diags.push(c.diag(
                    &at("check"),
                    format!("{id}: check routing needs an MoE model; {name} is dense"),
                ));
            }
        }
    }
}

/// `candidate_model` names a defined model of the same architecture and shape as every trial
/// model; `check: drift` has one, at least one logits bound, the logits captured, and no planted
/// fault (a drift check measures the files, not a fault).
fn lint_drift_check(
    c: &LoadedContract,
    i: usize,
    f: &Falsifier,
    models: &[(&str, &ModelShape)],
    model_shapes: &BTreeMap<&str, Option<ModelShape>>,
    plan: &Result<CapturePlan, String>,
    diags: &mut Vec<Diag>,
) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if let Some(cm) = &f.candidate_model {
        match model_shapes.get(cm.as_str()) {
            None => {
                let known: Vec<&str> = model_shapes.keys().copied().collect();
                diags.push(c.diag(
                    &at("candidate_model"),
                    format!(
                        "{id}: candidate_model `{cm}` is not defined in `models` (defined: {})",
                        known.join(", ")
                    ),
                ));
            }
            Some(None) => {} // already reported at the model
            Some(Some(cand)) => {
                for (name, shape) in models {
                    if let Some(d) = shape.config.differs_from(&cand.config) {
                        diags.push(c.diag(
                            &at("candidate_model"),
                            format!("{id}: candidate_model {cm} is not the same architecture and shape as model {name} ({d})"),
                        ));
                    }
                }
            }
        }
    }
    if f.check != Check::Drift {
        return;
    }
    if f.candidate_model.is_none() {
        diags.push(c.diag(
            &at("check"),
            format!(
                "{id}: check drift compares two model files: name the second in `candidate_model`"
            ),
        ));
    }
    if f.logit_bounds().is_empty() {
        diags.push(c.diag(
            &at("thresholds"),
            format!("{id}: check drift needs a bound on the logits: thresholds.kld (largest mean KL divergence) and/or thresholds.top1 (smallest top-1 agreement)"),
        ));
    }
    if let Ok(plan) = plan
        && !plan.wants(None, Stage::Logits)
    {
        diags.push(c.diag(
            &at("stages"),
            format!("{id}: check drift needs the logits stage captured"),
        ));
    }
    if f.fault.is_some() {
        diags.push(c.diag(
            &at("fault"),
            format!("{id}: a drift check measures two model files; it plants no fault"),
        ));
    }
}

/// Status against evidence: the last amendment whose evidence names this falsifier shows at
/// least its status.
fn lint_status_evidence(c: &LoadedContract, i: usize, f: &Falsifier, diags: &mut Vec<Diag>) {
    let at = |k: &str| format!("falsifiers[{i}].{k}");
    let id = &f.id;
    if f.status > Status::Proposed {
        let last = c
            .contract
            .amendment_history
            .iter()
            .rev()
            .find_map(|a| a.evidence.as_ref().and_then(|e| e.levels.get(id)));
        match last {
            None => diags.push(c.diag(
                &at("status"),
                format!("{id}: status {} claims evidence, but no amendment_history entry has evidence for it", f.status),
            )),
            Some(level) if *level < f.status => diags.push(c.diag(
                &at("status"),
                format!("{id}: status {} claims more than the last evidence shows ({level})", f.status),
            )),
            Some(_) => {}
        }
    }
}

fn lint_history(c: &LoadedContract, diags: &mut Vec<Diag>) {
    let k = &c.contract;
    let h = &k.amendment_history;
    if h.is_empty() {
        diags.push(c.diag(
            "amendment_history",
            "amendment_history is empty (the first entry records the contract's creation)",
        ));
        return;
    }
    if h[0].kind != AmendmentKind::Created {
        diags.push(c.diag(
            "amendment_history[0].kind",
            "the first amendment must be `created`",
        ));
    }
    let mut prev: Option<(u64, u64, u64)> = None;
    for (i, a) in h.iter().enumerate() {
        let at = |f: &str| format!("amendment_history[{i}].{f}");
        if !date_ok(&a.date) {
            diags.push(c.diag(&at("date"), format!("date `{}` is not YYYY-MM-DD", a.date)));
        }
        if i > 0 && a.kind == AmendmentKind::Created {
            diags.push(c.diag(&at("kind"), "only the first amendment can be `created`"));
        }
        match parse_version(&a.version) {
            None => diags.push(c.diag(
                &at("version"),
                format!("version `{}` is not MAJOR.MINOR.PATCH", a.version),
            )),
            Some(v) => {
                if let Some(p) = prev
                    && v <= p
                {
                    diags.push(c.diag(
                        &at("version"),
                        format!(
                            "version {} does not increase over the previous entry",
                            a.version
                        ),
                    ));
                }
                prev = Some(v);
            }
        }
        if a.kind == AmendmentKind::Promotion && a.evidence.is_none() {
            diags.push(c.diag(&at("evidence"), "a promotion must name its evidence"));
        }
        if let Some(e) = &a.evidence {
            for id in e.levels.keys() {
                if !k.falsifiers.iter().any(|f| &f.id == id) {
                    diags.push(c.diag(
                        &at(&format!("evidence.levels.{id}")),
                        format!("evidence names falsifier {id}, which this contract does not have"),
                    ));
                }
            }
        }
    }
    if let Some(last) = h.last()
        && last.version != k.version
    {
        diags.push(c.diag(
            "version",
            format!(
                "version {} differs from the last amendment's version {}",
                k.version, last.version
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_dates() {
        assert!(id_ok("C-QWEN3-MOE", "C-"));
        assert!(id_ok("FALSIFY-MOE-SUB-001", "FALSIFY-"));
        for bad in ["C-", "C-lower", "X-ABC", "FALSIFY-A_B"] {
            assert!(!id_ok(bad, "C-") && !id_ok(bad, "FALSIFY-"), "{bad}");
        }
        assert!(date_ok("2026-11-25"));
        for bad in [
            "2026-13-01",
            "2026-1-01",
            "20261125",
            "2026-11-32",
            "2026/11/25",
        ] {
            assert!(!date_ok(bad), "{bad}");
        }
    }
}
