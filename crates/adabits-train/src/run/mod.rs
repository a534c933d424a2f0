//! A training run: stages, epochs, steps and checkpoints; the evaluations (`evaluate`) and
//! resumption (`resume`) are its submodules.

mod evaluate;
mod resume;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use adabits_models::Model;
use adabits_quant::Precision;
use burn::tensor::Device;

use crate::config::{RunOptions, TrainConfig};
use crate::data::{Dataset, Loader};
use crate::error::TrainError;
use crate::guard::{classifier_diagnosis, diverged_limit, non_finite_parameter, stuck};
use crate::optim::{LrPlan, Sgd};
use crate::progress::{Progress, StepInfo};
use crate::records::{LossRecord, RunResults, RunState, RunStatus, key};
use crate::run_dir::{Log, RunDir};
use crate::step::joint_step;
use crate::strategy::{Stage, Strategy};

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
    let (train_set, val_set, test_set) = match config.val_split {
        0 => (train_set, val_set, None),
        n if n >= train_set.len() => {
            return Err(TrainError::Config {
                field: "val_split".into(),
                expected: format!("fewer than the {} training samples", train_set.len()),
                found: n.to_string(),
            });
        }
        n => {
            let (rest, held) = crate::data::hold_out(train_set, n);
            let rest: Arc<dyn Dataset> = Arc::new(rest);
            let held: Arc<dyn Dataset> = Arc::new(held);
            (rest, held, Some(val_set))
        }
    };
    if train_set.len() < config.batch_size {
        return Err(TrainError::Config {
            field: "batch_size".into(),
            expected: format!(
                "at most the {} training samples{}",
                train_set.len(),
                if config.val_split > 0 {
                    format!(" left by val_split {}", config.val_split)
                } else {
                    String::new()
                }
            ),
            found: config.batch_size.to_string(),
        });
    }
    // Weights, gradients, momentum and an updated copy: 16 bytes per parameter.
    crate::memory::fits_in_memory(&config.model, device, 16)?;
    let dir = RunDir::new(&options.out);
    // One writer per run: held until the run returns, released by the OS if the process dies.
    let _lock = dir.lock()?;
    if options.resume && !dir.is_run() {
        return Err(TrainError::NoRun {
            path: options.out.clone(),
        });
    }
    if !options.resume && dir.is_run() {
        return Err(TrainError::RunExists {
            path: options.out.clone(),
        });
    }
    if options.fp_stage_from.is_some() && (options.resume || config.fp_epochs == 0) {
        return Err(TrainError::Config {
            field: "fp_stage_from".into(),
            expected: "a new run with a full-precision stage (fp_epochs above 0, not resumed)"
                .into(),
            found: format!(
                "{} with fp_epochs {}",
                if options.resume {
                    "a resumed run"
                } else {
                    "a new run"
                },
                config.fp_epochs
            ),
        });
    }
    if options.fp_stage_from.is_some() && config.init.is_some() {
        return Err(TrainError::Config {
            field: "init".into(),
            expected: "no initial weights when the full-precision stage is taken from another run (fp_stage_from)".into(),
            found: config.init.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        });
    }
    // The initial weights, read before the run directory is made, so that a file that cannot
    // be read leaves no run behind; a resumed run reads its checkpoint instead.
    let initial = match &config.init {
        Some(path) if !(options.resume && dir.has_checkpoint()) => Some(crate::initial_model(
            path,
            &config.model,
            config.seed,
            device,
        )?),
        _ => None,
    };
    dir.create()?;
    let ad = device.clone().autodiff();
    let mut run = Run::new(&config, device, &ad, train_set, val_set, dir)?;
    if let Some((model, report)) = initial {
        run.model = model;
        progress.note(&report.to_string());
    }
    run.test_loader =
        test_set.map(|set| Loader::new(set, config.eval_batch_size, false, config.seed));
    if options.resume {
        run.check_config()?;
    }
    if options.resume && run.dir.has_checkpoint() {
        run.resume()?;
        progress.note(&format!(
            "resumed from stage {}, epoch {}, batch {} (step {})",
            run.state.stage, run.state.epoch, run.state.batch, run.state.step
        ));
    } else {
        if options.resume {
            progress.note("the run has no checkpoint yet: starting it from the beginning");
        }
        run.dir.write_config(&config)?;
        match &options.fp_stage_from {
            Some(source) => {
                run.start_after_full_precision(&RunDir::new(source))?;
                progress.note(&format!(
                    "full-precision stage taken from {} ({} steps): its BatchNorm and clipping levels go to every bit-width",
                    source.display(),
                    run.state.step
                ));
            }
            None => run.dir.start_logs()?,
        }
    }
    let status = run.train_all(options, progress, started)?;
    let results = run.results(status);
    run.dir.write_results(&results)?;
    Ok(results)
}

