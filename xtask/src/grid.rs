//! The paper's experiment grid at small scale: every run is an `adabits train` of the release
//! binary, and the report is built from the runs' `results.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{Value, json};

use crate::eta::Eta;
use crate::findings::{Row, findings, noise, spread_section};
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
pub(crate) struct Entry {
    /// Row label in the report.
    pub(crate) label: String,
    /// Run directory name.
    pub(crate) name: String,
    /// Flags of `adabits train`.
    pub(crate) flags: Vec<String>,
    /// Which evaluation of results.json fills the row (by label), or the headline.
    pub(crate) evaluation: Option<&'static str>,
    /// What the run costs after the shared full-precision stage, in passes ([`Eta`]).
    pub(crate) cost: f64,
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
    /// Seeds of the key rows (individual, joint S-CL): 1 for the main grid's alone.
    pub(crate) seeds: u64,
    /// The full-precision stage of each further seed, once trained.
    pub(crate) seed_stems: Vec<(u64, PathBuf)>,
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
pub(crate) fn entries(list: &[u8], scale: &Scale) -> Vec<Entry> {
    let n = list.len();
    let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let mut out = Vec::new();
    for &b in list {
        out.push(Entry {
            label: "individual".into(),
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
        label: "direct, no BN calibration".into(),
        name: "direct".into(),
        flags: with("direct", &[]),
        evaluation: Some("direct"),
        // The epochs, then every bit-width evaluated twice (plain and calibrated).
        cost: scale.cost(scale.epochs, 1, n) + scale.cost(1, 0, 2 * n),
    });
    out.push(Entry {
        label: "direct + BN calibration".into(),
        name: "direct".into(),
        flags: Vec::new(),
        evaluation: Some("direct + BN calibration"),
        cost: 0.0,
    });
    let stages = scale.epochs + (n - 1) * scale.finetune_epochs();
    out.push(Entry {
        label: format!(
            "progressive (high to low; BN-calibrated; {} more epochs)",
            (n - 1) * scale.finetune_epochs()
        ),
        name: "progressive".into(),
        flags: with("progressive", &[]),
        evaluation: None,
        cost: scale.cost(stages, 1, n) + scale.cost(n, 0, n),
    });
    out.push(Entry {
        label: "joint, shared α (Vanilla AdaBits)".into(),
        name: "joint-shared-alpha".into(),
        flags: with("joint", &["--shared-alpha"]),
        evaluation: None,
        cost: scale.cost(scale.epochs, n, n),
    });
    out.push(Entry {
        label: "joint, S-CL (AdaBits)".into(),
        name: "joint-scl".into(),
        flags: with("joint", &[]),
        evaluation: None,
        cost: scale.cost(scale.epochs, n, n),
    });
    out.push(Entry {
        label: "full precision".into(),
        name: FULL_PRECISION.into(),
        flags: vec![
            "--strategy".into(),
            "individual".into(),
            "--bits".into(),
            "32".into(),
        ],
        evaluation: None,
        cost: scale.cost(scale.epochs, 1, 1),
    });
    out
}

/// The run folder of the full-precision reference: the same schedule at 32 bits.
const FULL_PRECISION: &str = "full-precision";

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
    let stem = job.stem.clone();
    train_stem_into(job, list, 0, &stem)
}

/// The full-precision stage of seed `seed` into `stem`.
pub(crate) fn train_stem_into(
    job: &mut Job<'_>,
    list: &[u8],
    seed: u64,
    stem: &Path,
) -> Result<(), String> {
    let bits = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let _ = std::fs::remove_dir_all(stem);
    println!(
        "      the full-precision stage of seed {seed}, {} epochs, trained once for its runs ({})",
        job.scale.epochs,
        stem.display()
    );
    let started = Instant::now();
    let status = Command::new(job.adabits)
        .arg("train")
        .arg("--config")
        .arg(&job.preset)
        .args(["--strategy", "joint", "--bits", &bits, "--max-steps"])
        .arg(job.scale.stem_steps().to_string())
        .args(["--seed", &seed.to_string()])
        .args(["--device", job.device, "--json", "--out"])
        .arg(stem)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", job.adabits.display()))?;
    if !status.success() {
        return Err(format!(
            "the shared full-precision stage failed (its message is above): {}",
            stem.display()
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

/// Trains one run of the grid (`entry`'s flags and `extra` ones) into `out` from the
/// full-precision stage in `stem`, or copies it from the job's identical earlier run;
/// `None` when it stopped with an error (a result too: its cells stay empty and the report
/// says why, instead of the whole grid stopping).
pub(crate) fn cell(
    job: &mut Job<'_>,
    place: &str,
    entry: &Entry,
    extra: &[String],
    stem: &Path,
    out: &Path,
) -> Result<Option<Value>, String> {
    let flags: Vec<String> = entry.flags.iter().chain(extra).cloned().collect();
    let _ = std::fs::remove_dir_all(out);
    let same = job
        .done
        .iter()
        .find(|(f, _)| *f == flags)
        .map(|(_, d)| d.clone());
    if let Some(earlier) = same {
        println!(
            "      [{place}] {}: the same run as {}, copied",
            entry.name,
            earlier.display()
        );
        copy_run(&earlier, out)?;
        let text = std::fs::read_to_string(out.join("results.json"))
            .map_err(|e| format!("{}: cannot read results.json: {e}", out.display()))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: unreadable results: {e}", out.display()))?;
        return Ok(Some(value));
    }
    println!("      [{place}] {} ({})", entry.name, flags.join(" "));
    let started = Instant::now();
    let output = Command::new(job.adabits)
        .arg("train")
        .arg("--config")
        .arg(&job.preset)
        .args(&flags)
        .arg("--fp-stage-from")
        .arg(stem)
        .args(["--device", job.device, "--json", "--out"])
        .arg(out)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", job.adabits.display()))?;
    job.eta
        .finished(entry.cost, started.elapsed().as_secs_f64());
    if !output.status.success() {
        println!(
            "            {} stopped with an error (its message is above)",
            entry.name
        );
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{}: unreadable results: {e}", entry.name))?;
    println!(
        "            {:.0} s; {}",
        started.elapsed().as_secs_f64(),
        job.eta.line()
    );
    job.done.push((flags, out.to_path_buf()));
    Ok(Some(value))
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
    let stem = job.stem.clone();
    for entry in grid.iter().filter(|e| !e.flags.is_empty()) {
        k += 1;
        let out = dir.join(&entry.name);
        match cell(job, &format!("{k}/{runs}"), entry, &[], &stem, &out)? {
            Some(value) => results.push((entry.name.clone(), value)),
            None => failed.push(entry.name.clone()),
        }
    }
    let find = |name: &str| results.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let field =
        |bits: &Value, b: u8, name: &str| bits.get(b.to_string()).and_then(|r| r[name].as_f64());
    // Each row with its own model's top-1 and cost at each bit-width.
    let mut rows: Vec<Row> = Vec::new();
    let individual = |name: &str| -> Vec<Option<f64>> {
        list.iter()
            .map(|&b| find(&format!("individual-{b}")).and_then(|r| field(&r["bits"], b, name)))
            .collect()
    };
    rows.push(Row {
        label: "individual (one model per bit-width)".into(),
        top1: individual("top1"),
        gbitops: individual("gbitops"),
    });
    for entry in grid
        .iter()
        .filter(|e| e.label != "individual" && e.name != FULL_PRECISION)
    {
        let Some(r) = find(&entry.name) else { continue };
        let bits = match entry.evaluation {
            Some(label) => r["evaluations"]
                .as_array()
                .and_then(|es| es.iter().find(|e| e["label"] == label))
                .map(|e| e["bits"].clone())
                .unwrap_or(Value::Null),
            None => r["bits"].clone(),
        };
        rows.push(Row {
            label: entry.label.clone(),
            top1: list.iter().map(|&b| field(&bits, b, "top1")).collect(),
            gbitops: list.iter().map(|&b| field(&bits, b, "gbitops")).collect(),
        });
    }
    let full_precision = find(FULL_PRECISION).and_then(|r| r["bits"]["32"]["top1"].as_f64());
    // The cost rows, from the AdaBits run (every row's model has the same layers).
    let cost = find("joint-scl")
        .map(|r| r["bits"].clone())
        .unwrap_or(Value::Null);
    let mut md = String::new();
    let header: Vec<String> = list.iter().map(|b| format!("{b} bits")).collect();
    let _ = writeln!(md, "| validation top-1 (%) | {} |", header.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(list.len()));
    for row in &rows {
        let cells: Vec<String> = row
            .top1
            .iter()
            .map(|v| v.map_or("–".into(), |v| format!("{v:.1}")))
            .collect();
        let _ = writeln!(md, "| {} | {} |", row.label, cells.join(" | "));
    }
    if let Some(fp) = full_precision {
        let _ = writeln!(
            md,
            "| full precision, for reference (one 32-bit model, the same schedule) | {} |",
            vec![format!("{fp:.1}"); list.len()].join(" | ")
        );
    }
    let cost_cells = |name: &str, digits: usize| -> String {
        list.iter()
            .map(|&b| field(&cost, b, name).map_or("–".into(), |v| format!("{v:.digits$}")))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let _ = writeln!(md, "| GBitOPs per image | {} |", cost_cells("gbitops", 4));
    let _ = writeln!(md, "| model size (bytes) | {} |", cost_cells("bytes", 0));
    let _ = writeln!(
        md,
        "\nThe progressive row is each bit-width after the last fine-tuning stage with its \
         BatchNorm re-estimated, and its model trained {} epochs more than the others (the \
         fine-tuning stages, at a tenth of the learning rate); the direct rows are one model \
         trained at {} bits. A difference of less than about {:.1} points between two cells \
         is within noise (two standard errors of a difference on {} validation images).",
        (list.len() - 1) * scale.finetune_epochs(),
        list[0],
        {
            let cells: Vec<f64> = rows
                .iter()
                .flat_map(|r| r.top1.iter().flatten())
                .copied()
                .collect();
            let mean = cells.iter().sum::<f64>() / cells.len().max(1) as f64;
            noise(mean, mean, scale.val)
        },
        scale.val
    );
    if !failed.is_empty() {
        let _ = writeln!(
            md,
            "\nThese runs stopped with an error (a NaN or an infinity; see their directories), so \
             their cells are empty: {}.",
            failed.join(", ")
        );
    }
    md.push('\n');
    md.push_str(&plots(dir, list, &rows, full_precision)?);
    // Progressive training: the first-trained bit-width after its own stage and at the end.
    let progressive = find("progressive").and_then(|r| {
        let evaluations = r["evaluations"].as_array()?;
        let first = field(&evaluations.first()?["bits"], list[0], "top1")?;
        let last = field(&evaluations.last()?["bits"], list[0], "top1")?;
        Some((first, last))
    });
    let seeds = crate::seeds::seed_runs(job, list, dir, &rows)?;
    md.push_str(&findings(
        list,
        &rows,
        progressive,
        scale.val,
        seeds.as_ref(),
    ));
    if let Some(seeds) = &seeds {
        md.push_str(&spread_section(list, seeds));
    }
    let json_path = dir.join("grid.json");
    let mut json_rows: Vec<Value> = rows
        .iter()
        .map(|r| json!({"label": r.label, "top1": r.top1, "gbitops": r.gbitops}))
        .collect();
    if let Some(fp) = full_precision {
        json_rows.push(json!({"label": "full precision", "bits": 32, "top1": fp}));
    }
    let summary = json!({
        "bits": list, "rows": json_rows,
        "seeds": seeds.map(|s| json!({
            "count": job.seeds, "individual": s.individual, "joint_scl": s.joint,
            "gaps": s.gaps(),
        })),
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

/// Draws accuracy against bit-width and against each row's own BitOPs into `dir`, with chance
/// and the full-precision reference as marked lines, and the AdaBits run's loss curve with its
/// full-precision stage; returns the Markdown that shows them (paths relative to the report,
/// one folder up).
fn plots(
    dir: &Path,
    list: &[u8],
    rows: &[Row],
    full_precision: Option<f64>,
) -> Result<String, String> {
    let folder = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = list.iter().map(u8::to_string).collect::<Vec<_>>().join(",");
    let series = |x: &dyn Fn(&Row, usize) -> f64| -> Vec<Series> {
        rows.iter()
            .map(|row| Series {
                label: row.label.clone(),
                points: (0..list.len())
                    .map(|i| (x(row, i), row.top1[i].unwrap_or(f64::NAN)))
                    .rev()
                    .collect(),
            })
            .collect()
    };
    let references = || {
        let mut r = vec![Reference {
            label: "chance (10 classes)".into(),
            y: 10.0,
            fit: false,
        }];
        if let Some(fp) = full_precision {
            r.push(Reference {
                label: "full precision".into(),
                y: fp,
                fit: true,
            });
        }
        r
    };
    let by_bits = svg(&Chart {
        title: &format!("Validation top-1 against bit-width, {{{name}}}"),
        x_label: "bit-width (weights and activations)",
        y_label: "top-1 (%)",
        series: &series(&|_, i| f64::from(list[i])),
        references: references(),
        x_ticks: Some(
            list.iter()
                .map(|&b| (f64::from(b), b.to_string()))
                .collect(),
        ),
        markers: true,
    });
    let by_bitops = svg(&Chart {
        title: &format!("Validation top-1 against cost, {{{name}}}"),
        x_label: "GBitOPs per image (each row's own model)",
        y_label: "top-1 (%)",
        series: &series(&|row, i| row.gbitops[i].unwrap_or(f64::NAN)),
        references: references(),
        x_ticks: None,
        markers: true,
    });
    let points = loss_curve(&dir.join("joint-scl"));
    let keys = std::iter::once(("32".to_string(), "full-precision stage".to_string()))
        .chain(list.iter().map(|b| (b.to_string(), format!("{b} bits"))));
    let curves: Vec<Series> = keys
        .map(|(key, label)| Series {
            label,
            points: points
                .iter()
                .filter_map(|(step, losses)| Some((*step as f64, losses.get(&key)?.as_f64()?)))
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    let losses = loss_chart(
        &format!(
            "Training loss of the AdaBits (S-CL) run, {{{name}}}, from its full-precision stage"
        ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::tests::rows;

    #[test]
    fn the_plots_are_written_beside_the_runs_and_linked_from_the_report() {
        let dir = std::env::temp_dir().join(format!("xtask-plots-{}", std::process::id()));
        let dir = dir.join("grid-432");
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = rows();
        // A row's cost is its own: the BitOPs chart places it there.
        r[1].gbitops[0] = Some(0.0201);
        let md = plots(&dir, &[4, 3, 2], &r, Some(65.0)).unwrap();
        assert!(md.contains("(grid-432/accuracy-vs-bits.svg)"), "{md}");
        assert!(md.contains("(grid-432/accuracy-vs-bitops.svg)"), "{md}");
        assert!(md.contains("(grid-432/loss-joint-scl.svg)"), "{md}");
        for file in ["accuracy-vs-bits.svg", "accuracy-vs-bitops.svg"] {
            let doc = std::fs::read_to_string(dir.join(file)).unwrap();
            // Six strategies of three points each, chance and full precision in the legend.
            assert_eq!(doc.matches("<circle").count(), 18, "{file}");
            assert!(doc.contains("joint, S-CL (AdaBits)") && doc.contains("chance"));
            assert!(doc.contains(">full precision<"), "{file}");
        }
        let doc = std::fs::read_to_string(dir.join("accuracy-vs-bitops.svg")).unwrap();
        assert!(
            doc.contains(">0.02<"),
            "the x axis reaches the direct row's own cost"
        );
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
