//! The end of an epoch and of a stage: evaluations on the selection and test sets, BatchNorm
//! calibration, the score `best` is chosen by, and the run's results.

use std::collections::BTreeMap;

use adabits_models::Model;
use adabits_quant::At;

use crate::config::BestBy;
use crate::error::TrainError;
use crate::metrics::Scores;
use crate::progress::Progress;
use crate::records::{BitResult, EpochRecord, Evaluation, RunResults, RunStatus, key};
use crate::step::{calibrate, evaluate};
use crate::strategy::Stage;

use super::Run;

impl Run<'_> {
    /// Evaluates `model` at `bits` on what epochs are scored on (the held-out images with a
    /// validation split, else the test set).
    fn evaluate(&self, model: &Model, bits: &[At]) -> Result<BTreeMap<String, Scores>, TrainError> {
        evaluate(model, bits, &self.val_loader, self.device)
    }

    /// Evaluates `model` at `bits` on the test set (the final figures).
    fn evaluate_test(
        &self,
        model: &Model,
        bits: &[At],
    ) -> Result<BTreeMap<String, Scores>, TrainError> {
        let loader = self.test_loader.as_ref().unwrap_or(&self.val_loader);
        evaluate(model, bits, loader, self.device)
    }

    /// A copy of `model` with the BatchNorm statistics of entry `bits` re-estimated.
    fn calibrated(&self, model: &Model, bits: At) -> Result<Model, TrainError> {
        calibrate(
            model,
            bits,
            &self.train_loader,
            self.config.calibration_batches,
            self.ad,
        )
    }

    fn eval_bits(&self) -> Vec<At> {
        self.config.model.bits.entries().collect()
    }

    pub(super) fn end_epoch(
        &mut self,
        stage: &Stage,
        lr: f64,
        seconds: f64,
    ) -> Result<EpochRecord, TrainError> {
        let bits = if stage.full_precision {
            stage.bits.clone()
        } else {
            self.eval_bits()
        };
        let val = self.evaluate(&self.model, &bits)?;
        let ema = match &self.ema {
            Some(average) if !stage.full_precision => Some(self.evaluate(average, &bits)?),
            _ => None,
        };
        Ok(EpochRecord {
            stage: self.state.stage,
            epoch: self.state.epoch,
            trained_bits: stage.bits.iter().map(|at| at.precision).collect(),
            lr,
            train: self
                .state
                .meters
                .iter()
                .map(|(k, m)| (k.clone(), m.summary()))
                .collect(),
            val,
            ema,
            images_per_second: self.state.epoch_images as f64 / seconds.max(1e-9),
            train_seconds: seconds,
        })
    }

    /// The evaluations at the end of a stage.
    pub(super) fn end_stage(
        &mut self,
        stage: &Stage,
        progress: &mut dyn Progress,
    ) -> Result<(), TrainError> {
        if stage.full_precision {
            progress.note("full-precision stage done: its BatchNorm and clipping levels go to every bit-width");
            self.model = adabits_models::spread_first(self.model.clone()).map_err(|e| {
                TrainError::Internal(format!("spreading the full-precision stage: {e}"))
            })?;
            return Ok(());
        }
        let bits = self.eval_bits();
        let mut after_plain = false;
        let evaluations = self.config.strategy.after_stage(self.state.stage, stage);
        for evaluation in &evaluations {
            let scores = if evaluation.calibrated {
                if after_plain {
                    progress.note("calibrating BatchNorm at every bit-width");
                }
                self.calibrated_scores(&self.model, &bits)?
            } else {
                self.evaluate_test(&self.model, &bits)?
            };
            after_plain = !evaluation.calibrated;
            let evaluation = self.evaluation(evaluation.label.clone(), &scores);
            self.state.evaluations.push(evaluation);
        }
        // The average is evaluated as the strategy's last evaluation evaluates the model.
        if let (Some(average), Some(decay), Some(last)) =
            (&self.ema, self.config.ema_decay, evaluations.last())
        {
            let scores = if last.calibrated {
                self.calibrated_scores(average, &bits)?
            } else {
                self.evaluate_test(average, &bits)?
            };
            let mut evaluation = self.evaluation(
                format!("{}, EMA of the weights (decay {decay})", last.label),
                &scores,
            );
            evaluation.ema = true;
            self.state.evaluations.push(evaluation);
        }
        Ok(())
    }

    fn calibrated_scores(
        &self,
        model: &Model,
        bits: &[At],
    ) -> Result<BTreeMap<String, Scores>, TrainError> {
        let mut scores = BTreeMap::new();
        for &b in bits {
            let calibrated = self.calibrated(model, b)?;
            scores.extend(self.evaluate_test(&calibrated, &[b])?);
        }
        Ok(scores)
    }

    fn evaluation(&self, label: String, scores: &BTreeMap<String, Scores>) -> Evaluation {
        let shapes = self.model.layer_shapes([self.side, self.side]);
        let bits = self
            .config
            .model
            .bits
            .iter()
            .filter_map(|b| {
                let s = scores.get(&key(b))?;
                Some((key(b), BitResult::new(s, &shapes, b)))
            })
            .collect();
        Evaluation {
            label,
            bits,
            ema: false,
        }
    }

    pub(super) fn score(&self, record: &EpochRecord) -> f64 {
        let top1: Vec<f64> = record.val.values().map(|s| s.top1).collect();
        match self.config.best_by {
            BestBy::Mean => top1.iter().sum::<f64>() / top1.len().max(1) as f64,
            BestBy::Min => top1.iter().copied().fold(f64::INFINITY, f64::min),
            BestBy::Lowest => record
                .val
                .get(&key(self.config.model.bits.min()))
                .map_or(0.0, |s| s.top1),
        }
    }

    /// The run's results: the last evaluation's figures (not the moving average's), the time
    /// and the speed.
    pub(super) fn results(&self, status: RunStatus) -> RunResults {
        let bits = self
            .state
            .evaluations
            .iter()
            .rev()
            .find(|e| !e.ema)
            .map(|e| e.bits.clone())
            .unwrap_or_default();
        RunResults {
            status,
            strategy: self.config.strategy.name().to_string(),
            model: self.config.model.arch.to_string(),
            dataset: self.config.data.name().to_string(),
            bits,
            evaluations: self.state.evaluations.clone(),
            wall_seconds: self.state.wall_seconds,
            // Completed epochs plus the part of the epoch a stop interrupted.
            train_images_per_second: self.state.train_images as f64
                / (self.state.train_seconds + self.state.epoch_seconds).max(1e-9),
            steps: self.state.step,
            best_chosen_on: crate::records::Selection::of_split(self.config.val_split),
        }
    }
}
