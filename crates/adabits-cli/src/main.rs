//! `adabits`: train, evaluate and deploy bit-switchable networks.
//!
//! `adabits train` trains a model (joint AdaBits training by default, on the built-in synthetic
//! data), `adabits profile` prints a model's cost per bit-width, `adabits check-numerics` runs
//! the specification's test vectors on any compiled backend, and `adabits bench` times the
//! quantizers; `adabits eval` and `adabits info` read a run back. `adabits export` writes the
//! low-bit artifact, `verify` checks it against its checkpoint, `select` picks a bit-width for
//! a budget and `calibrate` re-estimates BatchNorm for a bit-width, trained or not.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod device;
mod malloc;
mod output;
mod plan_file;
mod progress;
mod run_args;
mod signals;
mod values;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::commands::{
    bench, calibrate, check_numerics, eval, export, info, predict, profile, select, train, verify,
};

/// Train, evaluate and deploy networks that switch bit-width at run time (AdaBits).
#[derive(Debug, Parser)]
#[command(name = "adabits", version, about, long_about = None)]
struct Cli {
    /// The quantizers' implementation: the fused kernels where the backend has them (flex), or
    /// the composed tensor ops everywhere (the reference; same values up to the order of
    /// full-tensor sums).
    #[arg(long, global = true, value_enum, env = "ADABITS_KERNELS", default_value_t = adabits_quant::Kernels::Fused)]
    kernels: adabits_quant::Kernels,
    /// CPU threads for the CPU backends, data loading and the integer runtime [default: every
    /// core, or RAYON_NUM_THREADS].
    #[arg(long, global = true, value_name = "N", value_parser = values::count)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model at several bit-widths at once (AdaBits) or with another strategy.
    ///
    /// Writes the run directory: config.json (the resolved settings), metrics.jsonl (one line
    /// per epoch), results.json and checkpoints/ (latest and best). Ctrl-C saves a checkpoint
    /// and stops; --resume continues. Settings come from --recipe, then --config, then the
    /// flags.
    Train(Box<train::Train>),
    /// Print a model's parameters, MACs, BitOPs and size at every bit-width (no training).
    ///
    /// Uses the official profiler's rules (docs/method.md §10.3): the first conv at its resolved
    /// bits, average pooling at 32×32 bits, BatchNorm left out; --paper counts the first
    /// layer at 32×32 bits.
    Profile(profile::Profile),
    /// Evaluate a trained run's checkpoint at every bit-width (or --bits), optionally after
    /// BatchNorm calibration.
    Eval(eval::Eval),
    /// Show what a run directory, a checkpoint file or an artifact holds.
    Info(info::Info),
    /// Write a run's model as one low-bit artifact (.abq) that serves every bit-width.
    ///
    /// The file holds the integer weight codes at each layer's highest bit-width (lower
    /// bit-widths follow by a right shift; the original scheme stores each), the scales,
    /// every bit-width's clipping levels and folded BatchNorm, and a table of accuracy,
    /// BitOPs and size per bit-width. Versioned and checksummed; see docs/artifact.md.
    Export(export::Export),
    /// Check that an artifact gives its checkpoint's predictions on every validation image, at
    /// every bit-width, on the f32 runtime and the integer runtime (exit status 1 if not).
    Verify(verify::Verify),
    /// Classify images with an artifact's integer runtime at one bit-width.
    ///
    /// Reads PNG or JPEG images (or folders of them), CIFAR binary files and .npy float32
    /// arrays [N, 3, H, W] in [0, 1]; prints each image's most likely classes with their
    /// logits (--json: every logit), and the top-1 accuracy where the inputs carry labels.
    Predict(predict::Predict),
    /// Pick the bit-width of an artifact that fits a size, cost or accuracy budget, and say why.
    ///
    /// Within --max-bytes and --max-bitops: the most accurate bit-width; with only
    /// --min-accuracy: the cheapest that reaches it. Exit status 1 if none fits.
    Select(select::Select),
    /// Re-estimate the BatchNorm statistics of one bit-width from N training batches and report
    /// the accuracy before and after; a bit-width the model was not trained at is added.
    Calibrate(calibrate::Calibrate),
    /// Check the quantizers against the specification's test vectors on a device.
    ///
    /// Runs every case of `testvectors.json` (forward values and gradients) on the chosen
    /// backend and prints one line per case. Exits with status 1 if any case fails.
    CheckNumerics(check_numerics::CheckNumerics),
    /// Measure the throughput of the quantizers and of a quantized conv layer's training step.
    ///
    /// Times the host's memory copy (the yardstick), PACT forward and forward+backward and
    /// weight quantization (GB/s of data read and written), and the forward and backward pass
    /// of a quantized 3x3 conv layer (images/s), synchronising the device inside every timed
    /// region. Reports the median of --iters runs. --kernels composed times the reference ops.
    Bench(Box<bench::Bench>),
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", message(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, each cause once: a library error that already says
/// its cause (`path: No space left on device`) is not followed by the same text again.
fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    adabits_quant::set_kernels(cli.kernels);
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| anyhow::anyhow!("--threads {n}: cannot size the thread pool: {e}"))?;
    }
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Profile(args) => profile::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Info(args) => info::run(args),
        Command::Export(args) => export::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Predict(args) => predict::run(args),
        Command::Select(args) => select::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::CheckNumerics(args) => check_numerics::run(args),
        Command::Bench(args) => bench::run(*args),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    #[test]
    fn every_preset_resolves_to_a_valid_configuration() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let cli =
                    Cli::try_parse_from(["adabits", "train", "--config", path.to_str().unwrap()])
                        .unwrap();
                let Command::Train(args) = cli.command else {
                    unreachable!()
                };
                let config = crate::commands::train::resolve(&args)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(config.epochs >= 150, "{}", path.display());
                count += 1;
            }
        }
        assert_eq!(count, 4);
    }
}
