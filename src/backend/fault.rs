//! Planted faults (docs/design.md "Planted faults"): the bug classes a harness must catch, planted at
//! one layer and stage of either side. They prove the harness (a self-test that never caught a
//! planted bug proves nothing) and reproduce known field bugs.

use std::fmt;
use std::str::FromStr;

use crate::trace::stage::Stage;

/// The fault classes: eight of the batched forward, four of the KV-cache path (they need a
/// schedule with decode steps or several steps, see [`Fault::check_schedule`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// One element of the stage's output becomes NaN (flat index into the stage tensor).
    Nan { index: usize },
    /// The stage's output is multiplied by (1 + eps).
    ScaleDrift { eps: f32 },
    /// The matmul producing the stage decodes its Q6_K weight as if it were Q4_K (the bug of the story in docs/design.md:
    /// a Q4_K_M file mixes both types, and a kernel dispatched on the wrong one).
    Q6kAsQ4k,
    /// Activations entering the matmul producing the stage are rounded to 8-bit blocks
    /// (Q8_0: 32 values share one f16 scale amax/127), as llama.cpp's quantized dot products do.
    ActQ8Rounding,
    /// Top-k weights are left as raw probabilities, not renormalised to sum 1.
    NoTopkRenorm,
    /// RoPE rotates adjacent pairs (2j, 2j+1) instead of NeoX's half-split pairs (j, j + D/2).
    RopePairSwap,
    /// The causal mask is off by one: each position also attends to the next one.
    CausalMaskOffByOne,
    /// Expert dispatch swaps experts `a` and `b`: tokens routed to one run through the other.
    ExpertSwap { a: usize, b: usize },
    /// A decode step attends before writing its own K/V into the cache: its query sees a stale
    /// slot at its own position (zeros in a fresh cache) instead of its own key and value.
    KvStale,
    /// A decode step writes its K/V one slot early (slot p-1 for position p; slot -1 is
    /// dropped), so its own slot stays empty and the previous position's is overwritten.
    KvSlotOffByOne,
    /// Each step restarts RoPE positions at 0 (position p of a step starting at s is rotated
    /// by p - s): a chunk or decode step that forgot how much of the prompt came before it.
    RopePosReset,
    /// A prefill chunk attends only within itself, never to the earlier chunks in the cache.
    ChunkMask,
}

impl FaultKind {
    /// Contract / CLI name of the class.
    pub fn class(&self) -> &'static str {
        match self {
            FaultKind::Nan { .. } => "nan",
            FaultKind::ScaleDrift { .. } => "scale_drift",
            FaultKind::Q6kAsQ4k => "q6k_as_q4k",
            FaultKind::ActQ8Rounding => "act_q8_rounding",
            FaultKind::NoTopkRenorm => "no_topk_renorm",
            FaultKind::RopePairSwap => "rope_pair_swap",
            FaultKind::CausalMaskOffByOne => "causal_mask_off_by_one",
            FaultKind::ExpertSwap { .. } => "expert_swap",
            FaultKind::KvStale => "kv_stale",
            FaultKind::KvSlotOffByOne => "kv_slot_off_by_one",
            FaultKind::RopePosReset => "rope_pos_reset",
            FaultKind::ChunkMask => "chunk_mask",
        }
    }

    /// Whether the class lives in the KV-cache path and so needs a schedule other than the
    /// full forward to fire (which steps exactly: [`Fault::check_schedule`]).
    pub fn needs_schedule(&self) -> bool {
        matches!(
            self,
            FaultKind::KvStale
                | FaultKind::KvSlotOffByOne
                | FaultKind::RopePosReset
                | FaultKind::ChunkMask
        )
    }

    pub const CLASSES: [&'static str; 12] = [
        "nan",
        "scale_drift",
        "q6k_as_q4k",
        "act_q8_rounding",
        "no_topk_renorm",
        "rope_pair_swap",
        "causal_mask_off_by_one",
        "expert_swap",
        "kv_stale",
        "kv_slot_off_by_one",
        "rope_pos_reset",
        "chunk_mask",
    ];

    /// Stages at which this class can be planted (before asking the model whether it has them).
    pub fn allowed_stages(&self) -> &'static [Stage] {
        use Stage::*;
        const MATMULS: &[Stage] = &[
            QProj,
            KProj,
            VProj,
            AttnOut,
            RouterLogits,
            FfnGate,
            FfnUp,
            FfnSharedGate,
            FfnSharedOut,
            FfnOut,
            Logits,
        ];
        const F32_STAGES: &[Stage] = &[
            Embedding,
            AttnNorm,
            QProj,
            KProj,
            VProj,
            QNorm,
            KNorm,
            QRope,
            KRope,
            AttnProbs,
            AttnCtx,
            AttnOut,
            AttnResidual,
            FfnNorm,
            RouterLogits,
            RouterProbs,
            TopkWeights,
            FfnGate,
            FfnUp,
            FfnAct,
            FfnSharedGate,
            FfnSharedOut,
            FfnOut,
            LayerOut,
            FinalNorm,
            Logits,
        ];
        match self {
            FaultKind::Nan { .. } | FaultKind::ScaleDrift { .. } => F32_STAGES,
            FaultKind::Q6kAsQ4k | FaultKind::ActQ8Rounding => MATMULS,
            FaultKind::NoTopkRenorm => &[TopkWeights],
            FaultKind::RopePairSwap | FaultKind::RopePosReset => &[QRope, KRope],
            // the cache and mask faults act inside the attention: first visible at attn_probs
            // (at attn_ctx when the plan keeps no probabilities)
            FaultKind::CausalMaskOffByOne
            | FaultKind::KvStale
            | FaultKind::KvSlotOffByOne
            | FaultKind::ChunkMask => &[AttnProbs],
            FaultKind::ExpertSwap { .. } => &[FfnOut],
        }
    }
}

