//! Capture plans: which stages of which layers a forward keeps. Stages not planned cost nothing:
//! backends ask the plan before they copy or even materialise a stage's tensor.

use std::collections::BTreeSet;
use std::fmt;

use super::stage::{Key, Stage};

/// Which layers a plan keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayerSel {
    All,
    /// Explicit layer indices.
    Some(BTreeSet<usize>),
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
        match (layer, &self.layers) {
            (None, _) | (Some(_), LayerSel::All) => true,
            (Some(i), LayerSel::Some(set)) => set.contains(&i),
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
    let mut set = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once("..=") {
            let (a, b) = (num(a)?, num(b)?);
            if b < a {
                return Err(bad("empty range"));
            }
            set.extend(a..=b);
        } else if let Some((a, b)) = part.split_once("..") {
            let (a, b) = (num(a)?, num(b)?);
            if b <= a {
                return Err(bad("empty range"));
            }
            set.extend(a..b);
        } else {
            set.insert(num(part)?);
        }
    }
    if set.is_empty() {
        return Err(bad("no layers"));
    }
    Ok(LayerSel::Some(set))
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
            LayerSel::Some(set) => {
                let l: Vec<String> = set.iter().map(|i| i.to_string()).collect();
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
