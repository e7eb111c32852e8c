//! Capture plans: which stages of which layers a forward keeps. Stages not planned cost nothing:
//! backends ask the plan before they copy or even materialise a stage's tensor.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;

use super::stage::{Key, Stage};

/// Which layers a plan keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSel {
    All,
    /// Explicit layers as sorted, disjoint, non-adjacent inclusive ranges: a range costs one
    /// entry however many layers it spans, so `0..18446744073709551615` is as cheap as `0..3`
    /// (and is refused against the model's layer count, see [`CapturePlan::check_layers`]).
    Some(Vec<RangeInclusive<usize>>),
}

impl LayerSel {
    /// Explicit layers from any ranges: sorted and merged. Empty ranges are dropped.
    pub fn ranges(ranges: impl IntoIterator<Item = RangeInclusive<usize>>) -> LayerSel {
        let mut v: Vec<RangeInclusive<usize>> =
            ranges.into_iter().filter(|r| !r.is_empty()).collect();
        v.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<usize>> = Vec::with_capacity(v.len());
        for r in v {
            match merged.last_mut() {
                Some(last) if *r.start() <= last.end().saturating_add(1) => {
                    if r.end() > last.end() {
                        *last = *last.start()..=*r.end();
                    }
                }
                _ => merged.push(r),
            }
        }
        LayerSel::Some(merged)
    }

    /// Whether layer `i` is selected.
    pub fn contains(&self, i: usize) -> bool {
        match self {
            LayerSel::All => true,
            LayerSel::Some(ranges) => {
                // ranges are sorted and disjoint: the last one starting at or before i decides
                let k = ranges.partition_point(|r| *r.start() <= i);
                k > 0 && ranges[k - 1].contains(&i)
            }
        }
    }

    /// The highest layer selected (`None` for all layers or none).
    pub fn max(&self) -> Option<usize> {
        match self {
            LayerSel::All => None,
            LayerSel::Some(ranges) => ranges.last().map(|r| *r.end()),
        }
    }
}

/// A capture plan. The empty plan captures nothing (an untraced forward).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturePlan {
    stages: BTreeSet<Stage>,
    layers: LayerSel,
}

impl Default for CapturePlan {
    fn default() -> Self {
        CapturePlan::none()
    }
}

impl CapturePlan {
    /// Capture nothing.
    pub fn none() -> CapturePlan {
        CapturePlan {
            stages: BTreeSet::new(),
            layers: LayerSel::All,
        }
    }

    /// Every stage of every layer.
    pub fn all() -> CapturePlan {
        CapturePlan {
            stages: Stage::ALL.into_iter().collect(),
            layers: LayerSel::All,
        }
    }

    pub fn new(stages: impl IntoIterator<Item = Stage>, layers: LayerSel) -> CapturePlan {
        CapturePlan {
            stages: stages.into_iter().collect(),
            layers,
        }
    }

    /// Parse the CLI syntax: `--stages all|s1,s2,...` and `--layers all|A..B|A..=B|i,j,k`.
    pub fn parse(stages: &str, layers: Option<&str>) -> Result<CapturePlan, String> {
        let stages: BTreeSet<Stage> = if stages.trim() == "all" {
            Stage::ALL.into_iter().collect()
        } else {
            stages
                .split(',')
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<Stage>().map_err(|e| e.to_string()))
                .collect::<Result<_, _>>()?
        };
        let layers = match layers {
            None => LayerSel::All,
            Some(l) => parse_layers(l)?,
        };
        Ok(CapturePlan { stages, layers })
    }

    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    pub fn stages(&self) -> impl Iterator<Item = Stage> + '_ {
        self.stages.iter().copied()
    }

    pub fn layers(&self) -> &LayerSel {
        &self.layers
    }

    /// Whether the plan keeps this stage at this layer (`None` for model-level stages).
    pub fn wants(&self, layer: Option<usize>, stage: Stage) -> bool {
        if !self.stages.contains(&stage) {
            return false;
        }
        layer.is_none_or(|i| self.layers.contains(i))
    }

    /// The first planned layer at or past `n_layers` (a layer a model of `n_layers` lacks).
    pub fn first_layer_beyond(&self, n_layers: usize) -> Option<usize> {
        let LayerSel::Some(ranges) = &self.layers else {
            return None;
        };
        ranges
            .iter()
            .find(|r| *r.end() >= n_layers)
            .map(|r| (*r.start()).max(n_layers))
    }

    /// Check the planned layers against a model of `n_layers` layers (`model` names it): a
    /// layer the model does not have is an error, never a plan that silently captures less.
    pub fn check_layers(&self, n_layers: usize, model: &str) -> Result<(), String> {
        match self.first_layer_beyond(n_layers) {
            Some(l) => Err(format!(
                "layer {l} is out of range: {model} has {n_layers} layers (0..{n_layers})"
            )),
            None => Ok(()),
        }
    }

    pub fn wants_key(&self, key: &Key) -> bool {
        self.wants(key.layer, key.stage)
    }

    /// Whether any layer stage is wanted at this layer (lets a backend skip a whole layer's copies).
    pub fn wants_layer(&self, layer: usize) -> bool {
        self.stages.iter().any(|s| self.wants(Some(layer), *s))
    }

    /// Add stages (used by attribution, which needs every layer's output of the reference).
    pub fn with_stages(mut self, extra: impl IntoIterator<Item = Stage>) -> CapturePlan {
        self.stages.extend(extra);
        self
    }

    /// Keys this plan would capture on a model of `n_layers` layers, in forward order.
    /// `has_stage` says which stages the architecture computes (dense layers have no router).
    pub fn keys(&self, n_layers: usize, has_stage: impl Fn(Stage) -> bool) -> Vec<Key> {
        let mut keys = Vec::new();
        for stage in Stage::ALL {
            if !has_stage(stage) || !self.stages.contains(&stage) || stage.is_layer_stage() {
                continue;
            }
            keys.push(Key::model(stage));
        }
        for layer in 0..n_layers {
            for stage in Stage::layer_stages() {
                if has_stage(stage) && self.wants(Some(layer), stage) {
                    keys.push(Key::layer(layer, stage));
                }
            }
        }
        keys.sort();
        keys
    }
}