/// A fault planted at one place.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// `None` for model-level stages (embedding, final_norm, logits).
    pub layer: Option<usize>,
    pub stage: Stage,
}

impl Fault {
    /// Whether this fault fires at (layer, stage).
    pub fn is_at(&self, layer: Option<usize>, stage: Stage) -> bool {
        self.layer == layer && self.stage == stage
    }

    /// Check that this fault can fire in a model of shape `cfg`: its place ([`Fault::check_place`]),
    /// a stage the architecture has, a layer and experts in range, a matmul at the stage for the
    /// matmul faults, and a router that renormalises for `no_topk_renorm` (qwen2moe's does not,
    /// so there the fault would change nothing). A fault that cannot fire is an error, never a
    /// silent clean run. Backends add what only they can see (a weight's block type).
    pub fn check_model(&self, cfg: &crate::model::config::ModelConfig) -> Result<(), String> {
        self.check_place()?;
        if !cfg.has_stage(self.stage) {
            return Err(format!("a {} model has no stage {}", cfg.arch, self.stage));
        }
        if let Some(l) = self.layer.filter(|&l| l >= cfg.n_layers) {
            return Err(format!(
                "layer {l} out of range (the model has {} layers)",
                cfg.n_layers
            ));
        }
        match self.kind {
            FaultKind::ExpertSwap { a, b } if a.max(b) >= cfg.n_experts => Err(format!(
                "expert {} out of range (the model has {} experts)",
                a.max(b),
                cfg.n_experts
            )),
            FaultKind::NoTopkRenorm if !cfg.norm_topk_prob => Err(format!(
                "a {} router does not renormalise its top-k weights, so no_topk_renorm changes nothing",
                cfg.arch
            )),
            FaultKind::Q6kAsQ4k | FaultKind::ActQ8Rounding
                if cfg.weight_producing(self.stage).is_none() =>
            {
                Err(format!("no matmul produces {} in this model", self.stage))
            }
            _ => Ok(()),
        }
    }

    /// Check that this fault can fire under a schedule with these steps (see
    /// [`crate::backend::Schedule::steps`]): `kv_stale` and `kv_slot_off_by_one` act in decode
    /// steps, `rope_pos_reset` in a step that starts after position 0, `chunk_mask` in a
    /// prefill chunk after the first. The other classes fire under any schedule.
    pub fn check_schedule(&self, steps: &[crate::backend::Step]) -> Result<(), String> {
        use crate::backend::StepKind;
        let need = match self.kind {
            FaultKind::KvStale | FaultKind::KvSlotOffByOne => {
                if steps.iter().any(|s| s.is_decode()) {
                    return Ok(());
                }
                "at least one decode step (schedule decode N >= 1)"
            }
            FaultKind::RopePosReset => {
                if steps.iter().any(|s| s.start > 0) {
                    return Ok(());
                }
                "a step that starts after position 0 (a chunk smaller than the prompt, or decode steps)"
            }
            FaultKind::ChunkMask => {
                if steps.iter().any(|s| s.kind == StepKind::Prefill(1)) {
                    return Ok(());
                }
                "at least two prefill chunks (a chunk C smaller than the prompt minus the decode steps)"
            }
            _ => return Ok(()),
        };
        Err(format!(
            "fault {} needs {need}; under this schedule it cannot fire",
            self.kind.class()
        ))
    }

