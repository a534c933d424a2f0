//! `adabits`: train, evaluate and deploy bit-switchable networks.
//!
//! `adabits train` trains a model (joint AdaBits training by default, on the built-in synthetic
//! data), `adabits profile` prints a model's cost per bit-width, `adabits check-numerics` runs
//! the specification's test vectors on any compiled backend, and `adabits bench` times the
//! quantizers; `adabits eval` and `adabits info` read a run back. `adabits export` writes the
//! low-bit artifact, `verify` checks it against its checkpoint, `select` picks a bit-width for
//! a budget and `calibrate` re-estimates BatchNorm for a bit-width, trained or not.

#![allow(clippy::print_stdout, clippy::print_stderr)]

mod bench;
mod deploy_cmd;
mod device;
mod eval_cmd;
mod malloc;
mod progress;
mod run_args;
mod signals;
mod train_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use adabits_quant::BitWidth;
use adabits_quant::conformance::{TestVectors, repo_vectors_path, run_all};
use clap::{Parser, Subcommand};

use crate::device::DeviceArg;

/// Train, evaluate and deploy networks that switch bit-width at run time (AdaBits).
#[derive(Debug, Parser)]
#[command(name = "adabits", version, about, long_about = None)]
struct Cli {
    /// The quantizers' implementation: the fused kernels where the backend has them (flex), or
    /// the composed tensor ops everywhere (the reference; same values up to the order of
    /// full-tensor sums).
    #[arg(long, global = true, value_enum, env = "ADABITS_KERNELS", default_value_t = KernelsArg::Fused)]
    kernels: KernelsArg,
    #[command(subcommand)]
    command: Command,
}

