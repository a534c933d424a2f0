//! `adabits info`: what a run directory, a checkpoint file or an artifact holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::StateDict;
use adabits_train::{RunDir, Which};
use clap::Args;
use serde_json::{Value, json};

use crate::output::print_json;

/// A JSON value as text, strings without their quotes.
fn t(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The flags of `adabits info`.
#[derive(Debug, Args)]
pub(crate) struct Info {
    /// A run directory, a checkpoint file (`.safetensors`) or an artifact (`.abq`).
    #[arg(value_name = "PATH")]
    path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `adabits info`.
pub(crate) fn run(args: Info) -> anyhow::Result<ExitCode> {
    let path = &args.path;
    if path.is_file() && path.extension().is_some_and(|e| e == "abq") {
        let artifact = adabits_models::Artifact::read(path)?;
        let h = &artifact.header;
        let model = adabits_models::artifact_model(&artifact, path)?;
        if args.json {
            print_json(h)?;
        } else {
            println!(
                "{}: adabits artifact v{}, {} {} ({} weights, {} code bytes, {} scalars, CRC-32 {:08x} ok){}",
                path.display(),
                h.version,
                model.arch,
                model.bits,
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
            print_json(&out)?;
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
        print_json(&out)?;
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
        match (c.stage, c.epoch, c.batch, c.step) {
            (Some(stage), Some(epoch), Some(batch), Some(step)) => println!(
                "  checkpoint {which}: {} (stage {stage}, epoch {epoch}, batch {batch}, step {step})",
                c.name
            ),
            _ => println!(
                "  checkpoint {which}: {} (a model without training state)",
                c.name
            ),
        }
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
