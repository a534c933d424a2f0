//! The paper's experiment grid at small scale: every run is an `adabits train` of the release
//! binary, and the report is built from the runs' `results.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::eta::Eta;
use crate::plot::{Chart, Reference, Series, loss_chart, svg};

/// The size of every run of the grid.
pub(crate) struct Scale {
    /// Training images.
    pub(crate) train: usize,
    /// Validation images.
    pub(crate) val: usize,
    /// Image side.
    pub(crate) side: usize,
    /// Model width multiplier.
    pub(crate) width: f64,
    /// Epochs (of the first stage for progressive training).
    pub(crate) epochs: usize,
    /// Batch size.
    pub(crate) batch: usize,
}

impl Scale {
    /// The default: about 15 minutes of training on 2 cores.
    pub(crate) const DEFAULT: Scale = Scale {
        train: 6400,
        val: 2000,
        side: 16,
        width: 0.25,
        epochs: 5,
        batch: 64,
    };

    /// A smoke test of the pipeline (seconds).
    pub(crate) const QUICK: Scale = Scale {
        train: 256,
        val: 64,
        side: 16,
        width: 0.25,
        epochs: 1,
        batch: 32,
    };
}

/// One run of the grid.
struct Entry {
    /// Row label in the report.
    label: &'static str,
    /// Run directory name.
    name: String,
    /// Flags of `adabits train`.
    flags: Vec<String>,
    /// Which evaluation of results.json fills the row (by label), or the headline.
    evaluation: Option<&'static str>,
    /// What the run costs after the shared full-precision stage, in passes ([`Eta`]).
    cost: f64,
}

/// A reproduction's grids: the binary, where it runs, the settings every run shares, the
/// shared full-precision stage, the progress, and the runs done so far (by flags, so that a
/// run two grids share is trained once).
pub(crate) struct Job<'a> {
    pub(crate) adabits: &'a Path,
    pub(crate) device: &'a str,
    pub(crate) scale: &'a Scale,
    /// The preset every run starts from.
    pub(crate) preset: PathBuf,
    /// The run whose full-precision stage every run takes.
    pub(crate) stem: PathBuf,
    pub(crate) eta: Eta,
    pub(crate) done: Vec<(Vec<String>, PathBuf)>,
}

impl Scale {
    /// The cost of `epochs` epochs training `trained` bit-widths at each step and evaluating
    /// `evaluated` after each, in passes: evaluating a bit-width on the validation set counts
    /// as a third of a training pass over as many images (forward only).
    fn cost(&self, epochs: usize, trained: usize, evaluated: usize) -> f64 {
        let eval = self.val as f64 / (3.0 * self.train as f64);
        epochs as f64 * (trained as f64 + evaluated as f64 * eval)
    }

    /// The epochs of each fine-tuning stage of progressive training (as `adabits train`
    /// chooses them: half of the first stage's, at least 1).
    fn finetune_epochs(&self) -> usize {
        (self.epochs / 2).max(1)
    }

    /// The cost of the shared full-precision stage (as long as the training after it, the
    /// recipe's default).
    pub(crate) fn stem_cost(&self) -> f64 {
        self.cost(self.epochs, 1, 1)
    }

    /// The steps of the shared full-precision stage.
    pub(crate) fn stem_steps(&self) -> usize {
        self.epochs * (self.train / self.batch)
    }
}

/// The preset every run of the grids starts from, as JSON.
pub(crate) fn preset(scale: &Scale) -> String {
    let preset = json!({
        "model": {"arch": "resnet20", "width_mult": scale.width},
        "data": {"kind": "synthetic", "train": scale.train, "val": scale.val, "side": scale.side},
        "epochs": scale.epochs,
        "batch_size": scale.batch,
        // Every cell gets a number: a model that stays at chance (an individual 2-bit model
        // may) is a result here, not an error.
        "stuck_steps": 0,
    });
    serde_json::to_string_pretty(&preset).unwrap_or_default()
}

