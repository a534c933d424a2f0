//! Saving and loading a model's weights, clipping levels and every bit-width's BatchNorm state.
//!
//! The file is SafeTensors, written atomically: a temporary file beside the target is written,
//! flushed to disk and renamed over it, so a crash never leaves a half-written checkpoint.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{ModuleSnapshot, SafetensorsStore};

/// Writes a file atomically (re-exported from `adabits-runtime`, which writes artifacts with it).
pub use adabits_runtime::write_atomically;

/// Why a checkpoint could not be saved or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a readable SafeTensors checkpoint.
    #[error("{path}: not a valid checkpoint: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What the reader reported.
        reason: String,
    },
    /// The checkpoint does not fit the model.
    #[error(
        "{path}: the checkpoint does not fit the model: {missing} missing, {unused} unexpected, {mismatched} mismatched{detail}"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// How many of the model's tensors the file lacks.
        missing: usize,
        /// How many of the file's tensors the model lacks.
        unused: usize,
        /// How many tensors have the wrong shape or type.
        mismatched: usize,
        /// The first few names of each kind.
        detail: String,
    },
}

/// Saves `model` to `path` atomically.
///
/// # Errors
///
/// [`CheckpointError::Format`] if the model cannot be serialised, [`CheckpointError::Io`] if the
/// file cannot be written; the previous file at `path`, if any, is then left untouched.
pub fn save_model<M: Module>(model: &M, path: &Path) -> Result<(), CheckpointError> {
    let mut store = SafetensorsStore::from_bytes(None);
    model
        .save_into(&mut store)
        .map_err(|e| format_error(path, e))?;
    let bytes = store.get_bytes().map_err(|e| format_error(path, e))?;
    write_atomically(path, &bytes).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads a checkpoint written by [`save_model`] into `model`, which must have the same
/// architecture and bit-width list.
///
/// # Errors
///
/// [`CheckpointError::Io`] if the file cannot be read, [`CheckpointError::Format`] if it is not a
/// SafeTensors file, and [`CheckpointError::Mismatch`] (naming the tensors) if any tensor is
/// missing, unexpected or of the wrong shape.
pub fn load_model<M: Module>(model: M, path: &Path) -> Result<M, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes))
        .allow_partial(true)
        .validate(false);
    let mut model = model;
    let result = model
        .load_from(&mut store)
        .map_err(|e| format_error(path, e))?;
    if !result.missing.is_empty() || !result.unused.is_empty() || !result.errors.is_empty() {
        let names = |v: Vec<String>| -> String {
            let shown: Vec<String> = v.iter().take(3).cloned().collect();
            let more = v.len().saturating_sub(3);
            if more > 0 {
                format!("{} and {more} more", shown.join(", "))
            } else {
                shown.join(", ")
            }
        };
        let mut detail = String::new();
        if !result.missing.is_empty() {
            let missing = result.missing.iter().map(|(n, _)| n.clone()).collect();
            detail.push_str(&format!("; missing: {}", names(missing)));
        }
        if !result.unused.is_empty() {
            detail.push_str(&format!("; unexpected: {}", names(result.unused.clone())));
        }
        if !result.errors.is_empty() {
            let errors = result.errors.iter().map(ToString::to_string).collect();
            detail.push_str(&format!("; mismatched: {}", names(errors)));
        }
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            missing: result.missing.len(),
            unused: result.unused.len(),
            mismatched: result.errors.len(),
            detail,
        });
    }
    Ok(model)
}

fn format_error(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
