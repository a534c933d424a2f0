//! The configuration of a training run, as saved beside its results.

use std::collections::BTreeMap;
use std::path::PathBuf;

use adabits_models::{BnSharing, ModelConfig};
use serde::{Deserialize, Serialize};

use crate::data::DataSource;
use crate::error::TrainError;
use crate::optim::{OptimConfig, Schedule};
use crate::strategy::{Stage, Strategy};

/// Which checkpoint is the best.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestBy {
    /// The highest mean validation top-1 over the bit-widths (official).
    #[default]
    Mean,
    /// The highest worst-bit-width top-1.
    Min,
    /// The highest top-1 at the lowest bit-width.
    Lowest,
}

/// Everything a training run depends on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The model (its `num_classes` is set from the data). In JSON only `arch` and `bits` are
    /// required; every other field defaults as in [`ModelConfig::new`].
    #[serde(deserialize_with = "model_with_defaults")]
    pub model: ModelConfig,
    /// The data.
    #[serde(deserialize_with = "strict")]
    pub data: DataSource,
    /// The strategy.
    #[serde(deserialize_with = "strict")]
    pub strategy: Strategy,
    /// Training epochs (of the first stage, for progressive training).
    pub epochs: usize,
    /// Epochs at full precision before the strategy's stages (0, the default, for none): the
    /// model trains with full-precision weights and activations on the first bit-width's
    /// BatchNorm and clipping levels, which are then copied to every bit-width
    /// ([`adabits_models::spread_first`]), as the official runs start from a full-precision
    /// model (`fp_pretrained`). The following stage starts its own schedule and momentum.
    #[serde(default)]
    pub fp_epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    /// The optimiser and schedule.
    #[serde(default)]
    pub optim: OptimConfig,
    /// Seed of the initialisation, data order and augmentation.
    #[serde(default)]
    pub seed: u64,
    /// Which checkpoint is the best.
    #[serde(default)]
    pub best_by: BestBy,
    /// Batches used to re-estimate BatchNorm statistics (calibration).
    #[serde(default = "default_calibration")]
    pub calibration_batches: usize,
    /// Stop (with a checkpoint) after this many optimiser steps in all.
    #[serde(default)]
    pub max_steps: Option<usize>,
    /// Epochs of each fine-tuning stage of progressive training (default: half of `epochs`,
    /// at least 1), at a tenth of the learning rate.
    #[serde(default)]
    pub finetune_epochs: Option<usize>,
    /// Stop when a bit-width's smoothed training loss has not gone below `ln(classes)` (the
    /// loss of a model that predicts the same class for everything) less `stuck_tolerance`
    /// for this many steps in a row, and has not come down by more than 0.05 over them (a slow
    /// start is not stopped); `None` (the default) means one epoch, at least 100
    /// steps; `Some(0)` turns the guard off.
    #[serde(default)]
    pub stuck_steps: Option<usize>,
    /// How far below `ln(classes)` the smoothed loss must go to count as learning.
    #[serde(default = "default_stuck_tolerance")]
    pub stuck_tolerance: f64,
    /// Append the mean training loss of the last this-many steps, per bit-width, to
    /// `losses.jsonl` (the loss curve); 0 writes no curve.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
    /// Label smoothing `ε` of the training cross-entropy (0, the default and the official
    /// setting, for none); evaluation and the loss curve use the plain cross-entropy.
    #[serde(default)]
    pub label_smoothing: f64,
    /// Images held out from the training set to validate on (0, the default, for none): each
    /// epoch is scored, and the best checkpoint chosen, on them instead of the test set, which
    /// then only gives the final figures. A fixed random choice, the same for every run on the
    /// same training set ([`hold_out`](crate::data::hold_out)).
    #[serde(default)]
    pub val_split: usize,
    /// Keep an exponential moving average of the weights with this decay (e.g. 0.999; none,
    /// the default, keeps none), from the start of each quantized stage, warmed up as
    /// [`ema_decay`](crate::ema_decay) says. Each epoch evaluates it at every bit-width beside
    /// the model, each stage reports it, and checkpoints keep it (`--which ema` reads it).
    #[serde(default)]
    pub ema_decay: Option<f64>,
    /// Where the model starts instead of its seeded random initialisation: a state dict in the
    /// official (or torchvision) layout, adaptive or full-precision, or a run directory of
    /// adabits ([`crate::initial_model`]). `None` (left out of `config.json`): random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
}

