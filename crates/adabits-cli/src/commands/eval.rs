//! `adabits eval`: a run's checkpoint at every bit-width, optionally BatchNorm-calibrated.

use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::with_added_bits;
use adabits_quant::{BitWidth, BitWidths};
use adabits_train::data::Loader;
use adabits_train::{BitResult, calibrate, evaluate};
use clap::Args;
use serde_json::{Value, json};

use crate::output::{print_json, print_results};
use crate::run_args::RunArgs;

/// The flags of `adabits eval`.
#[derive(Debug, Args)]
pub(crate) struct Eval {
    #[command(flatten)]
    run: RunArgs,
    /// The bit-widths to evaluate [default: the run's]; one the model was not trained at runs
    /// with the BatchNorm and clipping levels of the nearest trained bit-width (the higher on a
    /// tie), as `adabits calibrate` starts from, re-estimated first with --calibrate.
    #[arg(long, value_name = "LIST")]
    bits: Option<BitWidths>,
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
    let bits: Vec<BitWidth> = args
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
        let model = if run.config.model.bits.position(b).is_some() {
            run.model.clone()
        } else {
            untrained.push(b);
            with_added_bits(&run.model, &run.config.model, b, &ad)?.0
        };
        let scores = match args.calibrate {
            Some(n) => {
                let model = calibrate(&model, b, &train, n, &ad)?;
                evaluate(&model, &[b], &val, &device)?
            }
            None => evaluate(&model, &[b], &val, &device)?,
        };
        let s = &scores[&b.get().to_string()];
        rows.push((b, BitResult::new(s, &shapes, b)));
    }
    if args.json {
        let results: Vec<Value> = rows
            .iter()
            .map(|(b, r)| {
                let mut v = json!(r);
                v["bits"] = json!(b.get());
                v
            })
            .collect();
        let out = json!({
            "run": args.run.checkpoint.display().to_string(),
            "checkpoint": run.checkpoint.display().to_string(),
            "calibration_batches": args.calibrate,
            "untrained_bits": untrained.iter().map(|b| b.get()).collect::<Vec<_>>(),
            "results": results,
        });
        print_json(&out)?;
    } else {
        println!(
            "{} {} on {} ({}), checkpoint {}{}",
            run.config.model.arch,
            run.config.model.bits,
            run.config.data.name(),
            run.config.strategy.name(),
            run.checkpoint.display(),
            args.calibrate.map_or(String::new(), |n| format!(
                ", BatchNorm calibrated on {n} batches"
            ))
        );
        print_results(rows.iter().map(|(b, r)| (b.get().to_string(), r)));
        for b in &untrained {
            println!(
                "{b} bits is not one the model was trained at: it ran with the BatchNorm and clipping levels of the nearest trained bit-width{}",
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
