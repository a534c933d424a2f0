//! A training run: stages, epochs, steps, evaluation, calibration, checkpoints and resumption.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use adabits_models::{
    Accounting, CheckpointError, LayerMut, LayerShape, Model, OfficialLayout, StateDict, cost,
    load_model, save_model, write_atomically,
};
use adabits_quant::BitWidth;
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::{BestBy, RunOptions, Stage, Strategy, TrainConfig};
use crate::data::{DataError, Dataset, Loader};
use crate::metrics::{Meter, Scores, cross_entropy, distillation};
use crate::optim::{LrPlan, Sgd};

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

fn run_file(path: &Path, reason: impl std::fmt::Display) -> TrainError {
    TrainError::RunFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

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
    /// This step's loss per trained bit-width.
    pub losses: Vec<(BitWidth, f64)>,
    /// Training images per second over the epoch so far (each image counted once per step).
    pub images_per_second: f64,
    /// The learning rate of the step.
    pub lr: f64,
}

/// Receives the progress of a run (a progress bar, a log).
pub trait Progress {
    /// A stage begins.
    fn stage(&mut self, _stage: usize, _bits: &[BitWidth], _epochs: usize) {}
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

/// One epoch's metrics: a line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The bit-widths trained in this stage.
    pub trained_bits: Vec<BitWidth>,
    /// The learning rate at the end of the epoch.
    pub lr: f64,
    /// Training loss and accuracy per trained bit-width (keys: bits).
    pub train: BTreeMap<String, Scores>,
    /// Validation loss and accuracy per bit-width.
    pub val: BTreeMap<String, Scores>,
    /// Training images per second (each image counted once per step).
    pub images_per_second: f64,
    /// Seconds spent training this epoch (without evaluation).
    pub train_seconds: f64,
}

/// A point of the loss curve: a line of `losses.jsonl`, written every
/// [`TrainConfig::log_every`] steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    /// Optimiser steps done so far in the run.
    pub step: usize,
    /// The stage (from 0).
    pub stage: usize,
    /// The epoch within the stage (from 0).
    pub epoch: usize,
    /// The learning rate of the last step.
    pub lr: f64,
    /// Mean training loss per trained bit-width over the steps since the previous point.
    pub loss: BTreeMap<String, f64>,
}

/// One bit-width's final figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BitResult {
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
    /// Mean validation cross-entropy.
    pub loss: f64,
    /// GBitOPs per image (official accounting).
    pub gbitops: f64,
    /// Model size in bytes at this bit-width (official accounting).
    pub bytes: f64,
}

impl BitResult {
    /// The figures of bit-width `bits`: its `scores`, and the cost of a model with layer
    /// `shapes` at that bit-width (official accounting).
    pub fn new(scores: &Scores, shapes: &[LayerShape], bits: BitWidth) -> Self {
        let c = cost(shapes, bits, Accounting::Official);
        Self {
            top1: scores.top1,
            top5: scores.top5,
            loss: scores.loss,
            gbitops: c.gbitops,
            bytes: c.size_mb * 1e6,
        }
    }
}

/// An evaluation of every bit-width under one label (e.g. `direct` and
/// `direct + BN calibration`, or `after stage 2 (4 bits)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// What was evaluated.
    pub label: String,
    /// The figures per bit-width (keys: bits).
    pub bits: BTreeMap<String, BitResult>,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Every epoch ran.
    Completed,
    /// Stopped at the configured step limit, with a checkpoint.
    StepLimit,
    /// Stopped on request (Ctrl-C), with a checkpoint.
    Interrupted,
}

/// `results.json`: the run's headline figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    /// How the run ended.
    pub status: RunStatus,
    /// The strategy.
    pub strategy: String,
    /// The model.
    pub model: String,
    /// The data.
    pub dataset: String,
    /// The headline figures per bit-width: the last evaluation (the calibrated one for direct
    /// training, the one after the last stage for progressive training).
    pub bits: BTreeMap<String, BitResult>,
    /// Every evaluation of the run.
    pub evaluations: Vec<Evaluation>,
    /// Wall-clock seconds of the whole run, evaluation included, over all sessions.
    pub wall_seconds: f64,
    /// Training images per second (each image counted once per step).
    pub train_images_per_second: f64,
    /// Optimiser steps taken.
    pub steps: usize,
}

