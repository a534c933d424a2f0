//! `cargo xtask reproduce --full`: the paper's recipes (the presets in `configs/`) at full
//! length on real data, resumable, with a report that sets our numbers beside the paper's.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

/// What `--full` was asked to do.
pub(crate) struct Options<'a> {
    /// `cifar10` or `imagenet`.
    pub(crate) dataset: &'a str,
    /// The dataset's folder.
    pub(crate) data_dir: &'a Path,
    /// The device name given to `adabits train`.
    pub(crate) device: &'a str,
    /// Cargo features of the binary.
    pub(crate) features: &'a str,
    /// Where the runs and the report go.
    pub(crate) out: &'a Path,
    /// Stop every run after this many steps (a smoke test; resumable like any stop).
    pub(crate) max_steps: Option<u64>,
}

/// One paper recipe: a preset and the paper's top-1 per bit-width where docs/method.md has it.
#[derive(Debug)]
struct Recipe {
    name: &'static str,
    preset: &'static str,
    title: &'static str,
    paper: &'static [(u8, f64)],
    source: &'static str,
}

fn recipes(dataset: &str) -> Result<Vec<Recipe>, String> {
    match dataset {
        "cifar10" => Ok(vec![Recipe {
            name: "cifar10-resnet20",
            preset: "configs/cifar10-resnet20.json",
            title: "CIFAR-10, ResNet-20, joint {5,4,3}",
            paper: &[],
            source: "docs/method.md gives no CIFAR-10 numbers for the paper",
        }]),
        "imagenet" => Ok(vec![
            Recipe {
                name: "imagenet-mobilenet_v1",
                preset: "configs/imagenet-mobilenet_v1.json",
                title: "ImageNet, MobileNet-V1, joint {8,6,5,4}",
                paper: &[(8, 72.4), (6, 72.1), (5, 72.1), (4, 71.1)],
                source: "the paper's Table 4 via an informal summary (docs/method.md §10.2, unverified)",
            },
            Recipe {
                name: "imagenet-mobilenet_v2",
                preset: "configs/imagenet-mobilenet_v2.json",
                title: "ImageNet, MobileNet-V2, joint {8,6,5,4}",
                paper: &[(8, 72.3), (6, 72.3), (4, 70.3)],
                source: "as reported by a later paper (docs/method.md §10.1); no 5-bit figure",
            },
            Recipe {
                name: "imagenet-resnet50",
                preset: "configs/imagenet-resnet50.json",
                title: "ImageNet, ResNet-50, joint {4,3,2}",
                paper: &[(4, 76.1), (3, 75.8), (2, 73.2)],
                source: "as reported by a later paper (docs/method.md §10.1)",
            },
        ]),
        other => Err(format!(
            "--dataset {other:?} is not a paper recipe: expected cifar10 or imagenet"
        )),
    }
}

