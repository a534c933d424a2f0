//! `adabits info`: what a run directory, a checkpoint file or an artifact holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::StateDict;
use adabits_train::{RunDir, Which};
use clap::Args;
use serde_json::{Value, json};

use crate::output::print_json;

/// A JSON value as text, strings without their quotes, lists as `a,b,c`.
fn t(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(t).collect::<Vec<_>>().join(","),
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
                    "  {}: top-1 {}, {:.4} GBitOPs, {:.0} model bytes",
                    r.bits.describe(),
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
        // What the keys say, in the official layout (`…bn.N.…`) or a checkpoint's own
        // (`…entries.N.…`): weight tensors, BatchNorm copies per layer (one per bit-width when
        // switchable) and clipping levels per layer (one per bit-width with S-CL).
        let official = dict.keys().any(|k| k.contains(".bn."));
        let ours = dict.keys().any(|k| k.contains(".entries."));
        let marker = if official { ".bn." } else { ".entries." };
        let layout = match (official, ours) {
            (true, _) => "official",
            (false, true) => "adabits checkpoint",
            // torchvision's, or any state dict with plain BatchNorms: a full-precision model.
            (false, false) => "plain (one BatchNorm per layer, e.g. torchvision)",
        };
        // What `adabits train --init` reads a state dict as (a checkpoint file of a run is
        // started from through its run directory).
        let init_as = (!ours).then(|| match adabits_train::state_dict_source(&dict) {
            adabits_train::InitSource::OfficialAdaptive => "adaptive",
            _ => "full-precision",
        });
        let weights = dict
            .keys()
            .filter(|k| k.ends_with(".weight") && dict.get(k).is_some_and(|t| t.shape.len() > 1))
            .count();
        let bn_copies = dict.indexed_copies(marker);
        let alpha_levels = dict
            .keys()
            .filter(|k| k.ends_with(".alpha"))
            .filter_map(|k| dict.get(k).map(|t| t.values.len()))
            .max();
        // A checkpoint folder of a run: its training state and the run's model.
        let folder = path.parent();
        let state: Option<Value> = folder
            .and_then(|f| std::fs::read_to_string(f.join("state.json")).ok())
            .and_then(|t| serde_json::from_str(&t).ok());
        let run_dir = folder
            .and_then(|f| f.parent())
            .and_then(|f| f.parent())
            .filter(|r| RunDir::new(r).is_run());
        let config = run_dir.and_then(|r| RunDir::new(r).read_config_json().ok());
        let out = json!({
            "file": path.display().to_string(),
            "bytes": std::fs::metadata(path).map(|m| m.len()).ok(),
            "tensors": dict.len(),
            "elements": elements,
            "layout": layout,
            "init_as": init_as,
            "weight_tensors": weights,
            "batch_norm_copies": bn_copies,
            "clipping_levels": alpha_levels,
            "run": run_dir.map(|r| r.display().to_string()),
            "model": config.as_ref().map(|c| c["model"].clone()),
            "state": state.as_ref().map(|s| json!({
                "stage": s["stage"], "epoch": s["epoch"], "batch": s["batch"], "step": s["step"],
            })),
            "keys": dict.keys().collect::<Vec<_>>(),
        });
        if args.json {
            print_json(&out)?;
        } else {
            println!(
                "{}: {} tensors, {elements} values, {} bytes",
                path.display(),
                dict.len(),
                out["bytes"]
            );
            println!(
                "  {} layout: {weights} weight tensors; {} BatchNorm copies and {} clipping levels per layer (one per bit-width when switchable)",
                out["layout"].as_str().unwrap_or_default(),
                bn_copies.map_or("no".into(), |n| n.to_string()),
                alpha_levels.map_or("no".into(), |n| n.to_string()),
            );
            if let Some(kind) = init_as {
                println!(
                    "  `adabits train --init` reads it as {} {kind} checkpoint{}",
                    if kind == "adaptive" { "an" } else { "a" },
                    if kind == "adaptive" {
                        " (one BatchNorm copy per entry of the list)"
                    } else {
                        " (its BatchNorm and clipping level spread to every entry)"
                    }
                );
            }
            if let (Some(run), Some(c)) = (run_dir, &config) {
                println!(
                    "  a checkpoint of run {}: model {} bits {} width {}",
                    run.display(),
                    t(&c["model"]["arch"]),
                    t(&c["model"]["bits"]),
                    t(&c["model"]["width_mult"])
                );
            }
            match &state {
                Some(s) => println!(
                    "  training state beside it: stage {}, epoch {}, batch {}, step {}",
                    s["stage"], s["epoch"], s["batch"], s["step"]
                ),
                None if run_dir.is_some() => {
                    println!("  no training state beside it (a model written by calibrate)")
                }
                None => {}
            }
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
    let held_out = config["val_split"].as_u64().unwrap_or(0) as usize;
    println!(
        "  epochs scored, and best chosen, on {}",
        adabits_train::Selection::of_split(held_out)
    );
    if let Some(decay) = config["ema_decay"].as_f64() {
        println!(
            "  keeps a moving average of the weights (decay {decay}; read it with --which ema)"
        );
    }
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
            for (b, v) in crate::output::highest_first(&r.bits) {
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
