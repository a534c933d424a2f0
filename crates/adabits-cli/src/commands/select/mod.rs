//! `adabits select`: the bit-width of an artifact that fits a budget, or with `--per-layer` a
//! precision per layer of a run's model (`per_layer`).

mod per_layer;

use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::{Artifact, Budget, select};
use adabits_train::Which;
use clap::Args;
use serde_json::json;

use crate::device::DeviceArg;
use crate::output::print_json;

/// The flags of `adabits select`.
#[derive(Debug, Args)]
pub(crate) struct Select {
    /// The artifact (its uniform bit-widths, from the table it holds).
    #[arg(long, value_name = "FILE", required_unless_present = "per_layer")]
    artifact: Option<PathBuf>,
    /// Search a precision per layer instead (within --max-bitops or --max-bytes): a greedy
    /// descent from every layer at the highest entry, each plan measured on training images
    /// with its BatchNorm re-estimated; writes the best plan found as a plan file (--out).
    /// Needs the run (--checkpoint), whose BatchNorm statistics the artifact keeps folded.
    #[arg(long)]
    per_layer: bool,
    /// With --per-layer: the run directory (what `adabits train --out` wrote).
    #[arg(
        long,
        value_name = "RUN",
        requires = "per_layer",
        conflicts_with = "artifact"
    )]
    checkpoint: Option<PathBuf>,
    /// With --per-layer: which of the run's checkpoints.
    #[arg(long, value_enum, default_value_t = Which::Best)]
    which: Which,
    /// With --per-layer: the data folder, if it moved since training.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// With --per-layer: the device to run on.
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// With --per-layer: training images each plan is measured on (a fixed random choice)
    /// [default: 2048, or half the training set if that is fewer].
    #[arg(long, value_name = "N", value_parser = crate::values::count, requires = "per_layer")]
    images: Option<usize>,
    /// With --per-layer: training batches BatchNorm is re-estimated on, for each plan.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = crate::values::count)]
    calibrate: usize,
    /// With --per-layer: how many of the best plans within the budget are measured again, on
    /// as many other training images with other calibration batches, to choose among (1: the
    /// search's best as measured).
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = crate::values::count)]
    confirm: usize,
    /// With --per-layer: where to write the best plan found (a plan file for `eval --plan`,
    /// `calibrate --plan`, `verify --plan`).
    #[arg(long, value_name = "FILE", requires = "per_layer")]
    out: Option<PathBuf>,
    /// The largest model size in bytes (the official accounting, as in the artifact's table).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// The largest cost in GBitOPs per image.
    #[arg(long, value_name = "GBITOPS", value_parser = crate::values::non_negative)]
    max_bitops: Option<f64>,
    /// The lowest validation top-1 in percent (needs accuracies in the artifact).
    #[arg(long, value_name = "PERCENT", value_parser = crate::values::non_negative)]
    min_accuracy: Option<f64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `adabits select`.
pub(crate) fn run(args: Select) -> anyhow::Result<ExitCode> {
    if args.per_layer {
        return per_layer::run(&args);
    }
    anyhow::ensure!(
        args.max_bytes.is_some() || args.max_bitops.is_some() || args.min_accuracy.is_some(),
        "say what to select by\nhint: give --max-bytes, --max-bitops or --min-accuracy"
    );
    let path = args
        .artifact
        .as_ref()
        .expect("clap requires --artifact without --per-layer");
    let artifact = Artifact::read(path)?;
    let table = &artifact.header.table;
    if args.min_accuracy.is_some() && table.iter().all(|r| r.top1.is_none()) {
        anyhow::bail!(
            "{}: the artifact holds no accuracies\nhint: export it again without --no-eval",
            path.display()
        );
    }
    let budget = Budget {
        max_bytes: args.max_bytes,
        max_gbitops: args.max_bitops,
        min_top1: args.min_accuracy,
    };
    let selection = select(table, &budget);
    if args.json {
        let out = json!({
            "bits": selection.chosen.as_ref().map(|r| r.bits),
            "row": selection.chosen,
            "reasons": selection.reasons,
        });
        print_json(&out)?;
    } else {
        for reason in &selection.reasons {
            println!("  {reason}");
        }
        match &selection.chosen {
            Some(r) => println!(
                "selected: {} ({}, {:.4} GBitOPs, {:.0} bytes)",
                r.bits.describe(),
                r.top1
                    .map_or("accuracy unknown".into(), |t| format!("top-1 {t:.2} %")),
                r.gbitops,
                r.model_bytes
            ),
            None => println!("no entry of the artifact's list fits"),
        }
    }
    Ok(if selection.chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
