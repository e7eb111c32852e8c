//! The comparison: read both traces key by key, compare in two parallel phases (routes first,
//! then everything else, since routes decide which positions `topk_weights` and `ffn_out` may
//! be compared on) and build the [`DiffReport`].

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use crate::error::{Error, Result, ResultExt};
use crate::trace::io::source::TraceSource;
use crate::trace::stage::{Key, Stage, StageDtype};
use crate::trace::tensor::{TensorView, ViewData};

use super::ids::integer_ids;
use super::logits::LogitAgreement;
use super::prompt;
use super::report::{ComparedBy, DiffReport, Row, Side, SideInfo, index_of, model_warning};
use super::routing::{self, Routing};
use super::verdict::{SideTags, Verdict};
use super::{DiffOptions, metrics};

/// Compare `candidate` with `reference`.
pub fn diff(
    reference: &dyn TraceSource,
    candidate: &dyn TraceSource,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    let start = Instant::now();
    let (lr, lc) = match &opts.labels {
        Some((r, c)) => (Some(r.as_str()), Some(c.as_str())),
        None => (None, None),
    };
    let ref_info = SideInfo::of(reference, lr);
    let cand_info = SideInfo::of(candidate, lc);
    // printed NaN verdicts name the sides by backend (NanGpu for cpu vs cuda); when a side's
    // backend is unknown (npy and APRT carry none) and no labels were given, they stay neutral
    // (NanRef / NanCand) rather than spelling a file name into a verdict
    let tags = if opts.labels.is_some()
        || (!ref_info.backend.is_empty() && !cand_info.backend.is_empty())
    {
        SideTags::from_labels(&ref_info.label, &cand_info.label)
    } else {
        SideTags::from_labels("", "")
    };

    // the prompt is the forward's input, not a stage: checked here, never given a verdict
    let prompt_note = prompt::check(reference, candidate)?;
    let wanted = |k: &Key| {
        k.stage != Stage::Tokens && opts.plan.as_ref().is_none_or(|p| p.wants(k.layer, k.stage))
    };
    let ref_keys: BTreeSet<Key> = reference.keys().into_iter().filter(wanted).collect();
    let cand_keys: BTreeSet<Key> = candidate.keys().into_iter().filter(wanted).collect();
    let all: Vec<Key> = ref_keys.union(&cand_keys).copied().collect();

    let mut notes: Vec<String> = prompt_note.into_iter().collect();
    for (side, src) in [("reference", reference), ("candidate", candidate)] {
        let other = src.other_names();
        if !other.is_empty() {
            notes.push(format!(
                "{side} {}: {} name(s) that are not trace keys were ignored: {}",
                src.location(),
                other.len(),
                preview(&other)
            ));
        }
    }

    if let Some(p) = &opts.progress {
        p.start(all.len() as u64);
    }
    let ctx = Ctx {
        reference,
        candidate,
        opts,
        positions: positions(reference, candidate)?,
    };

    // phase 1: routes
    let route_keys: Vec<Key> = all
        .iter()
        .copied()
        .filter(|k| k.stage == Stage::TopkIds)
        .collect();
    let routed: Vec<(Row, Option<Routing>, u64)> = route_keys
        .par_iter()
        .map(|k| ctx.compare_routes(*k))
        .collect::<Result<_>>()?;
    let mut routes: BTreeMap<usize, Routing> = BTreeMap::new();
    let mut rows = Vec::with_capacity(all.len());
    let mut bytes = 0u64;
    for (row, routing, b) in routed {
        if let (Some(l), Some(r)) = (row.key.layer, routing) {
            routes.insert(l, r);
        }
        rows.push(row);
        bytes += b;
    }

    // phase 2: everything else
    let rest: Vec<Key> = all
        .iter()
        .copied()
        .filter(|k| k.stage != Stage::TopkIds)
        .collect();
    let compared: Vec<(Row, u64)> = rest
        .par_iter()
        .map(|k| ctx.compare_key(*k, &routes))
        .collect::<Result<_>>()?;
    for (row, b) in compared {
        rows.push(row);
        bytes += b;
    }

    let logits_key = Key::model(Stage::Logits);
    let logits = if all.contains(&logits_key) {
        match (
            ctx.get(Side::Reference, &logits_key)?,
            ctx.get(Side::Candidate, &logits_key)?,
        ) {
            (Some(a), Some(b)) => LogitAgreement::of(&a, &b, ctx.positions),
            _ => None,
        }
    } else {
        None
    };
    let warnings = model_warning(&ref_info, &cand_info)
        .filter(|_| !opts.two_models)
        .into_iter()
        .collect();
    let mut report = DiffReport {
        reference: ref_info,
        candidate: cand_info,
        tags,
        rows,
        first_divergence: None,
        origin: None,
        logits,
        drift: None,
        holds: false,
        notes,
        warnings,
        bytes,
        elapsed: Duration::ZERO,
        near_tie: opts.near_tie,
    };
    report.settle();
    report.elapsed = start.elapsed();
    Ok(report)
}

