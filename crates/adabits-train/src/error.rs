//! Why a run stopped with an error.

use std::path::{Path, PathBuf};

use adabits_models::CheckpointError;
use adabits_quant::BitWidth;

use crate::data::DataError;

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
    /// A bit-width's loss has not gone below chance level: the model predicts the same class
    /// for every image. The last good checkpoint is kept.
    #[error(
        "the loss at {bits} bits has stayed at chance level (above ln({classes}) − {tolerance} = {floor:.3}) for {steps} steps without coming down (up to step {step}): the model predicts the same class for every image. {diagnosis} Stopped; the last good checkpoint is kept. See docs/recipe.md: the official recipe does this from a random start, the default `adabits` recipe avoids it"
    )]
    Stuck {
        /// The optimiser step (from 0).
        step: usize,
        /// The bit-width.
        bits: BitWidth,
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
    /// level or weights blew up); the last good checkpoint is kept.
    #[error(
        "the parameter `{name}` became NaN or infinite at step {step} while the loss stayed finite: a gradient too large for the learning rate blew it up (clipping levels are the usual victims). Stopped; the last good checkpoint is kept. hint: clip the gradient (`optim.clip_grad_norm`), lower the learning rate, or start with a full-precision stage (`fp_epochs`); see docs/recipe.md"
    )]
    NonFiniteParameter {
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
    /// The loss became NaN or infinite; the last good checkpoint is kept.
    #[error(
        "the loss at {bits} bits became {loss} at step {step} (stage {stage}, epoch {epoch}); stopped, the last good checkpoint is kept"
    )]
    NonFinite {
        /// The optimiser step (from 0).
        step: usize,
        /// The stage.
        stage: usize,
        /// The epoch within the stage.
        epoch: usize,
        /// The bit-width.
        bits: BitWidth,
        /// The loss value.
        loss: f64,
    },
}

pub(crate) fn run_file(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::RunFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
