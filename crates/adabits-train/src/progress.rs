//! What a run reports while it trains: the [`Progress`] interface. The binary draws it.

use adabits_quant::Precision;

use crate::records::EpochRecord;

/// What is reported after every step.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The batch within the epoch (from 0).
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// This step's loss per trained entry.
    pub losses: Vec<(Precision, f64)>,
    /// Training images per second over the epoch so far (each image counted once per step).
    pub images_per_second: f64,
    /// The learning rate of the step.
    pub lr: f64,
}

/// Receives the progress of a run (a progress bar, a log).
pub trait Progress {
    /// A stage begins, training `bits` (the entries of each step, in order).
    fn stage(&mut self, _stage: usize, _bits: &[Precision], _epochs: usize) {}
    /// An epoch begins.
    fn epoch_start(&mut self, _stage: usize, _epoch: usize, _batches: usize) {}
    /// A step is done.
    fn step(&mut self, _info: &StepInfo) {}
    /// An epoch is done and evaluated.
    fn epoch_end(&mut self, _record: &EpochRecord) {}
    /// A message for the user.
    fn note(&mut self, _message: &str) {}
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {}
