//! `cargo xtask recipes`: the recipe study of docs/recipe.md. Every shipped model family is
//! trained jointly at {8,6,5,4} and at {4,3,2} from a random start on the synthetic data, once
//! with the default `adabits` recipe and once with the official settings; the table and the
//! loss curves go to a Markdown report.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::grid;
use crate::plot::{Series, loss_chart};

/// The models of the study: one of each family we ship, and the input side it is trained at.
const MODELS: [(&str, usize); 5] = [
    ("resnet20", 16),
    ("resnet18", 32),
    ("resnet50", 32),
    ("mobilenet_v1", 32),
    ("mobilenet_v2", 32),
];

const LISTS: [&str; 2] = ["8,6,5,4", "4,3,2"];
const RECIPES: [&str; 2] = ["adabits", "official"];

/// Runs the study into `out` with the binary built for `features`, on `device`.
pub(crate) fn run(
    root: &Path,
    features: &str,
    device: &str,
    out: &Path,
    models: &[String],
    recipe: Option<&str>,
) -> Result<(), String> {
    let recipes: Vec<&str> = match recipe {
        None => RECIPES.to_vec(),
        Some(r) if RECIPES.contains(&r) => vec![r],
        Some(r) => {
            return Err(format!(
                "unknown recipe {r:?}: expected one of {}",
                RECIPES.join(", ")
            ));
        }
    };
    let chosen: Vec<(&str, usize)> = if models.is_empty() {
        MODELS.to_vec()
    } else {
        let mut chosen = Vec::new();
        for m in models {
            let entry = MODELS.iter().find(|(name, _)| name == m).ok_or_else(|| {
                let names: Vec<&str> = MODELS.iter().map(|(n, _)| *n).collect();
                format!("unknown model {m:?}: expected one of {}", names.join(", "))
            })?;
            chosen.push(*entry);
        }
        chosen
    };
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    println!("[1/2] building the release adabits binary ({features})");
    let adabits = crate::cargo::build(root, features)?;
    let total = chosen.len() * LISTS.len() * recipes.len();
    let mut k = 0;
    let mut table = String::from(
        "| model | input | bit-widths | recipe | full-precision stage top-1 (%) | status | steps | top-1 per bit-width (%) | minutes |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut figures = String::new();
    for &(model, side) in &chosen {
        let preset = out.join(format!("preset-{side}.json"));
        let preset_json = json!({
            "data": {"kind": "synthetic", "train": 6400, "val": 1000, "side": side},
            "epochs": 3,
            "batch_size": 64,
        });
        std::fs::write(&preset, preset_json.to_string())
            .map_err(|e| format!("cannot write {}: {e}", preset.display()))?;
        for list in LISTS {
            let mut curves: Vec<Series> = Vec::new();
            for recipe in RECIPES {
                let name = format!("{model}-{}-{recipe}", list.replace(',', ""));
                let dir = out.join(&name);
                if recipes.contains(&recipe) {
                    k += 1;
                    println!("[2/2] {k}/{total}: {model} {{{list}}}, {recipe} recipe");
                    train(&adabits, device, &preset, model, list, recipe, &dir)?;
                } else if !dir.join("study.json").is_file() {
                    // Not asked for and not run before into this folder.
                    continue;
                }
                let (status, steps, top1, minutes) = summary(&dir)?;
                let fp = full_precision_top1(&dir).map_or("–".into(), |t| format!("{t:.1}"));
                let _ = writeln!(
                    table,
                    "| {model} | {side}×{side} | {{{list}}} | {recipe} | {fp} | {status} | {steps} | {top1} | {minutes} |"
                );
                // The curve of the lowest bit-width of each recipe, and of the highest.
                let points = grid::loss_curve(&dir);
                let lowest = list.rsplit(',').next().unwrap_or_default();
                let highest = list.split(',').next().unwrap_or_default();
                // The full-precision stage, where the recipe has one, then the bit-widths.
                let has_fp = points.iter().any(|(_, losses)| losses.contains_key("32"));
                let fp_series = has_fp.then_some("32");
                for b in fp_series.into_iter().chain([highest, lowest]) {
                    curves.push(Series {
                        label: if b == "32" {
                            format!("{recipe}, full precision")
                        } else {
                            format!("{recipe}, {b} bits")
                        },
                        points: points
                            .iter()
                            .filter_map(|(s, losses)| Some((*s as f64, losses.get(b)?.as_f64()?)))
                            .collect(),
                    });
                }
            }
            let file = format!("loss-{model}-{}.svg", list.replace(',', ""));
            let doc = loss_chart(
                &format!("{model} ×0.25, joint {{{list}}}: training loss"),
                &curves,
            );
            let path = out.join(&file);
            std::fs::write(&path, doc)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let _ = writeln!(figures, "![{model} {{{list}}}]({file})\n");
        }
    }
    let report = format!(
        "# Recipe study\n\n`cargo xtask recipes` on `{device}`: each model at width 0.25, joint \
         training from a random start on 6,400 synthetic images (1,000 for validation), 3 \
         epochs, batch 64, lr 0.1 cosine. `adabits` is the default recipe (the official flags \
         with centered weights, a classifier initialised at N(0, 1), rescaled by its fan-in and \
         evaluated in its training form, MobileNet-V2's bottleneck outputs clipped on both \
         sides, depthwise convolutions' inputs at 4 bits or more, the gradient clipped to norm \
         5, and a full-precision stage as long as the \
         joint one before it); `official` is `--recipe official`. A run stopped by the \
         divergence guard had not gone below ln 10 for an epoch (100 steps).\n\n{table}\n{figures}"
    );
    let path = out.join("report.md");
    std::fs::write(&path, report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

/// The validation top-1 at the end of a run's full-precision stage, if it has one.
fn full_precision_top1(dir: &Path) -> Option<f64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .ok()?
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .rfind(|r| r["trained_bits"] == json!([32]))?["val"]["32"]["top1"]
        .as_f64()
}

/// Trains one run of the study into `dir`, keeping its messages in `dir/train.log` and its
/// wall time in `dir/study.json`.
fn train(
    adabits: &Path,
    device: &str,
    preset: &Path,
    model: &str,
    list: &str,
    recipe: &str,
    dir: &Path,
) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    let started = Instant::now();
    let output = Command::new(adabits)
        .arg("train")
        .args(["--recipe", recipe, "--config"])
        .arg(preset)
        .args(["--model", model, "--width", "0.25", "--bits", list])
        .args(["--device", device, "--json", "--out"])
        .arg(dir)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", adabits.display()))?;
    let errors = String::from_utf8_lossy(&output.stderr);
    eprint!("{errors}");
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let write = |file: &str, text: String| {
        let path = dir.join(file);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    write("train.log", errors.into_owned())?;
    write(
        "study.json",
        json!({"minutes": minutes, "success": output.status.success()}).to_string(),
    )
}

/// A study run's status, steps, top-1 per bit-width (highest first) and minutes, from its
/// folder. A run stopped by the guard or by a NaN has no results.json; its message is in
/// train.log and its loss curve in losses.jsonl.
fn summary(dir: &Path) -> Result<(String, u64, String, String), String> {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    let study: Value = serde_json::from_str(&read("study.json")).unwrap_or(Value::Null);
    let minutes = study["minutes"]
        .as_f64()
        .map_or("–".into(), |m| format!("{m:.1}"));
    if study["success"].as_bool() == Some(true) {
        let r: Value = serde_json::from_str(&read("results.json"))
            .map_err(|e| format!("{}: unreadable results: {e}", dir.display()))?;
        let mut bits: Vec<(u8, f64)> = r["bits"]
            .as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v["top1"].as_f64()?)))
                    .collect()
            })
            .unwrap_or_default();
        bits.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
        let cells: Vec<String> = bits.iter().map(|(b, t)| format!("{b}: {t:.1}")).collect();
        return Ok((
            "completed".into(),
            r["steps"].as_u64().unwrap_or(0),
            cells.join(", "),
            minutes,
        ));
    }
    let errors = read("train.log");
    let last = grid::loss_curve(dir).last().map_or(0, |(s, _)| *s);
    let why = if errors.contains("became NaN or infinite") {
        "diverged (a parameter became NaN)"
    } else if errors.contains("chance level") {
        "stopped by the guard"
    } else {
        "failed"
    };
    Ok((why.into(), last as u64, "–".into(), minutes))
}
