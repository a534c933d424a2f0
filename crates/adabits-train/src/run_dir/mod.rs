//! The run directory: the one place that knows its layout, and reads and writes it.
//!
//! ```text
//! OUT/
//!   run.lock            held by the process writing into the run (its pid inside)
//!   config.json         the resolved TrainConfig
//!   metrics.jsonl       one EpochRecord per line
//!   metrics.csv         the same epochs as a table (rewritten whole after each epoch)
//!   losses.jsonl        one LossRecord per line (the training loss curve)
//!   results.json        RunResults, when the run has ended
//!   checkpoints/
//!     pointers.json     {"latest": NAME, "best": NAME}, replaced atomically
//!     NAME/             model.safetensors, optimizer.safetensors, state.json, checksums.json,
//!                       and ema.safetensors when the run keeps a moving average of the weights
//! ```
//!
//! A checkpoint folder is written in full under a temporary name, then renamed, and only then
//! do the pointers move to it, both in one atomic write ([`checkpoints`] says why that order
//! keeps every kept checkpoint through a crash at any instant); JSON files are written
//! atomically. Every file of a checkpoint is checked against its SHA-256 when it is read.

mod checkpoints;
mod csv;
mod lock;

pub use lock::RunLock;

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
/// The epochs as a table.
const METRICS_CSV: &str = "metrics.csv";
/// The checkpoint folders and their pointers.
const CHECKPOINTS: &str = "checkpoints";
/// A checkpoint's model.
const MODEL: &str = "model.safetensors";
/// A checkpoint's moving average of the weights.
const EMA: &str = "ema.safetensors";
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
    /// The moving average of the weights kept with the latest checkpoint (a run trained with
    /// an EMA decay).
    Ema,
}

