//! `adabits profile`: a model's cost at every bit-width, without training.

use std::process::ExitCode;

use adabits_models::{Accounting, Architecture, ModelConfig, OpKind, cost};
use adabits_quant::BitWidths;
use clap::Args;
use serde_json::json;

use crate::output::print_json;

/// The flags of `adabits profile`.
#[derive(Debug, Args)]
pub(crate) struct Profile {
    /// The model (resnet20 … mobilenet_v2), as `adabits train` defaults to.
    #[arg(long, default_value = "resnet20")]
    model: Architecture,
    /// The entries: bit-widths, or wWaA pairs such as 8,w4a8,4 (BitOPs = MACs·b_w·b_a per
    /// layer).
    #[arg(long, default_value = "8,6,5,4")]
    bits: BitWidths,
    /// Width multiplier.
    #[arg(long, default_value_t = 1.0, value_parser = crate::values::positive)]
    width: f64,
    /// Output classes [default: 10 for CIFAR ResNets, 1000 otherwise].
    #[arg(long, value_parser = crate::values::count)]
    classes: Option<usize>,
    /// Input side [default: 32 for CIFAR ResNets, 224 otherwise].
    #[arg(long, value_parser = crate::values::input_side)]
    input: Option<usize>,
    /// Count the first layer at 32×32 bits (the paper's apparent accounting) instead of the
    /// official profiler's resolved bits.
    #[arg(long)]
    paper: bool,
    /// Also print every layer at the highest bit-width (or under --plan).
    #[arg(long)]
    layers: bool,
    /// A precision plan (JSON: a default and bit-widths by official layer name or `*`
    /// pattern, docs/decisions/0002-precisions-and-plans.md): its cost, each layer at its own
    /// bit-widths, as one more row.
    #[arg(long, value_name = "FILE")]
    plan: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// `adabits profile`.
pub(crate) fn run(args: Profile) -> anyhow::Result<ExitCode> {
    let arch = args.model;
    let cifar = matches!(arch, Architecture::CifarResNet(_));
    let classes = args.classes.unwrap_or(if cifar { 10 } else { 1000 });
    let side = args.input.unwrap_or(arch.default_input_size());
    let config = ModelConfig::new(arch, args.bits.clone())
        .with_width_mult(args.width)
        .with_num_classes(classes);
    let device = burn::tensor::Device::flex();
    adabits_train::fits_in_memory(&config, &device, 4)
        .map_err(|e| anyhow::anyhow!("--width {}: {e}", args.width))?;
    let model = config.init(&device);
    let shapes = model.layer_shapes([side, side]);
    let accounting = if args.paper {
        Accounting::PaperFirstLayerFullPrecision
    } else {
        Accounting::Official
    };
    let bits: Vec<_> = args
        .bits
        .iter()
        .chain([adabits_quant::BitWidth::FULL.into()])
        .collect();
    let reports: Vec<_> = bits.iter().map(|&b| cost(&shapes, b, accounting)).collect();
    let plan = match &args.plan {
        Some(path) => {
            let resolved = crate::plan_file::read_plan(path, &model, &args.bits)?;
            let c = resolved.cost(&shapes, accounting);
            Some((resolved, c))
        }
        None => None,
    };
    if args.json {
        // Each report with its entry (a report's own `bits` is 0 for a wWaA entry).
        let entries: Vec<_> = bits
            .iter()
            .zip(&reports)
            .map(|(b, r)| {
                let mut v = json!(r);
                v["entry"] = json!(b);
                v
            })
            .collect();
        let plan = plan.as_ref().map(|(resolved, report)| {
            let layers: Vec<_> = resolved
                .layers
                .iter()
                .map(|(name, at)| json!({"layer": name, "entry": at.entry, "precision": at.precision}))
                .collect();
            json!({"report": report, "layers": layers})
        });
        print_json(&json!({
            "model": arch.to_string(), "width": args.width, "classes": classes,
            "input": side, "accounting": accounting, "reports": entries, "plan": plan,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{arch} ×{} at {side}×{side}, {classes} classes, {accounting} accounting",
        args.width
    );
    println!(
        "{:>5} {:>14} {:>12} {:>10} {:>10}",
        "bits", "MACs", "params", "GBitOPs", "MB"
    );
    for (b, r) in bits.iter().zip(&reports) {
        println!(
            "{:>5} {:>14} {:>12} {:>10.3} {:>10.3}",
            b.to_string(),
            r.macs,
            r.params,
            r.gbitops,
            r.size_mb
        );
    }
    if let Some((_, r)) = &plan {
        println!(
            "{:>5} {:>14} {:>12} {:>10.3} {:>10.3}",
            "plan", r.macs, r.params, r.gbitops, r.size_mb
        );
    }
    if args.layers {
        let (r, official): (_, Vec<&str>) = match &plan {
            Some((resolved, r)) => {
                println!("\nlayers under the plan");
                (r, resolved.layers.iter().map(|(n, _)| n.as_str()).collect())
            }
            None => {
                println!("\nlayers at {}", bits[0].describe());
                (&reports[0], Vec::new())
            }
        };
        println!(
            "{:<28} {:>12} {:>5} {:>5} {:>10}",
            "layer", "MACs", "w", "a", "bytes"
        );
        let mut names = official.into_iter();
        for l in &r.layers {
            // Under a plan, the quantized layers go by the official names the plan uses.
            let name = match l.kind {
                OpKind::AvgPool => None,
                _ => names.next(),
            };
            println!(
                "{:<28} {:>12} {:>5} {:>5} {:>10.0}",
                name.unwrap_or(&l.name),
                l.macs,
                l.bitw,
                l.bita,
                l.bytes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
