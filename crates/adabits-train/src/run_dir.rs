//! The run directory: the one place that knows its layout, and reads and writes it.
//!
//! ```text
//! OUT/
//!   config.json         the resolved TrainConfig
//!   metrics.jsonl       one EpochRecord per line
//!   losses.jsonl        one LossRecord per line (the training loss curve)
//!   results.json        RunResults, when the run has ended
//!   checkpoints/
//!     latest, best      pointers: the name of a checkpoint folder
//!     NAME/             model.safetensors, optimizer.safetensors, state.json
//! ```
//!
//! A checkpoint folder is written in full under a temporary name, then renamed, and only then
//! does a pointer move to it; pointers and JSON files are written atomically.

use std::io::Write;
use std::path::{Path, PathBuf};

use adabits_models::{Model, StateDict, load_model, save_model, write_atomically};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::{TrainError, run_file};
use crate::optim::Sgd;
use crate::records::{EpochRecord, LossRecord, RunResults, RunState};

/// The run's configuration.
const CONFIG: &str = "config.json";
/// The run's headline figures.
const RESULTS: &str = "results.json";
/// The checkpoint folders and their pointers.
const CHECKPOINTS: &str = "checkpoints";
/// A checkpoint's model.
const MODEL: &str = "model.safetensors";
/// A checkpoint's optimiser state.
const OPTIMIZER: &str = "optimizer.safetensors";
/// A checkpoint's [`RunState`].
const STATE: &str = "state.json";

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Which {
    /// The best by the run's criterion (mean top-1 by default).
    Best,
    /// The latest.
    Latest,
}

impl Which {
    /// The name of the pointer file.
    fn pointer(self) -> &'static str {
        match self {
            Which::Best => "best",
            Which::Latest => "latest",
        }
    }
}

/// One of the run's line-per-record logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Log {
    /// `metrics.jsonl`: one [`EpochRecord`] per epoch.
    Metrics,
    /// `losses.jsonl`: one [`LossRecord`] per point of the loss curve.
    Losses,
}

impl Log {
    /// The file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Log::Metrics => "metrics.jsonl",
            Log::Losses => "losses.jsonl",
        }
    }
}

/// Where a checkpoint stands in its run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// The checkpoint folder's name.
    pub name: String,
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The batch within the epoch (from 0).
    pub batch: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// The best score so far, if an epoch has been scored.
    pub best: Option<f64>,
}

/// A run read back from its directory.
#[derive(Debug)]
pub struct SavedRun {
    /// The resolved configuration (`config.json`).
    pub config: TrainConfig,
    /// The model of the checkpoint, on the autodiff form of the device it was loaded on.
    pub model: Model,
    /// The checkpoint folder.
    pub checkpoint: PathBuf,
}

