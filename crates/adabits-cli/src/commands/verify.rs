//! `adabits verify`: an artifact against the checkpoint it was exported from.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::{Artifact, Runtime};
use adabits_train::data::Loader;
use burn::module::Module;
use clap::Args;
use serde_json::json;

use crate::output::print_json;
use crate::run_args::RunArgs;

/// The flags of `adabits verify`.
#[derive(Debug, Args)]
pub(crate) struct Verify {
    /// The artifact.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// Largest relative logit difference allowed (relative to each image's largest logit).
    #[arg(long, default_value_t = 1e-4, value_parser = crate::values::non_negative)]
    tolerance: f64,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 256, value_parser = crate::values::count)]
    batch_size: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits verify`.
pub(crate) fn run(args: Verify) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = args.run.device.device();
    let artifact = Artifact::read(&args.artifact)?;
    let run = args.run.open(&device)?;
    let ours = serde_json::to_value(&artifact.header.model)?;
    let theirs = serde_json::to_value(&run.config.model)?;
    anyhow::ensure!(
        ours == theirs,
        "{}: the artifact's model configuration differs from the run's ({})\nhint: verify against the run the artifact was exported from",
        args.artifact.display(),
        args.run.checkpoint.join("config.json").display()
    );
    let model = run.model.valid();
    let data = args.run.data_of(&run)?;
    let (_, val_set) = data.open()?;
    let val = Loader::new(Arc::from(val_set), args.batch_size, false, run.config.seed);
    let mut runtime = Runtime::new(artifact, &device)?;
    let mut rows = Vec::new();
    let mut ok = true;
    for b in run.config.model.bits.iter() {
        runtime.set_bits(b)?;
        let (mut images, mut agree, mut worst) = (0usize, 0usize, 0f64);
        for batch in val.epoch(0, 0, &device) {
            let batch = batch?;
            let expected = model.forward(batch.images.clone(), b);
            let found = runtime.forward(batch.images);
            let classes = expected.dims()[1];
            let e: Vec<f64> = expected.into_data().iter::<f64>().collect();
            let f: Vec<f64> = found.into_data().iter::<f64>().collect();
            for (re, rf) in e.chunks(classes).zip(f.chunks(classes)) {
                images += 1;
                let arg = |r: &[f64]| {
                    (0..r.len())
                        .max_by(|&x, &y| r[x].total_cmp(&r[y]))
                        .unwrap_or(0)
                };
                if arg(re) == arg(rf) {
                    agree += 1;
                }
                let scale = re.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
                for (x, y) in re.iter().zip(rf) {
                    worst = worst.max((x - y).abs() / scale);
                }
            }
        }
        let pass = agree == images && worst <= args.tolerance;
        ok &= pass;
        rows.push(json!({
            "bits": b.get(), "images": images, "same_prediction": agree,
            "max_relative_difference": worst, "pass": pass,
        }));
    }
    if args.json {
        print_json(&json!({"pass": ok, "bits": rows}))?;
    } else {
        println!(
            "{:>6} {:>8} {:>16} {:>14}  result",
            "bits", "images", "same prediction", "max rel. diff"
        );
        for r in &rows {
            println!(
                "{:>6} {:>8} {:>16} {:>14.2e}  {}",
                r["bits"].as_u64().unwrap_or(0),
                r["images"].as_u64().unwrap_or(0),
                r["same_prediction"].as_u64().unwrap_or(0),
                r["max_relative_difference"].as_f64().unwrap_or(f64::NAN),
                if r["pass"] == true { "ok" } else { "FAILED" }
            );
        }
        println!(
            "{}",
            if ok {
                format!(
                    "the artifact reproduces the checkpoint at every bit-width (tolerance {:e})",
                    args.tolerance
                )
            } else {
                "the artifact does NOT reproduce the checkpoint".into()
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