/// The rows of the grid for `list`, with the runs that fill them.
fn entries(list: &[u8], scale: &Scale) -> Vec<Entry> {
    let n = list.len();
    let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    for &b in list {
        out.push(Entry {
            label: "individual",
            name: format!("individual-{b}"),
            flags: vec![
                "--strategy".into(),
                "individual".into(),
                "--bits".into(),
                b.to_string(),
            ],
            evaluation: None,
            cost: scale.cost(scale.epochs, 1, 1),
        });
    }
    let with = |strategy: &str, extra: &[&str]| {
        let mut flags = vec![
            "--strategy".to_string(),
            strategy.to_string(),
            "--bits".into(),
            bits.clone(),
        ];
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    };
    out.push(Entry {
        label: "direct, no BN calibration",
        name: "direct".into(),
        flags: with("direct", &[]),
        evaluation: Some("direct"),
        // The epochs, then every bit-width evaluated twice (plain and calibrated).
        cost: scale.cost(scale.epochs, 1, n) + scale.cost(1, 0, 2 * n),
    });
    out.push(Entry {
        label: "direct + BN calibration",
        name: "direct".into(),
        flags: Vec::new(),
        evaluation: Some("direct + BN calibration"),
        cost: 0.0,
    });
    let stages = scale.epochs + (n - 1) * scale.finetune_epochs();
    out.push(Entry {
        label: "progressive (high to low)",
        name: "progressive".into(),
        flags: with("progressive", &[]),
        evaluation: None,
        cost: scale.cost(stages, 1, n) + scale.cost(n, 0, n),
    });
    out.push(Entry {
        label: "joint, shared α (Vanilla AdaBits)",
        name: "joint-shared-alpha".into(),
        flags: with("joint", &["--shared-alpha"]),
        evaluation: None,
        cost: scale.cost(scale.epochs, n, n),
    });
    out.push(Entry {
        label: "joint, S-CL (AdaBits)",
        name: "joint-scl".into(),
        flags: with("joint", &[]),
        evaluation: None,
        cost: scale.cost(scale.epochs, n, n),
    });
    out
}

/// The cost in passes of the grid for `list` after the shared full-precision stage, counting
/// a run that an earlier grid in `before` has too only once.
pub(crate) fn cost(list: &[u8], scale: &Scale, before: &[&[u8]]) -> f64 {
    let earlier: Vec<Vec<String>> = before
        .iter()
        .flat_map(|l| entries(l, scale))
        .map(|e| e.flags)
        .collect();
    entries(list, scale)
        .iter()
        .filter(|e| !e.flags.is_empty() && !earlier.contains(&e.flags))
        .map(|e| e.cost)
        .sum()
}

/// Trains the full-precision stage every run of the job takes (`adabits train
/// --fp-stage-from`): a joint run of `list` stopped at the end of that stage.
pub(crate) fn train_stem(job: &mut Job<'_>, list: &[u8]) -> Result<(), String> {
    let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let _ = std::fs::remove_dir_all(&job.stem);
    println!(
        "      the full-precision stage, {} epochs, trained once for every run ({})",
        job.scale.epochs,
        job.stem.display()
    );
    let started = Instant::now();
    let status = Command::new(job.adabits)
        .arg("train")
        .arg("--config")
        .arg(&job.preset)
        .args(["--strategy", "joint", "--bits", &bits, "--max-steps"])
        .arg(job.scale.stem_steps().to_string())
        .args(["--device", job.device, "--json", "--out"])
        .arg(&job.stem)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", job.adabits.display()))?;
    if !status.success() {
        return Err(format!(
            "the shared full-precision stage failed (its message is above): {}",
            job.stem.display()
        ));
    }
    job.eta
        .finished(job.scale.stem_cost(), started.elapsed().as_secs_f64());
    println!("            {}", job.eta.line());
    Ok(())
}