impl Which {
    /// The pointer's name (`best`, `latest`).
    pub fn name(self) -> &'static str {
        match self {
            Which::Best => "best",
            Which::Latest => "latest",
            Which::Ema => "ema",
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
    /// The stage (from 0); `None` for a model without training state (what `adabits
    /// calibrate` writes), as for the fields below.
    pub stage: Option<usize>,
    /// The epoch within the stage (from 0).
    pub epoch: Option<usize>,
    /// The batch within the epoch (from 0).
    pub batch: Option<usize>,
    /// Optimiser steps done.
    pub step: Option<usize>,
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
    /// The checkpoint folder; for [`Which::Ema`], the average's file in it.
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

    /// Takes the run's exclusive lock (creating the folder), then removes what writes that did
    /// not finish left behind: one writer per run, for as long as the lock lives.
    ///
    /// # Errors
    ///
    /// [`TrainError::Busy`] naming the holder's pid when another process writes into the run;
    /// [`TrainError::RunFile`] when the folder or the lock file cannot be created.
    pub fn lock(&self) -> Result<RunLock, TrainError> {
        let lock = RunLock::take(&self.root)?;
        self.remove_temporaries();
        Ok(lock)
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
        self.write_metrics_csv(&[])
    }

    /// Writes `metrics.csv` from `history`, the run's epochs so far (atomically).
    pub(crate) fn write_metrics_csv(&self, history: &[EpochRecord]) -> Result<(), TrainError> {
        let path = self.root.join(METRICS_CSV);
        write_atomically(&path, csv::metrics_csv(history).as_bytes())
            .map_err(|e| run_file(&path, e))
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

    /// Where the `which` checkpoint stands, or `None` when the run has no such pointer.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming `pointers.json` or the checkpoint's `state.json` when it
    /// is missing or unreadable.
    pub fn checkpoint_info(&self, which: Which) -> Result<Option<CheckpointInfo>, TrainError> {
        let Some((dir, state)) = self.checkpoint_state::<RunState>(which, STATE)? else {
            return Ok(None);
        };
        Ok(Some(CheckpointInfo {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stage: state.as_ref().map(|s| s.stage),
            epoch: state.as_ref().map(|s| s.epoch),
            batch: state.as_ref().map(|s| s.batch),
            step: state.as_ref().map(|s| s.step),
            best: state.and_then(|s| s.best),
        }))
    }

    /// Writes a checkpoint folder for `state` (model, optimiser, state), then moves `latest`
    /// (and, if `best`, `best`) to it and removes the folders no pointer names. Called with the
    /// run's lock held.
    pub(crate) fn write_checkpoint(
        &self,
        model: &Model,
        ema: Option<&Model>,
        sgd: &Sgd,
        state: &RunState,
        best: bool,
    ) -> Result<(), TrainError> {
        let name = format!(
            "s{}-e{:04}-b{:05}-step{}",
            state.stage, state.epoch, state.batch, state.step
        );
        self.save_checkpoint(&name, best, |dir| {
            save_model(model, &dir.join(MODEL))?;
            if let Some(ema) = ema {
                save_model(ema, &dir.join(EMA))?;
            }
            crate::fault::point("checkpoint.partial");
            let optim = dir.join(OPTIMIZER);
            sgd.state().write(&optim).map_err(|e| run_file(&optim, e))?;
            let json = serde_json::to_string_pretty(state).expect("state serialises");
            write_atomically(&dir.join(STATE), json.as_bytes())
                .map_err(|e| run_file(&dir.join(STATE), e))
        })
    }

    /// Loads the latest checkpoint into `model` (freshly initialised) and `sgd`, and returns
    /// them with the saved state, after checking every file against its checksum, every
    /// parameter for NaN and infinity and every optimiser buffer against its parameter. Then
    /// cuts both logs back to the checkpoint: `metrics.jsonl` holds exactly its history,
    /// `losses.jsonl` drops the points after its step.
    pub(crate) fn resume_latest(
        &self,
        model: Model,
        sgd: &mut Sgd,
        device: &Device,
    ) -> Result<(Model, RunState), TrainError> {
        let ckpt = self.checkpoint_dir(Which::Latest)?;
        self.verify(&ckpt, &[MODEL, OPTIMIZER, STATE])?;
        let model = load_checked(model, &ckpt.join(MODEL))?;
        let optim_path = ckpt.join(OPTIMIZER);
        let dict = StateDict::read(&optim_path).map_err(|e| run_file(&optim_path, e))?;
        sgd.load_state(&dict, &model, device)
            .map_err(|e| run_file(&optim_path, e))?;
        let state = read_json::<RunState>(&ckpt.join(STATE))?;
        self.check_best(&ckpt, &state)?;
        self.keep_logs_up_to(&state)?;
        Ok((model, state))
    }

    /// Checks that the `best` pointer names the checkpoint whose score the latest state
    /// records as the best: a damaged pointer file must not make the next checkpoint delete
    /// the true best folder.
    /// `latest_dir` is the latest checkpoint's folder, already checked: when `best` names it
    /// too, there is nothing more to check.
    fn check_best(&self, latest_dir: &Path, latest: &RunState) -> Result<(), TrainError> {
        let pointers = self.pointers_path();
        let best = match self.checkpoint_dir(Which::Best) {
            Ok(dir) if dir == latest_dir => return Ok(()),
            Ok(dir) => dir,
            Err(TrainError::NoCheckpoint { .. }) if latest.best.is_none() => return Ok(()),
            Err(TrainError::NoCheckpoint { .. }) => {
                return Err(run_file(
                    &pointers,
                    "names no best checkpoint, but the run has scored one: the file was damaged",
                ));
            }
            Err(e) => return Err(e),
        };
        if !best.is_dir() {
            return Err(run_file(
                &pointers,
                format!(
                    "`best` names {}, which does not exist: the file was damaged",
                    best.display()
                ),
            ));
        }
        self.verify(&best, &[MODEL, OPTIMIZER, STATE])?;
        let state = read_json::<RunState>(&best.join(STATE))?;
        if state.best != latest.best {
            return Err(run_file(
                &pointers,
                format!(
                    "`best` names {}, which scored {:?}, but the run's best score is {:?}: the file was damaged",
                    best.display(),
                    state.best,
                    latest.best
                ),
            ));
        }
        Ok(())
    }

    fn keep_logs_up_to(&self, state: &RunState) -> Result<(), TrainError> {
        self.continue_logs_from(self, state)
    }

    /// Writes this run's logs as they stand at `state`, a checkpoint of `source` (this run or
    /// another): `metrics.jsonl` holds exactly its history, `losses.jsonl` the points of
    /// `source`'s curve up to its step.
    pub(crate) fn continue_logs_from(
        &self,
        source: &RunDir,
        state: &RunState,
    ) -> Result<(), TrainError> {
        let mut lines = String::new();
        for record in &state.history {
            lines.push_str(
                &serde_json::to_string::<EpochRecord>(record).expect("records serialise"),
            );
            lines.push('\n');
        }
        let metrics = self.log_path(Log::Metrics);
        write_atomically(&metrics, lines.as_bytes()).map_err(|e| run_file(&metrics, e))?;
        self.write_metrics_csv(&state.history)?;
        let curve = self.log_path(Log::Losses);
        let kept: String = std::fs::read_to_string(source.log_path(Log::Losses))
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                serde_json::from_str::<LossRecord>(line).is_ok_and(|r| r.step <= state.step)
            })
            .map(|line| format!("{line}\n"))
            .collect();
        write_atomically(&curve, kept.as_bytes()).map_err(|e| run_file(&curve, e))
    }

