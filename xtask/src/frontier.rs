//! The per-layer precision search on a grid's AdaBits run (`adabits select --per-layer`): its
//! accuracy–BitOPs path beside the uniform bit-widths, as a plot and a table of the report.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::grid::{Job, Scale};
use crate::plot::{Chart, Series, svg};

/// Quantized layers of the grid's ResNet-20 (the first convolution, 18 block convolutions, 2
/// shortcut convolutions, the classifier).
const LAYERS: usize = 22;

impl Scale {
    /// The cost of the search on a model trained at `list`, in the grid's passes: one move per
    /// layer and entry below the highest, each trying the layers still above their lowest
    /// entry (about 0.7 of them on average), each plan a forward pass over its images (a third
    /// of a training pass) and BatchNorm's over 4 batches.
    pub(crate) fn search_cost(&self, list: &[u8]) -> f64 {
        let plans = 0.7 * (LAYERS * LAYERS * (list.len() - 1)) as f64;
        let images = self.search_images() + 4 * self.batch;
        plans * images as f64 / (3.0 * self.train as f64)
    }

    /// The training images each plan is measured on (`select`'s default).
    fn search_images(&self) -> usize {
        (self.train / 2).clamp(1, 2048)
    }
}

/// Searches the grid's AdaBits run in `dir` (`joint-scl`) per layer within the BitOPs of its
/// second-highest bit-width, writes `plan.json` and `frontier.svg` beside it, and returns the
/// report's paragraph, table and plot.
pub(crate) fn section(job: &mut Job<'_>, list: &[u8], dir: &Path) -> Result<String, String> {
    let run = dir.join("joint-scl");
    let results = std::fs::read_to_string(run.join("results.json")).ok();
    let Some(budget) = results
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|r| r["bits"][list[1].to_string()]["gbitops"].as_f64())
    else {
        return Ok(
            "The per-layer search needs the AdaBits (S-CL) run, which did not finish.\n\n".into(),
        );
    };
    println!(
        "      the per-layer search on joint-scl, within {budget:.4} GBitOPs (uniform {} bits)",
        list[1]
    );
    let started = Instant::now();
    let plan = dir.join("plan.json");
    let output = Command::new(job.adabits)
        .args(["select", "--per-layer", "--checkpoint"])
        .arg(&run)
        .args(["--max-bitops", &budget.to_string()])
        .args(["--device", job.device, "--json", "--out"])
        .arg(&plan)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", job.adabits.display()))?;
    let seconds = started.elapsed().as_secs_f64();
    job.eta.finished(job.scale.search_cost(list), seconds);
    println!("            {seconds:.0} s; {}", job.eta.line());
    let found: Value = serde_json::from_slice(&output.stdout).map_err(|e| {
        format!(
            "adabits select --per-layer on {} printed no report ({e}); its message is above",
            run.display()
        )
    })?;
    let doc = chart(&found, list);
    let path = dir.join("frontier.svg");
    std::fs::write(&path, doc).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    let folder = dir
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(markdown(&found, list, budget, &folder))
}

