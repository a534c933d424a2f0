//! Precision plans: a precision for each quantized layer of a model, written as a JSON file by
//! layer name in the official layout, with `*` patterns and a default, and resolved against a
//! model into the entry each layer runs (docs/decisions/0002-precisions-and-plans.md).
//!
//! ```json
//! {"default": 4, "layers": {"head.0": 8, "stage_2_*": "w4a8", "classifier.0": 8}}
//! ```
//!
//! A layer takes the precision of its exact name if the file gives one, else that of the most
//! specific pattern that matches it (the one with the most characters besides `*`), else the
//! default.

use std::collections::BTreeMap;

use adabits_quant::{At, BitWidth, BitWidths, Precision};
use serde::{Deserialize, Serialize};

use crate::{Accounting, CostReport, LayerMut, LayerShape, OfficialLayout, cost_plan};

/// A plan as written: a default precision and precisions by layer name or pattern.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The precision of every layer the names and patterns leave out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Precision>,
    /// Precisions by official layer name (`stage_0_layer_1.body.3`) or pattern (`stage_2_*`).
    #[serde(default)]
    pub layers: BTreeMap<String, Precision>,
}

/// What is wrong with a plan for a model.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlanError {
    /// A name or pattern of the plan names no layer of the model.
    #[error(
        "the plan names `{key}`, which is no quantized layer of the model (its layers: {known})"
    )]
    UnknownLayer {
        /// The name or pattern.
        key: String,
        /// The model's first layer names, for the message.
        known: String,
    },
    /// A layer gets a precision that is not one of the model's entries.
    #[error(
        "the plan runs `{layer}` at {precision}, which the model was not trained at (its entries: {entries})"
    )]
    NotAnEntry {
        /// The layer.
        layer: String,
        /// The precision.
        precision: Precision,
        /// The model's list.
        entries: String,
    },
    /// A layer matches no name and no pattern, and the plan has no default.
    #[error(
        "the plan gives `{layer}` no precision: no name or pattern matches it and there is no default"
    )]
    Uncovered {
        /// The layer.
        layer: String,
    },
    /// Two patterns of the same specificity give a layer different precisions.
    #[error("the patterns `{a}` and `{b}` both match `{layer}` as closely and disagree")]
    Ambiguous {
        /// The layer.
        layer: String,
        /// One pattern.
        a: String,
        /// The other.
        b: String,
    },
}

/// A plan resolved against a model: each quantized layer's name and what it runs at, in the
/// model's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPlan {
    /// `(official layer name, entry and precision)`, in module order.
    pub layers: Vec<(String, At)>,
}

impl ResolvedPlan {
    /// The cost of `layers` (the model's shapes) running the plan: each quantized layer at its
    /// own weight and activation bits ([`crate::cost_plan`]).
    pub fn cost(&self, layers: &[LayerShape], accounting: Accounting) -> CostReport {
        let precisions: Vec<Precision> = self.layers.iter().map(|(_, at)| at.precision).collect();
        cost_plan(layers, &precisions, accounting)
    }

    /// What `layer` runs at, if it is a layer of the plan.
    pub fn at(&self, layer: &str) -> Option<At> {
        self.layers
            .iter()
            .find(|(n, _)| n == layer)
            .map(|(_, at)| *at)
    }
}

/// The entry to give a model that runs a plan ([`with_plan`]): every layer runs its planned
/// entry whatever it is given, and a uniform precision (full precision here) leaves the plan in
/// place where a `wWaA` one would set its own ([`crate::Model::forward_at`]). Scores measured
/// at it are keyed `32`.
pub const UNDER_PLAN: At = At {
    entry: 0,
    precision: Precision {
        weight: BitWidth::FULL,
        activation: BitWidth::FULL,
    },
};

/// `model` running `plan` whatever bit-width its `forward` is given: each quantized layer at
/// its entry's precision and clipping level, each BatchNorm at the entry of the convolution
/// before it (as the official code sets `bits` on every module); [`without_plan`] undoes it.
///
/// # Errors
///
/// [`PlanError::Uncovered`] naming a quantized layer of the model that the plan (resolved
/// against another model) does not have.
pub fn with_plan<M: OfficialLayout>(model: &M, plan: &ResolvedPlan) -> Result<M, PlanError> {
    let mut model = model.clone();
    let mut missing = None;
    let mut last_entry = None;
    model.visit_official(&mut |name, layer| match layer {
        LayerMut::Conv(conv) => {
            let at = plan.at(name);
            missing = missing.take().or(at.is_none().then(|| name.to_string()));
            last_entry = at.map(|a| a.entry);
            conv.set_planned(at);
        }
        LayerMut::Linear(linear) => {
            let at = plan.at(name);
            missing = missing.take().or(at.is_none().then(|| name.to_string()));
            linear.set_planned(at);
        }
        LayerMut::Norm(bn) => bn.set_planned(last_entry),
    });
    match missing {
        Some(layer) => Err(PlanError::Uncovered { layer }),
        None => Ok(model),
    }
}

