//! The binary under kills, signals, a second writer and bad values: what a careless or unlucky
//! user does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{adabits, assert_error, pointer, temp_dir, text};

/// Three epochs of 8 steps at {4,2}, no full-precision stage, a loss point every step.
const PRESET: &str = r#"{"model": {"width_mult": 0.25}, "data": {"kind": "synthetic", "train": 256, "val": 32, "side": 16}, "epochs": 3, "fp_epochs": 0, "log_every": 1}"#;

fn preset(name: &str) -> PathBuf {
    let path = temp_dir(name).with_extension("json");
    std::fs::write(&path, PRESET).unwrap();
    path
}

fn train_args<'a>(preset: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "train",
        "--config",
        preset.to_str().unwrap(),
        "--bits",
        "4,2",
        "--batch-size",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]
}

fn spawn(args: &[&str], crash_at: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_adabits"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(point) = crash_at {
        command.env("ADABITS_CRASH_AT", point);
    }
    command.spawn().unwrap()
}

/// Waits until `out`'s loss curve has a point: the run is past its first step.
fn wait_for_a_step(child: &mut Child, out: &Path) {
    let curve = out.join("losses.jsonl");
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::read_to_string(&curve).map_or(true, |t| t.is_empty()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before its first step: {status}");
        }
        assert!(Instant::now() < deadline, "no step within 600 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An epoch record's score: its mean validation top-1 over the bit-widths (the default
/// criterion).
fn score(record: &serde_json::Value) -> f64 {
    let val = record["val"].as_object().unwrap();
    val.values()
        .map(|s| s["top1"].as_f64().unwrap())
        .sum::<f64>()
        / val.len() as f64
}

/// Each epoch's score in `metrics.jsonl`.
fn scores(out: &Path) -> Vec<f64> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| score(&serde_json::from_str(line).unwrap()))
        .collect()
}

