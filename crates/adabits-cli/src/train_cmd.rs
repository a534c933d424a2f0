//! `adabits train` and `adabits profile`.

use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::{Accounting, Architecture, ModelConfig, cost};
use adabits_quant::{BitWidths, QuantScheme};
use adabits_train::{BitResult, RunDir, RunOptions, RunStatus, TrainConfig, merge_json, train};
use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::device::DeviceArg;

/// Which data to train on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DatasetArg {
    /// The built-in synthetic set (no download).
    Synthetic,
    /// CIFAR-10, binary version, in --data-dir.
    Cifar10,
    /// CIFAR-100, binary version, in --data-dir.
    Cifar100,
    /// An ImageNet-style folder with train/ and val/ class sub-folders, in --data-dir.
    Imagefolder,
}

/// The training strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum StrategyArg {
    /// One bit-width (--bits must name exactly one).
    Individual,
    /// AdaBits: every bit-width at every step.
    Joint,
    /// Train at the highest bit-width, evaluate all, with and without BN calibration.
    Direct,
    /// Train at the highest bit-width, then fine-tune at each lower one.
    Progressive,
}

/// The learning-rate schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScheduleArg {
    /// Cosine over all iterations.
    Cosine,
    /// ×gamma at each --milestones epoch.
    Multistep,
    /// Constant.
    Constant,
}

/// The starting settings that flags and --config adjust.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum RecipeArg {
    /// The official flags with the changes that make a random start train (docs/recipe.md):
    /// the centered weight scheme, a classifier initialised at N(0, 1), rescaled by its fan-in
    /// and evaluated in its training form, MobileNet-V2's bottleneck outputs clipped on both
    /// sides, depthwise convolutions' inputs at 4 bits or more, the gradient clipped to norm 5,
    /// and a full-precision stage as long as the training that follows (unless --fp-epochs
    /// says otherwise).
    Adabits,
    /// The official code's settings exactly (parity); stays at chance from a random start.
    Official,
}

