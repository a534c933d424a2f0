//! `adabits verify`: an artifact, on the f32 runtime and the integer runtime, against the
//! checkpoint it was exported from.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::{Artifact, Runtime};
use adabits_runtime::IntRuntime;
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
    /// Largest relative logit difference allowed for the f32 runtime (relative to each image's
    /// largest logit).
    #[arg(long, default_value_t = 1e-4, value_parser = crate::values::non_negative)]
    tolerance: f64,
    /// Largest relative logit difference allowed for the integer runtime, whose exact integer
    /// sums differ from the float model's by rounding, enough to flip a quantization level now
    /// and then.
    #[arg(long, default_value_t = 1e-3, value_parser = crate::values::non_negative)]
    int_tolerance: f64,
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
    // The integer runtime where it can run the artifact; where it cannot, say why.
    let (mut integer, int_note) = match IntRuntime::new(artifact.clone()) {
        Ok(int) => (Some(int), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut runtime = Runtime::new(artifact, &device)?;
    let mut rows = Vec::new();
    let mut ok = true;
    for b in run.config.model.bits.iter() {
        runtime.set_bits(b)?;
        if let Some(int) = &mut integer {
            int.set_bits(b.get())?;
        }
        let mut f32_check = Agreement::default();
        let mut int_check = Agreement::default();
        for batch in val.epoch(0, 0, &device) {
            let batch = batch?;
            let expected = model.forward(batch.images.clone(), b);
            let [n, _, h, w] = batch.images.dims();
            let pixels: Vec<f32> = batch.images.clone().into_data().iter::<f32>().collect();
            let found = runtime.forward(batch.images);
            let classes = expected.dims()[1];
            let e: Vec<f64> = expected.into_data().iter::<f64>().collect();
            let f: Vec<f64> = found.into_data().iter::<f64>().collect();
            f32_check.add(&e, &f, classes, args.tolerance);
            if let Some(int) = &integer {
                let logits = int.forward(&pixels, n, [h, w])?;
                let f: Vec<f64> = logits.iter().map(|&v| f64::from(v)).collect();
                int_check.add(&e, &f, classes, args.tolerance);
            }
        }
        let engines = [
            ("f32", Some(&f32_check), args.tolerance),
            (
                "int",
                integer.as_ref().map(|_| &int_check),
                args.int_tolerance,
            ),
        ];
        for (engine, check, tolerance) in engines {
            let Some(check) = check else { continue };
            let pass = check.agree == check.images && check.worst <= tolerance;
            ok &= pass;
            rows.push(json!({
                "bits": b.get(), "engine": engine, "images": check.images,
                "same_prediction": check.agree, "max_relative_difference": check.worst,
                "beyond_tolerance": check.beyond, "tolerance": tolerance, "pass": pass,
            }));
        }
    }
    if args.json {
        print_json(&json!({"pass": ok, "bits": rows, "int_not_run": int_note}))?;
    } else {
        println!(
            "{:>6} {:>6} {:>8} {:>16} {:>14} {:>10}  result",
            "bits", "engine", "images", "same prediction", "max rel. diff", "> 1e-4"
        );
        for r in &rows {
            println!(
                "{:>6} {:>6} {:>8} {:>16} {:>14.2e} {:>10}  {}",
                r["bits"].as_u64().unwrap_or(0),
                r["engine"].as_str().unwrap_or(""),
                r["images"].as_u64().unwrap_or(0),
                r["same_prediction"].as_u64().unwrap_or(0),
                r["max_relative_difference"].as_f64().unwrap_or(f64::NAN),
                r["beyond_tolerance"].as_u64().unwrap_or(0),
                if r["pass"] == true { "ok" } else { "FAILED" }
            );
        }
        if let Some(note) = &int_note {
            println!("integer runtime not checked: {note}");
        }
        println!(
            "{}",
            if ok {
                format!(
                    "the artifact reproduces the checkpoint at every bit-width (tolerance {:e}; integer runtime {:e})",
                    args.tolerance, args.int_tolerance
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

/// How an engine's logits compare with the checkpoint's.
#[derive(Debug, Default)]
struct Agreement {
    /// Images compared.
    images: usize,
    /// Images with the same predicted class.
    agree: usize,
    /// The largest difference relative to the image's largest logit.
    worst: f64,
    /// Images whose relative difference exceeds `--tolerance` (for the integer runtime: where
    /// a quantization level flipped).
    beyond: usize,
}

impl Agreement {
    /// Adds a batch: `expected` and `found` are `[n][classes]`.
    fn add(&mut self, expected: &[f64], found: &[f64], classes: usize, tolerance: f64) {
        let argmax = |r: &[f64]| {
            (0..r.len())
                .max_by(|&x, &y| r[x].total_cmp(&r[y]))
                .unwrap_or(0)
        };
        for (re, rf) in expected.chunks(classes).zip(found.chunks(classes)) {
            self.images += 1;
            if argmax(re) == argmax(rf) {
                self.agree += 1;
            }
            let scale = re.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
            let diff = re
                .iter()
                .zip(rf)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs() / scale));
            self.worst = self.worst.max(diff);
            if diff > tolerance {
                self.beyond += 1;
            }
        }
    }
}
