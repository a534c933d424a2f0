//! Training of switchable-precision models: data pipelines (CIFAR-10/100, image folders, the
//! built-in synthetic set), the individual / joint / direct / progressive strategies, the
//! official optimiser and schedules, metrics, and resumable runs with atomic checkpoints.

mod config;
pub mod data;
mod metrics;
mod optim;
mod progress;
mod rng;
mod run;

pub use adabits_models;
pub use config::{BestBy, RunOptions, Strategy, TrainConfig, merge_json};
pub use metrics::{Meter, Scores, cross_entropy, distillation};
pub use optim::{DecayGroups, LrPlan, OptimConfig, Schedule, Sgd, decays, grad_norm};
pub use progress::TerminalProgress;
pub use rng::Rng;
pub use run::{
    BitHook, BitResult, EpochRecord, Evaluation, LossRecord, Progress, Quiet, RunResults,
    RunStatus, SavedRun, StepInfo, TrainError, Which, calibrate, evaluate, joint_step, load_run,
    non_finite_parameter, train, train_on,
};
