//! `adabits calibrate`: re-estimates one bit-width's BatchNorm (and clipping levels) of a run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::{Accounting, UNDER_PLAN, with_added_bits, with_plan, without_plan};
use adabits_quant::{At, Precision};
use adabits_train::data::Loader;
use adabits_train::{BitResult, RunDir, SavedRun, calibrate, cross_entropy, evaluate};
use anyhow::Context;
use burn::module::Module;
use clap::Args;
use serde_json::json;

use crate::output::print_json;
use crate::run_args::RunArgs;

/// The flags of `adabits calibrate`.
#[derive(Debug, Args)]
pub(crate) struct Calibrate {
    #[command(flatten)]
    run: RunArgs,
    /// The entry to calibrate (a bit-width such as 4, or wWaA such as w4a8); one the model
    /// was not trained at is added to its list, its BatchNorm and clipping levels first copied
    /// from the nearest trained entry.
    #[arg(long, required_unless_present = "plan")]
    bits: Option<Precision>,
    /// Calibrate for a precision plan instead (JSON: a default and bit-widths by official
    /// layer name or `*` pattern): each BatchNorm's entry that the plan runs is re-estimated
    /// with every layer at its plan entry; evaluate the result with `eval --plan`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bits", "alpha"])]
    plan: Option<PathBuf>,
    /// Training batches over which the BatchNorm statistics are re-estimated.
    #[arg(long, default_value_t = 20, value_parser = crate::values::count)]
    batches: usize,
    /// Also re-estimate the bit-width's clipping levels: try every α of that bit-width scaled
    /// by 0.5, 0.7, 1, 1.4 and 2 (BatchNorm recalibrated each time) and keep the factor with the
    /// lowest training loss on the calibration batches. Needs switchable clipping levels (S-CL).
    #[arg(long)]
    alpha: bool,
    /// Write the calibrated model as a new run directory (for `adabits export`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits calibrate`.
pub(crate) fn run(args: Calibrate) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batches > 0, "--batches must be at least 1");
    if let Some(out) = &args.out {
        anyhow::ensure!(
            !out.exists(),
            "{} already exists\nhint: choose a new --out folder",
            out.display()
        );
    }
    let device = args.run.device.device();
    let ad = device.clone().autodiff();
    let run = args.run.open(&device)?;
    let data = args.run.data_of(&run)?;
    let (train_set, val_set) = data.open()?;
    let side = val_set.image_size();
    let val = Loader::new(Arc::from(val_set), 256, false, run.config.seed);
    let train = Loader::new(
        Arc::from(train_set),
        run.config.batch_size,
        true,
        run.config.seed,
    );
    let Some(bits) = args.bits else {
        let path = args
            .plan
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("calibrate needs --bits B or --plan FILE"))?;
        return run_plan(&args, path, &run, (&train, &val), side);
    };
    anyhow::ensure!(
        !bits.weight.is_full_precision() && !bits.activation.is_full_precision(),
        "--bits {bits}: calibration is for quantized bit-widths, found 32 (full precision)"
    );
    let added = run.config.model.bits.position(bits).is_none();
    let (model, model_config) = if added {
        with_added_bits(&run.model, &run.config.model, bits, &ad)?
    } else {
        (run.model.clone(), run.config.model.clone())
    };
    let at: At = model_config
        .bits
        .find(bits)
        .context("the entry is in the list")?;
    let key = bits.to_string();
    let shapes = model.layer_shapes([side, side]);
    let before = evaluate(&model.valid(), &[at], &val, &device)?;
    let mut calibrated = calibrate(&model, at, &train, args.batches, &ad)?;
    let mut alpha_factor = None;
    if args.alpha {
        anyhow::ensure!(
            model_config.quant.switchable_alpha,
            "--alpha needs one clipping level per bit-width (S-CL); this model shares one across all bit-widths"
        );
        let position = at.entry;
        let mut best = (
            calibration_loss(&calibrated, at, &train, args.batches, &device)?,
            1.0,
        );
        for factor in [0.5, 0.7, 1.4, 2.0] {
            let scaled = adabits_models::scale_alpha(&model, position, factor);
            let candidate = calibrate(&scaled, at, &train, args.batches, &ad)?;
            let loss = calibration_loss(&candidate, at, &train, args.batches, &device)?;
            if loss < best.0 {
                best = (loss, factor);
                calibrated = candidate;
            }
        }
        alpha_factor = Some(best.1);
    }
    let after = evaluate(&calibrated.valid(), &[at], &val, &device)?;
    let before = BitResult::new(&before[&key], &shapes, bits);
    let after = BitResult::new(&after[&key], &shapes, bits);
    if let Some(out) = &args.out {
        write_run(out, &run, model_config, &calibrated)?;
    }
    if args.json {
        let out = json!({
            "bits": bits,
            "added_to_list": added,
            "batches": args.batches,
            "alpha_factor": alpha_factor,
            "before": before,
            "after": after,
            "out": args.out.as_ref().map(|p| p.display().to_string()),
        });
        print_json(&out)?;
    } else {
        println!(
            "{}{}: BatchNorm statistics re-estimated on {} training batches",
            bits.describe(),
            if added {
                " (not trained; added to the list, starting from the nearest trained bit-width)"
            } else {
                ""
            },
            args.batches
        );
        if let Some(f) = alpha_factor {
            println!(
                "clipping levels of {} scaled by {f} (the lowest training loss of 0.5, 0.7, 1, 1.4, 2)",
                bits.describe()
            );
        }
        println!("{:>8} {:>8} {:>8} {:>8}", "", "top-1", "top-5", "loss");
        for (label, r) in [("before", &before), ("after", &after)] {
            println!(
                "{label:>8} {:>7.2}% {:>7.2}% {:>8.4}",
                r.top1, r.top5, r.loss
            );
        }
        if added && bits.weight > run.config.model.bits.max().weight {
            println!(
                "note: {} is above the trained list's highest weight bit-width; layers that run at the list's highest (the first and last layers of the CIFAR ResNets) now use it at every bit-width",
                bits.describe()
            );
        }
        if let Some(out) = &args.out {
            println!(
                "wrote {} (export it with `adabits export --checkpoint {}`)",
                out.display(),
                out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The mean training loss of `model` at `bits` over the first `batches` batches of `loader`
/// (evaluation form).
fn calibration_loss(
    model: &adabits_models::Model,
    bits: At,
    loader: &Loader,
    batches: usize,
    device: &burn::tensor::Device,
) -> anyhow::Result<f64> {
    let model = model.valid();
    let (mut sum, mut n) = (0.0, 0usize);
    for batch in loader.epoch(0, 0, device).take(batches) {
        let batch = batch?;
        let loss = cross_entropy(model.forward_at(batch.images, bits), batch.labels);
        sum += loss.into_data().iter::<f64>().next().unwrap_or(f64::NAN);
        n += 1;
    }
    Ok(sum / n.max(1) as f64)
}

/// Writes `model` as a run directory that `load_run` reads: `config.json` and a checkpoint
/// `calibrated` that both pointers name.
fn write_run(
    out: &Path,
    run: &SavedRun,
    model_config: adabits_models::ModelConfig,
    model: &adabits_models::Model,
) -> anyhow::Result<()> {
    let mut config = run.config.clone();
    config.model = model_config;
    RunDir::new(out).write_model_only(&config, "calibrated", model)?;
    Ok(())
}

/// `adabits calibrate --plan FILE`: the BatchNorm entries a precision plan runs, re-estimated
/// under the plan.
fn run_plan(
    args: &Calibrate,
    path: &Path,
    run: &SavedRun,
    (train, val): (&Loader, &Loader),
    side: usize,
) -> anyhow::Result<ExitCode> {
    let device = args.run.device.device();
    let ad = device.clone().autodiff();
    let entries = &run.config.model.bits;
    let resolved = crate::plan_file::read_plan(path, &run.model, entries)?;
    let model = with_plan(&run.model, &resolved)?;
    let any = UNDER_PLAN;
    let key = any.precision.to_string();
    let before = evaluate(&model, &[any], val, &device)?;
    let calibrated = calibrate(&model, any, train, args.batches, &ad)?;
    let after = evaluate(&calibrated, &[any], val, &device)?;
    let c = resolved.cost(&run.model.layer_shapes([side, side]), Accounting::Official);
    let result = |s: &adabits_train::Scores| BitResult {
        top1: s.top1,
        top5: s.top5,
        loss: s.loss,
        gbitops: c.gbitops,
        bytes: c.size_bytes,
    };
    let (before, after) = (result(&before[&key]), result(&after[&key]));
    if let Some(out) = &args.out {
        write_run(
            out,
            run,
            run.config.model.clone(),
            &without_plan(&calibrated),
        )?;
    }
    if args.json {
        print_json(&json!({
            "plan": path.display().to_string(),
            "batches": args.batches,
            "before": before,
            "after": after,
            "out": args.out.as_ref().map(|p| p.display().to_string()),
        }))?;
    } else {
        println!(
            "plan {}: the BatchNorm entries it runs re-estimated under it on {} training batches",
            path.display(),
            args.batches
        );
        println!("{:>8} {:>8} {:>8} {:>8}", "", "top-1", "top-5", "loss");
        for (label, r) in [("before", &before), ("after", &after)] {
            println!(
                "{label:>8} {:>7.2}% {:>7.2}% {:>8.4}",
                r.top1, r.top5, r.loss
            );
        }
        if let Some(out) = &args.out {
            println!(
                "wrote {} (evaluate it with `adabits eval --checkpoint {} --plan {}`)",
                out.display(),
                out.display(),
                path.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
