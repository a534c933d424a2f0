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

mod cargo;
mod docs;
mod eta;
mod findings;
mod frontier;
mod full;
mod grid;
mod plot;
mod recipes;
mod seeds;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  reproduce [--device DEVICE] [--out DIR] [--quick] [--profile release|dev] [--seeds N]
      Run the reproduction on the embedded default data (CPU unless --device names another
      compiled backend: flex, ndarray or wgpu): the numeric core, then the paper's experiment
      grid at small scale on the synthetic data, {8,6,5,4} and {4,3,2}; write a Markdown
      report with plots to DIR [default: runs/reproduce]. --quick runs a tiny grid (a smoke
      test of the pipeline); --profile dev uses a debug build of adabits instead of the
      release one (slower training, no release build: for smoke tests). --seeds N trains
      the key rows (individual, joint S-CL) with N seeds in all, each further seed with its
      own full-precision stage, and reports their spread (about 3 minutes a seed on 2 cores).
  docs
      Run the command blocks of README.md, docs/ and the crates' READMEs as written, in a
      copy of the repository's files, with a few long commands made small (each change is
      printed); fail naming each command that does not run.
  reproduce --full --dataset cifar10|imagenet --data-dir DIR [--device DEVICE] [--out DIR]
            [--max-steps N]
      Train the paper's recipes at full length (configs/*.json): CIFAR-10 ResNet-20 {5,4,3},
      or ImageNet MobileNet-V1 and -V2 {8,6,5,4} and ResNet-50 {4,3,2}, then write
      report.md beside the paper's numbers [default DIR: runs/reproduce-full]. Resumable: run
      the same command again after a stop and every unfinished run continues from its latest
      checkpoint. --max-steps stops each run after N steps (a smoke test).
  recipes [--device DEVICE] [--out DIR] [--model M]... [--recipe adabits|official]
      The recipe study of docs/recipe.md: one model of each family (resnet20, resnet18,
      resnet50, mobilenet_v1, mobilenet_v2, or those named) trained jointly at {8,6,5,4} and
      {4,3,2} with the default and the official recipe (or the one named); a table and loss
      curves in DIR/report.md [default: runs/recipes]. About an hour on 2 cores.
  help
      Print this message.";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("reproduce") => reproduce(&args[1..]),
        Some("recipes") => recipe_study(&args[1..]),
        Some("docs") => match args.get(1) {
            Some(arg) => Err(unknown_argument(arg)),
            None => docs::run(
                &project_root(),
                &std::env::temp_dir().join(format!("adabits-docs-{}", std::process::id())),
            ),
        },
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

/// The cargo features of the binary that runs on `device`.
fn features(device: &str) -> Result<&'static str, String> {
    match device {
        "flex" => Ok("flex"),
        "ndarray" => Ok("ndarray"),
        "wgpu" => Ok("flex,wgpu"),
        other => Err(format!(
            "unknown device {other:?}: expected flex, ndarray or wgpu"
        )),
    }
}

/// The value after flag `name`, or the error that it is missing.
fn value_of(iter: &mut std::slice::Iter<'_, String>, name: &str) -> Result<String, String> {
    iter.next()
        .cloned()
        .ok_or_else(|| format!("{name} needs a value\nhint: run `cargo xtask help`"))
}

fn unknown_argument(arg: &str) -> String {
    format!("unknown argument {arg:?}\nhint: run `cargo xtask help`")
}

fn recipe_study(args: &[String]) -> Result<(), String> {
    let mut device = String::from("flex");
    let mut out = project_root().join("runs/recipes");
    let mut models = Vec::new();
    let mut recipe = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| value_of(&mut iter, name);
        match arg.as_str() {
            "--device" => device = value("--device")?,
            "--out" => out = PathBuf::from(value("--out")?),
            "--model" => models.push(value("--model")?),
            "--recipe" => recipe = Some(value("--recipe")?),
            other => return Err(unknown_argument(other)),
        }
    }
    recipes::run(
        &project_root(),
        features(&device)?,
        &device,
        &out,
        &models,
        recipe.as_deref(),
    )
}

