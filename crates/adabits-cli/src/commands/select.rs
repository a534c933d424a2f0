//! `adabits select`: the bit-width of an artifact that fits a budget.

use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::{Artifact, Budget, select};
use clap::Args;
use serde_json::json;

use crate::output::print_json;

/// The flags of `adabits select`.
#[derive(Debug, Args)]
pub(crate) struct Select {
    /// The artifact.
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
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
        print_json(&out)?;
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
