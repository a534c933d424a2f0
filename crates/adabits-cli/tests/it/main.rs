//! End-to-end tests of the `adabits` binary.

use std::process::{Command, Output};

mod reliability;

pub(crate) fn adabits(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adabits"))
        .args(args)
        .output()
        .expect("the adabits binary runs")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_numerics_passes_every_case_and_reports_json() {
    let out = adabits(&["check-numerics", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["passed"], 23, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["cases"].as_array().unwrap().len(), 23);
}

#[test]
fn check_numerics_table_ends_with_a_count() {
    let out = adabits(&["check-numerics"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("tv8_joint_step_switchable_alpha"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .last()
            .unwrap()
            .starts_with("23 passed, 0 failed"),
        "{stdout}"
    );
}

#[test]
fn a_missing_vectors_file_is_an_error_line_and_a_hint() {
    let out = adabits(&["check-numerics", "--vectors", "/nonexistent/tv.json"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with("error: cannot read test vectors from /nonexistent/tv.json"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("hint: pass --vectors FILE"),
        "{stderr}"
    );
}

#[test]
fn a_failing_case_gives_a_non_zero_exit() {
    let dir = std::env::temp_dir().join(format!("adabits-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.json");
    let original =
        std::fs::read_to_string(adabits_quant::conformance::repo_vectors_path()).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["cases"][0]["expected_outputs"]["q"]["data"][1] = serde_json::json!(0.5);
    std::fs::write(&path, json.to_string()).unwrap();
    let out = adabits(&["check-numerics", "--vectors", path.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("tv1_qk_original_b1") && stdout.contains("FAILED"),
        "{stdout}"
    );
    assert!(stdout.contains("22 passed, 1 failed"), "{stdout}");
}

#[test]
fn bad_flags_are_rejected_with_the_expected_values() {
    let out = adabits(&["bench", "--bits", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("expected a bit-width (1 to 16, or 32)"),
        "{stderr}"
    );
    let out = adabits(&["check-numerics", "--device", "tpu"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("possible values"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn threads_sizes_the_pool_and_a_bad_count_is_named() {
    let out = adabits(&[
        "--threads",
        "1",
        "bench",
        "--json",
        "--iters",
        "1",
        "--batch",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["threads"], 1, "{json}");
    assert_error(&["bench", "--threads", "0"], "--threads");
}

#[test]
fn bench_measures_every_workload() {
    let out = adabits(&["bench", "--json", "--iters", "1", "--batch", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "{json}");
    assert!(
        results[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("host memory copy"),
        "{json}"
    );
    for r in results {
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn bench_times_a_training_step_and_every_bit_widths_evaluation() {
    let out = adabits(&[
        "bench", "--json", "--iters", "1", "--batch", "4", "--model", "resnet20", "--bits", "4,2",
        "--width", "0.25", "--input", "16",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    // The memory copy, the four operator workloads at each bit-width of --bits, then the
    // model's.
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(names[0].starts_with("host memory copy"), "{names:?}");
    assert!(names[1..5].iter().all(|n| n.ends_with("@4b")), "{names:?}");
    assert!(names[5..9].iter().all(|n| n.ends_with("@2b")), "{names:?}");
    assert!(
        names[9].starts_with("train step resnet20 ×0.25 4,2, batch 4"),
        "{names:?}"
    );
    assert!(
        names[10].contains("@4b") && names[11].contains("@2b"),
        "{names:?}"
    );
    // `--list`, the older name of `--bits`, still works.
    let old = adabits(&[
        "bench", "--json", "--iters", "1", "--batch", "2", "--list", "3",
    ]);
    assert!(old.status.success(), "{}", text(&old.stderr));
    assert!(text(&old.stdout).contains("@3b"));
    let bad = adabits(&["bench", "--model", "vgg16"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("unknown model `vgg16`"));
}

/// Runs `adabits args` and asserts an error: exit status 2, `expected` in its message, no
/// panic or backtrace.
pub(crate) fn assert_error(args: &[&str], expected: &str) {
    let out = adabits(args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(expected), "{args:?}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{args:?}: {err}"
    );
}

/// The folder name a run's pointer (`latest` or `best`) names, if it has one.
pub(crate) fn pointer(out: &std::path::Path, which: &str) -> Option<String> {
    let text = std::fs::read_to_string(out.join("checkpoints/pointers.json")).ok()?;
    let pointers: serde_json::Value = serde_json::from_str(&text).unwrap();
    pointers[which].as_str().map(str::to_string)
}

pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("adabits-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn train_runs_two_steps_and_writes_the_run_directory() {
    let out = temp_dir("train");
    let preset = out.with_extension("json");
    // A tiny preset: the flags below override part of it.
    std::fs::write(
        &preset,
        r#"{"model": {"width_mult": 0.25}, "data": {"kind": "synthetic", "train": 128, "val": 32, "side": 16}, "epochs": 1}"#,
    )
    .unwrap();
    let out_str = out.to_str().unwrap();
    let args = [
        "train",
        "--config",
        preset.to_str().unwrap(),
        "--bits",
        "4,w2a4",
        "--batch-size",
        "32",
        "--max-steps",
        "2",
        "--out",
        out_str,
        "--json",
    ];
    let run = adabits(&args);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let results: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(
        (results["status"].as_str(), results["steps"].as_u64()),
        (Some("step_limit"), Some(2))
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    // A wWaA entry is written as a string, a bit-width as a number.
    assert_eq!(config["model"]["bits"], serde_json::json!([4, "w2a4"]));
    assert_eq!(config["model"]["width_mult"], 0.25);
    assert_eq!(config["model"]["quant"]["weight_scheme"], "centered");
    assert_eq!(config["batch_size"], 32);
    // The recipe's full-precision stage is as long as the joint one; the gradient is clipped.
    assert_eq!(config["fp_epochs"], 1);
    assert_eq!(config["optim"]["clip_grad_norm"], 5.0);
    assert!(pointer(&out, "latest").is_some());
    let speed = results["train_images_per_second"].as_f64().unwrap();
    assert!(speed > 0.0 && speed < 1e6, "{speed}");
    // The same directory again is refused; --resume finishes the epoch.
    let again = adabits(&args);
    assert!(!again.status.success());
    let err = text(&again.stderr);
    assert!(
        err.contains("already holds a run") && err.contains("hint: pass --resume"),
        "{err}"
    );
    let mut resume: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "2" && *a != "--max-steps")
        .collect();
    resume.push("--resume");
    let done = adabits(&resume);
    assert!(done.status.success(), "{}", text(&done.stderr));
    let results: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    // 4 steps at full precision, then 4 joint.
    assert_eq!(
        (results["status"].as_str(), results["steps"].as_u64()),
        (Some("completed"), Some(8))
    );
    assert!(out.join("results.json").is_file() && out.join("metrics.jsonl").is_file());
    // eval reads the best checkpoint back and finds the run's own figures.
    let eval = adabits(&["eval", "--checkpoint", out_str, "--json"]);
    assert!(eval.status.success(), "{}", text(&eval.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let rows = eval["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        let bits = row["bits"]
            .as_str()
            .map_or_else(|| row["bits"].to_string(), String::from);
        assert_eq!(row["top1"], results["bits"][&bits]["top1"], "{bits}");
    }
    let calibrated = adabits(&[
        "eval",
        "--checkpoint",
        out_str,
        "--which",
        "latest",
        "--bits",
        "4,w3a4",
        "--calibrate",
        "2",
    ]);
    assert!(calibrated.status.success(), "{}", text(&calibrated.stderr));
    let said = text(&calibrated.stdout);
    assert!(said.contains("calibrated on 2 batches"), "{said}");
    assert!(
        said.contains("w3a4 is not one the model was trained at"),
        "{said}"
    );
    // info describes the run and a checkpoint file.
    let info = adabits(&["info", out_str, "--json"]);
    assert!(info.status.success(), "{}", text(&info.stderr));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["checkpoints"]["latest"]["step"], 8);
    assert_eq!(info["epochs_recorded"], 2);
    let latest = pointer(&out, "latest").unwrap();
    let file = out
        .join("checkpoints")
        .join(latest)
        .join("model.safetensors");
    let info = adabits(&["info", file.to_str().unwrap()]);
    let said = text(&info.stdout);
    assert!(said.contains("tensors"), "{}", text(&info.stderr));
    // What the file holds and where it stands: two entries (4,w2a4), so two BatchNorm copies
    // and two clipping levels per layer; the run and the training state beside it.
    assert!(
        said.contains("2 BatchNorm copies and 2 clipping levels per layer"),
        "{said}"
    );
    assert!(said.contains("model resnet20 bits 4,w2a4 "), "{said}");
    assert!(said.contains("step 8"), "{said}");
    // The pair entry through deployment: export (version 4, the pair's row evaluated), verify
    // on both runtimes, predict at the pair, and the artifact's description.
    let abq = out.join("model.abq");
    let abq_s = abq.to_str().unwrap();
    let export = adabits(&["export", "--checkpoint", out_str, "--out", abq_s, "--json"]);
    assert!(export.status.success(), "{}", text(&export.stderr));
    let report: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    assert_eq!(report["header"]["version"], 4);
    let table = report["header"]["table"].as_array().unwrap();
    let labels: Vec<&serde_json::Value> = table.iter().map(|r| &r["bits"]).collect();
    assert_eq!(labels, [&serde_json::json!(4), &serde_json::json!("w2a4")]);
    assert!(table.iter().all(|r| r["top1"].is_f64()), "{report}");
    assert!(
        table[1]["gbitops"].as_f64() < table[0]["gbitops"].as_f64(),
        "{report}"
    );
    let verify = adabits(&[
        "verify",
        "--artifact",
        abq_s,
        "--checkpoint",
        out_str,
        "--json",
    ]);
    assert!(verify.status.success(), "{}", text(&verify.stdout));
    let verdict: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    let rows = verdict["bits"].as_array().unwrap();
    let pair_rows: Vec<_> = rows.iter().filter(|r| r["bits"] == "w2a4").collect();
    assert_eq!(pair_rows.len(), 2, "{verdict}");
    assert!(
        pair_rows
            .iter()
            .all(|r| r["pass"] == true && r["images"] == 32),
        "{verdict}"
    );
    let npy = out.join("two.npy");
    write_npy(&npy, &[2, 3, 16, 16]);
    let predict = adabits(&[
        "predict",
        "--artifact",
        abq_s,
        "--bits",
        "w2a4",
        "--json",
        npy.to_str().unwrap(),
    ]);
    assert!(predict.status.success(), "{}", text(&predict.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&predict.stdout).unwrap();
    assert_eq!(answer["bits"], "w2a4");
    assert_eq!(answer["predictions"].as_array().unwrap().len(), 2);
    let predict = adabits(&[
        "predict",
        "--artifact",
        abq_s,
        "--bits",
        "w4a2",
        npy.to_str().unwrap(),
    ]);
    assert_eq!(
        text(&predict.stderr).trim(),
        "error: --bits: w4a2 is not one of the artifact's entries (4,w2a4)"
    );
    let info = adabits(&["info", abq_s]);
    let said = text(&info.stdout);
    assert!(
        said.contains("adabits artifact v4") && said.contains("  w2a4: top-1 "),
        "{said}"
    );
    // A new run started from this one's weights (--init RUN): no full-precision stage, and
    // the import said on stderr.
    let started = out.with_extension("init");
    let started_s = started.to_str().unwrap();
    let _ = std::fs::remove_dir_all(&started);
    let init_args = [
        "train",
        "--config",
        preset.to_str().unwrap(),
        "--bits",
        "4,w2a4",
        "--batch-size",
        "32",
        "--max-steps",
        "1",
        "--init",
        out_str,
        "--out",
        started_s,
    ];
    let from_run = adabits(&init_args);
    assert!(from_run.status.success(), "{}", text(&from_run.stderr));
    let said = text(&from_run.stderr);
    assert!(
        said.contains(&format!("started from {out_str} (its checkpoint {out_str}")),
        "{said}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(started.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["init"], out_str);
    assert_eq!(config["fp_epochs"], 0);
    std::fs::remove_dir_all(&started).unwrap();
    // Weights that cannot be read: one line naming the file, and no run left behind.
    let mut bad_args = init_args;
    bad_args[10] = "/nonexistent/weights.safetensors";
    let bad = adabits(&bad_args);
    assert!(!bad.status.success());
    let err = text(&bad.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: /nonexistent/weights.safetensors: "),
        "{err}"
    );
    assert!(!started.join("config.json").exists());
    let _ = std::fs::remove_dir_all(&started);
    let not_a_run = adabits(&[
        "eval",
        "--checkpoint",
        std::env::temp_dir().to_str().unwrap(),
    ]);
    assert!(!not_a_run.status.success());
    assert!(
        text(&not_a_run.stderr).contains("config.json"),
        "{}",
        text(&not_a_run.stderr)
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&preset).unwrap();
}

#[test]
fn info_says_what_train_init_reads_a_state_dict_as() {
    use adabits_models::{StateDict, StateTensor};
    let dir = temp_dir("info-init");
    std::fs::create_dir_all(&dir).unwrap();
    let vector = || StateTensor::new(vec![4], vec![0.5; 4]);
    let write = |name: &str, keys: &[&str]| {
        let mut dict = StateDict::new();
        dict.insert(
            "head.0.weight",
            StateTensor::new(vec![4, 3, 3, 3], vec![0.1; 108]),
        );
        for key in keys {
            dict.insert(*key, vector());
        }
        let path = dir.join(name);
        dict.write(&path).unwrap();
        path
    };
    // The official layout with two BatchNorm copies: adaptive; with one, or torchvision's
    // plain BatchNorms: full precision.
    let cases = [
        (
            write(
                "adaptive.safetensors",
                &["head.1.bn.0.weight", "head.1.bn.1.weight"],
            ),
            "official layout",
            "reads it as an adaptive checkpoint",
        ),
        (
            write("fp.safetensors", &["head.1.bn.0.weight"]),
            "official layout",
            "reads it as a full-precision checkpoint",
        ),
        (
            write(
                "torchvision.safetensors",
                &["bn1.weight", "bn1.running_mean"],
            ),
            "plain (one BatchNorm per layer",
            "reads it as a full-precision checkpoint",
        ),
    ];
    for (path, layout, reads) in cases {
        let out = adabits(&["info", path.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(said.contains(layout) && said.contains(reads), "{said}");
        let out = adabits(&["info", path.to_str().unwrap(), "--json"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let kind = if reads.contains("adaptive") {
            "adaptive"
        } else {
            "full-precision"
        };
        assert_eq!(json["init_as"], kind);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_train_flags_and_files_are_one_line_errors_with_hints() {
    let cases: [(&[&str], &str); 6] = [
        (
            &["train", "--model", "resnet19"],
            "unknown model `resnet19`",
        ),
        (
            &["train", "--bits", "8,8"],
            "invalid bit-width list \"8,8\": bit-width 8 appears more than once",
        ),
        (
            &["train", "--bits", "8,w4a"],
            "invalid bit-width list \"8,w4a\": item 2 is \"w4a\": expected wWaA such as w4a8: the activation bit-width is missing",
        ),
        (
            &["train", "--dataset", "cifar10"],
            "the dataset cifar10 needs --data-dir DIR",
        ),
        (
            &["train", "--config", "/nonexistent/preset.json"],
            "/nonexistent/preset.json: cannot read the preset",
        ),
        (
            &["train", "--schedule", "multistep"],
            "--schedule multistep needs --milestones",
        ),
    ];
    for (args, expected) in cases {
        assert_error(args, expected);
    }
    let missing = temp_dir("cifar-missing");
    let out = adabits(&[
        "train",
        "--dataset",
        "cifar10",
        "--data-dir",
        missing.to_str().unwrap(),
        "--out",
        temp_dir("cifar-out").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    // After the one-line banner, the error is one line naming the folder.
    let err = text(&out.stderr);
    let last = err.trim_end().lines().last().unwrap();
    assert!(
        last.starts_with("error: ") && last.contains("cifar-missing"),
        "{err}"
    );
    assert!(
        last.contains("CIFAR-10 binary files") && last.contains("no such folder"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 2, "{err}");
}

#[test]
fn profile_prints_the_official_figures() {
    let out = adabits(&["profile", "--model", "mobilenet_v1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = json["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 5);
    assert_eq!(reports[0]["macs"], 568_790_528u64);
    assert_eq!(reports[0]["params"], 4_210_088u64);
    // The model `train` defaults to, and the accounting in words.
    let table = adabits(&["profile", "--bits", "5,4,3"]);
    let stdout = text(&table.stdout);
    assert!(
        stdout.starts_with("resnet20 ×1 at 32×32, 10 classes, official accounting\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("40817280") && stdout.contains("1.084"),
        "{stdout}"
    );
    // A wWaA entry: each body layer at 4-bit weights and 8-bit activations.
    let out = adabits(&["profile", "--bits", "8,w4a8", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pair = &json["reports"][1];
    assert_eq!(pair["entry"], "w4a8");
    let layers = pair["layers"].as_array().unwrap();
    let at = |l: &serde_json::Value, k: &str| l[k].as_u64().unwrap();
    let body = layers
        .iter()
        .filter(|l| (at(l, "bitw"), at(l, "bita")) == (4, 8))
        .count();
    assert_eq!(body, 20, "{pair}");
    for l in layers {
        assert_eq!(
            at(l, "bitops"),
            at(l, "macs") * at(l, "bitw") * at(l, "bita")
        );
    }
    let paper = text(&adabits(&["profile", "--paper"]).stdout);
    assert!(
        paper.contains("the paper's (first layer at 32×32 bits) accounting"),
        "{paper}"
    );
}

#[test]
fn export_verify_select_and_calibrate_a_trained_run() {
    let dir = temp_dir("deploy");
    std::fs::create_dir_all(&dir).unwrap();
    let preset = dir.join("tiny.json");
    std::fs::write(
        &preset,
        r#"{"model": {"width_mult": 0.25}, "data": {"kind": "synthetic", "train": 128, "val": 48, "side": 16}, "epochs": 1, "batch_size": 32}"#,
    )
    .unwrap();
    let run = dir.join("run");
    let (run_s, preset_s) = (run.to_str().unwrap(), preset.to_str().unwrap());
    let out = adabits(&[
        "train",
        "--config",
        preset_s,
        "--bits",
        "4,3,2",
        "--out",
        run_s,
        "--log-every",
        "2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Off a terminal, a plain progress line every 2 of the epoch's 4 steps, in both stages.
    let log = text(&out.stderr);
    let lines = |step: &str| log.lines().filter(|l| l.contains(step)).count();
    assert_eq!((lines("step 2/4 |"), lines("step 4/4 |")), (2, 2), "{log}");
    assert_eq!(lines("step 1/4 |") + lines("step 3/4 |"), 0, "{log}");
    assert!(
        log.lines().any(|l| l.contains("step 4/4 | loss 4b ")
            && l.contains("img/s | lr ")
            && l.contains("| ETA 0:00")),
        "{log}"
    );

    // Export: the table holds each bit-width's accuracy, and the file its size.
    let abq = dir.join("model.abq");
    let abq_s = abq.to_str().unwrap();
    let out = adabits(&["export", "--checkpoint", run_s, "--out", abq_s, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bytes"], std::fs::metadata(&abq).unwrap().len());
    let table = report["header"]["table"].as_array().unwrap();
    assert_eq!(table.len(), 3);
    assert!(
        table.iter().all(|r| r["top1"].as_f64().is_some()),
        "{report}"
    );

    // Verify: every validation image at every bit-width, on both runtimes.
    let out = adabits(&[
        "verify",
        "--artifact",
        abq_s,
        "--checkpoint",
        run_s,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["pass"], true);
    let rows = verdict["bits"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{verdict}");
    for engine in ["f32", "int"] {
        assert_eq!(rows.iter().filter(|r| r["engine"] == engine).count(), 3);
    }
    for row in rows {
        assert_eq!(
            (row["images"].as_u64(), row["same_prediction"].as_u64()),
            (Some(48), Some(48))
        );
    }

    // Predict with the integer runtime: a .npy array of three 16×16 images.
    let npy = dir.join("three.npy");
    write_npy(&npy, &[3, 3, 16, 16]);
    let npy_s = npy.to_str().unwrap();
    let out = adabits(&[
        "predict",
        "--artifact",
        abq_s,
        "--bits",
        "2",
        "--top",
        "2",
        "--json",
        npy_s,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let predictions = answer["predictions"].as_array().unwrap();
    assert_eq!(predictions.len(), 3);
    for p in predictions {
        assert_eq!(p["top"].as_array().unwrap().len(), 2);
        assert_eq!(p["logits"].as_array().unwrap().len(), 10);
    }
    // Bad input: an unknown bit-width, an array of the wrong size, a missing file.
    let out = adabits(&["predict", "--artifact", abq_s, "--bits", "7", npy_s]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: --bits: 7 bits is not one of the artifact's entries (4,3,2)"
    );
    let wrong = dir.join("wrong.npy");
    write_npy(&wrong, &[1, 3, 32, 32]);
    let out = adabits(&["predict", "--artifact", abq_s, wrong.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "error: {}: the array's shape: expected [N, 3, 16, 16], found [1, 3, 32, 32]",
            wrong.display()
        )
    );
    let out = adabits(&["predict", "--artifact", abq_s, "/nonexistent/x.png"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no such file"),
        "{}",
        text(&out.stderr)
    );

    // Select: the 4-bit model is over the byte limit; an impossible limit selects nothing.
    // Byte counts are whole numbers, without rounding noise.
    let bytes4 = table[0]["model_bytes"].as_f64().unwrap();
    assert_eq!(bytes4.fract(), 0.0, "{bytes4}");
    let bytes4 = bytes4 as u64;
    let limit = (bytes4 - 1).to_string();
    let out = adabits(&["select", "--artifact", abq_s, "--max-bytes", &limit]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("4 bits: {bytes4} bytes > ")),
        "{stdout}"
    );
    assert!(
        stdout.contains("selected: 3 bits") || stdout.contains("selected: 2 bits"),
        "{stdout}"
    );
    let out = adabits(&["select", "--artifact", abq_s, "--max-bitops", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("no entry of the artifact's list fits"));

    // Select per layer within the 3-bit model's BitOPs: the plan file it writes runs in
    // `eval --plan`, with the validation figures it reported.
    let budget = table[1]["gbitops"].as_f64().unwrap().to_string();
    let plan = dir.join("plan.json");
    let plan_s = plan.to_str().unwrap();
    let search = |budget: &str| {
        adabits(&[
            "select",
            "--per-layer",
            "--checkpoint",
            run_s,
            "--max-bitops",
            budget,
            "--calibrate",
            "2",
            "--out",
            plan_s,
            "--json",
        ])
    };
    let out = search(&budget);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["search"]["images"], 64, "half the training set");
    let path = found["path"].as_array().unwrap();
    // ResNet-20: 22 quantized layers, each lowered twice, from every layer at 4 bits.
    assert_eq!(path.len(), 22 * 2 + 1);
    let selected = &found["selected"];
    assert!(selected["gbitops"].as_f64().unwrap() <= budget.parse::<f64>().unwrap());
    // The best few within the budget measured again (on the other 64 training images): the
    // selected plan is the best of that second measurement.
    let candidates = found["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 5);
    assert_eq!(found["confirmation_images"], 63);
    let again = |v: &serde_json::Value| v["confirmation"]["top1"].as_f64().unwrap();
    let top = candidates.iter().map(again).fold(f64::MIN, f64::max);
    let measured: Vec<f64> = candidates.iter().map(again).collect();
    assert_eq!(again(selected), top, "{measured:?}");
    assert_eq!(selected["layers"].as_array().unwrap().len(), 22);
    let out = adabits(&[
        "eval",
        "--checkpoint",
        run_s,
        "--plan",
        plan_s,
        "--calibrate",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["top1", "loss", "gbitops", "bytes"] {
        assert_eq!(
            eval["result"][key], selected["validation"][key],
            "{key}: eval --plan against select's validation figures"
        );
    }
    // Below every plan's cost nothing is selected and no plan is written.
    std::fs::remove_file(&plan).unwrap();
    let out = search("0.000001");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!plan.exists());
    // The search needs the run: the artifact keeps BatchNorm folded.
    let out = adabits(&[
        "select",
        "--per-layer",
        "--artifact",
        abq_s,
        "--max-bitops",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--checkpoint"),
        "{}",
        text(&out.stderr)
    );

    // Calibrate a bit-width the model never trained at, save it, export and verify that.
    let five = dir.join("run5");
    let five_s = five.to_str().unwrap();
    let out = adabits(&[
        "calibrate",
        "--checkpoint",
        run_s,
        "--bits",
        "5",
        "--batches",
        "2",
        "--out",
        five_s,
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cal["added_to_list"], true);
    assert!(cal["before"]["top1"].is_number() && cal["after"]["top1"].is_number());
    // `eval` at an untrained bit-width starts from the same model as `calibrate`: the nearest
    // trained bit-width's BatchNorm and clipping levels (at 5 bits those of 4, the first; at 1
    // bit those of 2, not the first), then the same re-estimation.
    let one = adabits(&[
        "calibrate",
        "--checkpoint",
        run_s,
        "--bits",
        "1",
        "--batches",
        "2",
        "--json",
    ]);
    assert!(one.status.success(), "{}", text(&one.stderr));
    let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
    for (bits, cal) in [("5", &cal), ("1", &one)] {
        for (flags, which) in [(&[][..], "before"), (&["--calibrate", "2"][..], "after")] {
            let mut args = vec!["eval", "--checkpoint", run_s, "--bits", bits, "--json"];
            args.extend_from_slice(flags);
            let out = adabits(&args);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(eval["untrained_bits"][0].to_string(), bits, "{eval}");
            let got = &eval["results"][0];
            assert_eq!(
                (&got["top1"], &got["loss"]),
                (&cal[which]["top1"], &cal[which]["loss"]),
                "eval at {bits} bits {flags:?} against calibrate's {which}"
            );
        }
    }
    // `info` reads the folder calibrate wrote: a model without training state.
    let out = adabits(&["info", five_s]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a model without training state"),
        "{}",
        text(&out.stdout)
    );
    // With the clipping levels too: one of the tried factors is kept.
    let out = adabits(&[
        "calibrate",
        "--checkpoint",
        run_s,
        "--bits",
        "3",
        "--batches",
        "2",
        "--alpha",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cal: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cal["added_to_list"], false);
    let factor = cal["alpha_factor"].as_f64().unwrap();
    assert!([0.5, 0.7, 1.0, 1.4, 2.0].contains(&factor), "{cal}");
    let abq5 = dir.join("model5.abq");
    let abq5_s = abq5.to_str().unwrap();
    let out = adabits(&[
        "export",
        "--checkpoint",
        five_s,
        "--out",
        abq5_s,
        "--no-eval",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // `info` describes the calibrated run, whose checkpoint has no training state.
    let out = adabits(&["info", five_s, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["checkpoints"]["best"]["step"], serde_json::Value::Null);
    assert_eq!(info["checkpoints"]["best"]["name"], "calibrated");
    let out = adabits(&["verify", "--artifact", abq5_s, "--checkpoint", five_s]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("reproduces the checkpoint at every entry of its list"));
    // The wrong checkpoint for an artifact is named.
    let out = adabits(&["verify", "--artifact", abq5_s, "--checkpoint", run_s]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("differs from the run's"),
        "{}",
        text(&out.stderr)
    );

    // A damaged artifact: one error line naming the file, and a non-zero exit.
    let mut bytes = std::fs::read(&abq).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let bad = dir.join("bad.abq");
    std::fs::write(&bad, &bytes).unwrap();
    for command in [
        vec!["info", bad.to_str().unwrap()],
        vec!["predict", "--artifact", bad.to_str().unwrap(), npy_s],
    ] {
        let out = adabits(&command);
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        assert!(
            stderr.starts_with(&format!("error: {}: checksum mismatch", bad.display())),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let out = adabits(&[
        "select",
        "--artifact",
        bad.to_str().unwrap(),
        "--max-bytes",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a readable artifact"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Writes a `.npy` float32 array of `shape` with values in `[0, 1]`.
fn write_npy(path: &std::path::Path, shape: &[usize]) {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    let count: usize = shape.iter().product();
    for i in 0..count {
        bytes.extend(((i % 251) as f32 / 250.0).to_le_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Ctrl-C is the binary's: the library only sees the stop flag it sets.
#[cfg(unix)]
#[test]
fn ctrl_c_stops_a_run_with_a_checkpoint_and_the_run_resumes_from_it() {
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let out = temp_dir("ctrl-c");
    let preset = out.with_extension("json");
    // Two epochs of 8 steps, at the bit-widths from the start (no full-precision stage).
    std::fs::write(
        &preset,
        r#"{"model": {"width_mult": 0.25}, "data": {"kind": "synthetic", "train": 256, "val": 32, "side": 16}, "epochs": 2, "fp_epochs": 0, "log_every": 1}"#,
    )
    .unwrap();
    let args = [
        "train",
        "--config",
        preset.to_str().unwrap(),
        "--bits",
        "4,w2a4",
        "--batch-size",
        "32",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_adabits"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first point of the loss curve: the run is past its first step.
    let curve = out.join("losses.jsonl");
    let deadline = Instant::now() + Duration::from_secs(600);
    while std::fs::read_to_string(&curve).map_or(true, |t| t.is_empty()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended before its first step: {status}");
        }
        assert!(Instant::now() < deadline, "no step within 600 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let stopped = child.wait_with_output().unwrap();
    // Stopped by SIGINT: 128 + 2, so that `adabits train && adabits export` stops here.
    assert_eq!(
        stopped.status.code(),
        Some(130),
        "{}",
        text(&stopped.stderr)
    );
    assert!(
        text(&stopped.stderr).contains("stopping after this step"),
        "{}",
        text(&stopped.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(results["status"], "interrupted", "{results}");
    let steps = results["steps"].as_u64().unwrap();
    assert!((1..16).contains(&steps), "{steps}");
    assert!(pointer(&out, "latest").is_some());
    let mut resume = args.to_vec();
    resume.push("--resume");
    let resumed = adabits(&resume);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    let results: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(
        (results["status"].as_str(), results["steps"].as_u64()),
        (Some("completed"), Some(16))
    );
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::remove_file(&preset).unwrap();
}