/// `model` with no plan set: each layer runs the bit-width its `forward` is given.
pub fn without_plan<M: OfficialLayout>(model: &M) -> M {
    let mut model = model.clone();
    model.visit_official(&mut |_, layer| match layer {
        LayerMut::Conv(conv) => conv.set_planned(None),
        LayerMut::Linear(linear) => linear.set_planned(None),
        LayerMut::Norm(bn) => bn.set_planned(None),
    });
    model
}

/// The official names of `model`'s quantized layers (convolutions and linear layers), in
/// module order.
pub fn quantized_layers<M: OfficialLayout>(model: &M) -> Vec<String> {
    let mut model = model.clone();
    let mut names = Vec::new();
    model.visit_official(&mut |name, layer| {
        if matches!(layer, LayerMut::Conv(_) | LayerMut::Linear(_)) {
            names.push(name.to_string());
        }
    });
    names
}

/// Whether `pattern` (`*` matching any run of characters, nothing else special) matches `name`.
fn glob(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

impl Plan {
    /// Every layer of `layers` (official names, in order) with its entry of the model's list
    /// `entries` and its precision.
    ///
    /// # Errors
    ///
    /// [`PlanError`]: a name or pattern matching no layer, a layer left without a precision,
    /// two equally specific patterns that disagree, a precision that is not one of `entries`.
    pub fn resolve(
        &self,
        layers: &[String],
        entries: &BitWidths,
    ) -> Result<ResolvedPlan, PlanError> {
        for key in self.layers.keys() {
            if !layers.iter().any(|l| glob(key, l)) {
                let mut known: Vec<&str> = layers.iter().take(4).map(String::as_str).collect();
                if layers.len() > 4 {
                    known.push("…");
                }
                return Err(PlanError::UnknownLayer {
                    key: key.clone(),
                    known: known.join(", "),
                });
            }
        }
        let mut resolved = Vec::with_capacity(layers.len());
        for layer in layers {
            let precision = match self.layers.get(layer) {
                Some(&p) => p,
                None => self
                    .best_pattern(layer)?
                    .ok_or_else(|| PlanError::Uncovered {
                        layer: layer.clone(),
                    })?,
            };
            let entry = entries
                .position(precision)
                .ok_or_else(|| PlanError::NotAnEntry {
                    layer: layer.clone(),
                    precision,
                    entries: entries.to_string(),
                })?;
            resolved.push((layer.clone(), At::new(entry, precision)));
        }
        Ok(ResolvedPlan { layers: resolved })
    }

    /// The precision of the most specific pattern matching `layer`, or the default.
    fn best_pattern(&self, layer: &str) -> Result<Option<Precision>, PlanError> {
        let specificity = |p: &str| p.chars().filter(|&c| c != '*').count();
        let mut best: Option<(&str, Precision)> = None;
        for (pattern, &precision) in self.layers.iter().filter(|(p, _)| p.contains('*')) {
            if !glob(pattern, layer) {
                continue;
            }
            match best {
                Some((b, bp)) if specificity(b) == specificity(pattern) && bp != precision => {
                    return Err(PlanError::Ambiguous {
                        layer: layer.to_string(),
                        a: b.to_string(),
                        b: pattern.clone(),
                    });
                }
                Some((b, _)) if specificity(b) >= specificity(pattern) => {}
                _ => best = Some((pattern, precision)),
            }
        }
        Ok(best.map(|(_, p)| p).or(self.default))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "head.0",
            "stage_0_layer_0.body.0",
            "stage_0_layer_0.body.3",
            "stage_2_layer_0.body.0",
            "stage_2_layer_0.shortcut.0",
            "classifier",
        ]
        .map(String::from)
        .to_vec()
    }

    fn plan(json: &str) -> Plan {
        serde_json::from_str(json).unwrap()
    }

    fn entries() -> BitWidths {
        "8,6,4".parse().unwrap()
    }

    #[test]
    fn names_beat_patterns_and_the_most_specific_pattern_wins() {
        let p = plan(
            r#"{"default": 4, "layers": {"head.0": 8, "stage_2_*": 6, "stage_2_*.shortcut.*": 8, "classifier": "8"}}"#,
        );
        let r = p.resolve(&names(), &entries()).unwrap();
        let got: Vec<(usize, String)> = r
            .layers
            .iter()
            .map(|(_, at)| (at.entry, at.precision.to_string()))
            .collect();
        let want = [(0, "8"), (2, "4"), (2, "4"), (1, "6"), (0, "8"), (0, "8")];
        assert_eq!(got, want.map(|(e, p)| (e, p.to_string())).to_vec(), "{r:?}");
        assert_eq!(
            r.at("stage_2_layer_0.body.0"),
            Some(At::new(1, r.layers[3].1.precision))
        );
        assert_eq!(r.at("nothing"), None);
    }

    #[test]
    fn a_uniform_plan_gives_every_layer_the_same_entry() {
        let r = plan(r#"{"default": 6}"#)
            .resolve(&names(), &entries())
            .unwrap();
        assert!(
            r.layers
                .iter()
                .all(|(_, at)| at.entry == 1 && at.precision.to_string() == "6")
        );
    }

    #[test]
    fn a_plan_runs_the_pair_entries_of_a_list() {
        let list: BitWidths = "8,w4a8,4".parse().unwrap();
        let r = plan(r#"{"default": "w4a8", "layers": {"head.0": 8, "classifier": 4}}"#)
            .resolve(&names(), &list)
            .unwrap();
        let got: Vec<String> = r
            .layers
            .iter()
            .map(|(_, at)| format!("{}@{}", at.precision, at.entry))
            .collect();
        assert_eq!(got, ["8@0", "w4a8@1", "w4a8@1", "w4a8@1", "w4a8@1", "4@2"]);
        let e = plan(r#"{"default": "w8a4"}"#)
            .resolve(&names(), &list)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(its entries: 8,w4a8,4)"), "{e}");
    }

    #[test]
    fn bad_plans_are_named() {
        let err = |json: &str| {
            serde_json::from_str::<Plan>(json)
                .map_err(|e| e.to_string())
                .and_then(|p| p.resolve(&names(), &entries()).map_err(|e| e.to_string()))
                .unwrap_err()
        };
        let e = err(r#"{"default": 4, "layers": {"stage_9_*": 8}}"#);
        assert!(
            e.contains("`stage_9_*`, which is no quantized layer") && e.contains("head.0"),
            "{e}"
        );
        let e = err(r#"{"default": 5}"#);
        assert!(
            e.contains(
                "runs `head.0` at 5, which the model was not trained at (its entries: 8,6,4)"
            ),
            "{e}"
        );
        let e = err(r#"{"default": "w4a8"}"#);
        assert!(
            e.contains("at w4a8, which the model was not trained at"),
            "{e}"
        );
        let e = err(r#"{"layers": {"head.0": 8}}"#);
        assert!(
            e.contains("gives `stage_0_layer_0.body.0` no precision"),
            "{e}"
        );
        let e = err(r#"{"default": 4, "layers": {"stage_0_*": 8, "*0.body.3": 6}}"#);
        assert!(e.contains("both match `stage_0_layer_0.body.3`"), "{e}");
        let e = err(r#"{"default": "w4a"}"#);
        assert!(e.contains("invalid precision \"w4a\""), "{e}");
        let e = err(r#"{"default": 4, "layer": {}}"#);
        assert!(e.contains("unknown field `layer`"), "{e}");
    }

    #[test]
    fn a_models_quantized_layers_are_its_official_convolutions_and_linears() {
        use crate::{Architecture, ModelConfig, OpKind};
        let device = burn::tensor::Device::flex();
        let model = ModelConfig::new(Architecture::CifarResNet(20), entries())
            .with_width_mult(0.25)
            .init(&device);
        let layers = quantized_layers(&model);
        let shapes = model.layer_shapes([32, 32]);
        let quantized = shapes.iter().filter(|s| s.kind != OpKind::AvgPool).count();
        assert_eq!(layers.len(), quantized, "{layers:?}");
        assert_eq!(layers.first().map(String::as_str), Some("head.0"));
        assert_eq!(layers.last().map(String::as_str), Some("classifier.0"));
        let plan = plan(r#"{"default": 4, "layers": {"head.0": 8, "classifier.0": 8}}"#);
        let r = plan.resolve(&layers, &entries()).unwrap();
        assert_eq!(r.layers.len(), layers.len());
    }

    #[test]
    fn patterns_match_runs_of_characters() {
        assert!(glob("stage_*", "stage_0_layer_0.body.0"));
        assert!(glob("*.body.0", "stage_0_layer_0.body.0"));
        assert!(glob("stage_*_layer_0.*", "stage_2_layer_0.shortcut.0"));
        assert!(glob("*", "classifier"));
        assert!(!glob("stage_*.body.3", "stage_0_layer_0.body.0"));
        assert!(!glob("head", "head.0"));
        assert!(glob("head.0", "head.0"));
        assert!(!glob("a*b*a", "ab"));
    }
}
