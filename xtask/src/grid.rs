//! The paper's experiment grid at small scale: every run is an `adabits train` of the release
//! binary, and the report is built from the runs' `results.json`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

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
    /// The default: about 10 minutes of training on 2 cores.
    pub(crate) const DEFAULT: Scale = Scale {
        train: 6400,
        val: 1000,
        side: 16,
        width: 0.25,
        epochs: 2,
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
}

fn entries(list: &[u8]) -> Vec<Entry> {
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
    });
    out.push(Entry {
        label: "direct + BN calibration",
        name: "direct".into(),
        flags: Vec::new(),
        evaluation: Some("direct + BN calibration"),
    });
    out.push(Entry {
        label: "progressive (high to low)",
        name: "progressive".into(),
        flags: with("progressive", &[]),
        evaluation: None,
    });
    out.push(Entry {
        label: "joint, shared α (Vanilla AdaBits)",
        name: "joint-shared-alpha".into(),
        flags: with("joint", &["--shared-alpha"]),
        evaluation: None,
    });
    out.push(Entry {
        label: "joint, S-CL (AdaBits)",
        name: "joint-scl".into(),
        flags: with("joint", &[]),
        evaluation: None,
    });
    out
}

/// Runs the grid for `list` with the binary `adabits` into `dir`, returning the report section.
pub(crate) fn run(
    adabits: &Path,
    device: &str,
    list: &[u8],
    scale: &Scale,
    dir: &Path,
) -> Result<String, String> {
    let preset = dir.join("preset.json");
    let preset_json = json!({
        "model": {"arch": "resnet20", "width_mult": scale.width},
        "data": {"kind": "synthetic", "train": scale.train, "val": scale.val, "side": scale.side},
        "epochs": scale.epochs,
        "batch_size": scale.batch,
    });
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    std::fs::write(
        &preset,
        serde_json::to_string_pretty(&preset_json).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", preset.display()))?;
    let grid = entries(list);
    let runs = grid.iter().filter(|e| !e.flags.is_empty()).count();
    let mut results: Vec<(String, Value)> = Vec::new();
    let mut k = 0;
    for entry in grid.iter().filter(|e| !e.flags.is_empty()) {
        k += 1;
        let out = dir.join(&entry.name);
        let _ = std::fs::remove_dir_all(&out);
        println!(
            "      [{k}/{runs}] {} ({})",
            entry.name,
            entry.flags.join(" ")
        );
        let started = Instant::now();
        let output = Command::new(adabits)
            .arg("train")
            .arg("--config")
            .arg(&preset)
            .args(&entry.flags)
            .args(["--device", device, "--json", "--out"])
            .arg(&out)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", adabits.display()))?;
        if !output.status.success() {
            return Err(format!(
                "adabits train for {} failed:\n{}",
                entry.name,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let value: Value = serde_json::from_slice(&output.stdout)
            .map_err(|e| format!("{}: unreadable results: {e}", entry.name))?;
        println!("            {:.0} s", started.elapsed().as_secs_f64());
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
    md.push('\n');
    // Progressive training: the first-trained bit-width after its own stage and at the end.
    let progressive = find("progressive").and_then(|r| {
        let evaluations = r["evaluations"].as_array()?;
        let first = top1(&evaluations.first()?["bits"], list[0])?;
        let last = top1(&evaluations.last()?["bits"], list[0])?;
        Some((first, last))
    });
    md.push_str(&findings(list, &rows, progressive));
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
    let mut out = String::from("Findings of the paper, checked on these numbers:\n\n");
    if let (Some(ind), Some(joint)) = (row("individual"), row("joint, S-CL"))
        && let (Some(a), Some(b)) = (mean(&ind), mean(&joint))
    {
        let _ = writeln!(
            out,
            "- Joint training close to individual models: mean top-1 {b:.1} % (AdaBits) vs {a:.1} % (individual), a gap of {:+.1} points: {}.",
            b - a,
            verdict((b - a).abs() <= 3.0, a, b)
        );
    }
    if let (Some(scl), Some(shared)) = (row("joint, S-CL"), row("joint, shared"))
        && let (Some(a), Some(b)) = (scl[last], shared[last])
    {
        let _ = writeln!(
            out,
            "- S-CL at least as good as a shared α at the lowest bit-width ({} bits): {a:.1} % vs {b:.1} %: {}.",
            list[last],
            verdict(a >= b - 1.0, a, b)
        );
    }
    if let (Some(plain), Some(calibrated)) = (row("direct, no"), row("direct + BN"))
        && let (Some(a), Some(b)) = (plain[last], calibrated[last])
    {
        let _ = writeln!(
            out,
            "- Direct adaptation collapsing at low bit-widths without calibration ({} bits): {a:.1} % without, {b:.1} % with BN calibration: {}.",
            list[last],
            verdict(b > a + 2.0, a, b)
        );
    }
    if let Some((first, last)) = progressive {
        let _ = writeln!(
            out,
            "- Progressive training losing the bit-width it trained first ({} bits): {first:.1} % after its own stage, {last:.1} % after the last stage: {}.",
            list[0],
            verdict(last < first - 1.0, first, last)
        );
    }
    out
}

/// Builds the release binary with `features` and returns its path.
pub(crate) fn build(root: &Path, features: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "adabits-cli",
            "--no-default-features",
        ])
        .args(["--features", features])
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("building the adabits binary failed".into());
    }
    Ok(root.join("target/release/adabits"))
}
