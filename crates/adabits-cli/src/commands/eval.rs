//! `adabits eval`: a run's checkpoint at every bit-width, optionally BatchNorm-calibrated.

use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::{Accounting, UNDER_PLAN, with_added_bits, with_plan};
use adabits_quant::{BitWidths, Precision};
use adabits_train::data::Loader;
use adabits_train::{BitResult, calibrate, evaluate};
use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::output::{print_json, print_results};
use crate::run_args::RunArgs;

/// The flags of `adabits eval`.
#[derive(Debug, Args)]
pub(crate) struct Eval {
    #[command(flatten)]
    run: RunArgs,
    /// The entries to evaluate, bit-widths or wWaA pairs such as 8,w4a8,4 [default: the
    /// run's]; one the model was not trained at runs with the BatchNorm and clipping levels of
    /// the nearest trained entry (the higher on a tie), as `adabits calibrate` starts from,
    /// re-estimated first with --calibrate.
    #[arg(long, value_name = "LIST")]
    bits: Option<BitWidths>,
    /// A precision plan (JSON: a default and precisions by official layer name or `*`
    /// pattern, docs/decisions/0002-precisions-and-plans.md): evaluate the model with each
    /// layer at its own entry instead of the bit-widths; with --calibrate the BatchNorm
    /// entries the plan uses are re-estimated under it.
    #[arg(long, value_name = "FILE", conflicts_with = "bits")]
    plan: Option<std::path::PathBuf>,
    /// Re-estimate each bit-width's BatchNorm statistics on N training batches first.
    #[arg(long, value_name = "N", value_parser = crate::values::count)]
    calibrate: Option<usize>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    batch_size: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits eval`.
pub(crate) fn run(args: Eval) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = args.run.device.device();
    let run = args.run.open(&device)?;
    let data = args.run.data_of(&run)?;
    let (train_set, val_set) = data.open()?;
    let side = val_set.image_size();
    let val = Loader::new(Arc::from(val_set), args.batch_size, false, run.config.seed);
    let train = Loader::new(
        Arc::from(train_set),
        run.config.batch_size,
        true,
        run.config.seed,
    );
    if let Some(path) = &args.plan {
        return run_plan(&args, path, &run, (&train, &val), side);
    }
    let bits: Vec<Precision> = args
        .bits
        .as_ref()
        .unwrap_or(&run.config.model.bits)
        .iter()
        .collect();
    let shapes = run.model.layer_shapes([side, side]);
    let ad = device.clone().autodiff();
    let mut rows = Vec::new();
    let mut untrained = Vec::new();
    for &b in &bits {
        let (model, at) = match run.config.model.bits.find(b) {
            Some(at) => (run.model.clone(), at),
            None => {
                untrained.push(b);
                let (model, config) = with_added_bits(&run.model, &run.config.model, b, &ad)?;
                let at = config
                    .bits
                    .find(b)
                    .context("the added entry is in the list")?;
                (model, at)
            }
        };
        let scores = match args.calibrate {
            Some(n) => {
                let model = calibrate(&model, at, &train, n, &ad)?;
                evaluate(&model, &[at], &val, &device)?
            }
            None => evaluate(&model, &[at], &val, &device)?,
        };
        let s = &scores[&b.to_string()];
        rows.push((b, BitResult::new(s, &shapes, b)));
    }
    if args.json {
        let results: Vec<Value> = rows
            .iter()
            .map(|(b, r)| {
                let mut v = json!(r);
                v["bits"] = json!(b);
                v
            })
            .collect();
        let out = json!({
            "run": args.run.checkpoint.display().to_string(),
            "checkpoint": run.checkpoint.display().to_string(),
            "calibration_batches": args.calibrate,
            "untrained_bits": untrained,
            "results": results,
        });
        print_json(&out)?;
    } else {
        println!(
            "{}{}",
            crate::run_args::title(&run),
            args.calibrate.map_or(String::new(), |n| format!(
                ", BatchNorm calibrated on {n} batches"
            ))
        );
        print_results(rows.iter().map(|(b, r)| (b.to_string(), r)));
        for b in &untrained {
            println!(
                "{} is not one the model was trained at: it ran with the BatchNorm and clipping levels of the nearest trained entry{}",
                b.describe(),
                if args.calibrate.is_some() {
                    ", then re-estimated"
                } else {
                    " (add --calibrate N to re-estimate them)"
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `adabits eval --plan FILE`: the model with each layer at the plan's entry.
fn run_plan(
    args: &Eval,
    path: &std::path::Path,
    run: &adabits_train::SavedRun,
    (train, val): (&Loader, &Loader),
    side: usize,
) -> anyhow::Result<ExitCode> {
    let entries = &run.config.model.bits;
    let resolved = crate::plan_file::read_plan(path, &run.model, entries)?;
    let model = with_plan(&run.model, &resolved)?;
    let device = args.run.device.device();
    let ad = device.clone().autodiff();
    let any = UNDER_PLAN;
    let model = match args.calibrate {
        Some(n) => calibrate(&model, any, train, n, &ad)?,
        None => model,
    };
    let scores = evaluate(&model, &[any], val, &device)?;
    let s = &scores[&any.precision.to_string()];
    let c = resolved.cost(&run.model.layer_shapes([side, side]), Accounting::Official);
    let result = BitResult {
        top1: s.top1,
        top5: s.top5,
        loss: s.loss,
        gbitops: c.gbitops,
        bytes: c.size_bytes,
    };
    if args.json {
        let layers = crate::plan_file::layer_rows(&resolved, &c);
        print_json(&json!({
            "run": args.run.checkpoint.display().to_string(),
            "checkpoint": run.checkpoint.display().to_string(),
            "plan": path.display().to_string(),
            "calibration_batches": args.calibrate,
            "result": result,
            "layers": layers,
        }))?;
    } else {
        println!(
            "{}, plan {}{}",
            crate::run_args::title(run),
            path.display(),
            args.calibrate.map_or(String::new(), |n| format!(
                ", BatchNorm calibrated under the plan on {n} batches"
            ))
        );
        print_results(std::iter::once(("plan".to_string(), &result)));
    }
    Ok(ExitCode::SUCCESS)
}