/// The flags of `adabits train`.
#[derive(Debug, Args)]
pub(crate) struct TrainArgs {
    /// A JSON preset (see configs/); flags given on the command line override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The starting settings, before --config and the other flags.
    #[arg(long, value_enum, default_value_t = RecipeArg::Adabits)]
    recipe: RecipeArg,
    /// The model: resnet20/32/44/56/110 (CIFAR), resnet18/34/50/101/152, mobilenet_v1,
    /// mobilenet_v2 [default: resnet20].
    #[arg(long)]
    model: Option<String>,
    /// Width multiplier of the model [default: 1].
    #[arg(long, value_name = "W")]
    width: Option<f64>,
    /// The bit-widths, in training order [default: 8,6,5,4].
    #[arg(long, value_name = "LIST")]
    bits: Option<BitWidths>,
    /// The data [default: synthetic].
    #[arg(long, value_enum)]
    dataset: Option<DatasetArg>,
    /// The folder of the CIFAR files or of the image folder's train/ and val/.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The training strategy [default: joint].
    #[arg(long, value_enum)]
    strategy: Option<StrategyArg>,
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
    /// The weight quantization scheme (original, modified, centered).
    #[arg(long, value_name = "SCHEME")]
    weight_scheme: Option<QuantScheme>,
    /// The activation quantization scheme (original, modified, centered).
    #[arg(long, value_name = "SCHEME")]
    act_scheme: Option<QuantScheme>,
    /// Training epochs [default: 2].
    #[arg(long)]
    epochs: Option<usize>,
    /// Training batch size [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate, for a batch of up to 256 [default: 0.1].
    #[arg(long)]
    lr: Option<f64>,
    /// Learning-rate schedule [default: cosine].
    #[arg(long, value_enum)]
    schedule: Option<ScheduleArg>,
    /// Epochs at which multistep drops the rate, e.g. 100,150.
    #[arg(long, value_delimiter = ',', value_name = "EPOCHS")]
    milestones: Option<Vec<usize>>,
    /// Multistep factor [default: 0.1].
    #[arg(long)]
    gamma: Option<f64>,
    /// Weight decay of conv and linear weights [default: 4e-5].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Epochs at full precision before the bit-widths train; their BatchNorm and clipping
    /// levels then go to every bit-width (the official runs start from a full-precision model).
    #[arg(long, value_name = "N")]
    fp_epochs: Option<usize>,
    /// Learning-rate warm-up epochs [default: 0, or 5 for batches above 256].
    #[arg(long, value_name = "N")]
    warmup_epochs: Option<usize>,
    /// Scale the gradient down to this global L2 norm when it is longer; 0 turns clipping off.
    #[arg(long, value_name = "NORM")]
    clip_grad_norm: Option<f64>,
    /// Stop (with a checkpoint) after this many optimiser steps.
    #[arg(long, value_name = "N")]
    max_steps: Option<usize>,
    /// Seed of the initialisation, data order and augmentation [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// The run directory [default: runs/MODEL-STRATEGY].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in --out from its latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// Print results.json to stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// The recipe's starting point as JSON.
fn base(recipe: RecipeArg) -> Value {
    let mut config = json!({
        "model": {"arch": "resnet20", "bits": [8, 6, 5, 4]},
        "data": {"kind": "synthetic"},
        "strategy": {"kind": "joint"},
        "epochs": 2,
        "batch_size": 128,
    });
    if recipe == RecipeArg::Adabits {
        merge_json(
            &mut config,
            json!({"model": {
                "double_side": true,
                "quant": {
                    "weight_scheme": "centered",
                    "classifier_init_std": 1.0,
                    "linear_rescale_type": "fanin",
                    "linear_eval": "train_form",
                    "depthwise_bita_min": 4,
                },
            },
            "optim": {"clip_grad_norm": 5.0}}),
        );
    }
    config
}

/// The resolved configuration: recipe, then preset, then flags.
pub(crate) fn resolve(args: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut config = base(args.recipe);
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: cannot read the preset", path.display()))?;
        let preset: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        merge_json(&mut config, preset);
    }
    let mut set = |patch: Value| merge_json(&mut config, patch);
    if let Some(model) = &args.model {
        let arch: Architecture = model.parse().map_err(anyhow::Error::msg)?;
        set(json!({"model": {"arch": arch.to_string()}}));
    }
    if let Some(w) = args.width {
        set(json!({"model": {"width_mult": w}}));
    }
    if let Some(bits) = &args.bits {
        set(json!({"model": {"bits": bits}}));
    }
    if args.shared_alpha {
        set(json!({"model": {"quant": {"switchable_alpha": false}}}));
    }
    if args.shared_bn {
        set(json!({"model": {"quant": {"bn": "shared"}}}));
    }
    if let Some(s) = args.weight_scheme {
        set(json!({"model": {"quant": {"weight_scheme": s}}}));
    }
    if let Some(s) = args.act_scheme {
        set(json!({"model": {"quant": {"act_scheme": s}}}));
    }
    if let Some(d) = args.dataset {
        let kind = match d {
            DatasetArg::Synthetic => "synthetic",
            DatasetArg::Cifar10 => "cifar10",
            DatasetArg::Cifar100 => "cifar100",
            DatasetArg::Imagefolder => "image_folder",
        };
        // A new kind replaces the whole data section.
        if let Some(o) = config.as_object_mut() {
            o.insert("data".into(), json!({"kind": kind}));
        }
    }
    let kind = config["data"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    match (&args.data_dir, kind.as_str()) {
        (Some(dir), "synthetic") => anyhow::bail!(
            "--data-dir {} is given but the dataset is synthetic\nhint: add --dataset cifar10, cifar100 or imagefolder",
            dir.display()
        ),
        (Some(dir), _) => merge_json(&mut config, json!({"data": {"dir": dir}})),
        (None, "synthetic") => {}
        (None, _) if config["data"].get("dir").is_some() => {}
        (None, other) => anyhow::bail!(
            "the dataset {other} needs --data-dir DIR\nhint: or use --dataset synthetic, which needs no download"
        ),
    }
    let mut set = |patch: Value| merge_json(&mut config, patch);
    if let Some(s) = args.strategy {
        let strategy = match s {
            StrategyArg::Individual => json!({"kind": "individual"}),
            StrategyArg::Joint => json!({"kind": "joint", "distill": args.distill}),
            StrategyArg::Direct => json!({"kind": "direct"}),
            StrategyArg::Progressive => {
                json!({"kind": "progressive", "low_to_high": args.low_to_high})
            }
        };
        set(json!({ "strategy": strategy }));
    } else {
        if args.distill {
            set(json!({"strategy": {"distill": true}}));
        }
        if args.low_to_high {
            set(json!({"strategy": {"low_to_high": true}}));
        }
    }
    for (key, value) in [
        ("epochs", args.epochs.map(|v| json!(v))),
        ("batch_size", args.batch_size.map(|v| json!(v))),
        ("max_steps", args.max_steps.map(|v| json!(v))),
        ("fp_epochs", args.fp_epochs.map(|v| json!(v))),
        ("seed", args.seed.map(|v| json!(v))),
    ] {
        if let Some(v) = value {
            set(json!({ key: v }));
        }
    }
    if let Some(lr) = args.lr {
        set(json!({"optim": {"lr": lr}}));
    }
    if let Some(wd) = args.weight_decay {
        set(json!({"optim": {"weight_decay": wd}}));
    }
    if let Some(w) = args.warmup_epochs {
        set(json!({"optim": {"warmup_epochs": w}}));
    }
    if let Some(norm) = args.clip_grad_norm {
        let value = if norm == 0.0 {
            Value::Null
        } else {
            json!(norm)
        };
        set(json!({"optim": {"clip_grad_norm": value}}));
    }
    match args.schedule {
        Some(ScheduleArg::Cosine) => set(json!({"optim": {"schedule": {"kind": "cosine"}}})),
        Some(ScheduleArg::Constant) => set(json!({"optim": {"schedule": {"kind": "constant"}}})),
        Some(ScheduleArg::Multistep) => {
            let milestones = args.milestones.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "--schedule multistep needs --milestones\nhint: e.g. --milestones 100,150"
                )
            })?;
            set(json!({"optim": {"schedule": {
                "kind": "multi_step", "milestones": milestones, "gamma": args.gamma.unwrap_or(0.1)
            }}}));
        }
        None => {}
    }
    // The recipe's full-precision stage is as long as the training that follows it, unless
    // the preset or --fp-epochs says otherwise.
    if args.recipe == RecipeArg::Adabits
        && config.get("fp_epochs").is_none()
        && let Some(epochs) = config.get("epochs").cloned()
    {
        merge_json(&mut config, json!({ "fp_epochs": epochs }));
    }
    let source = args
        .config
        .as_ref()
        .map_or("the flags".to_string(), |p| p.display().to_string());
    serde_json::from_value(config).with_context(|| format!("{source}: invalid configuration"))
}