fn reproduce(args: &[String]) -> Result<(), String> {
    let mut device = String::from("flex");
    let mut out = None;
    let mut quick = false;
    let mut full = false;
    let mut dataset = None;
    let mut data_dir = None;
    let mut max_steps = None;
    let mut release = true;
    let mut seeds = 1u64;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| value_of(&mut iter, name);
        match arg.as_str() {
            "--device" => device = value("--device")?,
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--quick" => quick = true,
            "--seeds" => {
                let v = value("--seeds")?;
                seeds = v.parse::<u64>().ok().filter(|&n| n >= 1).ok_or_else(|| {
                    format!("--seeds expects a whole number of at least 1, found {v:?}")
                })?;
            }
            "--profile" => {
                release = match value("--profile")?.as_str() {
                    "release" => true,
                    "dev" => false,
                    other => {
                        return Err(format!("--profile expects release or dev, found {other:?}"));
                    }
                }
            }
            "--full" => full = true,
            "--dataset" => dataset = Some(value("--dataset")?),
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--max-steps" => {
                let v = value("--max-steps")?;
                max_steps = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--max-steps expects a whole number, found {v:?}"))?,
                );
            }
            other => return Err(unknown_argument(other)),
        }
    }
    let features = features(&device)?;
    if !full && (dataset.is_some() || data_dir.is_some() || max_steps.is_some()) {
        return Err(
            "--dataset, --data-dir and --max-steps belong to --full\nhint: the default reproduction runs on the built-in synthetic data"
                .into(),
        );
    }
    if full && seeds > 1 {
        return Err("--seeds belongs to the default reproduction, not --full".into());
    }
    if full && !release {
        return Err("--profile dev belongs to the default reproduction, not --full".into());
    }
    if full && quick {
        return Err("--quick and --full exclude each other".into());
    }
    if full {
        let dataset = dataset.ok_or("--full needs --dataset cifar10 or imagenet")?;
        let data_dir = data_dir.ok_or("--full needs --data-dir DIR (the dataset's folder)")?;
        let out = out.unwrap_or_else(|| project_root().join("runs/reproduce-full"));
        let options = full::Options {
            dataset: &dataset,
            data_dir: &data_dir,
            device: &device,
            features,
            out: &out,
            max_steps,
        };
        return full::run(&project_root(), &options);
    }
    let out = out.unwrap_or_else(|| project_root().join("runs/reproduce"));
    fs::create_dir_all(&out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let job_started = std::time::Instant::now();

    println!(
        "[1/4] building the {} adabits binary ({features}; minutes when cold, seconds when built)",
        if release { "release" } else { "debug" }
    );
    let adabits = cargo::build_profile(&project_root(), features, release)?;
    println!(
        "      {:.1} min",
        job_started.elapsed().as_secs_f64() / 60.0
    );

    println!("[2/4] numeric core: the specification's test vectors on {device}");
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
    let lists: [&[u8]; 2] = [&[8, 6, 5, 4], &[4, 3, 2]];
    let preset = out.join("preset.json");
    fs::write(&preset, grid::preset(scale))
        .map_err(|e| format!("cannot write {}: {e}", preset.display()))?;
    let total = scale.stem_cost()
        + lists
            .iter()
            .enumerate()
            .map(|(i, list)| grid::cost(list, scale, &lists[..i]) + scale.search_cost(list))
            .sum::<f64>()
        + (seeds - 1) as f64 * seeds::seed_cost(&lists, scale);
    let mut job = grid::Job {
        adabits: &adabits,
        device: &device,
        scale,
        preset,
        stem: out.join("full-precision-stage"),
        eta: eta::Eta::new(job_started, total),
        done: Vec::new(),
        seeds,
        seed_stems: Vec::new(),
    };
    let started = std::time::Instant::now();
    println!("[3/4] the shared full-precision stage");
    grid::train_stem(&mut job, lists[0])?;
    let mut sections = String::new();
    for (i, list) in lists.iter().enumerate() {
        let name = list.iter().map(u8::to_string).collect::<Vec<_>>().join("");
        println!("[4/4] training grid {}/2: bits {:?}", i + 1, list);
        let dir = out.join(format!("grid-{name}"));
        let mut section = grid::run(&mut job, list, &dir)?;
        section.push_str(&frontier::section(&mut job, list, &dir)?);
        let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
        sections.push_str(&format!("### Bit-widths {{{bits}}}\n\n{section}\n"));
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let report = format!(
        "# adabits reproduction report\n\n\
         ## Numeric core\n\n\
         The specification's test vectors (docs/method.md §12, `testdata/testvectors.json`), forward \
         values and gradients, on `{device}`: **{passed} passed, {failed} failed** (tolerance \
         1e-5 absolute or relative). Per-case errors: `numerics.json`.\n\n\
         ## The paper's experiment grid, at small scale\n\n\
         Every row is trained from a random start on the built-in synthetic data ({train} \
         training and {val} validation images of {side}×{side}, 10 classes) with ResNet-20 at \
         width {width}, {epochs} epochs at full precision and then {epochs} epochs \
         (progressive: {epochs} for the first stage, then fine-tuning stages), batch {batch}, \
         on `{device}`. The full-precision stage is the same computation for every row, so it \
         is trained once (`full-precision-stage`) and every run continues from its end \
         (`adabits train --fp-stage-from`), step for step as if it had trained it; a run \
         that two grids share (the individual 4-bit model) is trained once and copied. \
         Every run uses the default `adabits` recipe (the official flags with centered \
         weights, a classifier initialised at N(0, 1), rescaled by its fan-in and evaluated in \
         its training form, the gradient clipped to norm 5, and that full-precision stage \
         first: the official recipe collapses from a random start, see docs/recipe.md); the \
         divergence \
         guard is off, so that a model that stays at chance is reported as such. Training took \
         {minutes:.1} minutes. The runs are in the `grid-*` folders (`results.json`, \
         `metrics.jsonl`), the tables in `grid.json`. The paper's own numbers are for ImageNet \
         and CIFAR at full scale and are not comparable with these; each finding below quotes \
         them, and the table after the grids lists them.\n\n{sections}{paper}",
        train = scale.train,
        val = scale.val,
        side = scale.side,
        width = scale.width,
        epochs = scale.epochs,
        batch = scale.batch,
        paper = PAPER,
    );
    let report_path = out.join("report.md");
    fs::write(&report_path, &report)
        .map_err(|e| format!("cannot write {}: {e}", report_path.display()))?;
    println!("report: {}", report_path.display());
    Ok(())
}

/// The paper's ImageNet numbers as docs/method.md §9–10 has them (none first-hand).
const PAPER: &str = "\
## The paper's numbers, for reference

ImageNet top-1 (%), joint training (AdaBits), as docs/method.md §10 records them: none is transcribed \
first-hand from the paper.

| model, bit-widths | 8 bits | 6 bits | 5 bits | 4 bits | 3 bits | 2 bits | source |
|---|---|---|---|---|---|---|---|
| MobileNet-V1 {8,6,5,4} | 72.4 | 72.1 | 72.1 | 71.1 | – | – | informal summary of the paper (§10.2), unverified |
| MobileNet-V2 {8,6,5,4} | 72.3 | 72.3 | – | 70.3 | – | – | a later paper (§10.1) |
| ResNet-50 {4,3,2} | – | – | – | 76.1 | 75.8 | 73.2 | a later paper (§10.1) |

Other figures quoted in the findings: individual MobileNet-V1 models within 0.3 points of \
AdaBits at every bit-width; S-CL +0.3 points over a shared α at 4 bits; direct adaptation \
76.3 % → 41.1 % when a 4-bit model runs at 2 bits; progressive training 29.5 % at its lowest \
(2-bit) setting (§9, §10.2).

`cargo xtask reproduce --full --dataset imagenet --data-dir DIR` trains these recipes at full \
length and sets its numbers beside them.
";

/// Reads a top-level integer field of the JSON that `check-numerics --json` prints.
fn json_field(json: &str, field: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value.get(field)?.as_u64()
}