struct Run<'a> {
    config: &'a TrainConfig,
    device: &'a Device,
    ad: &'a Device,
    model: Model,
    sgd: Sgd,
    train_loader: Loader,
    /// What each epoch is scored on: the held-out images with a validation split, else the
    /// test set.
    val_loader: Loader,
    /// The test set when a validation split is held out (the end-of-stage evaluations).
    test_loader: Option<Loader>,
    stages: Vec<Stage>,
    state: RunState,
    side: usize,
    dir: RunDir,
    /// The step of the latest checkpoint written or resumed from, if any.
    checkpoint: Option<usize>,
    /// The moving average of the weights, in a quantized stage of a run that keeps one.
    ema: Option<Model>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a TrainConfig,
        device: &'a Device,
        ad: &'a Device,
        train_set: Arc<dyn Dataset>,
        val_set: Arc<dyn Dataset>,
        dir: RunDir,
    ) -> Result<Self, TrainError> {
        let side = train_set.image_size();
        // Other runs of the process may draw from the same generator meanwhile.
        let model = config.model.init_seeded(config.seed, ad)?;
        Ok(Self {
            config,
            device,
            ad,
            model,
            sgd: Sgd::new(config.optim.clone()),
            train_loader: Loader::new(train_set, config.batch_size, true, config.seed),
            val_loader: Loader::new(val_set, config.eval_batch_size, false, config.seed),
            test_loader: None,
            stages: config.stages(),
            state: RunState::default(),
            side,
            dir,
            checkpoint: None,
            ema: None,
        })
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
                let precisions: Vec<Precision> = stage.bits.iter().map(|at| at.precision).collect();
                progress.stage(self.state.stage, &precisions, stage.epochs);
                // Each quantized stage starts its own average from the model it starts with.
                let keep = self.config.ema_decay.is_some() && !stage.full_precision;
                self.ema = keep
                    .then(|| crate::ema::start_ema(self.config.model.init(self.ad), &self.model));
                self.state.ema_updates = keep.then_some(0);
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
                    self.average();
                    self.state.step += 1;
                    self.log_losses(&losses, lr)?;
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
                        self.checkpoint(false)?;
                        return Ok(status);
                    }
                }
                let seconds = seconds_before + epoch_clock.elapsed().as_secs_f64();
                self.state.train_seconds += seconds;
                let lr = plan.lr((stage_step0 + batches).saturating_sub(1)) * stage.lr_factor;
                let record = self.end_epoch(&stage, lr, seconds)?;
                progress.epoch_end(&record);
                self.dir.append_jsonl(Log::Metrics, &record)?;
                self.state.history.push(record.clone());
                self.dir.write_metrics_csv(&self.state.history)?;
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
                self.checkpoint(best)?;
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

    /// Moves the moving average of the weights, if the run keeps one, towards the model.
    fn average(&mut self) {
        if let (Some(ema), Some(decay), Some(n)) = (
            self.ema.take(),
            self.config.ema_decay,
            self.state.ema_updates,
        ) {
            self.ema = Some(crate::ema::update_ema(
                ema,
                &self.model,
                crate::ema::ema_decay(decay, n),
            ));
            self.state.ema_updates = Some(n + 1);
        }
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
    ) -> Result<Vec<(Precision, f64)>, TrainError> {
        let objective = crate::step::Objective {
            distill: matches!(self.config.strategy, Strategy::Joint { distill: true }),
            label_smoothing: self.config.label_smoothing,
        };
        let mut losses = Vec::with_capacity(stage.bits.len());
        let model = self.model.clone();
        let mut sgd = std::mem::replace(&mut self.sgd, Sgd::new(self.config.optim.clone()));
        let stepped = joint_step(
            model,
            &mut sgd,
            &stage.bits,
            batch,
            lr,
            objective,
            &mut |b, ce, logits| {
                if !ce.is_finite() {
                    return Err(TrainError::NonFinite {
                        checkpoint: self.checkpoint,
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
                checkpoint: self.checkpoint,
                step: self.state.step,
                name,
            });
        }
        self.model = stepped;
        Ok(losses)
    }

    /// The divergence guards: stops the run at once when the loss of `bits` passes 10 times
    /// the larger of its first value and `ln(classes)`; tracks its smoothed loss and stops the
    /// run when it has not gone below `ln(classes)` (less the tolerance) for `stuck_steps` steps
    /// (by default one epoch, at least 100 steps) without coming down by more than 0.05 over
    /// them.
    fn watch(&mut self, bits: Precision, loss: f64) -> Result<(), TrainError> {
        let classes = self.config.model.num_classes;
        let first = *self.state.first_loss.entry(key(bits)).or_insert(loss);
        let limit = diverged_limit(first, classes);
        if loss > limit {
            return Err(TrainError::Diverged {
                step: self.state.step,
                bits,
                loss,
                first,
                classes,
                limit,
                checkpoint: self.checkpoint,
            });
        }
        let steps = self
            .config
            .stuck_steps
            .unwrap_or_else(|| self.train_loader.batches_per_epoch().max(100));
        if steps == 0 {
            return Ok(());
        }
        let chance = (classes as f64).ln();
        let tolerance = self.config.stuck_tolerance;
        let entry = self.state.guard.entry(key(bits)).or_insert((loss, 0));
        let start = self.state.guard_start.entry(key(bits)).or_insert(loss);
        if !stuck(entry, start, loss, chance - tolerance, steps) {
            return Ok(());
        }
        Err(TrainError::Stuck {
            checkpoint: self.checkpoint,
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

    /// Adds a step's losses to the window of the loss curve and writes a point every
    /// `log_every` steps.
    fn log_losses(&mut self, losses: &[(Precision, f64)], lr: f64) -> Result<(), TrainError> {
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
        self.dir.append_jsonl(Log::Losses, &record)
    }

    /// Writes a checkpoint of where the run stands; `best` moves the `best` pointer too.
    fn checkpoint(&mut self, best: bool) -> Result<(), TrainError> {
        self.dir
            .write_checkpoint(&self.model, self.ema.as_ref(), &self.sgd, &self.state, best)?;
        self.checkpoint = Some(self.state.step);
        Ok(())
    }
}