fn parse_layers(text: &str) -> Result<LayerSel, String> {
    let text = text.trim();
    if text == "all" {
        return Ok(LayerSel::All);
    }
    let bad = |why: &str| format!("bad --layers `{text}`: {why} (use all, A..B, A..=B or i,j,k)");
    let num = |s: &str| {
        s.trim()
            .parse::<usize>()
            .map_err(|_| bad("not a layer index"))
    };
    // ranges stay ranges: a huge range is one entry, checked against the model later
    let mut ranges = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once("..=") {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad("empty range"));
            }
            ranges.push(a..=b);
        } else if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (num(a)?, num(b)?);
            if b <= a {
                return Err(bad("empty range"));
            }
            ranges.push(a..=b - 1);
        } else {
            let i = num(part)?;
            ranges.push(i..=i);
        }
    }
    if ranges.is_empty() {
        return Err(bad("no layers"));
    }
    Ok(LayerSel::ranges(ranges))
}

impl fmt::Display for CapturePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stages: Vec<&str> = if self.stages.len() == Stage::ALL.len() {
            vec!["all"]
        } else {
            self.stages.iter().map(|s| s.name()).collect()
        };
        write!(f, "stages={}", stages.join(","))?;
        match &self.layers {
            LayerSel::All => write!(f, " layers=all"),
            LayerSel::Some(ranges) => {
                // the CLI's syntax: `i` for one layer, `a..b` (or `a..=max`) for a run
                let l: Vec<String> = ranges
                    .iter()
                    .map(|r| match (*r.start(), *r.end()) {
                        (a, b) if a == b => a.to_string(),
                        (a, usize::MAX) => format!("{a}..={}", usize::MAX),
                        (a, b) => format!("{a}..{}", b + 1),
                    })
                    .collect();
                write!(f, " layers={}", l.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_query() {
        let p = CapturePlan::parse("attn_norm,logits", Some("1..3")).unwrap();
        assert!(p.wants(Some(1), Stage::AttnNorm));
        assert!(p.wants(Some(2), Stage::AttnNorm));
        assert!(!p.wants(Some(3), Stage::AttnNorm));
        assert!(!p.wants(Some(1), Stage::QProj));
        assert!(p.wants(None, Stage::Logits));
        let p = CapturePlan::parse("all", Some("0..=1,5")).unwrap();
        assert!(p.wants(Some(5), Stage::LayerOut) && !p.wants(Some(4), Stage::LayerOut));
        assert!(CapturePlan::parse("bogus", None).is_err());
        assert!(CapturePlan::parse("all", Some("3..1")).is_err());
        assert!(CapturePlan::parse("all", Some("x")).is_err());
        assert!(CapturePlan::none().is_empty());
        assert!(!CapturePlan::all().is_empty());
    }

    /// Issue 11 items 3 and 15: a range is one entry however long (no `set.extend(a..b)` over
    /// 2^64 layers), and a layer the model lacks is an error naming the model's layer count.
    #[test]
    fn huge_ranges_are_cheap_and_checked_against_the_model() {
        let p = CapturePlan::parse("all", Some("0..18446744073709551615")).unwrap();
        assert_eq!(
            p.layers(),
            &LayerSel::Some(vec![0..=usize::MAX - 1]),
            "one range, not 2^64 indices"
        );
        assert!(p.wants(Some(usize::MAX - 1), Stage::LayerOut));
        let e = p.check_layers(3, "tiny.gguf").unwrap_err();
        assert_eq!(e, "layer 3 is out of range: tiny.gguf has 3 layers (0..3)");
        let p = CapturePlan::parse("all", Some("0..=18446744073709551615")).unwrap();
        assert!(p.wants(Some(usize::MAX), Stage::LayerOut));
        assert_eq!(p.to_string(), "stages=all layers=0..=18446744073709551615");
        let p = CapturePlan::parse("all", Some("5..9")).unwrap();
        let e = p.check_layers(3, "m").unwrap_err();
        assert!(e.contains("layer 5 is out of range: m has 3 layers"), "{e}");
        assert!(p.check_layers(9, "m").is_ok());
        // overlapping and adjacent parts merge; display keeps the CLI syntax
        let p = CapturePlan::parse("logits", Some("4,0..2,1..=3,7")).unwrap();
        assert_eq!(p.layers(), &LayerSel::Some(vec![0..=4, 7..=7]));
        assert_eq!(p.to_string(), "stages=logits layers=0..5,7");
        assert!(p.layers().contains(4) && !p.layers().contains(5) && p.layers().contains(7));
        assert!(CapturePlan::all().check_layers(0, "m").is_ok());
    }

    #[test]
    fn keys_in_forward_order() {
        let p = CapturePlan::parse("tokens,attn_norm,ffn_gate,router_logits,logits", None).unwrap();
        let keys = p.keys(2, |s| !s.is_dense_only());
        let names: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        assert_eq!(
            names,
            [
                "tokens",
                "layer.0.attn_norm",
                "layer.0.router_logits",
                "layer.1.attn_norm",
                "layer.1.router_logits",
                "logits"
            ]
        );
    }
}
