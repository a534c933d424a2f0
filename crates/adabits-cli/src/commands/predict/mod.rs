//! `adabits predict`: classify images with an artifact's integer runtime at one entry of its
//! list (a bit-width or a `wWaA` pair).

mod inputs;

use std::path::PathBuf;
use std::process::ExitCode;

use adabits_models::Artifact;
use adabits_runtime::{EntryBits, IntRuntime};
use clap::Args;
use serde::Serialize;

use crate::output::print_json;

/// The flags of `adabits predict`.
#[derive(Debug, Args)]
pub(crate) struct Predict {
    /// The artifact (`.abq`, written by `adabits export`).
    #[arg(long, value_name = "FILE")]
    artifact: PathBuf,
    /// The entry of the artifact's list to run at: a bit-width such as 4, or a weight and
    /// activation pair such as w4a8 [default: the artifact's highest].
    #[arg(long, value_name = "B|wWaA")]
    bits: Option<EntryBits>,
    /// Classes to show per image, most likely first.
    #[arg(long, default_value_t = 5, value_parser = crate::values::count)]
    top: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64, value_parser = crate::values::count)]
    batch_size: usize,
    /// Print JSON (every image's top classes and logits) instead of a line per image.
    #[arg(long)]
    json: bool,
    /// PNG or JPEG images or folders of them, CIFAR binary files (.bin, labels included), or
    /// .npy float32 arrays [N, 3, H, W] with values in [0, 1].
    #[arg(value_name = "INPUT", required = true)]
    inputs: Vec<PathBuf>,
}

/// One image's answer.
#[derive(Debug, Serialize)]
struct Prediction {
    /// The image: a file, or a file and `#index`.
    input: String,
    /// The most likely classes, most likely first.
    top: Vec<usize>,
    /// Their logits.
    top_logits: Vec<f32>,
    /// The label, where the input holds one.
    label: Option<usize>,
    /// Every class's logit (JSON only).
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<f32>>,
}

/// `adabits predict`.
pub(crate) fn run(args: Predict) -> anyhow::Result<ExitCode> {
    let artifact = Artifact::read(&args.artifact)?;
    let graph = &artifact.header.graph;
    let [side, width] = graph.input_size;
    anyhow::ensure!(
        side == width,
        "{}: the model's input is {side}×{width}; predict reads square images",
        args.artifact.display()
    );
    let channels = graph.in_channels;
    let mut runtime = IntRuntime::new(artifact)?;
    if let Some(bits) = args.bits {
        runtime
            .set_entry(bits)
            .map_err(|e| anyhow::anyhow!("--bits: {e}"))?;
    }
    let bits = runtime
        .entry()
        .expect("the runtime runs an entry, not a plan");
    let images = inputs::read(&args.inputs, side, channels)?;
    let per = channels * side * side;
    let mut predictions = Vec::with_capacity(images.len());
    for chunk in images.chunks(args.batch_size) {
        let pixels: Vec<f32> = chunk
            .iter()
            .flat_map(|i| i.pixels.iter().copied())
            .collect();
        debug_assert_eq!(pixels.len(), chunk.len() * per);
        let logits = runtime.forward(&pixels, chunk.len(), [side, side])?;
        let classes = logits.len() / chunk.len();
        for (input, logits) in chunk.iter().zip(logits.chunks(classes)) {
            let mut order: Vec<usize> = (0..classes).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            order.truncate(args.top);
            predictions.push(Prediction {
                input: input.name.clone(),
                top_logits: order.iter().map(|&c| logits[c]).collect(),
                top: order,
                label: input.label,
                logits: args.json.then(|| logits.to_vec()),
            });
        }
    }
    let labelled: Vec<&Prediction> = predictions.iter().filter(|p| p.label.is_some()).collect();
    let correct = labelled
        .iter()
        .filter(|p| p.top.first() == p.label.as_ref())
        .count();
    if args.json {
        print_json(&serde_json::json!({
            "artifact": args.artifact.display().to_string(),
            "bits": bits,
            "isa": runtime.isa().name(),
            "predictions": predictions,
            "labelled": labelled.len(),
            "top1_correct": correct,
        }))?;
    } else {
        for p in &predictions {
            let top: Vec<String> = p
                .top
                .iter()
                .zip(&p.top_logits)
                .map(|(c, l)| format!("{c} ({l:.3})"))
                .collect();
            let label = p.label.map_or(String::new(), |l| format!("  [label {l}]"));
            println!("{}: {}{label}", p.input, top.join(", "));
        }
        if !labelled.is_empty() {
            println!(
                "top-1: {correct} of {} labelled images ({:.2} %) at {}",
                labelled.len(),
                100.0 * correct as f64 / labelled.len() as f64,
                bits.describe()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