    /// Check that the class can live at this stage and that layer and stage scope agree.
    pub fn check_place(&self) -> Result<(), String> {
        if !self.kind.allowed_stages().contains(&self.stage) {
            let ok: Vec<&str> = self
                .kind
                .allowed_stages()
                .iter()
                .map(|s| s.name())
                .collect();
            return Err(format!(
                "fault {} cannot be planted at stage {} (it can at: {})",
                self.kind.class(),
                self.stage,
                ok.join(", ")
            ));
        }
        if self.layer.is_some() != self.stage.is_layer_stage() {
            return Err(format!(
                "fault {} at {}: {} stages {} a layer",
                self.kind.class(),
                self.stage,
                if self.stage.is_layer_stage() {
                    "layer"
                } else {
                    "model-level"
                },
                if self.stage.is_layer_stage() {
                    "need"
                } else {
                    "take no"
                }
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FaultKind::Nan { index } => write!(f, "nan[{index}]")?,
            FaultKind::ScaleDrift { eps } => write!(f, "scale_drift[{eps}]")?,
            FaultKind::ExpertSwap { a, b } => write!(f, "expert_swap[{a},{b}]")?,
            k => f.write_str(k.class())?,
        }
        match self.layer {
            Some(l) => write!(f, "@layer.{l}.{}", self.stage),
            None => write!(f, "@{}", self.stage),
        }
    }
}

/// Parse `CLASS[ARGS]@KEY`, e.g. `nan@layer.1.ffn_out`, `nan[5]@logits`,
/// `scale_drift[0.01]@layer.0.attn_out`, `expert_swap[1,3]@layer.2.ffn_out`, `q6k_as_q4k@layer.0.ffn_out`.
impl FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| format!("bad fault `{s}`: {why} (form: CLASS[ARGS]@KEY)");
        let (spec, key) = s.split_once('@').ok_or_else(|| bad("missing @KEY"))?;
        let key: crate::trace::stage::Key = key.parse().map_err(|e| bad(&format!("{e}")))?;
        let (class, args) = match spec.split_once('[') {
            Some((c, rest)) => (
                c,
                Some(rest.strip_suffix(']').ok_or_else(|| bad("unclosed ["))?),
            ),
            None => (spec, None),
        };
        let nums = |n: usize| -> Result<Vec<f64>, String> {
            let v: Vec<f64> = match args {
                None => Vec::new(),
                Some(a) => a
                    .split(',')
                    .map(|x| x.trim().parse::<f64>().map_err(|_| bad("bad number")))
                    .collect::<Result<_, _>>()?,
            };
            if v.len() > n {
                return Err(bad("too many arguments"));
            }
            Ok(v)
        };
        let idx = |x: f64| -> Result<usize, String> {
            if x >= 0.0 && x.fract() == 0.0 && x < 1e15 {
                Ok(x as usize)
            } else {
                Err(bad("expected a non-negative integer"))
            }
        };
        let kind = match class {
            "nan" => FaultKind::Nan {
                index: nums(1)?.first().map(|x| idx(*x)).transpose()?.unwrap_or(0),
            },
            "scale_drift" => FaultKind::ScaleDrift {
                eps: nums(1)?.first().copied().unwrap_or(1e-2) as f32,
            },
            "expert_swap" => {
                let v = nums(2)?;
                if v.len() != 2 {
                    return Err(bad("expert_swap takes [a,b]"));
                }
                let (a, b) = (idx(v[0])?, idx(v[1])?);
                if a == b {
                    return Err(bad("expert_swap needs two different experts"));
                }
                FaultKind::ExpertSwap { a, b }
            }
            other => {
                if args.is_some() {
                    return Err(bad("this class takes no arguments"));
                }
                match other {
                    "q6k_as_q4k" => FaultKind::Q6kAsQ4k,
                    "act_q8_rounding" => FaultKind::ActQ8Rounding,
                    "no_topk_renorm" => FaultKind::NoTopkRenorm,
                    "rope_pair_swap" => FaultKind::RopePairSwap,
                    "causal_mask_off_by_one" => FaultKind::CausalMaskOffByOne,
                    "kv_stale" => FaultKind::KvStale,
                    "kv_slot_off_by_one" => FaultKind::KvSlotOffByOne,
                    "rope_pos_reset" => FaultKind::RopePosReset,
                    "chunk_mask" => FaultKind::ChunkMask,
                    _ => {
                        return Err(bad(&format!(
                            "unknown class (known: {})",
                            FaultKind::CLASSES.join(", ")
                        )));
                    }
                }
            }
        };
        let fault = Fault {
            kind,
            layer: key.layer,
            stage: key.stage,
        };
        fault.check_place().map_err(|e| bad(&e))?;
        Ok(fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fault must be able to fire in the model it is planted in: a stage the architecture
    /// has, and a router that renormalises for no_topk_renorm (qwen2moe's does not).
    #[test]
    fn faults_that_cannot_fire_in_a_model_are_refused() {
        use crate::model::synth::preset;
        let check = |p: &str, f: &str| {
            let fault: Fault = f.parse().unwrap();
            fault.check_model(&preset(p).unwrap())
        };
        check("tiny-moe", "no_topk_renorm@layer.0.topk_weights").unwrap();
        check("tiny-mixtral", "no_topk_renorm@layer.1.topk_weights").unwrap();
        let e = check("tiny-qwen2moe", "no_topk_renorm@layer.0.topk_weights").unwrap_err();
        assert!(e.contains("qwen2moe router does not renormalise"), "{e}");
        let e = check("tiny-llama", "scale_drift[0.1]@layer.0.q_norm").unwrap_err();
        assert_eq!(e, "a llama model has no stage q_norm");
        check("tiny-qwen2moe", "act_q8_rounding@layer.0.ffn_shared_out").unwrap();
        check("tiny-qwen2moe", "nan[1]@layer.1.ffn_shared_gate").unwrap();
        let e = check("tiny-moe", "nan[1]@layer.0.ffn_shared_gate").unwrap_err();
        assert!(e.contains("has no stage ffn_shared_gate"), "{e}");
        let e = check("tiny-llama", "nan[0]@layer.7.attn_out").unwrap_err();
        assert!(e.contains("layer 7 out of range"), "{e}");
    }

    /// The cache faults fire only where their schedule has the steps they act in.
    #[test]
    fn cache_faults_need_their_steps() {
        use crate::backend::Schedule;
        let check = |f: &str, s: Schedule, t: usize| {
            let fault: Fault = f.parse().unwrap();
            fault.check_schedule(&s.steps(t).unwrap())
        };
        let full = Schedule::full();
        for f in [
            "kv_stale@layer.0.attn_probs",
            "kv_slot_off_by_one@layer.0.attn_probs",
            "rope_pos_reset@layer.0.q_rope",
            "chunk_mask@layer.0.attn_probs",
        ] {
            let e = check(f, full, 8).unwrap_err();
            assert!(e.contains("cannot fire"), "{e}");
            assert!(f.parse::<Fault>().unwrap().kind.needs_schedule());
        }
        check("nan@layer.0.attn_probs", full, 8).unwrap();
        check("kv_stale@layer.0.attn_probs", Schedule::new(None, 1), 8).unwrap();
        let e = check("kv_stale@layer.0.attn_probs", Schedule::new(Some(2), 0), 8).unwrap_err();
        assert!(e.contains("at least one decode step"), "{e}");
        check(
            "rope_pos_reset@layer.0.k_rope",
            Schedule::new(Some(2), 0),
            8,
        )
        .unwrap();
        check("rope_pos_reset@layer.0.k_rope", Schedule::new(None, 1), 8).unwrap();
        let e = check(
            "rope_pos_reset@layer.0.k_rope",
            Schedule::new(Some(9), 0),
            8,
        )
        .unwrap_err();
        assert!(e.contains("starts after position 0"), "{e}");
        check(
            "chunk_mask@layer.0.attn_probs",
            Schedule::new(Some(3), 2),
            8,
        )
        .unwrap();
        let e = check(
            "chunk_mask@layer.0.attn_probs",
            Schedule::new(Some(6), 2),
            8,
        )
        .unwrap_err();
        assert!(e.contains("two prefill chunks"), "{e}");
    }

    #[test]
    fn parse_print_round_trip() {
        for s in [
            "nan[0]@layer.1.ffn_out",
            "nan[5]@logits",
            "scale_drift[0.01]@layer.0.attn_out",
            "expert_swap[1,3]@layer.2.ffn_out",
            "q6k_as_q4k@layer.0.ffn_out",
            "act_q8_rounding@layer.0.q_proj",
            "no_topk_renorm@layer.1.topk_weights",
            "rope_pair_swap@layer.0.k_rope",
            "causal_mask_off_by_one@layer.2.attn_probs",
            "kv_stale@layer.0.attn_probs",
            "kv_slot_off_by_one@layer.1.attn_probs",
            "rope_pos_reset@layer.0.q_rope",
            "rope_pos_reset@layer.1.k_rope",
            "chunk_mask@layer.1.attn_probs",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        for bad in [
            "nan",
            "nan@layer.1",
            "rope_pair_swap@layer.0.ffn_out",
            "nan@layer.0.topk_ids",
            "expert_swap[1]@layer.0.ffn_out",
            "expert_swap[2,2]@layer.0.ffn_out",
            "bogus@logits",
            "q6k_as_q4k[1]@logits",
            "kv_stale@layer.0.attn_ctx",
            "rope_pos_reset@layer.0.attn_probs",
            "chunk_mask[1]@layer.0.attn_probs",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
