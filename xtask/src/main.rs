//! Project chores, run as `cargo xtask <command>` (the alias is in `.cargo/config.toml`).
//!
//! - `reproduce`: the main job. It checks the numeric core against the specification's test
//!   vectors, then trains the paper's experiment grid at small scale on the synthetic data with
//!   the release `adabits` binary and writes a Markdown report.
//!
//! xtask depends on nothing but the standard library, so it builds in seconds; it drives the
//! `adabits` binary through `$CARGO`.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod grid;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  reproduce [--device DEVICE] [--out DIR] [--quick]
      Run the reproduction on the embedded default data (CPU unless --device names another
      compiled backend): the numeric core, then the paper's experiment grid at small scale on
      the synthetic data, {8,6,5,4} and {4,3,2}; write a Markdown report to DIR
      [default: runs/reproduce]. --quick runs a tiny grid (a smoke test of the pipeline).
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
    let mut quick = false;
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
            "--quick" => quick = true,
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

    println!("[1/3] building the release adabits binary ({features})");
    let adabits = grid::build(&project_root(), features)?;

    println!("[2/3] numeric core: the specification's test vectors on {device}");
    let output = Command::new(&adabits)
        .current_dir(project_root())
        .args(["check-numerics", "--json", "--device", &device])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", adabits.display()))?;
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
    println!("      {passed} passed, {failed} failed");
    if !output.status.success() {
        return Err(format!(
            "{failed} test-vector cases failed: see {}",
            json_path.display()
        ));
    }

    let scale = if quick {
        &grid::Scale::QUICK
    } else {
        &grid::Scale::DEFAULT
    };
    let started = std::time::Instant::now();
    let mut sections = String::new();
    for (i, list) in [[8u8, 6, 5, 4].as_slice(), [4u8, 3, 2].as_slice()]
        .iter()
        .enumerate()
    {
        let name = list.iter().map(u8::to_string).collect::<Vec<_>>().join("");
        println!("[3/3] training grid {}/2: bits {:?}", i + 1, list);
        let section = grid::run(
            &adabits,
            &device,
            list,
            scale,
            &out.join(format!("grid-{name}")),
        )?;
        let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        sections.push_str(&format!("### Bit-widths {{{bits}}}\n\n{section}\n"));
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let report = format!(
        "# adabits reproduction report\n\n\
         ## Numeric core\n\n\
         The specification's test vectors (METHOD.md §12, `testdata/testvectors.json`), forward \
         values and gradients, on `{device}`: **{passed} passed, {failed} failed** (tolerance \
         1e-5 absolute or relative). Per-case errors: `numerics.json`.\n\n\
         ## The paper's experiment grid, at small scale\n\n\
         Every row is trained from a random start on the built-in synthetic data ({train} \
         training and {val} validation images of {side}×{side}, 10 classes) with ResNet-20 at \
         width {width}, {epochs} epochs (progressive: {epochs} for the first stage, then \
         fine-tuning stages), batch {batch}, on `{device}`, with the default `adabits` recipe \
         (the official flags plus centered weights and a classifier initialised at N(0, 1): \
         the official recipe collapses from a random start, see docs/recipe.md). Training took \
         {minutes:.1} minutes. The runs are in the `grid-*` folders (`results.json`, \
         `metrics.jsonl`), the tables in `grid.json`. The paper's own numbers are for ImageNet \
         and CIFAR at full scale and are not comparable with these; METHOD.md §10 has them \
         (second-hand).\n\n{sections}",
        train = scale.train,
        val = scale.val,
        side = scale.side,
        width = scale.width,
        epochs = scale.epochs,
        batch = scale.batch,
    );
    let report_path = out.join("report.md");
    fs::write(&report_path, &report)
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    println!("report: {}", report_path.display());
    Ok(())
}

/// Reads a top-level integer field of the JSON that `check-numerics --json` prints.
fn json_field(json: &str, field: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get(field)?.as_u64()
}