/// `adabits train`.
pub(crate) fn run_train(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let config = resolve(&args)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs").join(format!("{}-{}", config.model.arch, config.strategy.name()))
    });
    let run_dir = RunDir::new(&out);
    if !args.resume && run_dir.is_run() {
        anyhow::bail!(
            "{} already holds a run\nhint: pass --resume to continue it, or another --out",
            out.display()
        );
    }
    if args.resume && !run_dir.has_checkpoint() {
        anyhow::bail!(
            "{} has no checkpoint to resume from\nhint: check --out, or drop --resume to start a new run",
            out.display()
        );
    }
    let mut options = RunOptions::new(&out);
    options.resume = args.resume;
    crate::signals::stop_on_ctrl_c(options.stop.clone())?;
    if !args.json {
        eprintln!(
            "training {} {} on {} ({}, {} epochs{}) on {}; recipe: {}; run directory {}",
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
            args.device,
            match args.recipe {
                RecipeArg::Adabits =>
                    "adabits (full-precision stage first; centered weights; classifier N(0, 1), rescaled by its fan-in; gradient clipped to norm 5; see docs/recipe.md)",
                RecipeArg::Official => "official (parity; collapses from a random start)",
            },
            out.display()
        );
    }
    let mut progress = crate::progress::TerminalProgress::new(config.stage_count());
    let results = train(config, &args.device.device(), &options, &mut progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        match results.status {
            RunStatus::Completed => {}
            RunStatus::StepLimit => println!("stopped at the step limit; continue with --resume"),
            RunStatus::Interrupted => println!("interrupted; continue with --resume"),
        }
        for evaluation in &results.evaluations {
            println!("{}", evaluation.label);
            print_results(evaluation.bits.iter().map(|(b, r)| (b.clone(), r)));
        }
        println!(
            "{} steps, {:.0} training images/s, {:.1} s; results in {}",
            results.steps,
            results.train_images_per_second,
            results.wall_seconds,
            run_dir.results_path().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one table row per bit-width: top-1, top-5, loss, GBitOPs and bytes.
pub(crate) fn print_results<'a>(rows: impl IntoIterator<Item = (String, &'a BitResult)>) {
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>10} {:>12}",
        "bits", "top-1", "top-5", "loss", "GBitOPs", "bytes"
    );
    for (bits, r) in rows {
        println!(
            "{bits:>6} {:>7.2}% {:>7.2}% {:>8.4} {:>10.4} {:>12.0}",
            r.top1, r.top5, r.loss, r.gbitops, r.bytes
        );
    }
}

