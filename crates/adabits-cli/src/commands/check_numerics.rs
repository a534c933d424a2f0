//! `adabits check-numerics`: the quantizers against the specification's test vectors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use adabits_quant::conformance::{TestVectors, repo_vectors_path, run_all};
use clap::Args;

use crate::device::DeviceArg;
use crate::output::print_json;

/// The flags of `adabits check-numerics`.
#[derive(Debug, Args)]
pub(crate) struct CheckNumerics {
    /// The test-vector file [default: the repository's testdata/testvectors.json].
    #[arg(long, value_name = "FILE")]
    vectors: Option<PathBuf>,
    /// The device to run on (one of the backends compiled into this binary).
    #[arg(long, value_enum, default_value_t = DeviceArg::default())]
    device: DeviceArg,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `adabits check-numerics`.
pub(crate) fn run(args: CheckNumerics) -> anyhow::Result<ExitCode> {
    let path = args.vectors.unwrap_or_else(repo_vectors_path);
    let vectors = TestVectors::load(&path).map_err(|e| {
        anyhow::anyhow!(
            "{e}\nhint: pass --vectors FILE to point at the specification's testvectors.json"
        )
    })?;
    let device = args.device.device();
    let start = Instant::now();
    let reports = run_all(&vectors, &device);
    let seconds = start.elapsed().as_secs_f64();
    let failed = reports.iter().filter(|r| !r.passed()).count();
    if args.json {
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
        print_json(&serde_json::json!({
            "vectors": path.display().to_string(),
            "device": args.device.to_string(),
            "passed": reports.len() - failed,
            "failed": failed,
            "seconds": seconds,
            "cases": cases,
        }))?;
    } else {
        println!("test vectors: {}", path.display());
        println!("device:       {}", args.device);
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