/// Trains every recipe of the dataset (continuing unfinished runs) and writes `report.md`.
pub(crate) fn run(root: &Path, options: &Options<'_>) -> Result<(), String> {
    let recipes = recipes(options.dataset)?;
    if !options.data_dir.is_dir() {
        return Err(format!(
            "--data-dir {}: no such folder\nhint: CIFAR-10 needs the binary version's folder (data_batch_1.bin …); ImageNet a folder with train/ and val/",
            options.data_dir.display()
        ));
    }
    std::fs::create_dir_all(options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
    println!(
        "[1/2] building the release adabits binary ({})",
        options.features
    );
    let adabits = crate::cargo::build(root, options.features)?;
    let mut sections = String::new();
    for (i, recipe) in recipes.iter().enumerate() {
        let out = options.out.join(recipe.name);
        let previous = read_results(&out);
        let done = previous
            .as_ref()
            .is_some_and(|r| r["status"] == "completed");
        println!(
            "[2/2] {}/{}: {} ({})",
            i + 1,
            recipes.len(),
            recipe.title,
            recipe.preset
        );
        let results = if done {
            println!("      already complete: {}", out.display());
            previous.unwrap_or(Value::Null)
        } else {
            // A run that stopped before its first checkpoint resumes from its start.
            let resume = out.join("config.json").is_file();
            if resume {
                println!(
                    "      continuing from {}",
                    out.join("checkpoints").display()
                );
            }
            let mut command = Command::new(&adabits);
            command
                .current_dir(root)
                .arg("train")
                .arg("--config")
                .arg(recipe.preset)
                .arg("--data-dir")
                .arg(options.data_dir)
                .args(["--device", options.device, "--json", "--out"])
                .arg(&out)
                .stderr(Stdio::inherit());
            if resume {
                command.arg("--resume");
            }
            if let Some(n) = options.max_steps {
                command.args(["--max-steps", &n.to_string()]);
            }
            let output = command
                .output()
                .map_err(|e| format!("cannot run {}: {e}", adabits.display()))?;
            if !output.status.success() {
                return Err(format!(
                    "adabits train for {} failed (its message is above); run the same command again to continue from the last checkpoint",
                    recipe.name
                ));
            }
            serde_json::from_slice(&output.stdout)
                .map_err(|e| format!("{}: unreadable results: {e}", recipe.name))?
        };
        // A run stopped before its first evaluation has no per-bit results yet: its table
        // still shows its bit-widths.
        let configured = std::fs::read_to_string(out.join("config.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<Value>(&text).ok())
            .map(|c| c["model"]["bits"].clone())
            .unwrap_or(Value::Null);
        sections.push_str(&section(recipe, &results, &configured));
    }
    let report = format!(
        "# adabits full-length reproduction ({dataset})\n\n\
         The paper's recipes (`configs/`) trained at full length on `{data}` with the default \
         `adabits` recipe changes (docs/recipe.md), on `{device}`. A run marked \"stopped\" has \
         not finished: run the same command again to continue it.\n\n{sections}",
        dataset = options.dataset,
        data = options.data_dir.display(),
        device = options.device,
    );
    let path = options.out.join("report.md");
    std::fs::write(&path, report).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("report: {}", path.display());
    Ok(())
}

fn read_results(out: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(out.join("results.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// One recipe's table: our top-1 beside the paper's, and the cost, per bit-width.
fn section(recipe: &Recipe, results: &Value, configured: &Value) -> String {
    let mut bits: Vec<u8> = results["bits"]
        .as_object()
        .filter(|o| !o.is_empty())
        .map(|o| o.keys().filter_map(|k| k.parse().ok()).collect())
        .or_else(|| {
            configured.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| u8::try_from(b.as_u64()?).ok())
                    .collect()
            })
        })
        .unwrap_or_default();
    bits.sort_unstable_by(|a, b| b.cmp(a));
    let status = match results["status"].as_str() {
        Some("completed") => "completed".to_string(),
        Some(other) => format!("stopped ({other}) after {} steps", results["steps"]),
        None => "no results".to_string(),
    };
    let mut md = String::new();
    let _ = writeln!(md, "## {}\n\nStatus: {status}.\n", recipe.title);
    let header: Vec<String> = bits.iter().map(|b| format!("{b} bits")).collect();
    let _ = writeln!(md, "| | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(bits.len()));
    let cells = |f: &dyn Fn(u8) -> String| bits.iter().map(|&b| f(b)).collect::<Vec<_>>();
    let field = |b: u8, name: &str| results["bits"][b.to_string()][name].as_f64();
    let rows: [(&str, Vec<String>); 4] = [
        (
            "top-1, ours (%)",
            cells(&|b| field(b, "top1").map_or("–".into(), |v| format!("{v:.1}"))),
        ),
        (
            "top-1, paper (%)",
            cells(&|b| {
                recipe
                    .paper
                    .iter()
                    .find(|(pb, _)| *pb == b)
                    .map_or("–".into(), |(_, v)| format!("{v:.1}"))
            }),
        ),
        (
            "GBitOPs per image",
            cells(&|b| field(b, "gbitops").map_or("–".into(), |v| format!("{v:.2}"))),
        ),
        (
            "size (MB)",
            cells(&|b| field(b, "bytes").map_or("–".into(), |v| format!("{:.3}", v / 1e6))),
        ),
    ];
    for (label, values) in rows {
        let _ = writeln!(md, "| {label} | {} |", values.join(" | "));
    }
    let _ = writeln!(md, "\nThe paper's figures: {}.\n", recipe.source);
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_sets_our_numbers_beside_the_papers() {
        let results: Value = serde_json::from_str(
            r#"{"status": "step_limit", "steps": 20, "bits": {
                "4": {"top1": 70.25, "gbitops": 11.77, "bytes": 2621000.0},
                "8": {"top1": 72.0, "gbitops": 38.53, "bytes": 4214000.0}}}"#,
        )
        .unwrap();
        let imagenet = recipes("imagenet").unwrap();
        let md = section(&imagenet[0], &results, &Value::Null);
        assert!(
            md.contains("Status: stopped (step_limit) after 20 steps."),
            "{md}"
        );
        assert!(md.contains("| | 8 bits | 4 bits |"), "{md}");
        assert!(md.contains("| top-1, ours (%) | 72.0 | 70.2 |"), "{md}");
        assert!(md.contains("| top-1, paper (%) | 72.4 | 71.1 |"), "{md}");
        assert!(md.contains("| size (MB) | 4.214 | 2.621 |"), "{md}");
        // Before the first evaluation: the configured bit-widths, no figures yet.
        let empty: Value =
            serde_json::from_str(r#"{"status": "step_limit", "steps": 1, "bits": {}}"#).unwrap();
        let md = section(&imagenet[2], &empty, &serde_json::json!([4, 3, 2]));
        assert!(md.contains("| | 4 bits | 3 bits | 2 bits |"), "{md}");
        assert!(md.contains("| top-1, ours (%) | – | – | – |"), "{md}");
        assert!(
            md.contains("| top-1, paper (%) | 76.1 | 75.8 | 73.2 |"),
            "{md}"
        );
        assert!(
            recipes("mnist")
                .unwrap_err()
                .contains("cifar10 or imagenet")
        );
    }
}
