//! `adabits export`, `verify`, `select` and `calibrate`: the low-bit artifact and what is done
//! with it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::{Artifact, BitRow, Budget, Runtime, select, with_added_bits};
use adabits_quant::BitWidth;
use adabits_train::data::Loader;
use adabits_train::{BitResult, RunDir, SavedRun, calibrate, cross_entropy, evaluate};
use anyhow::Context;
use burn::module::Module;
use clap::Args;
use serde_json::json;

use crate::run_args::{RunArgs, data_of, open_run};

/// The flags of `adabits export`.
#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
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

/// The flags of `adabits verify`.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// The artifact.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    #[command(flatten)]
    run: RunArgs,
    /// Largest relative logit difference allowed (relative to each image's largest logit).
    #[arg(long, default_value_t = 1e-4)]
    tolerance: f64,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The flags of `adabits select`.
#[derive(Debug, Args)]
pub(crate) struct SelectArgs {
    /// The artifact.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The largest model size in bytes (the official accounting, as in the artifact's table).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<f64>,
    /// The largest cost in GBitOPs per image.
    #[arg(long, value_name = "GBITOPS")]
    max_bitops: Option<f64>,
    /// The lowest validation top-1 in percent (needs accuracies in the artifact).
    #[arg(long, value_name = "PERCENT")]
    min_accuracy: Option<f64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The flags of `adabits calibrate`.
#[derive(Debug, Args)]
pub(crate) struct CalibrateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The bit-width to calibrate; one the model was not trained at is added to its list, its
    /// BatchNorm and clipping levels first copied from the nearest trained bit-width.
    #[arg(long)]
    bits: BitWidth,
    /// Training batches over which the BatchNorm statistics are re-estimated.
    #[arg(long, default_value_t = 20)]
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

/// `adabits export`.
pub(crate) fn run_export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let device = args.run.device.device();
    let run = open_run(&args.run.checkpoint, args.run.which, &device)?;
    let model = run.model.valid();
    let data = data_of(&run, args.run.data_dir.as_ref())?;
    let (_, val_set) = data
        .open()
        .with_context(|| "the run's data is needed for the artifact's table (or give --no-eval)")?;
    let side = val_set.image_size();
    let mut top1 = HashMap::new();
    if !args.no_eval {
        let val = Loader::new(Arc::from(val_set), 256, false, run.config.seed);
        let bits: Vec<BitWidth> = run.config.model.bits.iter().collect();
        let scores = evaluate(&model, &bits, &val, &device)?;
        for b in &bits {
            if let Some(s) = scores.get(&b.get().to_string()) {
                top1.insert(b.get(), s.top1);
            }
        }
    }
    let source = Some(run.checkpoint.display().to_string());
    let artifact = Artifact::from_model(&model, &run.config.model, side, &top1, source)?;
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
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {} ({size} bytes; ideal {ideal} = {} code bytes for {} weights + 4 × {} scalars; overhead {overhead:.2} %)",
            args.out.display(),
            artifact.header.code_bytes,
            artifact.header.weights,
            artifact.header.scalar_count,
        );
        print_table(&artifact.header.table);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(table: &[BitRow]) {
    println!(
        "{:>6} {:>8} {:>10} {:>12}",
        "bits", "top-1", "GBitOPs", "model bytes"
    );
    for r in table {
        let top1 = r.top1.map_or("–".to_string(), |t| format!("{t:.2}%"));
        println!(
            "{:>6} {top1:>8} {:>10.4} {:>12.0}",
            r.bits, r.gbitops, r.model_bytes
        );
    }
}

/// `adabits verify`.
pub(crate) fn run_verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = args.run.device.device();
    let artifact = Artifact::read(&args.artifact)?;
    let run = open_run(&args.run.checkpoint, args.run.which, &device)?;
    let ours = serde_json::to_value(&artifact.header.model)?;
    let theirs = serde_json::to_value(&run.config.model)?;
    anyhow::ensure!(
        ours == theirs,
        "{}: the artifact's model configuration differs from the run's ({})\nhint: verify against the run the artifact was exported from",
        args.artifact.display(),
        args.run.checkpoint.join("config.json").display()
    );
    let model = run.model.valid();
    let data = data_of(&run, args.run.data_dir.as_ref())?;
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
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"pass": ok, "bits": rows}))?
        );
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

