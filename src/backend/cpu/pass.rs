//! One forward pass's bookkeeping: which stages to capture, which faults fire where, the
//! teacher's inputs, and the step of the schedule being computed. The model code calls
//! [`Pass::emit`] after each stage with the step's rows; everything about planted faults,
//! capture plans and placing a step's rows into the whole prompt's tensors lives here so that
//! the forward chains stay short.

use std::collections::BTreeMap;

use super::matmul::{Q6kAsQ4k, matmul};
use super::ops::Precision;
use crate::backend::rows::{StepRows, place, row_axis};
use crate::backend::schedule::KvDtype;
use crate::backend::{Fault, FaultKind, ForwardRequest, Step, StepKind};
use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use crate::model::quant::GgmlType;
use crate::model::quant::dequant::round_activations_q8_0;
use crate::model::weights::{FfnWeights, ModelWeights, QTensor};
use crate::trace::plan::CapturePlan;
use crate::trace::stage::{Key, Stage};
use crate::trace::tensor::{Tensor, TensorData};
use crate::trace::trace::Trace;

pub(super) struct Pass<'r> {
    pub p: Precision,
    pub cfg: &'r ModelConfig,
    /// Prompt length.
    pub t: usize,
    /// The schedule's steps over the prompt (one for the full forward).
    pub steps: Vec<Step>,
    /// The step being computed: stages run over its rows only.
    pub step: Step,
    /// What the KV cache stores (K/V rounded to f16 as they enter it under `F16`).
    pub kv: KvDtype,
    plan: &'r CapturePlan,
    faults: &'r [Fault],
    teacher: Option<&'r Trace>,
    /// What was captured so far.
    pub captured: BTreeMap<Key, Tensor>,
}

impl<'r> Pass<'r> {
    pub fn new(req: &ForwardRequest<'r>, cfg: &'r ModelConfig, p: Precision) -> Result<Pass<'r>> {
        let t = req.tokens.len();
        let steps = req.schedule.steps(t).map_err(Error::input)?;
        Ok(Pass {
            p,
            cfg,
            t,
            steps,
            step: Step {
                start: 0,
                end: t,
                kind: StepKind::Prefill(0),
            },
            kv: req.schedule.kv,
            plan: req.plan,
            faults: req.faults,
            teacher: req.teacher,
            captured: BTreeMap::new(),
        })
    }

    /// Rows of the step being computed.
    pub fn n(&self) -> usize {
        self.step.len()
    }

    /// Whether the step is the whole prompt (the full forward): its tensors are the trace's.
    fn whole(&self) -> bool {
        self.step.start == 0 && self.step.end == self.t
    }

    fn faults_at(
        &self,
        layer: Option<usize>,
        stage: Stage,
    ) -> impl Iterator<Item = FaultKind> + '_ {
        self.faults
            .iter()
            .filter(move |f| f.is_at(layer, stage))
            .map(|f| f.kind)
    }

    /// Whether the capture plan keeps (layer, stage).
    pub fn keeps(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.plan.wants(layer, stage)
    }

    /// Whether a fault matching `pred` is planted at (layer, stage).
    pub fn has(
        &self,
        layer: Option<usize>,
        stage: Stage,
        pred: impl Fn(&FaultKind) -> bool,
    ) -> bool {
        self.faults_at(layer, stage).any(|k| pred(&k))
    }

    /// The expert swap planted in this layer's dispatch, if any.
    pub fn expert_swap(&self, layer: usize) -> Option<(usize, usize)> {
        self.faults_at(Some(layer), Stage::FfnOut)
            .find_map(|k| match k {
                FaultKind::ExpertSwap { a, b } => Some((a, b)),
                _ => None,
            })
    }

    /// The stage `stage` of `layer` is done for the step's rows (`shape` is the step's: its
    /// row axis holds [`Pass::n`] rows, see [`row_axis`]): apply the output faults planted
    /// there (NaN at one element of the whole prompt's tensor, scale drift) and keep a copy of
    /// the rows if the plan wants it.
    pub fn emit(&mut self, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
        for kind in self.faults_at(layer, stage).collect::<Vec<_>>() {
            match kind {
                FaultKind::Nan { index } => {
                    if let Some(i) = self.local_index(stage, shape, index) {
                        data[i] = f32::NAN;
                    }
                }
                FaultKind::ScaleDrift { eps } => data.iter_mut().for_each(|v| *v *= 1.0 + eps),
                _ => {}
            }
        }
        if self.plan.wants(layer, stage) {
            self.capture(Key { layer, stage }, shape, TensorData::F32(data.to_vec()));
        }
    }

    pub fn emit_i32(&mut self, layer: Option<usize>, stage: Stage, data: &[i32], shape: &[usize]) {
        if self.plan.wants(layer, stage) {
            self.capture(Key { layer, stage }, shape, TensorData::I32(data.to_vec()));
        }
    }

    /// Where flat index `index` of the whole prompt's tensor falls in the step's rows.
    fn local_index(&self, stage: Stage, shape: &[usize], index: usize) -> Option<usize> {
        StepRows::of(stage, shape).local_index(self.t, self.step.start, index)
    }

    /// Keep the step's rows of `key`: the tensor itself for the whole prompt, else copied into
    /// the whole prompt's tensor (zeros until every step has written its rows).
    fn capture(&mut self, key: Key, shape: &[usize], data: TensorData) {
        let axis = row_axis(key.stage).min(shape.len().saturating_sub(1));
        let mut full_shape = shape.to_vec();
        if let Some(d) = full_shape.get_mut(axis) {
            *d = self.t;
        }
        if self.whole() {
            self.captured.insert(
                key,
                Tensor {
                    shape: full_shape,
                    data,
                },
            );
            return;
        }
        let r = StepRows::of(key.stage, shape);
        let (t, start) = (self.t, self.step.start);
        let size = r.outer * t * r.inner;
        let entry = self.captured.entry(key).or_insert_with(|| Tensor {
            shape: full_shape,
            data: match data {
                TensorData::F32(_) => TensorData::F32(vec![0.0; size]),
                TensorData::I32(_) => TensorData::I32(vec![0; size]),
            },
        });
        match (&mut entry.data, &data) {
            (TensorData::F32(full), TensorData::F32(rows)) => place(full, rows, r, t, start),
            (TensorData::I32(full), TensorData::I32(rows)) => place(full, rows, r, t, start),
            _ => {}
        }
    }

    /// `x · wᵀ` for the matmul producing (layer, stage), through the faults planted there:
    /// `act_q8_rounding` rounds a copy of the input rows, `q6k_as_q4k` misdecodes the weight.
    pub fn matmul(
        &self,
        layer: Option<usize>,
        stage: Stage,
        x: &[f32],
        w: &QTensor,
    ) -> Result<Vec<f32>> {
        let mut rounded;
        let mut x = x;
        if self.has(layer, stage, |k| *k == FaultKind::ActQ8Rounding) && w.cols > 0 {
            rounded = x.to_vec();
            rounded.chunks_mut(w.cols).for_each(round_activations_q8_0);
            x = &rounded;
        }
        let rows = x.len() / w.cols.max(1);
        if self.has(layer, stage, |k| *k == FaultKind::Q6kAsQ4k) {
            matmul(x, rows, &Q6kAsQ4k(*w), self.p)
        } else {
            matmul(x, rows, w, self.p)
        }
    }

    /// Teacher forcing: the step's rows of the teacher's tensor `key` (`[T, H]` f32), or
    /// `None` without a teacher. Teacher rows are per position, so any schedule takes its own.
    pub fn teacher(&self, key: Key) -> Result<Option<Vec<f32>>> {
        let Some(teacher) = self.teacher else {
            return Ok(None);
        };
        let h = self.cfg.hidden;
        let want = self.t * h;
        match teacher.get(&key).map(|t| &t.data) {
            Some(TensorData::F32(v)) if v.len() == want => {
                Ok(Some(v[self.step.start * h..self.step.end * h].to_vec()))
            }
            Some(TensorData::F32(v)) => Err(Error::input(format!(
                "teacher trace: `{key}` has {} values, expected {} x {} = {want}",
                v.len(),
                self.t,
                self.cfg.hidden
            ))),
            Some(TensorData::I32(_)) => Err(Error::input(format!(
                "teacher trace: `{key}` is i32, expected f32"
            ))),
            None => Err(Error::input(format!(
                "teacher trace has no `{key}` (teacher forcing needs embedding, every layer's layer_out and final_norm)"
            ))),
        }
    }
}