/// The `--kernels` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum KernelsArg {
    /// Fused kernels where the backend has them, composed ops elsewhere.
    Fused,
    /// Composed tensor ops on every backend.
    Composed,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a model at several bit-widths at once (AdaBits) or with another strategy.
    ///
    /// Writes the run directory: config.json (the resolved settings), metrics.jsonl (one line
    /// per epoch), results.json and checkpoints/ (latest and best). Ctrl-C saves a checkpoint
    /// and stops; --resume continues. Settings come from --recipe, then --config, then the
    /// flags.
    Train(Box<train_cmd::TrainArgs>),
    /// Print a model's parameters, MACs, BitOPs and size at every bit-width (no training).
    ///
    /// Uses the official profiler's rules (docs/method.md §10.3): the first conv at its resolved
    /// bits, average pooling at 32×32 bits, BatchNorm left out; --paper counts the first
    /// layer at 32×32 bits.
    Profile(train_cmd::ProfileArgs),
    /// Evaluate a trained run's checkpoint at every bit-width (or --bits), optionally after
    /// BatchNorm calibration.
    Eval(eval_cmd::EvalArgs),
    /// Show what a run directory, a checkpoint file or an artifact holds.
    Info(eval_cmd::InfoArgs),
    /// Write a run's model as one low-bit artifact (.abq) that serves every bit-width.
    ///
    /// The file holds the integer weight codes at each layer's highest bit-width (lower
    /// bit-widths follow by a right shift; the original scheme stores each), the scales,
    /// every bit-width's clipping levels and folded BatchNorm, and a table of accuracy,
    /// BitOPs and size per bit-width. Versioned and checksummed; see docs/artifact.md.
    Export(deploy_cmd::ExportArgs),
    /// Check that an artifact gives its checkpoint's predictions on every validation image, at
    /// every bit-width (exit status 1 if not).
    Verify(deploy_cmd::VerifyArgs),
    /// Pick the bit-width of an artifact that fits a size, cost or accuracy budget, and say why.
    ///
    /// Within --max-bytes and --max-bitops: the most accurate bit-width; with only
    /// --min-accuracy: the cheapest that reaches it. Exit status 1 if none fits.
    Select(deploy_cmd::SelectArgs),
    /// Re-estimate the BatchNorm statistics of one bit-width from N training batches and report
    /// the accuracy before and after; a bit-width the model was not trained at is added.
    Calibrate(deploy_cmd::CalibrateArgs),
    /// Check the quantizers against the specification's test vectors on a device.
    ///
    /// Runs every case of `testvectors.json` (forward values and gradients) on the chosen
    /// backend and prints one line per case. Exits with status 1 if any case fails.
    CheckNumerics {
        /// The test-vector file [default: the repository's testdata/testvectors.json].
        #[arg(long, value_name = "FILE")]
        vectors: Option<PathBuf>,
        /// The device to run on (one of the backends compiled into this binary).
        #[arg(long, value_enum, default_value_t = DeviceArg::default())]
        device: DeviceArg,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure the throughput of the quantizers and of a quantized conv layer's training step.
    ///
    /// Times the host's memory copy (the yardstick), PACT forward and forward+backward and
    /// weight quantization (GB/s of data read and written), and the forward and backward pass
    /// of a quantized 3x3 conv layer (images/s), synchronising the device inside every timed
    /// region. Reports the median of --iters runs. --kernels composed times the reference ops.
    Bench {
        /// The device to run on (one of the backends compiled into this binary).
        #[arg(long, value_enum, default_value_t = DeviceArg::default())]
        device: DeviceArg,
        /// The bit-width of weights and activations.
        #[arg(long, default_value = "4")]
        bits: BitWidth,
        /// The batch size of the activation workloads.
        #[arg(long, default_value_t = 32)]
        batch: usize,
        /// Timed iterations per workload (the median is reported).
        #[arg(long, default_value_t = 20)]
        iters: usize,
        /// Also time a training step and evaluation of this model (e.g. resnet20).
        #[arg(long)]
        model: Option<String>,
        /// The model's bit-widths.
        #[arg(long, default_value = "8,6,5,4")]
        list: adabits_quant::BitWidths,
        /// The model's width multiplier.
        #[arg(long, default_value_t = 1.0)]
        width: f64,
        /// The model's input side [default: 32 for CIFAR ResNets, 224 otherwise].
        #[arg(long)]
        input: Option<usize>,
        /// Print the results as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    adabits_quant::set_kernels(match cli.kernels {
        KernelsArg::Fused => adabits_quant::Kernels::Fused,
        KernelsArg::Composed => adabits_quant::Kernels::Composed,
    });
    match cli.command {
        Command::Train(args) => train_cmd::run_train(*args),
        Command::Profile(args) => train_cmd::run_profile(args),
        Command::Eval(args) => eval_cmd::run_eval(args),
        Command::Info(args) => eval_cmd::run_info(args),
        Command::Export(args) => deploy_cmd::run_export(args),
        Command::Verify(args) => deploy_cmd::run_verify(args),
        Command::Select(args) => deploy_cmd::run_select(args),
        Command::Calibrate(args) => deploy_cmd::run_calibrate(args),
        Command::CheckNumerics {
            vectors,
            device,
            json,
        } => check_numerics(vectors, device, json),
        Command::Bench {
            device,
            bits,
            batch,
            iters,
            model,
            list,
            width,
            input,
            json,
        } => {
            anyhow::ensure!(iters > 0, "--iters must be at least 1");
            let mut results = bench::run(&device.device(), bits, batch, iters)?;
            if let Some(model) = model {
                let arch: adabits_models::Architecture =
                    model.parse().map_err(anyhow::Error::msg)?;
                let config = adabits_models::ModelConfig::new(arch, list).with_width_mult(width);
                let side = input.unwrap_or(arch.default_input_size());
                results.extend(bench::run_model(
                    &device.device(),
                    &config,
                    batch,
                    side,
                    iters,
                )?);
            }
            if json {
                let out = serde_json::json!({ "device": device.to_string(), "results": results });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("device: {device}");
                println!(
                    "{:<52} {:>10} {:>14}",
                    "workload", "median ms", "throughput"
                );
                for m in &results {
                    println!(
                        "{:<52} {:>10.3} {:>9.1} {}",
                        m.name, m.ms, m.throughput, m.unit
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_numerics(
    vectors: Option<PathBuf>,
    device_arg: DeviceArg,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = vectors.unwrap_or_else(repo_vectors_path);
    let vectors = TestVectors::load(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nhint: pass --vectors FILE to point at the specification's testvectors.json"
        )
    })?;
    let device = device_arg.device();
    let start = Instant::now();
    let reports = run_all(&vectors, &device);
    let seconds = start.elapsed().as_secs_f64();
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if json {
        let cases: Vec<serde_json::Value> = reports
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name,
                    "passed": r.passed(),
                    "error": r.error,
                    "checks": r.checks.iter().map(|c| serde_json::json!({
                        "what": c.what,
                        "max_abs_error": c.max_abs_error,
                        "failure": c.failure,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "vectors": path.display().to_string(),
            "device": device_arg.to_string(),
            "passed": reports.len() - failed,
            "failed": failed,
            "seconds": seconds,
            "cases": cases,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("test vectors: {}", path.display());
        println!("device:       {device_arg}");
        for report in &reports {
            println!("{report}");
        }
        println!(
            "{} passed, {failed} failed ({seconds:.2} s)",
            reports.len() - failed
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
                let config = crate::train_cmd::resolve(&args)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(config.epochs >= 150, "{}", path.display());
                count += 1;
            }
        }
        assert_eq!(count, 4);
    }
}