    /// The model (loaded into `model`, built from this run's configuration) and state of the
    /// latest checkpoint, which must stand at the end of the run's full-precision stage of
    /// `fp_epochs` epochs, its files checked against their checksums: what another run starts
    /// from when it takes this run's full-precision stage instead of training it again. The
    /// optimiser state is not read (the next stage starts with fresh momentum).
    ///
    /// # Errors
    ///
    /// [`TrainError::NoCheckpoint`] when the run has none; [`TrainError::RunFile`] naming the
    /// checkpoint's `state.json` when it stands elsewhere, or a file that is damaged.
    pub(crate) fn full_precision_stage_end(
        &self,
        model: Model,
        fp_epochs: usize,
    ) -> Result<(Model, RunState), TrainError> {
        let ckpt = self.checkpoint_dir(Which::Latest)?;
        self.verify(&ckpt, &[MODEL, STATE])?;
        let state = read_json::<RunState>(&ckpt.join(STATE))?;
        if (state.stage, state.epoch, state.batch) != (0, fp_epochs, 0) {
            return Err(run_file(
                &ckpt.join(STATE),
                format!(
                    "expected the latest checkpoint at the end of the full-precision stage (stage 0, epoch {fp_epochs}, batch 0), found stage {}, epoch {}, batch {}: stop that run at the end of its full-precision stage (--max-steps) and do not continue it",
                    state.stage, state.epoch, state.batch
                ),
            ));
        }
        let model = load_checked(model, &ckpt.join(MODEL))?;
        Ok((model, state))
    }

    /// Writes a run directory holding one model and no training state: `config.json` with
    /// `config`, and a checkpoint folder `name` with `model` that both pointers name (what
    /// `adabits calibrate` writes, so that `eval` and `export` read it as a run). Takes the
    /// run's lock for the write.
    ///
    /// # Errors
    ///
    /// [`TrainError::Busy`] when another process writes into the folder;
    /// [`TrainError::RunFile`] or [`TrainError::Checkpoint`] when a file cannot be written.
    pub fn write_model_only(
        &self,
        config: &TrainConfig,
        name: &str,
        model: &Model,
    ) -> Result<(), TrainError> {
        let _lock = self.lock()?;
        self.create()?;
        self.save_model_only(name, |dir| Ok(save_model(model, &dir.join(MODEL))?))?;
        self.write_config(config)
    }

    /// Loads the configuration and the model of the `which` checkpoint onto `device` (its
    /// autodiff form, so it can be calibrated), after checking the model file against its
    /// checksum and its parameters for NaN and infinity.
    ///
    /// # Errors
    ///
    /// [`TrainError::NoCheckpoint`] when the run has no such checkpoint yet,
    /// [`TrainError::RunFile`] naming the missing, unreadable or damaged file,
    /// [`TrainError::Checkpoint`] when the model file does not fit the configuration.
    pub fn load(&self, which: Which, device: &Device) -> Result<SavedRun, TrainError> {
        let config = self.read_config()?;
        let checkpoint = self.checkpoint_dir(which)?;
        let ad = device.clone().autodiff();
        let (model, checkpoint) = match which {
            Which::Ema => (
                self.load_ema(which, config.model.init(&ad))?,
                checkpoint.join(EMA),
            ),
            Which::Best | Which::Latest => {
                self.verify(&checkpoint, &[MODEL])?;
                let model = load_checked(config.model.init(&ad), &checkpoint.join(MODEL))?;
                (model, checkpoint)
            }
        };
        Ok(SavedRun {
            config,
            model,
            checkpoint,
        })
    }
}

impl RunDir {
    /// Loads the moving average of the weights kept with the `which` checkpoint into `model`
    /// (built from the run's configuration), after checking its checksum.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming the checkpoint folder when it keeps no average (a run
    /// trained without an EMA decay, or stopped in its full-precision stage), or the file when
    /// it is damaged.
    pub(crate) fn load_ema(&self, which: Which, model: Model) -> Result<Model, TrainError> {
        let checkpoint = self.checkpoint_dir(which)?;
        if !checkpoint.join(EMA).exists() {
            return Err(run_file(
                &checkpoint,
                "keeps no moving average of the weights (ema.safetensors): the run was trained without an EMA decay (train --ema-decay), or stopped before its first quantized stage",
            ));
        }
        self.verify(&checkpoint, &[EMA])?;
        load_checked(model, &checkpoint.join(EMA))
    }
}

/// Loads a model file, and refuses one that holds a NaN or an infinity (naming the tensor).
fn load_checked(model: Model, path: &Path) -> Result<Model, TrainError> {
    let model = load_model(model, path)?;
    match crate::guard::non_finite_parameter(&model) {
        Some(name) => Err(run_file(
            path,
            format!(
                "the tensor `{name}` holds a NaN or an infinity: the file is damaged or was written from a diverged run"
            ),
        )),
        None => Ok(model),
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