/// Copies the run folder `from` to `to` (no lock file): a run one grid shares with another.
fn copy_run(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    let entries =
        std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", from.display()))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        if path.is_dir() {
            copy_run(&path, &target)?;
        } else if entry.file_name() != "run.lock" {
            std::fs::copy(&path, &target).map_err(|e| {
                format!(
                    "cannot copy {} to {}: {e}",
                    path.display(),
                    target.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Runs the grid for `list` into `dir`, every run from the job's full-precision stage,
/// returning the report section.
pub(crate) fn run(job: &mut Job<'_>, list: &[u8], dir: &Path) -> Result<String, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let scale = job.scale;
    let grid = entries(list, scale);
    let runs = grid.iter().filter(|e| !e.flags.is_empty()).count();
    let mut results: Vec<(String, Value)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let mut k = 0;
    for entry in grid.iter().filter(|e| !e.flags.is_empty()) {
        k += 1;
        let out = dir.join(&entry.name);
        let _ = std::fs::remove_dir_all(&out);
        let same = job
            .done
            .iter()
            .find(|(flags, _)| *flags == entry.flags)
            .map(|(_, d)| d.clone());
        if let Some(earlier) = same {
            println!(
                "      [{k}/{runs}] {}: the same run as {}, copied",
                entry.name,
                earlier.display()
            );
            copy_run(&earlier, &out)?;
            let text = std::fs::read_to_string(out.join("results.json"))
                .map_err(|e| format!("{}: cannot read results.json: {e}", out.display()))?;
            let value: Value = serde_json::from_str(&text)
                .map_err(|e| format!("{}: unreadable results: {e}", out.display()))?;
            results.push((entry.name.clone(), value));
            continue;
        }
        println!(
            "      [{k}/{runs}] {} ({})",
            entry.name,
            entry.flags.join(" ")
        );
        let started = Instant::now();
        let output = Command::new(job.adabits)
            .arg("train")
            .arg("--config")
            .arg(&job.preset)
            .args(&entry.flags)
            .arg("--fp-stage-from")
            .arg(&job.stem)
            .args(["--device", job.device, "--json", "--out"])
            .arg(&out)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", job.adabits.display()))?;
        job.eta
            .finished(entry.cost, started.elapsed().as_secs_f64());
        if !output.status.success() {
            // A run that diverges is a result too: its cells stay empty and the report says
            // why, instead of the whole grid stopping.
            println!(
                "            {} stopped with an error (its message is above)",
                entry.name
            );
            failed.push(entry.name.clone());
            continue;
        }
        let value: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{}: unreadable results: {e}", entry.name))?;
        println!(
            "            {:.0} s; {}",
            started.elapsed().as_secs_f64(),
            job.eta.line()
        );
        job.done.push((entry.flags.clone(), out.clone()));
        results.push((entry.name.clone(), value));
    }
    let find = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    // Rows: label → per-bit top-1.
    let mut rows: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    let top1 = |bits: &Value, b: u8| bits.get(b.to_string()).and_then(|r| r["top1"].as_f64());
    let individual: Vec<Option<f64>> = list
        .iter()
        .map(|&b| find(&format!("individual-{b}")).and_then(|r| top1(&r["bits"], b)))
        .collect();
    rows.push((
        "individual (one model per bit-width)".into(),
        individual.clone(),
    ));
    for entry in grid.iter().filter(|e| e.label != "individual") {
        let Some(r) = find(&entry.name) else { continue };
        let bits = match entry.evaluation {
            Some(label) => r["evaluations"]
                .as_array()
                .and_then(|es| es.iter().find(|e| e["label"] == label))
                .map(|e| e["bits"].clone())
                .unwrap_or(Value::Null),
            None => r["bits"].clone(),
        };
        rows.push((
            entry.label.to_string(),
            list.iter().map(|&b| top1(&bits, b)).collect(),
        ));
    }
    // The cost row, from any joint run.
    let cost = find("joint-scl")
        .map(|r| r["bits"].clone())
        .unwrap_or(Value::Null);
    let mut md = String::new();
    let header: Vec<String> = list.iter().map(|b| format!("{b} bits")).collect();
    let _ = writeln!(md, "| validation top-1 (%) | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(list.len()));
    for (label, values) in &rows {
        let cells: Vec<String> = values
            .iter()
            .map(|v| v.map_or("–".into(), |v| format!("{v:.1}")))
            .collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    }
    let gbitops: Vec<String> = list
        .iter()
        .map(|&b| {
            cost.get(b.to_string())
                .and_then(|r| r["gbitops"].as_f64())
                .map_or("–".into(), |v| format!("{v:.4}"))
        })
        .collect();
    let bytes: Vec<String> = list
        .iter()
        .map(|&b| {
            cost.get(b.to_string())
                .and_then(|r| r["bytes"].as_f64())
                .map_or("–".into(), |v| format!("{v:.0}"))
        })
        .collect();
    let _ = writeln!(md, "| GBitOPs per image | {} |", gbitops.join(" | "));
    let _ = writeln!(md, "| model size (bytes) | {} |", bytes.join(" | "));
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nThese runs stopped with an error (a NaN or an infinity; see their directories), so \
             their cells are empty: {}.",
            failed.join(", ")
        );
    }
    md.push('\n');
    md.push_str(&plots(dir, list, &rows, &cost)?);
    // Progressive training: the first-trained bit-width after its own stage and at the end.
    let progressive = find("progressive").and_then(|r| {
        let evaluations = r["evaluations"].as_array()?;
        let first = top1(&evaluations.first()?["bits"], list[0])?;
        let last = top1(&evaluations.last()?["bits"], list[0])?;
        Some((first, last))
    });
    md.push_str(&findings(list, &rows, progressive, scale.val));
    let json_path = dir.join("grid.json");
    let summary = json!({
        "bits": list, "rows": rows.iter().map(|(l, v)| json!({"label": l, "top1": v})).collect::<Vec<_>>(),
        "runs": results.iter().map(|(n, v)| json!({"name": n, "results": v})).collect::<Vec<_>>(),
    });
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    Ok(md)
}

/// The loss curve of a run: `(step, {bits: loss})` from its `losses.jsonl`.
pub(crate) fn loss_curve(dir: &Path) -> Vec<(usize, serde_json::Map<String, Value>)> {
    std::fs::read_to_string(dir.join("losses.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let v: Value = serde_json::from_str(line).ok()?;
            Some((v["step"].as_u64()? as usize, v["loss"].as_object()?.clone()))
        })
        .collect()
}

/// Draws accuracy against bit-width and against BitOPs into `dir` and returns the Markdown
/// that shows them (paths relative to the report, one folder up).
fn plots(
    dir: &Path,
    list: &[u8],
    rows: &[(String, Vec<Option<f64>>)],
    cost: &Value,
) -> Result<String, String> {
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let gbitops = |b: u8| {
        cost.get(b.to_string())
            .and_then(|r| r["gbitops"].as_f64())
            .unwrap_or(f64::NAN)
    };
    let series = |x: &dyn Fn(u8) -> f64| -> Vec<Series> {
        rows.iter()
            .map(|(label, values)| Series {
                label: label.clone(),
                points: list
                    .iter()
                    .zip(values)
                    .map(|(&b, v)| (x(b), v.unwrap_or(f64::NAN)))
                    .rev()
                    .collect(),
            })
            .collect()
    };
    let chance = || {
        Some(Reference {
            label: "chance (10 classes)".into(),
            y: 10.0,
        })
    };
    let by_bits = svg(&Chart {
        title: &format!("Validation top-1 against bit-width, {{{name}}}"),
        x_label: "bit-width (weights and activations)",
        y_label: "top-1 (%)",
        series: &series(&|b| f64::from(b)),
        reference: chance(),
        x_ticks: Some(
            list.iter()
                .map(|&b| (f64::from(b), b.to_string()))
                .collect(),
        ),
        markers: true,
    });
    let by_bitops = svg(&Chart {
        title: &format!("Validation top-1 against cost, {{{name}}}"),
        x_label: "GBitOPs per image",
        y_label: "top-1 (%)",
        series: &series(&gbitops),
        reference: chance(),
        x_ticks: None,
        markers: true,
    });
    let points = loss_curve(&dir.join("joint-scl"));
    let curves: Vec<Series> = list
        .iter()
        .map(|b| Series {
            label: format!("{b} bits"),
            points: points
                .iter()
                .filter_map(|(step, losses)| {
                    Some((*step as f64, losses.get(&b.to_string())?.as_f64()?))
                })
                .collect(),
        })
        .collect();
    let losses = loss_chart(
        &format!("Training loss of the AdaBits (S-CL) run, {{{name}}}"),
        &curves,
    );
    for (file, doc) in [
        ("accuracy-vs-bits.svg", by_bits),
        ("accuracy-vs-bitops.svg", by_bitops),
        ("loss-joint-scl.svg", losses),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, doc).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(format!(
        "![top-1 against bit-width]({folder}/accuracy-vs-bits.svg)\n\n\
         ![top-1 against GBitOPs]({folder}/accuracy-vs-bitops.svg)\n\n\
         ![training loss of the AdaBits run]({folder}/loss-joint-scl.svg)\n\n"
    ))
}

/// "reproduced" or not, unless both figures are too close to chance (10 % with 10 classes) to
/// say anything.
fn verdict(holds: bool, a: f64, b: f64) -> &'static str {
    if a.max(b) < 20.0 {
        "inconclusive (near chance)"
    } else if holds {
        "reproduced"
    } else {
        "not reproduced at this scale"
    }
}

/// The paper's findings, checked against the measured rows.
fn findings(
    list: &[u8],
    rows: &[(String, Vec<Option<f64>>)],
    progressive: Option<(f64, f64)>,
    val: usize,
) -> String {
    let row = |prefix: &str| {
        rows.iter()
            .find(|(l, _)| l.starts_with(prefix))
            .map(|(_, v)| v.clone())
    };
    let mean = |v: &[Option<f64>]| {
        let vals: Vec<f64> = v.iter().flatten().copied().collect();
        (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64)
    };
    let last = list.len() - 1;
    let mut out = String::from(
        "Findings of the paper, checked on these numbers (the paper's figures are second-hand, \
         docs/method.md §9–10, and for ImageNet at full scale):\n\n",
    );
    if let (Some(ind), Some(joint)) = (row("individual"), row("joint, S-CL"))
        && let (Some(a), Some(b)) = (mean(&ind), mean(&joint))
    {
        let _ = writeln!(
            out,
            "- Joint training close to individual models: mean top-1 {b:.1} % (AdaBits) vs {a:.1} % (individual), a gap of {:+.1} points: {}. Paper: AdaBits MobileNet-V1 {{8,6,5,4}} on ImageNet within 0.3 points of the individual models at every bit-width (72.4 / 72.1 / 72.1 / 71.1 %).",
            b - a,
            verdict((b - a).abs() <= 3.0, a, b)
        );
    }
    if let (Some(scl), Some(shared)) = (row("joint, S-CL"), row("joint, shared"))
        && let (Some(a), Some(b)) = (scl[last], shared[last])
    {
        let _ = writeln!(
            out,
            "- S-CL at least as good as a shared α at the lowest bit-width ({} bits): {a:.1} % vs {b:.1} %: {}. Paper: +0.3 points at 4 bits for MobileNet-V1 on ImageNet.",
            list[last],
            verdict(a >= b - 1.0, a, b)
        );
    }
    if let (Some(plain), Some(calibrated)) = (row("direct, no"), row("direct + BN"))
        && let (Some(a), Some(b)) = (plain[last], calibrated[last])
    {
        let _ = writeln!(
            out,
            "- Direct adaptation collapsing at low bit-widths without calibration ({} bits): {a:.1} % without, {b:.1} % with BN calibration: {}. Paper: a model trained at 4 bits falls from 76.3 % to 41.1 % when run at 2 bits; calibration helps but stays below individual models.",
            list[last],
            verdict(b > a + 2.0, a, b)
        );
    }
    if let Some(scl) = row("joint, S-CL") {
        // The largest lead of a lower bit-width over a higher one, against twice the standard
        // error of the difference of two accuracies measured on `val` images.
        let mut worst: Option<(f64, u8, u8)> = None;
        for i in 0..list.len() {
            for j in i + 1..list.len() {
                if let (Some(high), Some(low)) = (scl[i], scl[j]) {
                    let lead = low - high;
                    if worst.is_none_or(|(w, _, _)| lead > w) {
                        worst = Some((lead, list[j], list[i]));
                    }
                }
            }
        }
        if let (Some((lead, low, high)), Some(m)) = (worst, mean(&scl)) {
            let p = m / 100.0;
            let noise = 200.0 * (2.0 * p * (1.0 - p) / val.max(1) as f64).sqrt();
            let _ = writeln!(
                out,
                "- Sanity check, not a finding of the paper: no lower bit-width of the AdaBits model beats a higher one beyond noise. The largest lead is {lead:+.1} points ({low} over {high} bits), noise (two standard errors of a difference on {val} images) {noise:.1} points: {}.",
                if lead <= noise {
                    "holds"
                } else {
                    "does not hold"
                }
            );
        }
    }
    if let Some((first, last)) = progressive {
        let _ = writeln!(
            out,
            "- Progressive training losing the bit-width it trained first ({} bits): {first:.1} % after its own stage, {last:.1} % after the last stage: {}. Paper: progressive training ruins the bit-widths trained earlier, with 29.5 % at the lowest (2-bit) setting.",
            list[0],
            verdict(last < first - 1.0, first, last)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<(String, Vec<Option<f64>>)> {
        let row = |label: &str, v: [f64; 3]| (label.to_string(), v.map(Some).to_vec());
        vec![
            row("individual (one model per bit-width)", [60.0, 58.0, 50.0]),
            row("direct, no BN calibration", [60.0, 30.0, 11.0]),
            row("direct + BN calibration", [60.0, 45.0, 25.0]),
            row("progressive (high to low)", [57.0, 56.0, 48.0]),
            row("joint, shared α (Vanilla AdaBits)", [59.0, 57.0, 45.0]),
            row("joint, S-CL (AdaBits)", [59.5, 58.0, 49.0]),
        ]
    }

    #[test]
    fn every_finding_is_checked_on_the_numbers() {
        let text = findings(&[4, 3, 2], &rows(), Some((60.0, 52.0)), 1000);
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("- ")).collect();
        assert_eq!(lines.len(), 5, "{text}");
        // Joint mean 55.5 vs individual 56.0: within 3 points.
        assert!(
            lines[0].contains("gap of -0.5 points: reproduced."),
            "{}",
            lines[0]
        );
        // S-CL 49.0 vs shared 45.0 at 2 bits.
        assert!(
            lines[1].contains("(2 bits): 49.0 % vs 45.0 %: reproduced."),
            "{}",
            lines[1]
        );
        assert!(lines[2].contains("11.0 % without, 25.0 % with BN calibration: reproduced."));
        // S-CL 59.5 / 58.0 / 49.0: no lower bit-width leads; the smallest deficit is -1.5.
        assert!(
            lines[3].contains("largest lead is -1.5 points (3 over 4 bits)"),
            "{}",
            lines[3]
        );
        // Noise at a mean of 55.5 % on 1000 images: 200·sqrt(2·0.555·0.445/1000) = 4.4.
        assert!(
            lines[3].contains("on 1000 images) 4.4 points: holds."),
            "{}",
            lines[3]
        );
        assert!(
            lines[4]
                .contains("60.0 % after its own stage, 52.0 % after the last stage: reproduced.")
        );
        // Each finding of the paper quotes the paper's figure.
        assert_eq!(
            lines.iter().filter(|l| l.contains("Paper:")).count(),
            4,
            "{text}"
        );
    }

    #[test]
    fn findings_the_numbers_contradict_or_cannot_decide_are_reported_as_such() {
        let mut r = rows();
        r[5].1 = vec![Some(70.0), Some(62.0), Some(78.0)];
        let text = findings(&[4, 3, 2], &r, Some((12.0, 11.0)), 1000);
        assert!(
            text.contains("largest lead is +16.0 points (2 over 3 bits)"),
            "{text}"
        );
        assert!(text.contains("does not hold."), "{text}");
        assert!(
            text.contains("a gap of +14.0 points: not reproduced at this scale."),
            "{text}"
        );
        assert!(
            text.contains("after the last stage: inconclusive (near chance)."),
            "{text}"
        );
    }

    #[test]
    fn the_plots_are_written_beside_the_runs_and_linked_from_the_report() {
        let dir = std::env::temp_dir().join(format!("xtask-plots-{}", std::process::id()));
        let dir = dir.join("grid-432");
        std::fs::create_dir_all(&dir).unwrap();
        let cost =
            json!({"4": {"gbitops": 0.0139}, "3": {"gbitops": 0.0095}, "2": {"gbitops": 0.0063}});
        let md = plots(&dir, &[4, 3, 2], &rows(), &cost).unwrap();
        assert!(md.contains("(grid-432/accuracy-vs-bits.svg)"), "{md}");
        assert!(md.contains("(grid-432/accuracy-vs-bitops.svg)"), "{md}");
        assert!(md.contains("(grid-432/loss-joint-scl.svg)"), "{md}");
        for file in ["accuracy-vs-bits.svg", "accuracy-vs-bitops.svg"] {
            let doc = std::fs::read_to_string(dir.join(file)).unwrap();
            // Six strategies of three points each, plus the chance line in the legend.
            assert_eq!(doc.matches("<circle").count(), 18, "{file}");
            assert!(doc.contains("joint, S-CL (AdaBits)") && doc.contains("chance"));
        }
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