fn preview(names: &[String]) -> String {
    let mut s: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    if names.len() > 5 {
        s.push("...");
    }
    s.join(", ")
}

/// Number of prompt positions, when either side tells: the length of `tokens`, else the first
/// dimension of a shaped `[T, H]` stage.
fn positions(reference: &dyn TraceSource, candidate: &dyn TraceSource) -> Result<Option<usize>> {
    for src in [reference, candidate] {
        if let Some(v) = src.get(&Key::model(Stage::Tokens))?
            && !v.is_empty()
        {
            return Ok(Some(v.len()));
        }
    }
    for src in [reference, candidate] {
        for k in src.keys() {
            if k.stage != Stage::AttnProbs
                && let Some(v) = src.get(&k)?
                && let Some(s) = &v.shape
                && let Some(&t) = s.first()
                && t > 0
            {
                return Ok(Some(t));
            }
        }
    }
    Ok(None)
}

struct Ctx<'a> {
    reference: &'a dyn TraceSource,
    candidate: &'a dyn TraceSource,
    opts: &'a DiffOptions,
    positions: Option<usize>,
}

/// Both sides of one key, read and checked.
struct Pair<'a> {
    a: TensorView<'a>,
    b: TensorView<'a>,
    /// The shape positions and features are read from (the shaped side's, or inferred).
    shape: Option<Vec<usize>>,
    /// The row so far: shapes, how they were matched, notes.
    row: Row,
}

enum Prepared<'a> {
    Pair(Pair<'a>),
    Done(Row),
}

impl<'a> Ctx<'a> {
    fn advance(&self) {
        if let Some(p) = &self.opts.progress {
            p.advance(1);
        }
    }

