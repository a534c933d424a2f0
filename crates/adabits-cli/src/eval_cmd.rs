//! `adabits eval` and `adabits info`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use adabits_models::StateDict;
use adabits_quant::{BitWidth, BitWidths};
use adabits_train::data::Loader;
use adabits_train::{BitResult, RunDir, Which, calibrate, evaluate};
use clap::Args;
use serde_json::{Value, json};

use crate::device::DeviceArg;
use crate::run_args::WhichArg;
use crate::train_cmd::print_results;

/// The flags of `adabits eval`.
#[derive(Debug, Args)]
pub(crate) struct EvalArgs {
    /// The run directory (what `adabits train --out` wrote).
    #[arg(value_name = "RUN")]
    run: PathBuf,
    /// Which checkpoint.
    #[arg(long, value_enum, default_value_t = WhichArg::Best)]
    checkpoint: WhichArg,
    /// The bit-widths to evaluate [default: the run's]; others run with the first bit-width's
    /// BatchNorm and clipping level unless --calibrate is given.
    #[arg(long, value_name = "LIST")]
    bits: Option<BitWidths>,
    /// Re-estimate each bit-width's BatchNorm statistics on N training batches first.
    #[arg(long, value_name = "N")]
    calibrate: Option<usize>,
    /// The data folder, if it moved since training.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Evaluation batch size.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits eval`.
pub(crate) fn run_eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let device = args.device.device();
    let run = crate::run_args::open_run(&args.run, args.checkpoint, &device)?;
    let data = crate::run_args::data_of(&run, args.data_dir.as_ref())?;
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
    let mut rows = Vec::new();
    for &b in &bits {
        let scores = match args.calibrate {
            Some(n) => {
                let model = calibrate(&run.model, b, &train, n, &device.clone().autodiff())?;
                evaluate(&model, &[b], &val, &device)?
            }
            None => evaluate(&run.model, &[b], &val, &device)?,
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
            "run": args.run.display().to_string(),
            "checkpoint": run.checkpoint.display().to_string(),
            "calibration_batches": args.calibrate,
            "results": results,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
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
    }
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as text, strings without their quotes.
fn t(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The flags of `adabits info`.
#[derive(Debug, Args)]
pub(crate) struct InfoArgs {
    /// A run directory, a checkpoint file (`.safetensors`) or an artifact (`.abq`).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `adabits info`.
pub(crate) fn run_info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let path = &args.path;
    if path.is_file() && path.extension().is_some_and(|e| e == "abq") {
        let artifact = adabits_models::Artifact::read(path)?;
        let h = &artifact.header;
        if args.json {
            println!("{}", serde_json::to_string_pretty(h)?);
        } else {
            println!(
                "{}: adabits artifact v{}, {} {} ({} weights, {} code bytes, {} scalars, CRC-32 {:08x} ok){}",
                path.display(),
                h.version,
                h.model.arch,
                h.model.bits,
                h.weights,
                h.code_bytes,
                h.scalar_count,
                h.crc32,
                h.source
                    .as_ref()
                    .map_or(String::new(), |s| format!(", from {s}"))
            );
            for r in &h.table {
                println!(
                    "  {} bits: top-1 {}, {:.4} GBitOPs, {:.0} model bytes",
                    r.bits,
                    r.top1.map_or("unknown".into(), |t| format!("{t:.2} %")),
                    r.gbitops,
                    r.model_bytes
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if path.is_file() {
        let dict = StateDict::read(path)?;
        let elements: usize = dict
            .keys()
            .map(|k| dict.get(k).map_or(0, |t| t.values.len()))
            .sum();
        let out = json!({
            "file": path.display().to_string(),
            "tensors": dict.len(),
            "elements": elements,
            "keys": dict.keys().collect::<Vec<_>>(),
        });
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!(
                "{}: {} tensors, {elements} values",
                path.display(),
                dict.len()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run = RunDir::new(path);
    anyhow::ensure!(
        run.is_run(),
        "{}: neither a checkpoint file nor a run directory (no config.json)\nhint: pass the folder `adabits train --out` wrote",
        path.display()
    );
    let config = run.read_config_json()?;
    let mut checkpoints = BTreeMap::new();
    for (which, name) in [(Which::Latest, "latest"), (Which::Best, "best")] {
        if let Some(info) = run.checkpoint_info(which)? {
            checkpoints.insert(name, info);
        }
    }
    let results = run.read_results();
    let epochs = run.epochs_recorded();
    let out = json!({
        "run": path.display().to_string(), "config": config, "checkpoints": checkpoints,
        "epochs_recorded": epochs, "results": results,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("run {}", path.display());
    println!(
        "  model {} bits {} width {}; data {}; strategy {}; {} epochs, batch {}",
        t(&config["model"]["arch"]),
        t(&config["model"]["bits"]),
        t(&config["model"]["width_mult"]),
        t(&config["data"]["kind"]),
        t(&config["strategy"]["kind"]),
        config["epochs"],
        config["batch_size"]
    );
    println!("  epochs recorded in metrics.jsonl: {epochs}");
    for (which, c) in &checkpoints {
        println!(
            "  checkpoint {which}: {} (stage {}, epoch {}, batch {}, step {})",
            c.name, c.stage, c.epoch, c.batch, c.step
        );
    }
    match &results {
        Some(r) => {
            println!("  results ({}):", t(&serde_json::to_value(r.status)?));
            for (b, v) in &r.bits {
                println!(
                    "    {b:>2} bits: top-1 {:.2}%, top-5 {:.2}%",
                    v.top1, v.top5
                );
            }
        }
        None => println!("  no results.json yet"),
    }
    Ok(ExitCode::SUCCESS)
}