/// A checkpoint's `state.json`.
fn state(out: &Path, name: &str) -> serde_json::Value {
    let path = out.join("checkpoints").join(name).join("state.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// What must hold after a crash at any instant: the pointers name complete folders, and the
/// best one holds the best score of the epochs the latest checkpoint records.
fn check_kept(out: &Path, what: &str) {
    let Some(latest) = pointer(out, "latest") else {
        return;
    };
    for name in [Some(latest.clone()), pointer(out, "best")]
        .into_iter()
        .flatten()
    {
        let dir = out.join("checkpoints").join(&name);
        for file in [
            "model.safetensors",
            "optimizer.safetensors",
            "state.json",
            "checksums.json",
        ] {
            assert!(dir.join(file).is_file(), "{what}: {name}/{file} is missing");
        }
    }
    let latest = state(out, &latest);
    let recorded: Vec<f64> = latest["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(score)
        .collect();
    let best_score = recorded.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    match pointer(out, "best") {
        Some(best) => {
            assert_eq!(
                state(out, &best)["best"].as_f64(),
                Some(best_score),
                "{what}"
            );
            assert_eq!(latest["best"].as_f64(), Some(best_score), "{what}");
        }
        None => assert!(recorded.is_empty(), "{what}: no best after a scored epoch"),
    }
}

/// A SafeTensors file's tensor table and data, without its metadata (whose key order varies
/// from process to process).
fn tensors(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut table: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    table.as_object_mut().unwrap().remove("__metadata__");
    (table, bytes[8 + n..].to_vec())
}

/// The run's figures that must not depend on where it was interrupted.
fn outcome(
    out: &Path,
) -> (
    serde_json::Value,
    Vec<f64>,
    (serde_json::Value, Vec<u8>),
    String,
) {
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let latest = pointer(out, "latest").unwrap();
    let model = tensors(
        &out.join("checkpoints")
            .join(&latest)
            .join("model.safetensors"),
    );
    (
        results["evaluations"].clone(),
        scores(out),
        model,
        pointer(out, "best").unwrap(),
    )
}

/// Kills a child `adabits train` at every step of writing a checkpoint (through the crash
/// points) and at random instants (`kill -9`), then resumes it: every kept checkpoint is intact
/// after each crash, the best one is never lost, and the resumed run ends exactly as the
/// uninterrupted one.
#[cfg(unix)]
#[test]
fn a_kill_at_any_point_keeps_every_kept_checkpoint_and_the_resume_is_exact() {
    let preset = preset("crash");
    let reference = temp_dir("crash-reference");
    let whole = adabits(&train_args(&preset, &reference));
    assert!(whole.status.success(), "{}", text(&whole.stderr));
    let expected = outcome(&reference);
    let mut crashes = 0;
    let mut kills: Vec<(String, Option<u64>)> = Vec::new();
    for point in [
        "checkpoint.partial",
        "checkpoint.written",
        "checkpoint.renamed",
        "checkpoint.pointed",
    ] {
        for hit in 1..=3 {
            kills.push((format!("{point}:{hit}"), None));
        }
    }
    // And at instants spread over a run (milliseconds after the first step).
    for ms in [0, 40, 90, 150, 230, 330, 460, 620] {
        kills.push((format!("kill -9 at +{ms} ms"), Some(ms)));
    }
    for (what, after) in &kills {
        let out = temp_dir("crash-run");
        let args = train_args(&preset, &out);
        let mut child = match after {
            None => spawn(&args, Some(what)),
            Some(ms) => {
                let mut child = spawn(&args, None);
                wait_for_a_step(&mut child, &out);
                std::thread::sleep(Duration::from_millis(*ms));
                signal(&child, "-KILL");
                child
            }
        };
        let status = child.wait().unwrap();
        if !status.success() {
            crashes += 1;
        }
        check_kept(&out, what);
        let mut resume = args.clone();
        resume.push("--resume");
        let done = adabits(&resume);
        assert!(done.status.success(), "{what}: {}", text(&done.stderr));
        check_kept(&out, what);
        assert!(outcome(&out) == expected, "{what}: the resumed run differs");
        std::fs::remove_dir_all(&out).unwrap();
    }
    // Every crash point fired (a point that is never reached would test nothing).
    assert!(
        crashes >= 12,
        "only {crashes} of {} runs crashed",
        kills.len()
    );
    std::fs::remove_dir_all(&reference).unwrap();
    std::fs::remove_file(&preset).unwrap();
}

/// SIGTERM stops a run like Ctrl-C, without the Ctrl-C message, and the exit status says so;
/// a second writer meanwhile is refused, naming the first one's pid.
#[cfg(unix)]
#[test]
fn sigterm_exits_143_and_a_second_writer_is_refused_while_a_run_is_live() {
    let preset = preset("sigterm");
    let out = temp_dir("sigterm");
    let args = train_args(&preset, &out);
    let mut child = spawn(&args, None);
    wait_for_a_step(&mut child, &out);
    let second = adabits(&args);
    assert_eq!(second.status.code(), Some(2));
    let err = text(&second.stderr);
    assert!(
        err.contains(&format!("is in use by process {}", child.id())),
        "{err}"
    );
    let mut resume = args.clone();
    resume.push("--resume");
    let err = text(&adabits(&resume).stderr);
    assert!(err.contains("is in use by process"), "{err}");
    signal(&child, "-TERM");
    let stopped = child.wait_with_output().unwrap();
    let err = text(&stopped.stderr);
    assert_eq!(stopped.status.code(), Some(143), "{err}");
    assert!(
        err.contains("terminated: stopping after this step"),
        "{err}"
    );
    assert!(!err.contains("Ctrl-C"), "{err}");
    let results: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(results["status"], "interrupted");
    // Released with the process: the run resumes.
    let done = adabits(&resume);
    assert!(done.status.success(), "{}", text(&done.stderr));
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&preset).unwrap();
}

/// Every bad value of the issue's list, from a flag or a preset: a one-line error (exit 2)
/// naming the flag or the preset field, what was expected and what was found, never a panic.
#[test]
fn bad_values_are_named_errors() {
    let preset_file = temp_dir("bad-preset").with_extension("json");
    let p = preset_file.to_str().unwrap();
    let flags: &[(&[&str], &str)] = &[
        (
            &["train", "--width", "0"],
            "'--width <W>': expected a finite number above 0",
        ),
        (&["train", "--width=-1"], "'--width <W>'"),
        (
            &["train", "--width", "1e-9"],
            "--width (model.width_mult): expected a number of at least 0.01",
        ),
        (
            &["train", "--width", "1e6"],
            "`model.width_mult`: expected a model that fits in this machine's",
        ),
        (
            &["train", "--lr", "NaN"],
            "'--lr <LR>': expected a finite number above 0",
        ),
        (&["train", "--lr", "inf"], "'--lr <LR>'"),
        (
            &["train", "--clip-grad-norm", "NaN"],
            "'--clip-grad-norm <NORM>': expected a finite number of at least 0",
        ),
        (&["train", "--gamma=-0.1"], "'--gamma <GAMMA>'"),
        (
            &["train", "--weight-decay=-1"],
            "'--weight-decay <WEIGHT_DECAY>'",
        ),
        (
            &["train", "--max-steps", "0"],
            "'--max-steps <N>': expected at least 1",
        ),
        (
            &["train", "--batch-size", "0"],
            "'--batch-size <BATCH_SIZE>'",
        ),
        (
            &["select", "--artifact", "m.abq", "--max-bytes", "NaN"],
            "'--max-bytes <BYTES>'",
        ),
        (
            &["select", "--artifact", "m.abq", "--min-accuracy", "nan"],
            "'--min-accuracy <PERCENT>'",
        ),
        (
            &[
                "verify",
                "--artifact",
                "m.abq",
                "--checkpoint",
                "r",
                "--tolerance",
                "NaN",
            ],
            "'--tolerance <TOLERANCE>'",
        ),
        (
            &["eval", "--checkpoint", "r", "--calibrate", "0"],
            "'--calibrate <N>': expected at least 1",
        ),
        (
            &["profile", "--input", "100000000"],
            "'--input <INPUT>': expected a side in pixels from 8 to 16384",
        ),
        (
            &["profile", "--width", "1e6"],
            "--width 1000000: invalid configuration: `model.width_mult`",
        ),
        (
            &["bench", "--batch", "0"],
            "'--batch <BATCH>': expected at least 1",
        ),
    ];
    let presets: &[(&str, &str)] = &[
        (
            r#"{"data": {"kind": "synthetic", "classes": 0}}"#,
            "`data.classes`: expected 2 to 65536, found 0",
        ),
        (
            r#"{"data": {"kind": "synthetic", "classes": 1}}"#,
            "`data.classes`",
        ),
        (
            r#"{"data": {"kind": "synthetic", "classes": 70000}}"#,
            "`data.classes`",
        ),
        (
            r#"{"data": {"kind": "synthetic", "side": 0}}"#,
            "`data.side`: expected at least 8",
        ),
        (
            r#"{"data": {"kind": "synthetic", "side": 4}}"#,
            "`data.side`",
        ),
        (
            r#"{"data": {"kind": "synthetic", "val": 0}}"#,
            "`data.val`: expected at least 1 sample, found 0",
        ),
        (
            r#"{"data": {"kind": "synthetic", "noise": -1}}"#,
            "`data.noise`",
        ),
        (
            r#"{"data": {"kind": "image_folder", "dir": "/x", "crop": 0}}"#,
            "`data.crop`: expected at least 8",
        ),
        (r#"{"model": {"width_mult": 0}}"#, "`model.width_mult`"),
        (
            r#"{"model": {"quant": {"weight_schme": "centered"}}}"#,
            "unknown field `model.quant.weight_schme`",
        ),
        (
            r#"{"model": {"widht_mult": 1}}"#,
            "unknown field `model.widht_mult`",
        ),
        (
            r#"{"strategy": {"kind": "joint", "distil": true}}"#,
            "unknown field `distil`",
        ),
        (
            r#"{"strategy": {"kind": "direct", "distill": true}}"#,
            "unknown field `distill` for the kind \"direct\"",
        ),
        (r#"{"optim": {"momentum": -0.5}}"#, "`optim.momentum`"),
        (r#"{"optim": {"weight_decay": -1}}"#, "`optim.weight_decay`"),
        (
            r#"{"optim": {"schedule": {"kind": "multi_step", "milestones": [1], "gamma": -1}}}"#,
            "`optim.schedule.gamma`",
        ),
        (
            r#"{"optim": {"schedule": {"kind": "cosine", "gamma": 0.1}}}"#,
            "unknown field `gamma` for the kind \"cosine\"",
        ),
        (
            r#"{"calibration_batches": 0}"#,
            "`calibration_batches`: expected at least 1",
        ),
        (
            r#"{"strategy": {"kind": "progressive"}, "finetune_epochs": 0}"#,
            "`finetune_epochs`",
        ),
        (r#"{"max_steps": 0}"#, "`max_steps`: expected at least 1"),
        (
            r#"[1, 2]"#,
            "expected a JSON object of configuration fields, found an array",
        ),
        (r#""resnet20""#, "found a string"),
    ];
    for (args, expected) in flags {
        assert_error(args, expected);
    }
    let out = temp_dir("bad-preset-out");
    for (json, expected) in presets {
        std::fs::write(&preset_file, json).unwrap();
        assert_error(
            &["train", "--config", p, "--out", out.to_str().unwrap()],
            expected,
        );
        assert!(
            !out.join("config.json").exists(),
            "{json}: a run was started"
        );
    }
    std::fs::remove_file(&preset_file).unwrap();
}

/// A run stopped before its first scored epoch has a `latest` checkpoint and no `best`: eval
/// says so and how to read `latest`. Its banner announces no full-precision stage it does not
/// have, and an OS error on export is printed once.
#[test]
fn eval_of_a_run_without_a_best_checkpoint_says_to_use_latest() {
    let preset = preset("no-best");
    let out = temp_dir("no-best");
    let mut args = train_args(&preset, &out);
    args.retain(|a| *a != "--json");
    args.extend(["--max-steps", "2"]);
    let run = adabits(&args);
    let banner = text(&run.stderr);
    assert!(run.status.success(), "{banner}");
    // The preset has no full-precision stage: the banner announces none.
    assert!(
        banner.contains("(joint, 3 epochs, gradient clipped to norm 5)")
            && !banner.contains("full precision")
            && !banner.contains("full-precision"),
        "{banner}"
    );
    let eval = adabits(&["eval", "--checkpoint", out.to_str().unwrap()]);
    let err = text(&eval.stderr);
    assert_eq!(eval.status.code(), Some(2), "{err}");
    assert!(
        err.contains("has no `best` checkpoint yet") && err.contains("hint: pass --which latest"),
        "{err}"
    );
    let latest = adabits(&[
        "eval",
        "--checkpoint",
        out.to_str().unwrap(),
        "--which",
        "latest",
    ]);
    assert!(latest.status.success(), "{}", text(&latest.stderr));
    // An OS error is printed once, not once per level of the error chain.
    let export = adabits(&[
        "export",
        "--checkpoint",
        out.to_str().unwrap(),
        "--which",
        "latest",
        "--no-eval",
        "--out",
        "/nonexistent/folder/m.abq",
    ]);
    let err = text(&export.stderr);
    assert_eq!(export.status.code(), Some(2), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&preset).unwrap();
}