/// A run directory (the folder `adabits train --out` names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// The run directory at `root` (nothing is read or created yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of `config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG)
    }

    /// The path of `results.json`.
    pub fn results_path(&self) -> PathBuf {
        self.root.join(RESULTS)
    }

    /// The path of a log.
    pub fn log_path(&self, log: Log) -> PathBuf {
        self.root.join(log.file_name())
    }

    /// Whether the folder holds a run (a `config.json`).
    pub fn is_run(&self) -> bool {
        self.config_path().is_file()
    }

    /// Whether the run has a checkpoint to resume from.
    pub fn has_checkpoint(&self) -> bool {
        self.pointer_path(Which::Latest).is_file()
    }

    fn checkpoints(&self) -> PathBuf {
        self.root.join(CHECKPOINTS)
    }

    fn pointer_path(&self, which: Which) -> PathBuf {
        self.checkpoints().join(which.pointer())
    }

    /// Creates the folder and its `checkpoints/`.
    pub(crate) fn create(&self) -> Result<(), TrainError> {
        std::fs::create_dir_all(self.checkpoints()).map_err(|e| run_file(&self.root, e))
    }

    /// The configuration, parsed.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming `config.json` when it is missing or not a configuration.
    pub fn read_config(&self) -> Result<TrainConfig, TrainError> {
        read_json(&self.config_path())
    }

    /// The configuration as JSON, as it was written.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming `config.json` when it is missing or not JSON.
    pub fn read_config_json(&self) -> Result<serde_json::Value, TrainError> {
        read_json(&self.config_path())
    }

    /// Writes `config.json` (atomically).
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] when it cannot be written.
    pub fn write_config(&self, config: &TrainConfig) -> Result<(), TrainError> {
        let path = self.config_path();
        let json = serde_json::to_string_pretty(config).expect("a config serialises");
        write_atomically(&path, json.as_bytes()).map_err(|e| run_file(&path, e))
    }

    /// Empties both logs, for a fresh run.
    pub(crate) fn start_logs(&self) -> Result<(), TrainError> {
        for log in [Log::Metrics, Log::Losses] {
            let path = self.log_path(log);
            std::fs::write(&path, b"").map_err(|e| run_file(&path, e))?;
        }
        Ok(())
    }

    /// Appends `record` to `log` as one line of JSON.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] when the log cannot be opened or written.
    pub fn append_jsonl<T: Serialize>(&self, log: Log, record: &T) -> Result<(), TrainError> {
        let path = self.log_path(log);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| run_file(&path, e))?;
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(file, "{line}").map_err(|e| run_file(&path, e))
    }

    /// How many epochs `metrics.jsonl` records (0 when it is missing).
    pub fn epochs_recorded(&self) -> usize {
        std::fs::read_to_string(self.log_path(Log::Metrics)).map_or(0, |t| t.lines().count())
    }

    /// Writes `results.json` (atomically).
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] when it cannot be written.
    pub fn write_results(&self, results: &RunResults) -> Result<(), TrainError> {
        let path = self.results_path();
        let json = serde_json::to_string_pretty(results).expect("results serialise");
        write_atomically(&path, json.as_bytes()).map_err(|e| run_file(&path, e))
    }

    /// `results.json`, or `None` while the run has none (or one this version cannot read).
    pub fn read_results(&self) -> Option<RunResults> {
        let text = std::fs::read_to_string(self.results_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The folder of the `which` checkpoint.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming the pointer when it is missing or unreadable.
    pub fn checkpoint_dir(&self, which: Which) -> Result<PathBuf, TrainError> {
        let pointer = self.pointer_path(which);
        let name = std::fs::read_to_string(&pointer).map_err(|e| run_file(&pointer, e))?;
        Ok(self.checkpoints().join(name.trim()))
    }

    /// Where the `which` checkpoint stands, or `None` when the run has no such pointer.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming the checkpoint's `state.json` when it is missing or
    /// unreadable.
    pub fn checkpoint_info(&self, which: Which) -> Result<Option<CheckpointInfo>, TrainError> {
        if !self.pointer_path(which).is_file() {
            return Ok(None);
        }
        let dir = self.checkpoint_dir(which)?;
        let state = read_json::<RunState>(&dir.join(STATE))?;
        Ok(Some(CheckpointInfo {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stage: state.stage,
            epoch: state.epoch,
            batch: state.batch,
            step: state.step,
            best: state.best,
        }))
    }

    /// Writes a checkpoint folder for `state` (model, optimiser, state), then moves `latest`
    /// (and, if `best`, `best`) to it and removes the folders no pointer names.
    pub(crate) fn save_checkpoint(
        &self,
        model: &Model,
        sgd: &Sgd,
        state: &RunState,
        best: bool,
    ) -> Result<(), TrainError> {
        let dir = self.checkpoints();
        let name = format!(
            "s{}-e{:04}-b{:05}-step{}",
            state.stage, state.epoch, state.batch, state.step
        );
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| run_file(&tmp, e))?;
        save_model(model, &tmp.join(MODEL))?;
        sgd.state()
            .write(&tmp.join(OPTIMIZER))
            .map_err(|e| run_file(&tmp, e))?;
        let json = serde_json::to_string_pretty(state).expect("state serialises");
        write_atomically(&tmp.join(STATE), json.as_bytes()).map_err(|e| run_file(&tmp, e))?;
        let target = dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(|e| run_file(&target, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        self.point(Which::Latest, &name)?;
        if best {
            self.point(Which::Best, &name)?;
        }
        self.remove_unpointed();
        Ok(())
    }

    fn point(&self, which: Which, name: &str) -> Result<(), TrainError> {
        let path = self.pointer_path(which);
        write_atomically(&path, name.as_bytes()).map_err(|e| run_file(&path, e))
    }

    /// Removes the checkpoint folders no pointer names.
    fn remove_unpointed(&self) {
        let dir = self.checkpoints();
        let keep: Vec<String> = [Which::Latest, Which::Best]
            .iter()
            .filter_map(|&w| std::fs::read_to_string(self.pointer_path(w)).ok())
            .collect();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if entry.path().is_dir()
                    && !file_name.starts_with('.')
                    && !keep.contains(&file_name)
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }

    /// Loads the latest checkpoint into `model` (freshly initialised) and `sgd`, and returns
    /// them with the saved state. Then cuts both logs back to the checkpoint: `metrics.jsonl`
    /// holds exactly its history, `losses.jsonl` drops the points after its step.
    pub(crate) fn resume_latest(
        &self,
        model: Model,
        sgd: &mut Sgd,
        device: &Device,
    ) -> Result<(Model, RunState), TrainError> {
        let ckpt = self.checkpoint_dir(Which::Latest)?;
        let model = load_model(model, &ckpt.join(MODEL))?;
        let optim_path = ckpt.join(OPTIMIZER);
        let dict = StateDict::read(&optim_path).map_err(|e| run_file(&optim_path, e))?;
        sgd.load_state(&dict, device);
        let state = read_json::<RunState>(&ckpt.join(STATE))?;
        self.keep_logs_up_to(&state)?;
        Ok((model, state))
    }

    fn keep_logs_up_to(&self, state: &RunState) -> Result<(), TrainError> {
        let mut lines = String::new();
        for record in &state.history {
            lines.push_str(
                &serde_json::to_string::<EpochRecord>(record).expect("records serialise"),
            );
            lines.push('\n');
        }
        let metrics = self.log_path(Log::Metrics);
        write_atomically(&metrics, lines.as_bytes()).map_err(|e| run_file(&metrics, e))?;
        let curve = self.log_path(Log::Losses);
        if let Ok(text) = std::fs::read_to_string(&curve) {
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<LossRecord>(line).is_ok_and(|r| r.step <= state.step)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_atomically(&curve, kept.as_bytes()).map_err(|e| run_file(&curve, e))?;
        }
        Ok(())
    }

    /// Writes a run directory holding one model and no training state: `config.json` with
    /// `config`, and a checkpoint folder `name` with `model` that both pointers name (what
    /// `adabits calibrate` writes, so that `eval` and `export` read it as a run).
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] or [`TrainError::Checkpoint`] when a file cannot be written.
    pub fn write_model_only(
        &self,
        config: &TrainConfig,
        name: &str,
        model: &Model,
    ) -> Result<(), TrainError> {
        let dir = self.checkpoints().join(name);
        std::fs::create_dir_all(&dir).map_err(|e| run_file(&dir, e))?;
        save_model(model, &dir.join(MODEL))?;
        self.write_config(config)?;
        for which in [Which::Latest, Which::Best] {
            self.point(which, name)?;
        }
        Ok(())
    }

    /// Loads the configuration and the model of the `which` checkpoint onto `device` (its
    /// autodiff form, so it can be calibrated).
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming the missing or unreadable file, [`TrainError::Checkpoint`]
    /// when the model file does not fit the configuration.
    pub fn load(&self, which: Which, device: &Device) -> Result<SavedRun, TrainError> {
        let config = self.read_config()?;
        let checkpoint = self.checkpoint_dir(which)?;
        let ad = device.clone().autodiff();
        let model = load_model(config.model.init(&ad), &checkpoint.join(MODEL))?;
        Ok(SavedRun {
            config,
            model,
            checkpoint,
        })
    }
}

/// A JSON file of the run directory, parsed; errors name the file.
fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| run_file(path, e))?;
    serde_json::from_str(&text).map_err(|e| run_file(path, e))
}

/// Loads a run directory's configuration and the model of its `which` checkpoint onto `device`
/// (its autodiff form, so it can be calibrated): [`RunDir::load`].
///
/// # Errors
///
/// As [`RunDir::load`].
pub fn load_run(dir: &Path, which: Which, device: &Device) -> Result<SavedRun, TrainError> {
    RunDir::new(dir).load(which, device)
}
