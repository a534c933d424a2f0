//! The records a run writes: a line of `metrics.jsonl` or `losses.jsonl`, `results.json`, and
//! the state saved with every checkpoint.

use std::collections::BTreeMap;

use adabits_models::{Accounting, LayerShape, cost};
use adabits_quant::Precision;
use serde::{Deserialize, Serialize};

use crate::metrics::{Meter, Scores};

/// One epoch's metrics: a line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The entries trained in this stage (bit-widths as numbers, `wWaA` pairs as strings).
    pub trained_bits: Vec<Precision>,
    /// The learning rate at the end of the epoch.
    pub lr: f64,
    /// Training loss and accuracy per trained entry (keys: `8`, `w4a8`).
    pub train: BTreeMap<String, Scores>,
    /// Validation loss and accuracy per bit-width.
    pub val: BTreeMap<String, Scores>,
    /// The same for the moving average of the weights, when the run keeps one
    /// ([`TrainConfig::ema_decay`](crate::TrainConfig::ema_decay)) and the stage is quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<BTreeMap<String, Scores>>,
    /// Training images per second (each image counted once per step).
    pub images_per_second: f64,
    /// Seconds spent training this epoch (without evaluation).
    pub train_seconds: f64,
}

/// A point of the loss curve: a line of `losses.jsonl`, written every
/// [`TrainConfig::log_every`](crate::TrainConfig::log_every) steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    /// Optimiser steps done so far in the run.
    pub step: usize,
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Mean training loss per trained bit-width over the steps since the previous point.
    pub loss: BTreeMap<String, f64>,
}

/// One bit-width's final figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BitResult {
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Mean validation cross-entropy.
    pub loss: f64,
    /// GBitOPs per image (official accounting).
    pub gbitops: f64,
    /// Model size in whole bytes at this bit-width (official accounting, rounded up).
    #[serde(deserialize_with = "whole_bytes")]
    pub bytes: u64,
}

impl BitResult {
    /// The figures of entry `bits`: its `scores`, and the cost of a model with layer
    /// `shapes` at that entry's precision (official accounting).
    pub fn new(scores: &Scores, shapes: &[LayerShape], bits: Precision) -> Self {
        let c = cost(shapes, bits, Accounting::Official);
        Self {
            top1: scores.top1,
            top5: scores.top5,
            loss: scores.loss,
            gbitops: c.gbitops,
            bytes: c.size_bytes,
        }
    }
}

/// An evaluation of every bit-width under one label (e.g. `direct` and
/// `direct + BN calibration`, or `after stage 2 (4 bits)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// What was evaluated.
    pub label: String,
    /// The figures per bit-width (keys: bits).
    pub bits: BTreeMap<String, BitResult>,
    /// Whether these are the figures of the moving average of the weights (never the
    /// headline figures).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ema: bool,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every epoch ran.
    Completed,
    /// Stopped at the configured step limit, with a checkpoint.
    StepLimit,
    /// Stopped on request (Ctrl-C), with a checkpoint.
    Interrupted,
}

/// `results.json`: the run's headline figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// How the run ended.
    pub status: RunStatus,
    /// The strategy.
    pub strategy: String,
    /// The model.
    pub model: String,
    /// The data.
    pub dataset: String,
    /// The headline figures per bit-width: the last evaluation (the calibrated one for direct
    /// training, the one after the last stage for progressive training).
    pub bits: BTreeMap<String, BitResult>,
    /// Every evaluation of the run.
    pub evaluations: Vec<Evaluation>,
    /// Wall-clock seconds of the whole run, evaluation included, over all sessions.
    pub wall_seconds: f64,
    /// Training images per second (each image counted once per step).
    pub train_images_per_second: f64,
    /// Optimiser steps taken.
    pub steps: usize,
    /// The images each epoch was scored on, which chose the best checkpoint (runs written
    /// before the field existed chose it on the test set).
    #[serde(default)]
    pub best_chosen_on: Selection,
}

/// The images a run scores its epochs on and chooses its best checkpoint with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "set", rename_all = "snake_case")]
pub enum Selection {
    /// The test set (the data's validation split), which also gives the final figures: the
    /// official practice on CIFAR, and optimistic, since the same images choose and report.
    #[default]
    Test,
    /// Images held out from the training set ([`TrainConfig::val_split`](crate::TrainConfig::val_split)).
    HeldOut {
        /// How many.
        images: usize,
    },
}