/// Where a run stands: saved with every checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RunState {
    stage: usize,
    epoch: usize,
    batch: usize,
    step: usize,
    best: Option<f64>,
    history: Vec<EpochRecord>,
    evaluations: Vec<Evaluation>,
    meters: BTreeMap<String, Meter>,
    epoch_seconds: f64,
    epoch_images: u64,
    /// Smoothed training loss and steps spent at chance level, per bit-width.
    #[serde(default)]
    guard: BTreeMap<String, (f64, usize)>,
    /// The smoothed loss per bit-width when its current stretch at chance began.
    #[serde(default)]
    guard_start: BTreeMap<String, f64>,
    /// Sum and count of the training losses since the last point of the loss curve.
    #[serde(default)]
    loss_window: BTreeMap<String, (f64, usize)>,
    train_seconds: f64,
    train_images: u64,
    wall_seconds: f64,
}

fn key(b: BitWidth) -> String {
    b.get().to_string()
}

/// How much the smoothed loss must come down over the guard's window for a run at chance to
/// count as a slow start rather than a dead model.
const STUCK_TREND: f64 = 0.05;

/// One step of the divergence guard for one bit-width. `ema` is the smoothed loss and the
/// length of the current stretch at chance, `start` the smoothed loss when that stretch
/// began; `floor` is `ln(classes)` less the tolerance. True when the loss has stayed above
/// `floor` for `steps` steps without coming down by more than [`STUCK_TREND`] (a loss still
/// coming down, from a high start towards chance, is a slow start: the stretch starts again).
fn stuck(ema: &mut (f64, usize), start: &mut f64, loss: f64, floor: f64, steps: usize) -> bool {
    ema.0 = 0.9 * ema.0 + 0.1 * loss;
    // At chance, or above it: a model that predicts one class with confidence does worse
    // than ln(classes).
    if ema.0 <= floor {
        ema.1 = 0;
        return false;
    }
    if ema.1 == 0 {
        *start = ema.0;
    }
    ema.1 += 1;
    if ema.1 < steps {
        return false;
    }
    if *start - ema.0 > STUCK_TREND {
        ema.1 = 0;
        return false;
    }
    true
}

/// What [`joint_step`] calls after each bit-width's forward pass: the bit-width, its mean
/// cross-entropy and its logits.
pub type BitHook<'a> = dyn FnMut(BitWidth, f64, &[f32]) -> Result<(), TrainError> + 'a;

/// One optimiser step: for each of `bits` in order, a forward pass, the mean cross-entropy (plus,
/// with `distill`, the KL divergence from the previous bit-width's detached outputs) and its
/// backward pass, gradients summed; then one [`Sgd`] step at `lr`. `on_bit` sees each
/// bit-width's cross-entropy and logits (`[batch, classes]`, row-major) right after its forward
/// pass and may stop the step with an error, leaving the model unchanged.
///
/// # Errors
///
/// Whatever `on_bit` returns.
pub fn joint_step(
    model: Model,
    sgd: &mut Sgd,
    bits: &[BitWidth],
    batch: &crate::data::Batch,
    lr: f64,
    distill: bool,
    on_bit: &mut BitHook<'_>,
) -> Result<Model, TrainError> {
    let mut accumulator = GradientsAccumulator::new();
    let mut teacher = None;
    for &b in bits {
        let logits = model.forward(batch.images.clone(), b);
        let ce = cross_entropy(logits.clone(), batch.labels.clone());
        let ce_value = ce.clone().into_scalar::<f64>();
        let values: Vec<f32> = logits.clone().detach().into_data().iter::<f32>().collect();
        on_bit(b, ce_value, &values)?;
        let loss = match (distill, teacher.take()) {
            (true, Some(t)) => ce + distillation(logits.clone(), t),
            _ => ce,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
        if distill {
            teacher = Some(logits.detach());
        }
    }
    Ok(sgd.step(model, accumulator.grads(), lr))
}

/// Evaluates `model` at each of `bits` on every batch of `loader` (evaluation form: running
/// BatchNorm statistics, the official eval-form classifier), on `device`.
///
/// # Errors
///
/// [`TrainError::Data`] when a batch cannot be read.
pub fn evaluate(
    model: &Model,
    bits: &[BitWidth],
    loader: &Loader,
    device: &Device,
) -> Result<BTreeMap<String, Scores>, TrainError> {
    let eval = model.valid();
    let mut meters: BTreeMap<String, Meter> = BTreeMap::new();
    for batch in loader.epoch(0, 0, device) {
        let batch = batch?;
        for &b in bits {
            let logits = eval.forward(batch.images.clone(), b);
            let loss = cross_entropy(logits.clone(), batch.labels.clone()).into_scalar::<f64>();
            let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
            meters
                .entry(key(b))
                .or_default()
                .add(loss, &values, &batch.targets);
        }
    }
    Ok(meters.into_iter().map(|(k, m)| (k, m.summary())).collect())
}

/// A copy of `model` (on the autodiff device `ad`) whose BatchNorm statistics for `bits` are
/// reset and re-estimated as plain averages over the first `batches` batches of `loader`
/// (BatchNorm calibration).
///
/// # Errors
///
/// [`TrainError::Data`] when a batch cannot be read.
pub fn calibrate(
    model: &Model,
    bits: BitWidth,
    loader: &Loader,
    batches: usize,
    ad: &Device,
) -> Result<Model, TrainError> {
    let mut model = model.clone();
    let mut momentum = 0.1;
    model.for_each_norm(|bn| {
        momentum = bn.momentum();
        bn.reset_statistics(bits);
    });
    let n = batches.min(loader.batches_per_epoch());
    for (k, batch) in loader.epoch(0, 0, ad).take(n).enumerate() {
        let batch = batch?;
        model.for_each_norm(|bn| bn.set_momentum(1.0 / (k + 1) as f64));
        let _ = model.forward(batch.images, bits);
    }
    model.for_each_norm(|bn| bn.set_momentum(momentum));
    Ok(model)
}

/// The path of the first parameter of `model` holding a NaN or an infinity, if one does. One
/// value is read back when every parameter is finite.
pub fn non_finite_parameter<M: Module>(model: &M) -> Option<String> {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::Tensor;
    /// Sums every parameter (a NaN or infinity anywhere makes the total non-finite).
    struct Total(Option<Tensor<1>>);
    impl ModuleVisitor for Total {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            crate::optim::accumulate(&mut self.0, param.val().sum());
        }
    }
    /// Finds the first parameter that is not finite, by path.
    struct Find {
        path: Vec<String>,
        found: Option<String>,
    }
    impl ModuleVisitor for Find {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if self.found.is_none() && !param.val().sum().into_scalar::<f64>().is_finite() {
                self.found = Some(self.path.join("."));
            }
        }
    }
    let mut total = Total(None);
    model.visit(&mut total);
    if total.0?.into_scalar::<f64>().is_finite() {
        return None;
    }
    let mut find = Find {
        path: Vec::new(),
        found: None,
    };
    model.visit(&mut find);
    Some(find.found.unwrap_or_else(|| "(unnamed)".into()))
}

