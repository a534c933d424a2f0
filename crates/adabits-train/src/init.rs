//! Where a new run's model starts when it does not start from its seeded random
//! initialisation (`TrainConfig::init`, `adabits train --init`): an official adaptive
//! checkpoint, an official or torchvision full-precision one, or a run of adabits.

use std::fmt;
use std::path::{Path, PathBuf};

use adabits_models::{
    ImportMode, ImportReport, Model, ModelConfig, StateDict, adapt_from, import_official,
};
use burn::tensor::Device;

use crate::error::TrainError;
use crate::run_dir::{RunDir, Which, load_run};

/// What a run's initial weights were taken from.
#[derive(Clone, Debug, PartialEq)]
pub enum InitSource {
    /// A state dict in the official layout with one BatchNorm copy per entry of the model's
    /// list: every tensor in its place.
    OfficialAdaptive,
    /// A full-precision state dict (the official layout with one BatchNorm copy, or
    /// torchvision's names): the weights copied, the BatchNorm and clipping level spread to
    /// every entry, as the official `fp_pretrained` loading does.
    FullPrecision,
    /// A checkpoint of a run of adabits (its best, else its latest): taken as it is when the
    /// run's model configuration is this one's, else spread from its first entry.
    Run {
        /// The checkpoint folder read.
        checkpoint: PathBuf,
        /// Whether the model configurations agree (taken as it is).
        same_model: bool,
    },
}

/// What [`initial_model`] did, for the run to report.
#[derive(Clone, Debug)]
pub struct InitReport {
    /// The file or run directory.
    pub path: PathBuf,
    /// What it was read as.
    pub source: InitSource,
    /// What was loaded, spread to every entry, or left at its initial value.
    pub import: ImportReport,
}

impl fmt::Display for InitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match &self.source {
            InitSource::OfficialAdaptive => "an adaptive checkpoint in the official layout".into(),
            InitSource::FullPrecision => "a full-precision checkpoint".into(),
            InitSource::Run {
                checkpoint,
                same_model,
            } => format!(
                "its checkpoint {}{}",
                checkpoint.display(),
                if *same_model {
                    ""
                } else {
                    "; another list or sharing, so its first entry spread to every one"
                }
            ),
        };
        let r = &self.import;
        write!(
            f,
            "started from {} ({what}): {} tensors loaded",
            self.path.display(),
            r.loaded
        )?;
        let list = |keys: &[String]| {
            let mut shown: Vec<&str> = keys.iter().take(4).map(String::as_str).collect();
            if keys.len() > 4 {
                shown.push("…");
            }
            shown.join(", ")
        };
        if !r.replicated.is_empty() {
            write!(
                f,
                "; {} spread to every entry ({})",
                r.replicated.len(),
                list(&r.replicated)
            )?;
        }
        if !r.kept_initial.is_empty() {
            write!(
                f,
                "; {} left at their initial value ({})",
                r.kept_initial.len(),
                list(&r.kept_initial)
            )?;
        }
        if !r.dropped.is_empty() {
            write!(f, "; {} not used ({})", r.dropped.len(), list(&r.dropped))?;
        }
        if !r.pair_levels.is_empty() {
            write!(
                f,
                "; {} wWaA clipping levels set as the official code clips them",
                r.pair_levels.len()
            )?;
        }
        Ok(())
    }
}

/// The model of `config` (on the autodiff device of `device`, its other tensors from the
/// seeded initialisation with `seed`) with its weights from `path`: a run directory of
/// adabits, or a state dict file in the official or torchvision layout, read as an adaptive
/// checkpoint when it has a BatchNorm copy per entry of the model's list and as a
/// full-precision one when it has one or none.
///
/// # Errors
///
/// [`TrainError::Import`] naming the file when it cannot be read or does not fit the model
/// (another architecture, class count or list); the errors of [`load_run`] for a run directory.
pub fn initial_model(
    path: &Path,
    config: &ModelConfig,
    seed: u64,
    device: &Device,
) -> Result<(Model, InitReport), TrainError> {
    let ad = device.clone().autodiff();
    let fresh = config.init_seeded(seed, &ad)?;
    if path.is_dir() {
        let run = RunDir::new(path);
        if !run.is_run() {
            return Err(TrainError::Config {
                field: "init".into(),
                expected: "a state dict file (.safetensors) or a run directory of adabits".into(),
                found: format!("{}: a folder without config.json", path.display()),
            });
        }
        let saved = match load_run(path, Which::Best, device) {
            Err(TrainError::NoCheckpoint {
                which: Which::Best, ..
            }) => load_run(path, Which::Latest, device)?,
            other => other?,
        };
        let same_model =
            serde_json::to_value(&saved.config.model).ok() == serde_json::to_value(config).ok();
        let (model, import) = if same_model {
            // Every tensor, as it is (an official-layout round trip would set a wWaA entry's
            // clipping levels as the official code uses them, not as this run trained them).
            let loaded = adabits_models::export_official(&saved.model)
                .keys()
                .filter(|k| !k.ends_with(".num_batches_tracked"))
                .count();
            let report = ImportReport {
                loaded,
                ..ImportReport::default()
            };
            (saved.model, report)
        } else {
            adapt_from(&saved.model, fresh)?
        };
        let source = InitSource::Run {
            checkpoint: saved.checkpoint,
            same_model,
        };
        return Ok((
            model,
            InitReport {
                path: path.to_path_buf(),
                source,
                import,
            },
        ));
    }
    let dict = StateDict::read(path).map_err(adabits_models::ImportError::from)?;
    let source = state_dict_source(&dict);
    let mode = match source {
        InitSource::OfficialAdaptive => ImportMode::Adaptive,
        _ => ImportMode::FullPrecision,
    };
    let (model, import) = import_official(fresh, &dict, mode)?;
    Ok((
        model,
        InitReport {
            path: path.to_path_buf(),
            source,
            import,
        },
    ))
}

/// What [`initial_model`] reads a state dict as: adaptive when it holds more than one
/// BatchNorm copy per layer, full-precision otherwise.
pub fn state_dict_source(dict: &StateDict) -> InitSource {
    // The official layout's BatchNorm copies per layer; none in torchvision's.
    if dict.indexed_copies(".bn.").unwrap_or(0) > 1 {
        InitSource::OfficialAdaptive
    } else {
        InitSource::FullPrecision
    }
}