    fn get(&self, side: Side, key: &Key) -> Result<Option<TensorView<'a>>> {
        let src = match side {
            Side::Reference => self.reference,
            Side::Candidate => self.candidate,
        };
        let v = src
            .get(key)
            .context(format!("{} {}", side.name(), src.location()))?;
        if let Some(v) = &v
            && v.is_empty()
        {
            return Err(Error::input(format!(
                "{} {}: `{key}` is an empty tensor",
                side.name(),
                src.location()
            )));
        }
        Ok(v)
    }

    fn location(&self, side: Side) -> String {
        match side {
            Side::Reference => self.reference.location(),
            Side::Candidate => self.candidate.location(),
        }
    }

    /// Read both sides; settle Missing and ShapeMismatch rows here.
    fn prepare(&self, key: Key) -> Result<Prepared<'a>> {
        let mut row = Row::new(key, self.opts.thresholds.get(key.stage));
        let a = self.get(Side::Reference, &key)?;
        let b = self.get(Side::Candidate, &key)?;
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (a, b),
            (a, _) => {
                let side = if a.is_some() {
                    Side::Candidate
                } else {
                    Side::Reference
                };
                row.verdict = Verdict::Missing;
                row.missing_on = Some(side);
                row.notes.push(format!(
                    "absent from the {} ({})",
                    side.name(),
                    self.location(side)
                ));
                return Ok(Prepared::Done(row));
            }
        };
        // dtypes: f32 stages must be f32 on both sides; integer stages may be f32 (APRT)
        if key.stage.dtype() == StageDtype::F32 {
            for (side, v) in [(Side::Reference, &a), (Side::Candidate, &b)] {
                if matches!(v.data, ViewData::I32(_)) {
                    return Err(Error::input(format!(
                        "{} {}: `{key}` holds integers but {} is a float stage (dtype mismatch)",
                        side.name(),
                        self.location(side),
                        key.stage
                    )));
                }
            }
        }
        row.shape_ref = a.shape.as_ref().map(|s| s.to_vec());
        row.shape_cand = b.shape.as_ref().map(|s| s.to_vec());
        row.compared_by = if a.shape.is_some() && b.shape.is_some() {
            ComparedBy::Shape
        } else {
            ComparedBy::ElementCount
        };
        let mismatch = match (&a.shape, &b.shape) {
            (Some(x), Some(y)) => x != y,
            _ => a.len() != b.len(),
        };
        if mismatch {
            row.verdict = Verdict::ShapeMismatch;
            row.notes.push(format!(
                "reference {} vs candidate {}",
                shape_text(&a),
                shape_text(&b)
            ));
            return Ok(Prepared::Done(row));
        }
        if row.compared_by == ComparedBy::ElementCount {
            row.notes.push(format!(
                "compared by element count ({}): {} carries no shape",
                a.len(),
                match (a.shape.is_none(), b.shape.is_none()) {
                    (true, true) => "neither side",
                    (true, false) => "the reference",
                    _ => "the candidate",
                }
            ));
        }
        let shape = a
            .shape
            .as_ref()
            .or(b.shape.as_ref())
            .map(|s| s.to_vec())
            .or_else(|| infer_shape(key.stage, a.len(), self.positions));
        Ok(Prepared::Pair(Pair { a, b, shape, row }))
    }

    fn compare_routes(&self, key: Key) -> Result<(Row, Option<Routing>, u64)> {
        let out = self.compare_routes_inner(key);
        self.advance();
        out
    }

    fn compare_routes_inner(&self, key: Key) -> Result<(Row, Option<Routing>, u64)> {
        let pair = match self.prepare(key)? {
            Prepared::Done(row) => return Ok((row, None, 0)),
            Prepared::Pair(p) => p,
        };
        let mut row = pair.row;
        let r = self.ids(Side::Reference, &key, &pair.a)?;
        let c = self.ids(Side::Candidate, &key, &pair.b)?;
        let n = r.len();
        let bytes = 8 * n as u64;
        let k = match (&pair.shape, self.positions) {
            (Some(s), _) if s.len() == 2 && s[1] > 0 => s[1],
            (_, Some(t)) if t > 0 && n.is_multiple_of(t) => n / t,
            _ => {
                // no way to split into positions: exact comparison of the whole tensor
                row.notes
                    .push("no shape and no position count: compared as one set".into());
                n
            }
        };
        let logits_key = Key {
            layer: key.layer,
            stage: Stage::RouterLogits,
        };
        let logits = self.get(Side::Reference, &logits_key)?;
        let t = n / k.max(1);
        let logits_f32: Option<Cow<'_, [f32]>> = match &logits {
            Some(TensorView {
                data: ViewData::F32(v),
                ..
            }) if t > 0 && v.len().is_multiple_of(t) => Some(Cow::Borrowed(v.as_ref())),
            _ => None,
        };
        let e = logits_f32.as_ref().map(|l| l.len() / t.max(1));
        let routing =
            routing::compare_topk(&r, &c, k, logits_f32.as_deref().zip(e), self.opts.near_tie);
        if logits_f32.is_none() && !routing.flips.is_empty() {
            row.notes.push(
                "margin unknown: the reference has no usable router_logits for this layer".into(),
            );
        }
        let mut acc = metrics::Acc::new();
        let (rf, cf): (Vec<f32>, Vec<f32>) = (
            r.iter().map(|&x| x as f32).collect(),
            c.iter().map(|&x| x as f32).collect(),
        );
        acc.add(&rf, &cf, 0);
        row.metrics = Some(acc.finish());
        if !routing.flips.is_empty() {
            row.verdict = Verdict::RouteFlip;
            row.near_tie = routing.all_near_tie();
            let near = routing.flips.iter().filter(|f| f.near_tie).count();
            row.notes.push(format!(
                "{} of {} positions route to a different set of experts ({} near-tie)",
                routing.flips.len(),
                routing.flipped.len(),
                near
            ));
        }
        if routing.reordered > 0 {
            row.notes.push(format!(
                "{} position(s) choose the same experts in a different order (not a flip)",
                routing.reordered
            ));
        }
        row.route_flips = routing.flips.clone();
        Ok((row, Some(routing), bytes))
    }

    /// Integer ids of an integer stage (see [`integer_ids`]).
    fn ids(&self, side: Side, key: &Key, v: &TensorView<'_>) -> Result<Vec<i32>> {
        integer_ids(v, || {
            format!("{} {}: `{key}`", side.name(), self.location(side))
        })
    }

    fn compare_key(&self, key: Key, routes: &BTreeMap<usize, Routing>) -> Result<(Row, u64)> {
        let out = self.compare_key_inner(key, routes);
        self.advance();
        out
    }

    fn compare_key_inner(&self, key: Key, routes: &BTreeMap<usize, Routing>) -> Result<(Row, u64)> {
        let pair = match self.prepare(key)? {
            Prepared::Done(row) => return Ok((row, 0)),
            Prepared::Pair(p) => p,
        };
        let mut row = pair.row.clone();
        let n = pair.a.len();
        // only float stages get here: topk_ids are compared as routes, tokens is the prompt
        let (a, b): (&[f32], &[f32]) = match (&pair.a.data, &pair.b.data) {
            (ViewData::F32(x), ViewData::F32(y)) => (x, y),
            _ => return Err(Error::internal(format!("`{key}`: f32 views expected"))),
        };

        // routes decide which positions of topk_weights and ffn_out are comparable
        let routing = match key.stage {
            Stage::TopkWeights | Stage::FfnOut => key.layer.and_then(|l| routes.get(&l)),
            _ => None,
        };
        let mut runs = vec![(0, n)];
        let mut aligned: Option<Vec<f32>> = None;
        if let Some(routing) = routing {
            let t = routing.flipped.len();
            if t > 0 && n.is_multiple_of(t) {
                let row_len = n / t;
                if key.stage == Stage::TopkWeights {
                    // pair each weight with the same expert on both sides
                    let ids_key = Key {
                        layer: key.layer,
                        stage: Stage::TopkIds,
                    };
                    if let (Some(ri), Some(ci)) = (
                        self.get(Side::Reference, &ids_key)?,
                        self.get(Side::Candidate, &ids_key)?,
                    ) {
                        let ri = self.ids(Side::Reference, &ids_key, &ri)?;
                        let ci = self.ids(Side::Candidate, &ids_key, &ci)?;
                        if ri.len() == n && ci.len() == n {
                            aligned = Some(routing::align_weights(&ri, &ci, b, row_len, routing));
                        }
                    }
                }
                row.excluded_positions = routing.excluded();
                runs = routing.kept_runs(row_len);
                if row.excluded_positions > 0 {
                    row.notes.push(format!(
                        "{} of {t} positions excluded: their routes differ",
                        row.excluded_positions
                    ));
                }
            } else {
                row.notes.push(format!(
                    "routes could not be applied ({n} elements over {t} positions): compared on all positions"
                ));
            }
        }
        let b = aligned.as_deref().unwrap_or(b);
        let compared: usize = runs.iter().map(|(s, e)| e - s).sum();
        if compared == 0 {
            row.verdict = Verdict::RouteFlip;
            row.near_tie = routing.is_some_and(|r| r.all_near_tie());
            row.notes
                .push("nothing left to compare: every position's route differs".into());
            return Ok((row, 0));
        }
        let m = metrics::compare_runs(a, b, &runs);
        let index = |flat: usize| index_of(key.stage, pair.shape.as_deref(), flat);
        row.max_abs_at = m.max_abs_flat.map(index);
        row.nonfinite_ref_at = m.nonfinite_ref.first.map(index);
        row.nonfinite_cand_at = m.nonfinite_cand.first.map(index);
        row.verdict = match Verdict::nan(m.nonfinite_ref.count > 0, m.nonfinite_cand.count > 0) {
            Some(v) => v,
            None if m.rel_l2 > row.threshold.rel_l2 || m.rel_l2.is_nan() => Verdict::Diverge,
            None => Verdict::Match,
        };
        if m.same_inf > 0 {
            row.notes.push(format!(
                "{} element(s) hold the same infinity on both sides (not counted as non-finite)",
                m.same_inf
            ));
        }
        if key.stage == Stage::LayerOut
            && let Some(routing) = key.layer.and_then(|l| routes.get(&l))
            && !routing.flips.is_empty()
        {
            row.notes.push(format!(
                "compared on all positions, including {} whose routes differ ({} near-tie)",
                routing.flips.len(),
                routing.flips.iter().filter(|f| f.near_tie).count()
            ));
        }
        row.metrics = Some(m);
        Ok((row, 8 * compared as u64))
    }
}

fn shape_text(v: &TensorView<'_>) -> String {
    match &v.shape {
        Some(s) => format!("{:?}", s.as_ref()),
        None => format!("{} elements (no shape)", v.len()),
    }
}

/// A shape for positions when neither side has one: `[nh, T, T]` for attn_probs, `[T, n/T]`
/// otherwise.
fn infer_shape(stage: Stage, n: usize, t: Option<usize>) -> Option<Vec<usize>> {
    let t = t.filter(|&t| t > 0)?;
    match stage {
        Stage::AttnProbs if t.checked_mul(t).is_some_and(|tt| n.is_multiple_of(tt)) => {
            Some(vec![n / (t * t), t, t])
        }
        _ if n.is_multiple_of(t) => Some(vec![t, n / t]),
        _ => None,
    }
}
