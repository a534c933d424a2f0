//! `adabits train`: the flags and the run; how the flags make a configuration is `config`.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::Architecture;
use adabits_quant::{BitWidths, QuantScheme};
use adabits_train::data::DatasetKind;
use adabits_train::{
    Recipe, RunDir, RunOptions, RunStatus, ScheduleKind, Selection, StrategyKind, TrainError, train,
};
use clap::Args;

use crate::device::DeviceArg;
use crate::output::{print_json, print_results};
pub(crate) use config::resolve;
use config::resolve_resumed;

/// The flags of `adabits train`.
#[derive(Debug, Args)]
pub(crate) struct Train {
    /// A JSON preset (see configs/); flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The starting settings of a new run, before --config and the other flags [default:
    /// adabits].
    #[arg(long, value_enum, conflicts_with = "resume")]
    recipe: Option<Recipe>,
    /// The model: resnet20/32/44/56/110 (CIFAR), resnet18/34/50/101/152, mobilenet_v1,
    /// mobilenet_v2 [default: resnet20].
    #[arg(long)]
    model: Option<Architecture>,
    /// Width multiplier of the model [default: 1].
    #[arg(long, value_name = "W", value_parser = crate::values::positive)]
    width: Option<f64>,
    /// The entries, in training order: bit-widths, or wWaA for weights at W bits and
    /// activations at A (e.g. 8,w4a8,4) [default: 8,6,5,4].
    #[arg(long, value_name = "LIST")]
    bits: Option<BitWidths>,
    /// The data [default: synthetic].
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// The folder of the CIFAR files or of the image folder's train/ and val/.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The training strategy [default: joint].
    #[arg(long, value_enum)]
    strategy: Option<StrategyKind>,
    /// Joint training: each lower bit-width also learns from the next higher one's outputs.
    #[arg(long)]
    distill: bool,
    /// Progressive training from the lowest bit-width up.
    #[arg(long)]
    low_to_high: bool,
    /// One clipping level shared by all bit-widths (Vanilla AdaBits ablation).
    #[arg(long)]
    shared_alpha: bool,
    /// One BatchNorm shared by all bit-widths (ablation).
    #[arg(long)]
    shared_bn: bool,
    /// The weight quantization scheme.
    #[arg(long, value_enum, value_name = "SCHEME")]
    weight_scheme: Option<QuantScheme>,
    /// The activation quantization scheme.
    #[arg(long, value_enum, value_name = "SCHEME")]
    act_scheme: Option<QuantScheme>,
    /// Training epochs [default: 2].
    #[arg(long, value_parser = crate::values::count)]
    epochs: Option<usize>,
    /// Training batch size [default: 128].
    #[arg(long, value_parser = crate::values::count)]
    batch_size: Option<usize>,
    /// Base learning rate, for a batch of up to 256 [default: 0.1].
    #[arg(long, value_parser = crate::values::positive)]
    lr: Option<f64>,
    /// Learning-rate schedule [default: cosine].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleKind>,
    /// Epochs at which multistep drops the rate, e.g. 100,150.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    milestones: Option<Vec<usize>>,
    /// Multistep factor [default: 0.1].
    #[arg(long, value_parser = crate::values::positive)]
    gamma: Option<f64>,
    /// Label smoothing of the training cross-entropy, e.g. 0.1 [default: 0, as the official
    /// code].
    #[arg(long, value_name = "EPS")]
    label_smoothing: Option<f64>,
    /// Hold out N training images to score each epoch and choose the best checkpoint on,
    /// so that the test set only reports (the same images for every run on that training set)
    /// [default: 0, none: epochs are scored on the test set, as the official code does].
    #[arg(long, value_name = "N")]
    val_split: Option<usize>,
    /// Keep a moving average of the weights with this decay, e.g. 0.999 (warmed up over the
    /// first steps of each quantized stage): each epoch and stage also reports it at every
    /// bit-width, and `--which ema` reads it back [default: none].
    #[arg(long, value_name = "D")]
    ema_decay: Option<f64>,
    /// SGD momentum [default: 0.9].
    #[arg(long, value_name = "M")]
    momentum: Option<f64>,
    /// Nesterov momentum, true or false [default: true].
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    nesterov: Option<bool>,
    /// Weight decay of conv and linear weights [default: 4e-5].
    #[arg(long, value_parser = crate::values::non_negative)]
    weight_decay: Option<f64>,
    /// Epochs at full precision before the bit-widths train; their BatchNorm and clipping
    /// levels then go to every bit-width (the official runs start from a full-precision model).
    #[arg(long, value_name = "N")]
    fp_epochs: Option<usize>,
    /// Take the full-precision stage from this run instead of training it: a run of the same
    /// model, data, seed and optimiser (strategy, bit-widths, sharing and later epochs may
    /// differ) stopped at the end of that stage with --max-steps. This run then continues
    /// exactly as if it had trained the stage itself.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    fp_stage_from: Option<PathBuf>,
    /// Start from these weights instead of a random initialisation: an official adaptive
    /// checkpoint (one BatchNorm copy per entry), an official or torchvision full-precision one
    /// (BatchNorm and clipping level spread to every entry, as the official fp_pretrained
    /// loading does), both SafeTensors, or a run directory of adabits. The full-precision stage
    /// then defaults to 0 epochs.
    #[arg(long, value_name = "FILE|RUN", conflicts_with_all = ["resume", "fp_stage_from"])]
    init: Option<PathBuf>,
    /// Learning-rate warm-up epochs [default: 0, or 5 for batches above 256].
    #[arg(long, value_name = "N")]
    warmup_epochs: Option<usize>,
    /// Scale the gradient down to this global L2 norm when it is longer; 0 turns clipping off.
    #[arg(long, value_name = "NORM", value_parser = crate::values::non_negative)]
    clip_grad_norm: Option<f64>,
    /// Stop (with a checkpoint) after this many optimiser steps.
    #[arg(long, value_name = "N", value_parser = crate::values::count)]
    max_steps: Option<usize>,
    /// Every this-many steps: a point of the loss curve (`losses.jsonl`) and, when stderr is not
    /// a terminal (a pipe, a file, CI), a progress line in place of the bar; 0 for neither
    /// [default: 10].
    #[arg(long, value_name = "N")]
    log_every: Option<usize>,
    /// Seed of the initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// The run directory [default: runs/MODEL-STRATEGY].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint, with the settings saved in its
    /// config.json (only --max-steps may change; other flags must agree with them).
    #[arg(long)]
    resume: bool,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// Print results.json to stdout instead of a table.
    #[arg(long)]
    json: bool,
}

