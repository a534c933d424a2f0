//! Project chores, run as `cargo xtask <command>` (the alias is in `.cargo/config.toml`).
//!
//! - `reproduce`: the main job. Today it checks the numeric core against the specification's test
//!   vectors on the CPU and writes a report; the training grid of the paper joins it as the
//!   training crates land.
//!
//! xtask depends on nothing but the standard library, so it builds in seconds; it drives the
//! `adabits` binary through `$CARGO`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  reproduce [--device DEVICE] [--out DIR]
      Run the reproduction on the embedded default data (CPU unless --device names another
      compiled backend) and write a Markdown report to DIR [default: runs/reproduce].
  help
      Print this message.";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("reproduce") => reproduce(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown command {other:?}\nhint: run `cargo xtask help`"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn reproduce(args: &[String]) -> Result<(), String> {
    let mut device = String::from("flex");
    let mut out = project_root().join("runs/reproduce");
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| {
            iter.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\nhint: run `cargo xtask help`"))
        };
        match arg.as_str() {
            "--device" => device = value("--device")?,
            "--out" => out = PathBuf::from(value("--out")?),
            other => {
                return Err(format!(
                    "unknown argument {other:?}\nhint: run `cargo xtask help`"
                ));
            }
        }
    }
    let features = match device.as_str() {
        "flex" => "flex",
        "ndarray" => "ndarray",
        "wgpu" => "flex,wgpu",
        other => {
            return Err(format!(
                "unknown device {other:?}: expected flex, ndarray or wgpu"
            ));
        }
    };
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;

    println!("[1/1] numeric core: the specification's test vectors on {device}");
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(project_root())
        .args([
            "run",
            "--quiet",
            "-p",
            "adabits-cli",
            "--no-default-features",
        ])
        .args(["--features", features, "--", "check-numerics", "--json"])
        .args(["--device", &device])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if stdout.trim().is_empty() {
        return Err(format!(
            "adabits check-numerics printed nothing:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let json_path = out.join("numerics.json");
    fs::write(&json_path, stdout.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;

    let passed = json_field(&stdout, "passed").unwrap_or_default();
    let failed = json_field(&stdout, "failed").unwrap_or_default();
    let report = format!(
        "# adabits reproduction report\n\n\
         ## Numeric core\n\n\
         The specification's test vectors (METHOD.md §12, `testdata/testvectors.json`), forward \
         values and gradients, on `{device}`: **{passed} passed, {failed} failed** (tolerance \
         1e-5 absolute or relative). Per-case errors: `numerics.json`.\n\n\
         ## Training grid\n\n\
         Not run yet: the models, training strategies and the paper's experiment grid are still \
         being built (issues #3 to #5). This report will carry their tables once they exist.\n"
    );
    let report_path = out.join("report.md");
    fs::write(&report_path, &report)
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    println!("      {passed} passed, {failed} failed");
    println!("report: {}", report_path.display());
    println!(
        "note: the training grid of the paper is not implemented yet; this run checked the numeric core only"
    );
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{failed} test-vector cases failed: see {}",
            json_path.display()
        ))
    }
}

/// Reads a top-level integer field of the JSON that `check-numerics --json` prints.
fn json_field(json: &str, field: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get(field)?.as_u64()
}
