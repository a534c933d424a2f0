//! `adabits export`: a run's model as one low-bit artifact.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::export_artifact;
use adabits_quant::At;
use adabits_train::data::Loader;
use adabits_train::evaluate;
use anyhow::Context;
use burn::module::Module;
use clap::Args;
use serde_json::json;

use crate::output::{print_artifact_table, print_json};
use crate::run_args::RunArgs;

/// The flags of `adabits export`.
#[derive(Debug, Args)]
pub(crate) struct Export {
    #[command(flatten)]
    run: RunArgs,
    /// The artifact file to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Leave the accuracies out of the artifact's table instead of evaluating every bit-width
    /// on the run's validation data.
    #[arg(long)]
    no_eval: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits export`.
pub(crate) fn run(args: Export) -> anyhow::Result<ExitCode> {
    let device = args.run.device.device();
    let run = args.run.open(&device)?;
    let model = run.model.valid();
    let data = args.run.data_of(&run)?;
    let (_, val_set) = data
        .open()
        .with_context(|| "the run's data is needed for the artifact's table (or give --no-eval)")?;
    let side = val_set.image_size();
    let mut top1 = HashMap::new();
    if !args.no_eval {
        let val = Loader::new(Arc::from(val_set), 256, false, run.config.seed);
        let bits: Vec<At> = run.config.model.bits.entries().collect();
        let scores = evaluate(&model, &bits, &val, &device)?;
        for at in &bits {
            if let Some(s) = scores.get(&at.precision.to_string()) {
                top1.insert(at.precision, s.top1);
            }
        }
    }
    let source = Some(run.checkpoint.display().to_string());
    let artifact = export_artifact(&model, &run.config.model, side, &top1, source)?;
    let size = artifact.write(&args.out)?;
    let ideal = artifact.header.ideal_bytes();
    let overhead = 100.0 * (size as f64 / ideal as f64 - 1.0);
    if args.json {
        let out = json!({
            "artifact": args.out.display().to_string(),
            "bytes": size,
            "ideal_bytes": ideal,
            "overhead_percent": overhead,
            "header": artifact.header,
        });
        print_json(&out)?;
    } else {
        println!(
            "wrote {} ({size} bytes; ideal {ideal} = {} code bytes for {} weights + 4 × {} scalars; overhead {overhead:.2} %)",
            args.out.display(),
            artifact.header.code_bytes,
            artifact.header.weights,
            artifact.header.scalar_count,
        );
        print_artifact_table(&artifact.header.table);
    }
    Ok(ExitCode::SUCCESS)
}