impl Train {
    /// The recipe a new run starts from.
    fn recipe(&self) -> Recipe {
        self.recipe.unwrap_or(Recipe::Adabits)
    }
}

/// `adabits train`.
pub(crate) fn run(args: Train) -> anyhow::Result<ExitCode> {
    let (config, out) = match &args.out {
        Some(out) if args.resume => (resolve_resumed(&args, out)?, out.clone()),
        _ => {
            let config = resolve(&args)?;
            let out = args.out.clone().unwrap_or_else(|| {
                let name = format!("{}-{}", config.model.arch, config.strategy.name());
                PathBuf::from("runs").join(name)
            });
            if args.resume {
                (resolve_resumed(&args, &out)?, out)
            } else {
                (config, out)
            }
        }
    };
    let run_dir = RunDir::new(&out);
    let mut options = RunOptions::new(&out);
    options.resume = args.resume;
    options.fp_stage_from.clone_from(&args.fp_stage_from);
    let caught = crate::signals::stop_on_signals(options.stop.clone())?;
    if !args.json {
        eprintln!(
            "{} {} {} on {} ({}, {} epochs{}{}) on {}; {}; run directory {}",
            if args.resume { "resuming" } else { "training" },
            config.model.arch,
            config.model.bits,
            config.data.name(),
            config.strategy.name(),
            config.epochs,
            if config.fp_epochs > 0 {
                format!(" after {} at full precision", config.fp_epochs)
            } else {
                String::new()
            },
            config
                .optim
                .clip_grad_norm
                .map_or(String::new(), |n| format!(", gradient clipped to norm {n}")),
            args.device,
            if args.resume {
                "settings from its config.json".to_string()
            } else {
                format!("recipe: {}", args.recipe().summary())
            },
            out.display()
        );
    }
    let mut progress =
        crate::progress::TerminalProgress::new(config.stage_count(), config.log_every);
    let results =
        train(config, &args.device.device(), &options, &mut progress).map_err(with_hint)?;
    if args.json {
        print_json(&results)?;
    } else {
        match results.status {
            RunStatus::Completed => {}
            RunStatus::StepLimit => println!("stopped at the step limit; continue with --resume"),
            RunStatus::Interrupted => println!("interrupted; continue with --resume"),
        }
        for evaluation in &results.evaluations {
            println!("{}", evaluation.label);
            print_results(
                crate::output::highest_first(&evaluation.bits)
                    .into_iter()
                    .map(|(b, r)| (b.clone(), r)),
            );
        }
        println!(
            "the best checkpoint was chosen on {}{}",
            results.best_chosen_on,
            if results.best_chosen_on == Selection::Test {
                " (optimistic: hold out training images with --val-split N)"
            } else {
                "; the tables above are on the test set"
            }
        );
        println!(
            "{} steps, {:.0} training images/s, {:.1} s; results in {}",
            results.steps,
            results.train_images_per_second,
            results.wall_seconds,
            run_dir.results_path().display()
        );
    }
    // A run a signal stopped exits as the signal asks (130, 143), so that
    // `adabits train && adabits export` does not go on with a partial model.
    Ok(match results.status {
        RunStatus::Interrupted => ExitCode::from(caught.exit_status().unwrap_or(130)),
        _ => ExitCode::SUCCESS,
    })
}

/// The run's error, with the hint of what to pass instead where a flag is the way out.
fn with_hint(err: TrainError) -> anyhow::Error {
    let hint = match &err {
        TrainError::RunExists { .. } => "pass --resume to continue it, or another --out",
        TrainError::NoRun { .. } => "check --out, or drop --resume to start a new run",
        TrainError::Busy { .. } => "wait for it to finish, or use another --out",
        _ => return err.into(),
    };
    anyhow::anyhow!("{err}\nhint: {hint}")
}
