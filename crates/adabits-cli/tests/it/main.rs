//! End-to-end tests of the `adabits` binary.

use std::process::{Command, Output};

fn adabits(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adabits"))
        .args(args)
        .output()
        .expect("the adabits binary runs")
}

fn text(bytes: &[u8]) -> String {
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
        stderr.contains("expected an integer from 1 to 16"),
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
fn bench_measures_every_workload() {
    let out = adabits(&["bench", "--json", "--iters", "1", "--batch", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{json}");
    for r in results {
        assert!(r["ms"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
}