/// Describes the classifier's latent weights: their largest magnitude and how many sit where
/// `tanh` is saturated (METHOD.md §17).
fn classifier_diagnosis(model: &Model) -> String {
    let mut model = model.clone();
    let mut found = None;
    model.visit_official(&mut |name, layer| {
        if let LayerMut::Linear(linear) = layer {
            let values: Vec<f32> = linear.weight.val().into_data().iter::<f32>().collect();
            let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let saturated = values.iter().filter(|v| v.tanh().abs() > 0.99).count();
            let share = 100.0 * saturated as f64 / values.len().max(1) as f64;
            found = Some((name.to_string(), max, share));
        }
    });
    match found {
        Some((name, max, share)) if share >= 10.0 => format!(
            "Likely cause: the classifier `{name}` has saturated: its largest weight is {max:.1} and {share:.0}% of its weights have |tanh(w)| > 0.99, so its features no longer pass gradient."
        ),
        Some((name, max, share)) => format!(
            "The classifier `{name}` is not saturated (largest weight {max:.2}, {share:.0}% with |tanh(w)| > 0.99); look at the learning rate and the weight scheme."
        ),
        None => String::new(),
    }
}

/// Which checkpoint of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The best by the run's criterion.
    Best,
    /// The latest.
    Latest,
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

/// Loads a run directory's configuration and the model of its `which` checkpoint onto `device`
/// (its autodiff form, so it can be calibrated).
///
/// # Errors
///
/// [`TrainError::RunFile`] naming the missing or unreadable file, [`TrainError::Checkpoint`]
/// when the model file does not fit the configuration.
pub fn load_run(dir: &Path, which: Which, device: &Device) -> Result<SavedRun, TrainError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| run_file(&config_path, e))?;
    let config: TrainConfig = serde_json::from_str(&text).map_err(|e| run_file(&config_path, e))?;
    let pointer = dir.join("checkpoints").join(match which {
        Which::Best => "best",
        Which::Latest => "latest",
    });
    let name = std::fs::read_to_string(&pointer).map_err(|e| run_file(&pointer, e))?;
    let checkpoint = dir.join("checkpoints").join(name.trim());
    let ad = device.clone().autodiff();
    let model = load_model(
        config.model.init(&ad),
        &checkpoint.join("model.safetensors"),
    )?;
    Ok(SavedRun {
        config,
        model,
        checkpoint,
    })
}

