//! Training of switchable-precision models: data pipelines (CIFAR-10/100, image folders, the
//! built-in synthetic set), the individual / joint / direct / progressive strategies, the
//! official optimiser and schedules, metrics, and resumable runs with atomic checkpoints.
//!
//! The library prints nothing and installs no signal handler: a run reports through the
//! [`Progress`] trait and stops when [`RunOptions::stop`] is set; the `adabits` binary draws
//! the progress and sets the flag on Ctrl-C.
//!
//! # Example
//!
//! A configuration is checked field by field before anything runs:
//!
//! ```
//! use adabits_train::adabits_models::{Architecture, ModelConfig};
//! use adabits_train::data::{DataSource, SyntheticConfig};
//! use adabits_train::{Schedule, Strategy, TrainConfig};
//!
//! let model = ModelConfig::new(Architecture::CifarResNet(20), "8,6,5,4".parse()?);
//! let data = DataSource::Synthetic(SyntheticConfig::default());
//! let mut config = TrainConfig::new(model, data, Strategy::Joint { distill: false });
//! config.epochs = 10;
//! config.validate()?;
//! // A milestone at or after the last epoch would never lower the rate: refused, named.
//! config.optim.schedule = Schedule::MultiStep { milestones: vec![5, 10], gamma: 0.1 };
//! let err = config.validate().unwrap_err().to_string();
//! assert!(err.contains("optim.schedule.milestones"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

// Libraries print nothing: they return typed errors and report through their callers.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod config;
pub mod data;
mod ema;
mod error;
pub mod fault;
mod guard;
mod init;
mod memory;
mod metrics;
mod optim;
mod progress;
mod recipe;
mod records;
mod rng;
mod run;
mod run_dir;
mod search;
mod step;
mod strategy;

pub use adabits_models;
pub use config::{BestBy, RunOptions, TrainConfig, merge_json};
pub use ema::{ema_decay, start_ema, update_ema};
pub use error::TrainError;
pub use guard::non_finite_parameter;
pub use init::{InitReport, InitSource, initial_model, state_dict_source};
pub use memory::fits_in_memory;
pub use metrics::{Meter, Scores, cross_entropy, distillation, smoothed_cross_entropy};
pub use optim::{DecayGroups, LrPlan, OptimConfig, Schedule, ScheduleKind, Sgd, decays, grad_norm};
pub use progress::{Progress, Quiet, StepInfo};
pub use recipe::Recipe;
pub use records::{
    BitResult, EpochRecord, Evaluation, LossRecord, RunResults, RunStatus, Selection,
};
pub use rng::Rng;
pub use run::{train, train_on};
pub use run_dir::{CheckpointInfo, Log, RunDir, RunLock, SavedRun, Which, load_run};
pub use search::{
    CostKind, SearchData, SearchPoint, SearchProgress, SearchResult, measure_plan, search_per_layer,
};
pub use step::{BitHook, Objective, calibrate, evaluate, joint_step};
pub use strategy::{Strategy, StrategyKind};