/// The smallest `model.width_mult` a run accepts.
pub(crate) const MIN_WIDTH: f64 = 0.01;

fn default_log_every() -> usize {
    10
}

fn default_stuck_tolerance() -> f64 {
    0.05
}

/// Deserialises a [`ModelConfig`] whose JSON may leave out any field but `arch` and `bits`
/// (Burn's `Config` derive needs every field).
fn model_with_defaults<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ModelConfig, D::Error> {
    use serde::de::Error;
    let given = serde_json::Value::deserialize(d)?;
    let field = |name: &str| {
        given
            .get(name)
            .cloned()
            .ok_or_else(|| D::Error::custom(format!("model: missing field `{name}`")))
    };
    let arch = serde_json::from_value(field("arch")?).map_err(D::Error::custom)?;
    let bits = serde_json::from_value(field("bits")?).map_err(D::Error::custom)?;
    let mut full = serde_json::to_value(ModelConfig::new(arch, bits)).map_err(D::Error::custom)?;
    if let Some(key) = unknown_key(&full, &given, "model") {
        return Err(D::Error::custom(format!("unknown field `{key}`")));
    }
    merge_json(&mut full, given);
    serde_json::from_value(full).map_err(|e| D::Error::custom(format!("model: {e}")))
}

/// Deserialises a tagged section and refuses keys its kind does not have: serde's
/// `deny_unknown_fields` misses them on the variants without fields (`{"kind": "direct",
/// "distill": true}`). Every field of a kind is written back when it serialises, so a key the
/// value does not write back is unknown.
pub(crate) fn strict<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned + Serialize,
{
    use serde::de::Error;
    let given = serde_json::Value::deserialize(d)?;
    let value: T = serde_json::from_value(given.clone()).map_err(D::Error::custom)?;
    let known = serde_json::to_value(&value).map_err(D::Error::custom)?;
    if let Some(key) = unknown_key(&known, &given, "") {
        let kind = given.get("kind").and_then(|k| k.as_str()).unwrap_or("this");
        return Err(D::Error::custom(format!(
            "unknown field `{key}` for the kind {kind:?}"
        )));
    }
    Ok(value)
}