/// The weight the matmul producing (layer, stage) multiplies with; `None` where that stage is
/// no matmul (or the architecture lacks it). MoE `ffn_out` is the down projection of the experts.
pub(super) fn weight_for<'a>(
    w: &'a ModelWeights,
    layer: Option<usize>,
    stage: Stage,
) -> Option<&'a QTensor<'a>> {
    let Some(i) = layer else {
        return (stage == Stage::Logits).then_some(&w.output);
    };
    let lw = w.layers.get(i)?;
    match (stage, &lw.ffn) {
        (Stage::QProj, _) => Some(&lw.attn_q),
        (Stage::KProj, _) => Some(&lw.attn_k),
        (Stage::VProj, _) => Some(&lw.attn_v),
        (Stage::AttnOut, _) => Some(&lw.attn_output),
        (Stage::RouterLogits, FfnWeights::Moe { ffn_gate_inp, .. }) => Some(ffn_gate_inp),
        (Stage::FfnOut, FfnWeights::Moe { ffn_down_exps, .. }) => Some(ffn_down_exps),
        (
            Stage::FfnSharedGate,
            FfnWeights::Moe {
                shared: Some(s), ..
            },
        ) => Some(&s.ffn_gate_inp_shexp),
        (
            Stage::FfnSharedOut,
            FfnWeights::Moe {
                shared: Some(s), ..
            },
        ) => Some(&s.ffn_down_shexp),
        (Stage::FfnGate, FfnWeights::Dense { ffn_gate, .. }) => Some(ffn_gate),
        (Stage::FfnUp, FfnWeights::Dense { ffn_up, .. }) => Some(ffn_up),
        (Stage::FfnOut, FfnWeights::Dense { ffn_down, .. }) => Some(ffn_down),
        _ => None,
    }
}

/// Check every planted fault against this model before running: a fault that cannot fire is
/// an error, never a silent clean run (also one that cannot fire under the schedule's steps).
pub(super) fn check_faults(
    faults: &[Fault],
    steps: &[Step],
    cfg: &ModelConfig,
    w: &ModelWeights,
) -> Result<()> {
    for f in faults {
        let bad = |why: String| Error::input(format!("fault `{f}`: {why}"));
        f.check_model(cfg).map_err(bad)?;
        f.check_schedule(steps).map_err(bad)?;
        if f.kind == FaultKind::Q6kAsQ4k {
            let Some(wt) = weight_for(w, f.layer, f.stage) else {
                return Err(bad(format!("no matmul produces {} in this model", f.stage)));
            };
            if wt.ty != GgmlType::Q6_K {
                return Err(bad(format!(
                    "the model has no Q6_K tensor there: '{}' is {}",
                    wt.name, wt.ty
                )));
            }
        }
    }
    Ok(())
}