/// `adabits select`.
pub(crate) fn run_select(args: SelectArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.max_bytes.is_some() || args.max_bitops.is_some() || args.min_accuracy.is_some(),
        "say what to select by\nhint: give --max-bytes, --max-bitops or --min-accuracy"
    );
    let artifact = Artifact::read(&args.artifact)?;
    let table = &artifact.header.table;
    if args.min_accuracy.is_some() && table.iter().all(|r| r.top1.is_none()) {
        anyhow::bail!(
            "{}: the artifact holds no accuracies\nhint: export it again without --no-eval",
            args.artifact.display()
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
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        for reason in &selection.reasons {
            println!("  {reason}");
        }
        match &selection.chosen {
            Some(r) => println!(
                "selected: {} bits ({}, {:.4} GBitOPs, {:.0} bytes)",
                r.bits,
                r.top1
                    .map_or("accuracy unknown".into(), |t| format!("top-1 {t:.2} %")),
                r.gbitops,
                r.model_bytes
            ),
            None => println!("no bit-width of the artifact fits"),
        }
    }
    Ok(if selection.chosen.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `adabits calibrate`.
pub(crate) fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batches > 0, "--batches must be at least 1");
    anyhow::ensure!(
        !args.bits.is_full_precision(),
        "--bits 32: calibration is for quantized bit-widths"
    );
    if let Some(out) = &args.out {
        anyhow::ensure!(
            !out.exists(),
            "{} already exists\nhint: choose a new --out folder",
            out.display()
        );
    }
    let device = args.run.device.device();
    let ad = device.clone().autodiff();
    let run = open_run(&args.run.checkpoint, args.run.which, &device)?;
    let data = data_of(&run, args.run.data_dir.as_ref())?;
    let (train_set, val_set) = data.open()?;
    let side = val_set.image_size();
    let val = Loader::new(Arc::from(val_set), 256, false, run.config.seed);
    let train = Loader::new(
        Arc::from(train_set),
        run.config.batch_size,
        true,
        run.config.seed,
    );
    let added = run.config.model.bits.position(args.bits).is_none();
    let (model, model_config) = if added {
        with_added_bits(&run.model, &run.config.model, args.bits, &ad)?
    } else {
        (run.model.clone(), run.config.model.clone())
    };
    let key = args.bits.get().to_string();
    let shapes = model.layer_shapes([side, side]);
    let before = evaluate(&model.valid(), &[args.bits], &val, &device)?;
    let mut calibrated = calibrate(&model, args.bits, &train, args.batches, &ad)?;
    let mut alpha_factor = None;
    if args.alpha {
        anyhow::ensure!(
            model_config.quant.switchable_alpha,
            "--alpha needs one clipping level per bit-width (S-CL); this model shares one across all bit-widths"
        );
        let position = model_config
            .bits
            .position(args.bits)
            .context("the bit-width is in the list")?;
        let mut best = (
            calibration_loss(&calibrated, args.bits, &train, args.batches, &device)?,
            1.0,
        );
        for factor in [0.5, 0.7, 1.4, 2.0] {
            let scaled = adabits_models::scale_alpha(&model, position, factor);
            let candidate = calibrate(&scaled, args.bits, &train, args.batches, &ad)?;
            let loss = calibration_loss(&candidate, args.bits, &train, args.batches, &device)?;
            if loss < best.0 {
                best = (loss, factor);
                calibrated = candidate;
            }
        }
        alpha_factor = Some(best.1);
    }
    let after = evaluate(&calibrated.valid(), &[args.bits], &val, &device)?;
    let before = BitResult::new(&before[&key], &shapes, args.bits);
    let after = BitResult::new(&after[&key], &shapes, args.bits);
    if let Some(out) = &args.out {
        write_run(out, &run, model_config, &calibrated)?;
    }
    if args.json {
        let out = json!({
            "bits": args.bits.get(),
            "added_to_list": added,
            "batches": args.batches,
            "alpha_factor": alpha_factor,
            "before": before,
            "after": after,
            "out": args.out.as_ref().map(|p| p.display().to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} bits{}: BatchNorm statistics re-estimated on {} training batches",
            args.bits,
            if added {
                " (not trained; added to the list, starting from the nearest trained bit-width)"
            } else {
                ""
            },
            args.batches
        );
        if let Some(f) = alpha_factor {
            println!(
                "clipping levels of {} bits scaled by {f} (the lowest training loss of 0.5, 0.7, 1, 1.4, 2)",
                args.bits
            );
        }
        println!("{:>8} {:>8} {:>8} {:>8}", "", "top-1", "top-5", "loss");
        for (label, r) in [("before", &before), ("after", &after)] {
            println!(
                "{label:>8} {:>7.2}% {:>7.2}% {:>8.4}",
                r.top1, r.top5, r.loss
            );
        }
        if added && args.bits > run.config.model.bits.max() {
            println!(
                "note: {} bits is above the trained list's highest; layers that run at the list's highest bit-width (the first and last layers of the CIFAR ResNets) now use it at every bit-width",
                args.bits
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
    bits: BitWidth,
    loader: &Loader,
    batches: usize,
    device: &burn::tensor::Device,
) -> anyhow::Result<f64> {
    let model = model.valid();
    let (mut sum, mut n) = (0.0, 0usize);
    for batch in loader.epoch(0, 0, device).take(batches) {
        let batch = batch?;
        let loss = cross_entropy(model.forward(batch.images, bits), batch.labels);
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