/// The first key of `given` (an object, and the objects inside it) that `known` does not have,
/// as a dotted path under `prefix` (none when it is empty). An object whose `kind` differs from
/// the known one (another variant of a tagged section) is left to its own parser.
fn unknown_key(
    known: &serde_json::Value,
    given: &serde_json::Value,
    prefix: &str,
) -> Option<String> {
    let (Some(known), Some(given)) = (known.as_object(), given.as_object()) else {
        return None;
    };
    if given.get("kind") != known.get("kind") {
        return None;
    }
    for (key, value) in given {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match known.get(key) {
            None => return Some(path),
            Some(k) => {
                if let Some(found) = unknown_key(k, value, &path) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// Writes `over` into `base`, object fields recursively, anything else replacing. An object
/// whose `kind` differs from the one it is written over (a tagged section: the data, the
/// strategy, the schedule) replaces it whole: another kind's fields do not carry over.
pub fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    let kind = |v: &serde_json::Value| v.get("kind").cloned();
    match (base, over) {
        (slot @ serde_json::Value::Object(_), o @ serde_json::Value::Object(_))
            if kind(&o).is_some() && kind(slot) != kind(&o) =>
        {
            *slot = o;
        }
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_json(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

fn default_eval_batch() -> usize {
    256
}

fn default_calibration() -> usize {
    20
}

/// The settings that shape only the stages after the full-precision one: two runs that differ
/// in nothing else train the same full-precision stage (as dotted paths of `config.json`).
const AFTER_FULL_PRECISION: [&str; 10] = [
    "strategy",
    "ema_decay",
    "epochs",
    "finetune_epochs",
    "best_by",
    "calibration_batches",
    "max_steps",
    "model.bits",
    "model.quant.switchable_alpha",
    "model.quant.bn",
];

impl TrainConfig {
    /// The first setting (a dotted path of `config.json`, e.g. `optim.lr`) on which this
    /// configuration differs from `other` (a saved `config.json`), leaving out the paths in
    /// `ignore` and everything under them, as `(field, other's value, this one's value)` in
    /// JSON; `None` when they agree.
    pub fn first_difference(
        &self,
        other: &serde_json::Value,
        ignore: &[&str],
    ) -> Option<(String, String, String)> {
        fn flatten(
            v: &serde_json::Value,
            prefix: &str,
            ignore: &[&str],
            out: &mut BTreeMap<String, String>,
        ) {
            match v.as_object() {
                Some(o) => {
                    for (k, v) in o {
                        let path = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        if !ignore.contains(&path.as_str()) {
                            flatten(v, &path, ignore, out);
                        }
                    }
                }
                None => {
                    out.insert(prefix.to_string(), v.to_string());
                }
            }
        }
        let mut ours = BTreeMap::new();
        let mut theirs = BTreeMap::new();
        let this = serde_json::to_value(self).expect("a config serialises");
        flatten(&this, "", ignore, &mut ours);
        flatten(other, "", ignore, &mut theirs);
        let absent = || "absent".to_string();
        ours.keys()
            .chain(theirs.keys())
            .find(|k| ours.get(*k) != theirs.get(*k))
            .map(|k| {
                (
                    k.clone(),
                    theirs.get(k).cloned().unwrap_or_else(absent),
                    ours.get(k).cloned().unwrap_or_else(absent),
                )
            })
    }

    /// The first setting on which a run saved with `other` (its `config.json`) trains another
    /// full-precision stage than a run of this configuration ([`Self::first_difference`]
    /// leaving out [`AFTER_FULL_PRECISION`]: the strategy, the bit-widths, the sharing, the
    /// later stages' lengths); `None` when both stages are the same computation.
    pub(crate) fn full_precision_difference(
        &self,
        other: &serde_json::Value,
    ) -> Option<(String, String, String)> {
        self.first_difference(other, &AFTER_FULL_PRECISION)
    }
}

impl TrainConfig {
    /// A configuration with the official optimiser on `data`.
    pub fn new(model: ModelConfig, data: DataSource, strategy: Strategy) -> Self {
        Self {
            model,
            data,
            strategy,
            epochs: 2,
            fp_epochs: 0,
            batch_size: 128,
            eval_batch_size: default_eval_batch(),
            optim: OptimConfig::default(),
            seed: 0,
            best_by: BestBy::Mean,
            calibration_batches: default_calibration(),
            max_steps: None,
            finetune_epochs: None,
            stuck_steps: None,
            stuck_tolerance: default_stuck_tolerance(),
            log_every: default_log_every(),
            label_smoothing: 0.0,
            val_split: 0,
            ema_decay: None,
            init: None,
        }
    }

    /// `self` with a preset written over it: a JSON object of any of the configuration's
    /// fields, objects merged field by field ([`merge_json`]).
    ///
    /// # Errors
    ///
    /// The result is not a configuration (a field unknown, or of the wrong type).
    pub fn with_preset(&self, preset: serde_json::Value) -> Result<Self, serde_json::Error> {
        let mut value = serde_json::to_value(self)?;
        merge_json(&mut value, preset);
        serde_json::from_value(value)
    }

    /// Checks the configuration and applies what the strategy implies: a shared BatchNorm and
    /// clipping level for direct and progressive training.
    ///
    /// # Errors
    ///
    /// [`TrainError::Config`] naming the field ([`validate`](Self::validate)).
    pub fn resolve(mut self) -> Result<Self, TrainError> {
        self.validate()?;
        if let Strategy::Direct | Strategy::Progressive { .. } = self.strategy {
            self.model.quant.switchable_alpha = false;
            self.model.quant.bn = BnSharing::Shared;
        }
        Ok(self)
    }

    /// Checks every field the types do not: the one place where presets, flags and code that
    /// builds a configuration are all checked.
    ///
    /// # Errors
    ///
    /// [`TrainError::Config`] naming the field, what was expected and what was found.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, expected: &str, found: String| {
            Err(TrainError::Config {
                field: field.to_string(),
                expected: expected.to_string(),
                found,
            })
        };
        if self.epochs == 0 {
            return bad("epochs", "at least 1", "0".into());
        }
        let width = self.model.width_mult;
        if !(width.is_finite() && width >= MIN_WIDTH) {
            return bad(
                "model.width_mult",
                &format!(
                    "a number of at least {MIN_WIDTH} (below it every layer has its minimum width)"
                ),
                width.to_string(),
            );
        }
        if self.batch_size < 2 {
            return bad(
                "batch_size",
                "at least 2 (BatchNorm needs two values)",
                self.batch_size.to_string(),
            );
        }
        if self.eval_batch_size == 0 {
            return bad("eval_batch_size", "at least 1", "0".into());
        }
        if self.calibration_batches == 0 {
            return bad(
                "calibration_batches",
                "at least 1 (BatchNorm statistics come from those batches)",
                "0".into(),
            );
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "at least 1 (or none)", "0".into());
        }
        let optim = &self.optim;
        if !(optim.lr.is_finite() && optim.lr > 0.0) {
            return bad("optim.lr", "a positive number", optim.lr.to_string());
        }
        if !(optim.momentum.is_finite() && (0.0..1.0).contains(&optim.momentum)) {
            return bad(
                "optim.momentum",
                "a number from 0 to below 1",
                optim.momentum.to_string(),
            );
        }
        if !(optim.weight_decay.is_finite() && optim.weight_decay >= 0.0) {
            return bad(
                "optim.weight_decay",
                "a number of at least 0",
                optim.weight_decay.to_string(),
            );
        }
        if let Schedule::MultiStep { milestones, .. } = &optim.schedule
            && let Some(m) = milestones.iter().find(|&&m| m >= self.epochs)
        {
            return bad(
                "optim.schedule.milestones",
                &format!(
                    "epochs below {} (a milestone at or after the last of the {} epochs never lowers the rate)",
                    self.epochs, self.epochs
                ),
                m.to_string(),
            );
        }
        if let Schedule::MultiStep { gamma, .. } = optim.schedule
            && !(gamma.is_finite() && gamma > 0.0)
        {
            return bad(
                "optim.schedule.gamma",
                "a positive number",
                gamma.to_string(),
            );
        }
        if let Some(max) = optim.clip_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return bad(
                "optim.clip_grad_norm",
                "a positive number (or null for no clipping)",
                max.to_string(),
            );
        }
        if !(self.label_smoothing.is_finite() && (0.0..1.0).contains(&self.label_smoothing)) {
            return bad(
                "label_smoothing",
                "a number from 0 to below 1",
                self.label_smoothing.to_string(),
            );
        }
        if let Some(d) = self.ema_decay
            && !(d.is_finite() && d > 0.0 && d < 1.0)
        {
            return bad(
                "ema_decay",
                "a number above 0 and below 1, e.g. 0.999 (or none)",
                d.to_string(),
            );
        }
        if !(self.stuck_tolerance.is_finite() && self.stuck_tolerance >= 0.0) {
            return bad(
                "stuck_tolerance",
                "a number of at least 0",
                self.stuck_tolerance.to_string(),
            );
        }
        if self.finetune_epochs == Some(0) && matches!(self.strategy, Strategy::Progressive { .. })
        {
            return bad(
                "finetune_epochs",
                "at least 1 for the progressive strategy (or none: as many as `epochs`)",
                "0".into(),
            );
        }
        if let Err((field, expected, found)) = self.data.validate() {
            return bad(&format!("data.{field}"), &expected, found);
        }
        if self.strategy == Strategy::Individual && self.model.bits.len() != 1 {
            return bad(
                "model.bits",
                "exactly one bit-width for the individual strategy",
                self.model.bits.to_string(),
            );
        }
        Ok(())
    }

    /// How many stages the run has: the full-precision stage if any, then one for joint,
    /// individual and direct training, or one per bit-width for progressive training.
    pub fn stage_count(&self) -> usize {
        self.stages().len()
    }

    /// The stages of training ([`Strategy::stages`]).
    pub(crate) fn stages(&self) -> Vec<Stage> {
        self.strategy.stages(
            &self.model.bits,
            self.epochs,
            self.fp_epochs,
            self.finetune_epochs,
        )
    }
}

/// Where a run writes, and how it may be stopped.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The run directory.
    pub out: PathBuf,
    /// Continue from the run directory's latest checkpoint.
    pub resume: bool,
    /// Set from another thread (Ctrl-C) to stop after the current step with a checkpoint.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// A new run takes its full-precision stage from this run directory instead of training
    /// it: a run whose configuration differs only in what comes after that stage (the
    /// strategy, the bit-widths, the sharing, the later stages' lengths), stopped at the end of
    /// that stage. Its model, BatchNorm and clipping levels are spread to every bit-width as
    /// at the end of a full-precision stage, its history and loss curve are copied, and the
    /// run continues as if it had trained the stage itself: the same computation, step for step.
    pub fp_stage_from: Option<PathBuf>,
}

impl RunOptions {
    /// A fresh run in `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            stop: Default::default(),
            fp_stage_from: None,
        }
    }
}
