//! One forward pass's bookkeeping: which stages to capture, which faults fire where, and the
//! teacher's inputs. The model code calls [`Pass::emit`] after each stage; everything about
//! planted faults and capture plans lives here so that the forward chains stay short.

use std::collections::BTreeMap;

use super::matmul::{Q6kAsQ4k, matmul};
use super::ops::Precision;
use crate::backend::{Fault, FaultKind, ForwardRequest};
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
    plan: &'r CapturePlan,
    faults: &'r [Fault],
    teacher: Option<&'r Trace>,
    /// What was captured so far.
    pub captured: BTreeMap<Key, Tensor>,
}

impl<'r> Pass<'r> {
    pub fn new(req: &ForwardRequest<'r>, cfg: &'r ModelConfig, p: Precision) -> Pass<'r> {
        Pass {
            p,
            cfg,
            t: req.tokens.len(),
            plan: req.plan,
            faults: req.faults,
            teacher: req.teacher,
            captured: BTreeMap::new(),
        }
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

    /// The stage `stage` of `layer` is done: apply the output faults planted there (NaN at one
    /// element, scale drift) and keep a copy if the plan wants it.
    pub fn emit(&mut self, layer: Option<usize>, stage: Stage, data: &mut [f32], shape: &[usize]) {
        for kind in self.faults_at(layer, stage).collect::<Vec<_>>() {
            match kind {
                FaultKind::Nan { index } if !data.is_empty() => data[index % data.len()] = f32::NAN,
                FaultKind::ScaleDrift { eps } => data.iter_mut().for_each(|v| *v *= 1.0 + eps),
                _ => {}
            }
        }
        if self.plan.wants(layer, stage) {
            self.captured.insert(
                Key { layer, stage },
                Tensor::f32(shape.to_vec(), data.to_vec()),
            );
        }
    }

    pub fn emit_i32(&mut self, layer: Option<usize>, stage: Stage, data: &[i32], shape: &[usize]) {
        if self.plan.wants(layer, stage) {
            self.captured.insert(
                Key { layer, stage },
                Tensor::i32(shape.to_vec(), data.to_vec()),
            );
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

    /// Teacher forcing: the teacher's tensor `key` (`[T, H]` f32), or `None` without a teacher.
    pub fn teacher(&self, key: Key) -> Result<Option<Vec<f32>>> {
        let Some(teacher) = self.teacher else {
            return Ok(None);
        };
        let want = self.t * self.cfg.hidden;
        match teacher.get(&key).map(|t| &t.data) {
            Some(TensorData::F32(v)) if v.len() == want => Ok(Some(v.clone())),
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
/// an error, never a silent clean run.
pub(super) fn check_faults(faults: &[Fault], cfg: &ModelConfig, w: &ModelWeights) -> Result<()> {
    for f in faults {
        let bad = |why: String| Error::input(format!("fault `{f}`: {why}"));
        f.check_model(cfg).map_err(bad)?;
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