/// The search's path and the uniform entries, top-1 on the search's images against GBitOPs.
fn chart(found: &Value, list: &[u8]) -> String {
    let points = |v: &Value| -> Vec<(f64, f64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["gbitops"].as_f64().unwrap_or(f64::NAN),
                    p["top1"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let mut uniform = points(&found["uniform"]);
    uniform.sort_by(|a, b| a.0.total_cmp(&b.0));
    let selected = if found["selected"].is_null() {
        Vec::new()
    } else {
        points(&Value::Array(vec![found["selected"].clone()]))
    };
    let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    svg(&Chart {
        title: &format!("Per-layer search on the AdaBits (S-CL) run, {{{bits}}}"),
        x_label: "GBitOPs per image",
        y_label: "top-1 on the search's training images (%)",
        series: &[
            Series {
                label: "the search's path (one layer lowered a step)".into(),
                points: points(&found["path"]),
            },
            Series {
                label: "uniform bit-widths".into(),
                points: uniform,
            },
            Series {
                label: "selected plan".into(),
                points: selected,
            },
        ],
        references: Vec::new(),
        x_ticks: None,
        markers: true,
    })
}

/// The report's text: how the search ran, the selected plan against the uniform bit-widths on
/// the validation set, and the plot.
fn markdown(found: &Value, list: &[u8], budget: f64, folder: &str) -> String {
    let search = &found["search"];
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**Per-layer precisions** (`adabits select --per-layer`, issue 19): from every layer \
         of the AdaBits (S-CL) run at {} bits, each step lowers the one layer whose next \
         bit-width adds the least loss per BitOP saved, every plan measured on {} training \
         images with its BatchNorm re-estimated on {} batches ({} plans, {:.0} s). Within the \
         BitOPs of uniform {} bits ({budget:.4} GBitOPs) it measures the {} best plans again \
         on {} other training images with other calibration batches and selects the best of \
         that second measurement (`{folder}/plan.json`); below, that plan and the uniform \
         bit-widths on the validation set, which the search did not see, BatchNorm \
         re-estimated as in the search.\n",
        list[0],
        search["images"],
        search["calibration_batches"],
        search["plans_measured"],
        search["seconds"].as_f64().unwrap_or(0.0),
        list[1],
        found["candidates"].as_array().map_or(0, Vec::len),
        found["confirmation_images"],
    );
    let _ = writeln!(
        md,
        "| plan | GBitOPs | bytes | validation top-1 (%) | loss |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let row = |md: &mut String, label: String, v: &Value| {
        let _ = writeln!(
            md,
            "| {label} | {:.4} | {} | {:.2} | {:.4} |",
            v["gbitops"].as_f64().unwrap_or(f64::NAN),
            v["bytes"],
            v["top1"].as_f64().unwrap_or(f64::NAN),
            v["loss"].as_f64().unwrap_or(f64::NAN),
        );
    };
    match found["selected"]["validation"].as_object() {
        Some(_) => {
            // How many layers run each precision, the highest first.
            let mut counts: Vec<(String, usize)> = Vec::new();
            for layer in found["selected"]["layers"].as_array().into_iter().flatten() {
                let p = layer["precision"].to_string().trim_matches('"').to_string();
                match counts.iter_mut().find(|(q, _)| *q == p) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((p, 1)),
                }
            }
            counts.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(b.0.cmp(&a.0)));
            let summary: Vec<String> = counts.iter().map(|(p, n)| format!("{n} at {p}")).collect();
            row(
                &mut md,
                format!("selected plan (layers: {})", summary.join(", ")),
                &found["selected"]["validation"],
            );
        }
        None => {
            let _ = writeln!(md, "| no plan fits | | | | |");
        }
    }
    for v in found["uniform_validation"].as_array().into_iter().flatten() {
        row(&mut md, format!("uniform {} bits", v["bits"]), v);
    }
    let _ = writeln!(
        md,
        "\n![the per-layer search's path and the uniform bit-widths]({folder}/frontier.svg)\n"
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `select --per-layer --json` prints, in brief.
    fn found() -> Value {
        serde_json::json!({
            "search": {"images": 64, "calibration_batches": 4, "plans_measured": 9, "seconds": 2.0},
            "candidates": [{}, {}],
            "confirmation_images": 63,
            "path": [
                {"gbitops": 0.02, "bytes": 900, "top1": 50.0, "loss": 1.0},
                {"gbitops": 0.015, "bytes": 800, "top1": 49.0, "loss": 1.1},
            ],
            "uniform": [
                {"bits": 4, "gbitops": 0.02, "bytes": 900, "top1": 50.0, "loss": 1.0},
                {"bits": 2, "gbitops": 0.01, "bytes": 700, "top1": 40.0, "loss": 1.5},
            ],
            "selected": {"gbitops": 0.015, "bytes": 800, "top1": 49.0, "loss": 1.1,
                         "plan": {"default": 2, "layers": {"head.0": 4}},
                         "layers": [{"precision": 4}, {"precision": 2}, {"precision": 2},
                                    {"precision": "w4a8"}],
                         "validation": {"gbitops": 0.015, "bytes": 800, "top1": 47.5, "loss": 1.2}},
            "uniform_validation": [
                {"bits": 4, "gbitops": 0.02, "bytes": 900, "top1": 48.0, "loss": 1.1},
                {"bits": 2, "gbitops": 0.01, "bytes": 700, "top1": 41.0, "loss": 1.6},
            ],
        })
    }

    #[test]
    fn the_section_tables_the_selected_plan_beside_the_uniform_bit_widths() {
        let md = markdown(&found(), &[4, 3, 2], 0.0151, "grid-432");
        assert!(
            md.contains(
                "| selected plan (layers: 1 at w4a8, 1 at 4, 2 at 2) | 0.0150 | 800 | 47.50 | 1.2000 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| uniform 2 bits | 0.0100 | 700 | 41.00 | 1.6000 |"),
            "{md}"
        );
        assert!(md.contains("(grid-432/frontier.svg)"), "{md}");
        assert!(
            md.contains(
                "Within the BitOPs of uniform 3 bits (0.0151 GBitOPs) it measures the 2 best plans again on 63 other training images"
            ),
            "{md}"
        );
        let doc = chart(&found(), &[4, 3, 2]);
        assert!(
            doc.starts_with("<svg") && doc.contains("selected plan"),
            "{doc}"
        );
        // Nothing fits: said so.
        let mut none = found();
        none["selected"] = Value::Null;
        assert!(markdown(&none, &[4, 3, 2], 0.001, "g").contains("| no plan fits |"));
    }

    #[test]
    fn the_search_cost_grows_with_the_entries() {
        let s = &Scale::DEFAULT;
        assert!(s.search_cost(&[8, 6, 5, 4]) > s.search_cost(&[4, 3, 2]));
        assert_eq!(s.search_images(), 2048);
        assert_eq!(Scale::QUICK.search_images(), 128);
    }
}