/// Trains as `config` says, writing into `options.out`: `config.json`, `metrics.jsonl`,
/// `losses.jsonl` (the training loss curve), `results.json` and `checkpoints/` (`latest` and `best`, each a pointer to a checkpoint
/// folder written in full before the pointer moves).
///
/// # Errors
///
/// [`TrainError`]: a bad configuration or data, a file that cannot be written, a NaN or
/// infinite loss.
pub fn train(
    config: TrainConfig,
    device: &Device,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunResults, TrainError> {
    let (train_set, val_set) = config.data.open()?;
    train_on(
        config,
        Arc::from(train_set),
        Arc::from(val_set),
        device,
        options,
        progress,
    )
}

/// [`train`] on given datasets (`config.data` then only names them in reports).
///
/// # Errors
///
/// As [`train`].
pub fn train_on(
    config: TrainConfig,
    train_set: Arc<dyn Dataset>,
    val_set: Arc<dyn Dataset>,
    device: &Device,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<RunResults, TrainError> {
    let started = Instant::now();
    let mut config = config.resolve()?;
    config.model.num_classes = train_set.num_classes();
    if train_set.len() < config.batch_size {
        return Err(TrainError::Config {
            field: "batch_size".into(),
            expected: format!("at most the {} training samples", train_set.len()),
            found: config.batch_size.to_string(),
        });
    }
    let out = &options.out;
    std::fs::create_dir_all(out.join("checkpoints")).map_err(|e| run_file(out, e))?;
    let config_path = out.join("config.json");
    let ad = device.clone().autodiff();
    let mut run = Run::new(&config, device, &ad, train_set, val_set);
    if options.resume {
        run.resume(out, &config_path)?;
        progress.note(&format!(
            "resumed from stage {}, epoch {}, batch {} (step {})",
            run.state.stage, run.state.epoch, run.state.batch, run.state.step
        ));
    } else {
        let json = serde_json::to_string_pretty(&config).expect("a config serialises");
        write_atomically(&config_path, json.as_bytes()).map_err(|e| run_file(&config_path, e))?;
        std::fs::write(out.join("metrics.jsonl"), b"").map_err(|e| run_file(out, e))?;
        std::fs::write(out.join("losses.jsonl"), b"").map_err(|e| run_file(out, e))?;
    }
    let status = run.train_all(options, progress, started)?;
    let results = run.results(status);
    let json = serde_json::to_string_pretty(&results).expect("results serialise");
    let path = out.join("results.json");
    write_atomically(&path, json.as_bytes()).map_err(|e| run_file(&path, e))?;
    Ok(results)
}

struct Run<'a> {
    config: &'a TrainConfig,
    device: &'a Device,
    ad: &'a Device,
    model: Model,
    sgd: Sgd,
    train_loader: Loader,
    val_loader: Loader,
    stages: Vec<Stage>,
    state: RunState,
    side: usize,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a TrainConfig,
        device: &'a Device,
        ad: &'a Device,
        train_set: Arc<dyn Dataset>,
        val_set: Arc<dyn Dataset>,
    ) -> Self {
        let side = train_set.image_size();
        let model = {
            // The device's random generator is shared by every run of the process: seed and
            // draw the initial weights without another run drawing in between.
            static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
            let _guard = INIT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            ad.seed(config.seed);
            config.model.init(ad)
        };
        Self {
            config,
            device,
            ad,
            model,
            sgd: Sgd::new(config.optim.clone()),
            train_loader: Loader::new(train_set, config.batch_size, true, config.seed),
            val_loader: Loader::new(val_set, config.eval_batch_size, false, config.seed),
            stages: config.stages(),
            state: RunState::default(),
            side,
        }
    }

    fn train_all(
        &mut self,
        options: &RunOptions,
        progress: &mut dyn Progress,
        started: Instant,
    ) -> Result<RunStatus, TrainError> {
        let session_start = self.state.wall_seconds;
        let batches = self.train_loader.batches_per_epoch();
        // A run resumed at its step limit takes no further step.
        if self.stage_left() && self.config.max_steps.is_some_and(|m| self.state.step >= m) {
            return Ok(RunStatus::StepLimit);
        }
        while self.state.stage < self.stages.len() {
            let stage = self.stages[self.state.stage].clone();
            let plan = LrPlan::new(
                &self.config.optim,
                self.config.batch_size,
                stage.epochs,
                batches,
            );
            if self.state.epoch == 0 && self.state.batch == 0 {
                progress.stage(self.state.stage, &stage.bits, stage.epochs);
            }
            while self.state.epoch < stage.epochs {
                progress.epoch_start(self.state.stage, self.state.epoch, batches);
                let stage_step0 = self.state.epoch * batches;
                let epoch_clock = Instant::now();
                let seconds_before = self.state.epoch_seconds;
                let loader = self.train_loader.clone();
                let global_epoch = self.global_epoch();
                for batch in loader.epoch(global_epoch, self.state.batch, self.ad) {
                    let batch = batch?;
                    let lr = plan.lr(stage_step0 + self.state.batch) * stage.lr_factor;
                    let losses = self.step(&stage, &batch, lr)?;
                    self.state.step += 1;
                    self.log_losses(&options.out, &losses, lr)?;
                    self.state.batch += 1;
                    let n = batch.targets.len() as u64;
                    self.state.epoch_images += n;
                    self.state.train_images += n;
                    let elapsed = seconds_before + epoch_clock.elapsed().as_secs_f64();
                    progress.step(&StepInfo {
                        stage: self.state.stage,
                        epoch: self.state.epoch,
                        batch: self.state.batch - 1,
                        batches,
                        losses,
                        images_per_second: self.state.epoch_images as f64 / elapsed.max(1e-9),
                        lr,
                    });
                    if let Some(status) = self.stop_reason(options)
                        && self.state.batch < batches
                    {
                        self.state.epoch_seconds = elapsed;
                        self.close_session(session_start, started);
                        self.checkpoint(&options.out, false)?;
                        return Ok(status);
                    }
                }
                let seconds = seconds_before + epoch_clock.elapsed().as_secs_f64();
                self.state.train_seconds += seconds;
                let lr = plan.lr((stage_step0 + batches).saturating_sub(1)) * stage.lr_factor;
                let record = self.end_epoch(&stage, lr, seconds)?;
                progress.epoch_end(&record);
                self.append_metrics(&options.out, &record)?;
                self.state.history.push(record.clone());
                // The full-precision stage's model is not a candidate for the best checkpoint.
                let score = self.score(&record);
                let best = !stage.full_precision && self.state.best.is_none_or(|b| score > b);
                if best {
                    self.state.best = Some(score);
                }
                self.state.epoch += 1;
                self.state.batch = 0;
                self.state.meters.clear();
                self.state.epoch_seconds = 0.0;
                self.state.epoch_images = 0;
                if self.state.epoch == stage.epochs {
                    self.end_stage(&stage, progress)?;
                }
                self.close_session(session_start, started);
                self.checkpoint(&options.out, best)?;
                let more =
                    self.state.epoch < stage.epochs || self.state.stage + 1 < self.stages.len();
                if let Some(status) = self.stop_reason(options)
                    && more
                {
                    return Ok(status);
                }
            }
            self.state.stage += 1;
            self.state.epoch = 0;
            if self.state.stage < self.stages.len() {
                // A new stage starts with fresh momentum.
                self.sgd = Sgd::new(self.config.optim.clone());
            }
        }
        Ok(RunStatus::Completed)
    }

    /// Whether any training is left.
    fn stage_left(&self) -> bool {
        self.state.stage < self.stages.len()
    }

    /// Why the run should stop after this step, if it should: a stop request, or the step limit.
    fn stop_reason(&self, options: &RunOptions) -> Option<RunStatus> {
        if options.stop.load(Ordering::SeqCst) {
            Some(RunStatus::Interrupted)
        } else if self.config.max_steps.is_some_and(|m| self.state.step >= m) {
            Some(RunStatus::StepLimit)
        } else {
            None
        }
    }

    /// Adds the time of this session so far to the run's wall time (once per checkpoint).
    fn close_session(&mut self, session_start: f64, started: Instant) {
        self.state.wall_seconds = session_start + started.elapsed().as_secs_f64();
    }

    /// The epoch counted over all stages (drives the data order).
    fn global_epoch(&self) -> usize {
        self.stages[..self.state.stage]
            .iter()
            .map(|s| s.epochs)
            .sum::<usize>()
            + self.state.epoch
    }

    /// One optimiser step over the stage's bit-widths.
    fn step(
        &mut self,
        stage: &Stage,
        batch: &crate::data::Batch,
        lr: f64,
    ) -> Result<Vec<(BitWidth, f64)>, TrainError> {
        let distill = matches!(self.config.strategy, Strategy::Joint { distill: true });
        let mut losses = Vec::with_capacity(stage.bits.len());
        let model = self.model.clone();
        let mut sgd = std::mem::replace(&mut self.sgd, Sgd::new(self.config.optim.clone()));
        let stepped = joint_step(
            model,
            &mut sgd,
            &stage.bits,
            batch,
            lr,
            distill,
            &mut |b, ce, logits| {
                if !ce.is_finite() {
                    return Err(TrainError::NonFinite {
                        step: self.state.step,
                        stage: self.state.stage,
                        epoch: self.state.epoch,
                        bits: b,
                        loss: ce,
                    });
                }
                self.state
                    .meters
                    .entry(key(b))
                    .or_default()
                    .add(ce, logits, &batch.targets);
                losses.push((b, ce));
                self.watch(b, ce)
            },
        );
        self.sgd = sgd;
        let stepped = stepped?;
        if let Some(name) = non_finite_parameter(&stepped) {
            return Err(TrainError::NonFiniteParameter {
                step: self.state.step,
                name,
            });
        }
        self.model = stepped;
        Ok(losses)
    }

    /// The divergence guard: tracks the smoothed loss of `bits` and stops the run when it has
    /// not gone below `ln(classes)` (less the tolerance) for `stuck_steps` steps (by default
    /// one epoch, at least 100 steps) without coming down by more than 0.05 over them.
    fn watch(&mut self, bits: BitWidth, loss: f64) -> Result<(), TrainError> {
        let steps = self
            .config
            .stuck_steps
            .unwrap_or_else(|| self.train_loader.batches_per_epoch().max(100));
        if steps == 0 {
            return Ok(());
        }
        let classes = self.config.model.num_classes;
        let chance = (classes as f64).ln();
        let tolerance = self.config.stuck_tolerance;
        let entry = self.state.guard.entry(key(bits)).or_insert((loss, 0));
        let start = self.state.guard_start.entry(key(bits)).or_insert(loss);
        if !stuck(entry, start, loss, chance - tolerance, steps) {
            return Ok(());
        }
        Err(TrainError::Stuck {
            step: self.state.step,
            bits,
            classes,
            chance,
            steps,
            tolerance,
            floor: chance - tolerance,
            diagnosis: classifier_diagnosis(&self.model),
        })
    }

    /// Evaluates `model` at `bits` on the validation set.
    fn evaluate(
        &self,
        model: &Model,
        bits: &[BitWidth],
    ) -> Result<BTreeMap<String, Scores>, TrainError> {
        evaluate(model, bits, &self.val_loader, self.device)
    }

    /// A copy of the model with the BatchNorm statistics of `bits` re-estimated.
    fn calibrated(&self, bits: BitWidth) -> Result<Model, TrainError> {
        calibrate(
            &self.model,
            bits,
            &self.train_loader,
            self.config.calibration_batches,
            self.ad,
        )
    }

    fn eval_bits(&self) -> Vec<BitWidth> {
        self.config.model.bits.iter().collect()
    }

    fn end_epoch(
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
        Ok(EpochRecord {
            stage: self.state.stage,
            epoch: self.state.epoch,
            trained_bits: stage.bits.clone(),
            lr,
            train: self
                .state
                .meters
                .iter()
                .map(|(k, m)| (k.clone(), m.summary()))
                .collect(),
            val,
            images_per_second: self.state.epoch_images as f64 / seconds.max(1e-9),
            train_seconds: seconds,
        })
    }

    /// The evaluations at the end of a stage.
    fn end_stage(&mut self, stage: &Stage, progress: &mut dyn Progress) -> Result<(), TrainError> {
        if stage.full_precision {
            progress.note("full-precision stage done: its BatchNorm and clipping levels go to every bit-width");
            self.model = adabits_models::spread_first(self.model.clone()).map_err(|e| {
                TrainError::Internal(format!("spreading the full-precision stage: {e}"))
            })?;
            return Ok(());
        }
        let bits = self.eval_bits();
        let plain = self.evaluate(&self.model, &bits)?;
        match self.config.strategy {
            Strategy::Individual | Strategy::Joint { .. } => {
                let label = self.config.strategy.name().to_string();
                self.state.evaluations.push(self.evaluation(label, &plain));
            }
            Strategy::Direct => {
                self.state
                    .evaluations
                    .push(self.evaluation("direct".into(), &plain));
                progress.note("calibrating BatchNorm at every bit-width");
                let calibrated = self.calibrated_scores(&bits)?;
                self.state
                    .evaluations
                    .push(self.evaluation("direct + BN calibration".into(), &calibrated));
            }
            Strategy::Progressive { .. } => {
                let calibrated = self.calibrated_scores(&bits)?;
                let label = format!(
                    "after stage {} ({} bits)",
                    self.state.stage + 1,
                    stage.bits[0]
                );
                self.state
                    .evaluations
                    .push(self.evaluation(label, &calibrated));
            }
        }
        Ok(())
    }

    fn calibrated_scores(&self, bits: &[BitWidth]) -> Result<BTreeMap<String, Scores>, TrainError> {
        let mut scores = BTreeMap::new();
        for &b in bits {
            let model = self.calibrated(b)?;
            scores.extend(self.evaluate(&model, &[b])?);
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
        Evaluation { label, bits }
    }

    fn score(&self, record: &EpochRecord) -> f64 {
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

    /// Adds a step's losses to the window of the loss curve and writes a point every
    /// `log_every` steps.
    fn log_losses(
        &mut self,
        out: &Path,
        losses: &[(BitWidth, f64)],
        lr: f64,
    ) -> Result<(), TrainError> {
        let every = self.config.log_every;
        if every == 0 {
            return Ok(());
        }
        for &(b, loss) in losses {
            let slot = self.state.loss_window.entry(key(b)).or_insert((0.0, 0));
            slot.0 += loss;
            slot.1 += 1;
        }
        if !self.state.step.is_multiple_of(every) {
            return Ok(());
        }
        let record = LossRecord {
            step: self.state.step,
            stage: self.state.stage,
            epoch: self.state.epoch,
            lr,
            loss: std::mem::take(&mut self.state.loss_window)
                .into_iter()
                .map(|(k, (sum, n))| (k, sum / n.max(1) as f64))
                .collect(),
        };
        let path = out.join("losses.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| run_file(&path, e))?;
        let line = serde_json::to_string(&record).expect("records serialise");
        writeln!(file, "{line}").map_err(|e| run_file(&path, e))
    }

    fn append_metrics(&self, out: &Path, record: &EpochRecord) -> Result<(), TrainError> {
        let path = out.join("metrics.jsonl");
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| run_file(&path, e))?;
        let line = serde_json::to_string(record).expect("records serialise");
        writeln!(file, "{line}").map_err(|e| run_file(&path, e))
    }

    fn results(&self, status: RunStatus) -> RunResults {
        let bits = self
            .state
            .evaluations
            .last()
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
        }
    }

    /// Writes a checkpoint folder, then moves the `latest` (and, if `best`, the `best`)
    /// pointer to it, then removes folders no pointer names.
    fn checkpoint(&self, out: &Path, best: bool) -> Result<(), TrainError> {
        let dir = out.join("checkpoints");
        let name = format!(
            "s{}-e{:04}-b{:05}-step{}",
            self.state.stage, self.state.epoch, self.state.batch, self.state.step
        );
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| run_file(&tmp, e))?;
        save_model(&self.model, &tmp.join("model.safetensors"))?;
        self.sgd
            .state()
            .write(&tmp.join("optimizer.safetensors"))
            .map_err(|e| run_file(&tmp, e))?;
        let state = serde_json::to_string_pretty(&self.state).expect("state serialises");
        write_atomically(&tmp.join("state.json"), state.as_bytes())
            .map_err(|e| run_file(&tmp, e))?;
        let target = dir.join(&name);
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(&tmp, &target).map_err(|e| run_file(&target, e))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let point = |pointer: &str| -> Result<(), TrainError> {
            let path = dir.join(pointer);
            write_atomically(&path, name.as_bytes()).map_err(|e| run_file(&path, e))
        };
        point("latest")?;
        if best {
            point("best")?;
        }
        // Remove checkpoints no pointer names.
        let keep: Vec<String> = ["latest", "best"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(dir.join(p)).ok())
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
        Ok(())
    }

    /// Loads the latest checkpoint of `out` and checks the configuration against the saved one.
    fn resume(&mut self, out: &Path, config_path: &Path) -> Result<(), TrainError> {
        let saved = std::fs::read_to_string(config_path).map_err(|e| run_file(config_path, e))?;
        let saved: serde_json::Value =
            serde_json::from_str(&saved).map_err(|e| run_file(config_path, e))?;
        let mut now = serde_json::to_value(self.config).expect("a config serialises");
        let mut then = saved;
        for v in [&mut now, &mut then] {
            if let Some(o) = v.as_object_mut() {
                o.remove("max_steps");
            }
        }
        if now != then {
            return Err(run_file(
                config_path,
                "the run was started with another configuration; resume with the same settings (only max_steps may change) or use a new --out",
            ));
        }
        let dir = out.join("checkpoints");
        let pointer = dir.join("latest");
        let name = std::fs::read_to_string(&pointer).map_err(|e| run_file(&pointer, e))?;
        let ckpt = dir.join(name.trim());
        let model = self.config.model.init(self.ad);
        self.model = load_model(model, &ckpt.join("model.safetensors"))?;
        let optim_path = ckpt.join("optimizer.safetensors");
        let dict = StateDict::read(&optim_path).map_err(|e| run_file(&optim_path, e))?;
        self.sgd.load_state(&dict, self.ad);
        let state_path = ckpt.join("state.json");
        let state = std::fs::read_to_string(&state_path).map_err(|e| run_file(&state_path, e))?;
        self.state = serde_json::from_str(&state).map_err(|e| run_file(&state_path, e))?;
        // metrics.jsonl holds exactly the checkpoint's history.
        let mut lines = String::new();
        for record in &self.state.history {
            lines.push_str(&serde_json::to_string(record).expect("records serialise"));
            lines.push('\n');
        }
        let metrics = out.join("metrics.jsonl");
        write_atomically(&metrics, lines.as_bytes()).map_err(|e| run_file(&metrics, e))?;
        // So does losses.jsonl: points after the checkpoint's step are dropped.
        let curve = out.join("losses.jsonl");
        if let Ok(text) = std::fs::read_to_string(&curve) {
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<LossRecord>(line)
                        .is_ok_and(|r| r.step <= self.state.step)
                })
                .map(|line| format!("{line}\n"))
                .collect();
            write_atomically(&curve, kept.as_bytes()).map_err(|e| run_file(&curve, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_state_reads_back_from_its_json_bit_for_bit() {
        // Loss sums as a run accumulates them, with 17 significant digits: serde_json's default
        // parser reads about one in eleven of these an ulp off (39.430133835633676 as …68),
        // which made a resumed run's loss curve differ from the uninterrupted one.
        let mut state = RunState::default();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..1000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x >> 11) as f64 / (1u64 << 53) as f64 * 100.0;
            state.loss_window.insert(i.to_string(), (v, i));
            state.guard.insert(i.to_string(), (v / 7.0, i));
        }
        state.loss_window.insert("known".into(), (39.430133835633676, 1));
        state.best = Some(1.0 / 3.0);
        let json = serde_json::to_string_pretty(&state).unwrap();
        let back: RunState = serde_json::from_str(&json).unwrap();
        for (k, (v, _)) in &state.loss_window {
            assert_eq!(back.loss_window[k].0.to_bits(), v.to_bits(), "{k}: {v}");
        }
        assert_eq!(back, state);
    }

    /// The step at which the guard fires on `losses`, if it does.
    fn fires(losses: impl IntoIterator<Item = f64>, steps: usize) -> Option<usize> {
        let floor = 10f64.ln() - 0.05;
        let (mut ema, mut start) = ((f64::NAN, 0), 0.0);
        for (i, loss) in losses.into_iter().enumerate() {
            if i == 0 {
                ema.0 = loss;
            }
            if stuck(&mut ema, &mut start, loss, floor, steps) {
                return Some(i);
            }
        }
        None
    }

    #[test]
    fn a_loss_flat_at_chance_stops_the_run_after_the_window() {
        // ±0.02 of noise around ln 10.
        let flat = (0..300).map(|i| 10f64.ln() + 0.02 * ((i * 7 % 5) as f64 - 2.0) / 2.0);
        assert_eq!(fires(flat, 100), Some(99));
        // Far above chance counts too (a confident wrong class).
        assert_eq!(fires(std::iter::repeat_n(4.0, 300), 100), Some(99));
    }

    #[test]
    fn a_collapse_from_a_high_start_is_caught_after_it_settles() {
        // 10 → ln 10 over 30 steps, then flat: the first window is a descent, the second not.
        let losses = (0..300).map(|i| {
            if i < 30 {
                10.0 - (10.0 - 10f64.ln()) * i as f64 / 30.0
            } else {
                10f64.ln()
            }
        });
        let step = fires(losses, 50).expect("fires");
        // The smoothed loss lags the descent: at most two windows after it ends.
        assert!((60..160).contains(&step), "{step}");
    }

    #[test]
    fn a_slow_start_is_not_stopped() {
        // From 2.6 down to 2.2 over 400 steps: above the floor for about 300 of them, but
        // coming down by about 0.1 every 100 steps.
        let slow = (0..400).map(|i| 2.6 - 0.4 * i as f64 / 400.0);
        assert_eq!(fires(slow, 100), None);
        // A learning run, below chance after 20 steps.
        let healthy = (0..400).map(|i| if i < 20 { 2.5 } else { 1.5 });
        assert_eq!(fires(healthy, 100), None);
    }
}