/// The flags of `adabits profile`.
#[derive(Debug, Args)]
pub(crate) struct ProfileArgs {
    /// The model (resnet20 … mobilenet_v2).
    #[arg(long, default_value = "mobilenet_v1")]
    model: String,
    /// The bit-widths.
    #[arg(long, default_value = "8,6,5,4")]
    bits: BitWidths,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0)]
    width: f64,
    /// Output classes [default: 10 for CIFAR ResNets, 1000 otherwise].
    #[arg(long)]
    classes: Option<usize>,
    /// Input side [default: 32 for CIFAR ResNets, 224 otherwise].
    #[arg(long)]
    input: Option<usize>,
    /// Count the first layer at 32×32 bits (the paper's apparent accounting) instead of the
    /// official profiler's resolved bits.
    #[arg(long)]
    paper: bool,
    /// Also print every layer at the highest bit-width.
    #[arg(long)]
    layers: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// `adabits profile`.
pub(crate) fn run_profile(args: ProfileArgs) -> anyhow::Result<ExitCode> {
    let arch: Architecture = args.model.parse().map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        args.width > 0.0 && args.width.is_finite(),
        "--width must be a positive number, got {}",
        args.width
    );
    let cifar = matches!(arch, Architecture::CifarResNet(_));
    let classes = args.classes.unwrap_or(if cifar { 10 } else { 1000 });
    let side = args.input.unwrap_or(arch.default_input_size());
    let model = ModelConfig::new(arch, args.bits.clone())
        .with_width_mult(args.width)
        .with_num_classes(classes)
        .init(&burn::tensor::Device::flex());
    let shapes = model.layer_shapes([side, side]);
    let accounting = if args.paper {
        Accounting::PaperFirstLayerFullPrecision
    } else {
        Accounting::Official
    };
    let bits: Vec<_> = args
        .bits
        .iter()
        .chain([adabits_quant::BitWidth::FULL])
        .collect();
    let reports: Vec<_> = bits.iter().map(|&b| cost(&shapes, b, accounting)).collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "model": arch.to_string(), "width": args.width, "classes": classes,
                "input": side, "accounting": accounting, "reports": reports,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{arch} ×{} at {side}×{side}, {classes} classes ({accounting:?} accounting)",
        args.width
    );
    println!(
        "{:>5} {:>14} {:>12} {:>10} {:>10}",
        "bits", "MACs", "params", "GBitOPs", "MB"
    );
    for (b, r) in bits.iter().zip(&reports) {
        println!(
            "{:>5} {:>14} {:>12} {:>10.3} {:>10.3}",
            b.get(),
            r.macs,
            r.params,
            r.gbitops,
            r.size_mb
        );
    }
    if args.layers {
        let r = &reports[0];
        println!("\nlayers at {} bits", bits[0]);
        println!(
            "{:<28} {:>12} {:>5} {:>5} {:>10}",
            "layer", "MACs", "w", "a", "bytes"
        );
        for l in &r.layers {
            println!(
                "{:<28} {:>12} {:>5} {:>5} {:>10.0}",
                l.name, l.macs, l.bitw, l.bita, l.bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn resolved(flags: &[&str]) -> TrainConfig {
        let cli =
            Cli::try_parse_from(std::iter::once("train").chain(flags.iter().copied())).unwrap();
        resolve(&cli.train).unwrap()
    }

    #[test]
    fn the_recipe_sets_the_full_precision_stage_and_the_clip_and_flags_override_them() {
        let config = resolved(&["--epochs", "7"]);
        assert_eq!(config.fp_epochs, 7);
        assert_eq!(config.optim.clip_grad_norm, Some(5.0));
        assert_eq!(
            config.model.quant.depthwise_bita_min.map(|b| b.get()),
            Some(4)
        );
        let config = resolved(&["--epochs", "7", "--fp-epochs", "0", "--clip-grad-norm", "0"]);
        assert_eq!(config.fp_epochs, 0);
        assert_eq!(config.optim.clip_grad_norm, None);
        let config = resolved(&["--fp-epochs", "2", "--clip-grad-norm", "1.5"]);
        assert_eq!(config.fp_epochs, 2);
        assert_eq!(config.optim.clip_grad_norm, Some(1.5));
        // The official recipe has neither.
        let config = resolved(&["--recipe", "official", "--epochs", "7"]);
        assert_eq!(config.fp_epochs, 0);
        assert_eq!(config.optim.clip_grad_norm, None);
        assert_eq!(config.model.quant.depthwise_bita_min, None);
        let config = resolved(&["--warmup-epochs", "3"]);
        assert_eq!(config.optim.warmup_epochs, Some(3));
    }
}
