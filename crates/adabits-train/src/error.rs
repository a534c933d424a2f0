//! Why a run stopped with an error.

use std::path::{Path, PathBuf};

use adabits_models::CheckpointError;
use adabits_quant::Precision;

use crate::data::DataError;
use crate::run_dir::Which;

/// Why a run stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// The configuration is invalid.
    #[error("invalid configuration: `{field}`: expected {expected}, found {found}")]
    Config {
        /// The field.
        field: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The data could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The initial weights (`init`) cannot be read or do not fit the model.
    #[error(transparent)]
    Import(#[from] adabits_models::ImportError),
    /// A precision plan does not fit the model.
    #[error(transparent)]
    Plan(#[from] adabits_models::PlanError),
    /// A bit-width's loss has not gone below chance level: the model predicts the same class
    /// for every image. The last good checkpoint, if any, is kept.
    #[error(
        "the loss at {} has stayed at chance level (above ln({classes}) − {tolerance} = {floor:.3}) for {steps} steps without coming down (up to step {step}): the model predicts the same class for every image. {diagnosis} Stopped; {}. See docs/recipe.md: the official recipe does this from a random start, the default `adabits` recipe avoids it",
        .bits.describe(),
        kept(*.checkpoint)
    )]
    Stuck {
        /// The step of the run's latest checkpoint, if it has one.
        checkpoint: Option<usize>,
        /// The optimiser step (from 0).
        step: usize,
        /// The entry.
        bits: Precision,
        /// The number of classes.
        classes: usize,
        /// `ln(classes)`.
        chance: f64,
        /// For how many steps.
        steps: usize,
        /// How far below `ln(classes)` the loss had to go.
        tolerance: f64,
        /// `ln(classes) − tolerance`.
        floor: f64,
        /// What the model's classifier looks like.
        diagnosis: String,
    },
    /// A run file could not be written or read.
    #[error("{path}: {reason}")]
    RunFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A parameter became NaN or infinite while the loss stayed finite (a layer's clipping
    /// level or weights blew up); the last good checkpoint, if any, is kept.
    #[error(
        "the parameter `{name}` became NaN or infinite at step {step} while the loss stayed finite: a gradient too large for the learning rate blew it up (clipping levels are the usual victims). Stopped; {}. hint: clip the gradient (`optim.clip_grad_norm`), lower the learning rate, or start with a full-precision stage (`fp_epochs`); see docs/recipe.md",
        kept(*.checkpoint)
    )]
    NonFiniteParameter {
        /// The step of the run's latest checkpoint, if it has one.
        checkpoint: Option<usize>,
        /// The optimiser step (from 0) after which it was found.
        step: usize,
        /// The parameter's path in the model.
        name: String,
    },
    /// The device failed to execute the run's work.
    #[error("the device failed: {0}")]
    Device(#[from] burn::tensor::ExecutionError),
    /// A step of the run that cannot fail did (a bug; please report it).
    #[error("internal error: {0}")]
    Internal(String),
    /// The loss became NaN or infinite; the last good checkpoint, if any, is kept.
    #[error(
        "the loss at {} became {loss} at step {step} (stage {stage}, epoch {epoch}); stopped, {}",
        .bits.describe(),
        kept(*.checkpoint)
    )]
    NonFinite {
        /// The step of the run's latest checkpoint, if it has one.
        checkpoint: Option<usize>,
        /// The optimiser step (from 0).
        step: usize,
        /// The stage.
        stage: usize,
        /// The epoch within the stage.
        epoch: usize,
        /// The entry.
        bits: Precision,
        /// The loss value.
        loss: f64,
    },
    /// The loss grew far past where it started: the learning rate is too high for the model.
    #[error(
        "the loss at {} reached {loss:.4e} at step {step}, past {limit:.3} (10 × the larger of its first value {first:.3} and ln({classes})): the run diverged. Stopped; {}. hint: lower the learning rate or clip the gradient (`optim.clip_grad_norm`)",
        .bits.describe(),
        kept(*.checkpoint)
    )]
    Diverged {
        /// The optimiser step (from 0).
        step: usize,
        /// The entry.
        bits: Precision,
        /// The loss.
        loss: f64,
        /// The bit-width's first loss of the run.
        first: f64,
        /// The number of classes.
        classes: usize,
        /// The limit it passed.
        limit: f64,
        /// The step of the run's latest checkpoint, if it has one.
        checkpoint: Option<usize>,
    },
    /// Another process holds the run directory's lock (it is training or writing into it).
    #[error(
        "{path} is in use by {}: one process at a time writes into a run",
        pid.map_or("another process".to_string(), |p| format!("process {p}"))
    )]
    Busy {
        /// The run directory.
        path: PathBuf,
        /// The pid written in the lock file, if it could be read.
        pid: Option<u32>,
    },
    /// A new run was asked for in a folder that already holds one.
    #[error("{path} already holds a run")]
    RunExists {
        /// The run directory.
        path: PathBuf,
    },
    /// A run was to be resumed from a folder that holds none.
    #[error("{path} holds no run to resume (no config.json)")]
    NoRun {
        /// The folder.
        path: PathBuf,
    },
    /// The run has no checkpoint of this kind yet.
    #[error(
        "{path} has no `{}` checkpoint yet{}",
        which.name(),
        match which {
            Which::Best => " (no epoch at the run's bit-widths has been scored)",
            Which::Latest | Which::Ema => " (the run stopped before its first checkpoint)",
        }
    )]
    NoCheckpoint {
        /// The run directory.
        path: PathBuf,
        /// Which.
        which: Which,
    },
}

/// What a stopped run kept.
fn kept(checkpoint: Option<usize>) -> String {
    match checkpoint {
        Some(step) => format!("the last good checkpoint (step {step}) is kept"),
        None => "no checkpoint had been written yet".into(),
    }
}

pub(crate) fn run_file(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::RunFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN in epoch 0 (before any checkpoint) must not promise a checkpoint.
    #[test]
    fn a_stop_names_the_kept_checkpoint_or_says_there_is_none() {
        let nan = |checkpoint| {
            TrainError::NonFinite {
                checkpoint,
                step: 3,
                stage: 0,
                epoch: 0,
                bits: adabits_quant::BitWidth::new(4).unwrap().into(),
                loss: f64::NAN,
            }
            .to_string()
        };
        let first = nan(None);
        assert!(
            first.ends_with("stopped, no checkpoint had been written yet"),
            "{first}"
        );
        assert!(!first.contains("is kept"), "{first}");
        let later = nan(Some(8));
        assert!(
            later.ends_with("the last good checkpoint (step 8) is kept"),
            "{later}"
        );
    }
}