impl Selection {
    /// The selection of a run holding out `val_split` training images (0: none).
    pub fn of_split(val_split: usize) -> Self {
        match val_split {
            0 => Self::Test,
            images => Self::HeldOut { images },
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Test => f.write_str("the test set"),
            Self::HeldOut { images } => {
                write!(f, "{images} images held out from the training set")
            }
        }
    }
}
/// Where a run stands: saved with every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct RunState {
    pub(crate) stage: usize,
    pub(crate) epoch: usize,
    pub(crate) batch: usize,
    pub(crate) step: usize,
    pub(crate) best: Option<f64>,
    pub(crate) history: Vec<EpochRecord>,
    pub(crate) evaluations: Vec<Evaluation>,
    pub(crate) meters: BTreeMap<String, Meter>,
    pub(crate) epoch_seconds: f64,
    pub(crate) epoch_images: u64,
    /// Smoothed training loss and steps spent at chance level, per bit-width.
    #[serde(default)]
    pub(crate) guard: BTreeMap<String, (f64, usize)>,
    /// The smoothed loss per bit-width when its current stretch at chance began.
    #[serde(default)]
    pub(crate) guard_start: BTreeMap<String, f64>,
    /// Sum and count of the training losses since the last point of the loss curve.
    #[serde(default)]
    pub(crate) loss_window: BTreeMap<String, (f64, usize)>,
    /// Each bit-width's first loss of the run: where the divergence limit starts from.
    #[serde(default)]
    pub(crate) first_loss: BTreeMap<String, f64>,
    /// Updates of the moving average of the weights since its stage began; `None` while the
    /// run keeps none (no `ema_decay`, or the full-precision stage).
    #[serde(default)]
    pub(crate) ema_updates: Option<u64>,
    pub(crate) train_seconds: f64,
    pub(crate) train_images: u64,
    pub(crate) wall_seconds: f64,
}

/// The key of entry `p` in the records' maps: `8` for a bit-width, `w4a8` for a pair.
pub(crate) fn key(p: Precision) -> String {
    p.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_state_reads_back_from_its_json_bit_for_bit() {
        // Loss sums as a run accumulates them, with 17 significant digits: serde_json's default
        // parser reads about one in eleven of these an ulp off (39.430133835633676 as …68),
        // which made a resumed run's loss curve differ from the uninterrupted one.
        let mut state = RunState::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
            state.loss_window.insert(i.to_string(), (v, i));
            state.guard.insert(i.to_string(), (v / 7.0, i));
        }
        state
            .loss_window
            .insert("known".into(), (39.430133835633676, 1));
        state.best = Some(1.0 / 3.0);
        let json = serde_json::to_string_pretty(&state).unwrap();
        let back: RunState = serde_json::from_str(&json).unwrap();
        for (k, (v, _)) in &state.loss_window {
            assert_eq!(back.loss_window[k].0.to_bits(), v.to_bits(), "{k}: {v}");
        }
        assert_eq!(back, state);
    }
}

/// Reads a byte count written as a whole number or, by versions before byte counts were
/// integers, as a float (rounded to the nearest whole number), so that older `results.json`
/// files still read.
fn whole_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::de::Error;
    let value = serde_json::Number::deserialize(d)?;
    if let Some(n) = value.as_u64() {
        return Ok(n);
    }
    match value.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f.round() as u64),
        _ => Err(D::Error::custom(format!(
            "expected a byte count, found {value}"
        ))),
    }
}

#[cfg(test)]
mod byte_count_tests {
    use super::*;

    #[test]
    fn a_result_reads_whole_byte_counts_and_older_float_ones() {
        let row = |bytes: &str| {
            serde_json::from_str::<BitResult>(&format!(
                r#"{{"top1": 50.0, "top5": 90.0, "loss": 1.0, "gbitops": 0.5, "bytes": {bytes}}}"#
            ))
        };
        assert_eq!(row("102648").unwrap().bytes, 102_648);
        // What versions before whole byte counts wrote.
        assert_eq!(row("102647.99999999999").unwrap().bytes, 102_648);
        for bad in ["-3", "\"many\"", "1e300"] {
            assert!(row(bad).is_err(), "{bad}");
        }
        // Written back as a whole number.
        let json = serde_json::to_string(&row("102647.99999999999").unwrap()).unwrap();
        assert!(json.contains(r#""bytes":102648"#), "{json}");
    }
}
