//! Every case of the specification's `testvectors.json`, forward and gradients.

use std::path::PathBuf;

use adabits_quant::conformance::{TestVectors, repo_vectors_path, run_all, run_case};

/// The vectors to run: `$ADABITS_TESTVECTORS` if set, else the repository copy.
fn vectors_path() -> PathBuf {
    std::env::var_os("ADABITS_TESTVECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(repo_vectors_path)
}

fn load() -> TestVectors {
    let path = vectors_path();
    TestVectors::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_case_passes_forward_and_backward() {
    let vectors = load();
    assert_eq!(
        vectors.cases.len(),
        23,
        "docs/method.md §12.9 lists 23 cases"
    );
    let reports = run_all(&vectors, &crate::device());
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(ToString::to_string)
        .collect();
    let checks: usize = reports.iter().map(|r| r.checks.len()).sum();
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // Every expected output and gradient of the file was compared.
    let expected: usize = vectors
        .cases
        .iter()
        .map(|c| c.expected_outputs.len() + c.expected_gradients.len())
        .sum();
    assert_eq!(checks, expected, "some expected tensors were not checked");
}

#[test]
fn a_wrong_expected_value_is_reported() {
    let mut vectors = load();
    let device = crate::device();
    for case in &mut vectors.cases {
        // Perturb the first element of every expected output and gradient in turn.
        let names: Vec<(bool, String)> = case
            .expected_outputs
            .keys()
            .map(|k| (true, k.clone()))
            .chain(case.expected_gradients.keys().map(|k| (false, k.clone())))
            .collect();
        for (is_output, name) in names {
            let mut broken = case.clone();
            let map = if is_output {
                &mut broken.expected_outputs
            } else {
                &mut broken.expected_gradients
            };
            map.get_mut(&name).unwrap().data[0] += 1.0;
            let report = run_case(&broken, &device);
            assert!(
                !report.passed(),
                "{}: a wrong {name} went unnoticed",
                case.name
            );
        }
    }
}

/// SHA-256 of the specification's `testvectors.json`, the version `testdata/` holds a copy of.
const SPECIFICATION_SHA256: &str =
    "9fb43f0d2bbb6dbeb9f34e886470f78c2d5265363122e13376ab0cbcdec2d7f1";

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn repository_copy_is_the_specification_s_file() {
    let repo = repo_vectors_path();
    let repo_text = std::fs::read(&repo).unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
    assert_eq!(
        sha256_hex(&repo_text),
        SPECIFICATION_SHA256,
        "{} is not the specification's file: copy it back from ../shared/testvectors.json",
        repo.display()
    );
    // Beside a checkout that has the specification (and beside CI's clone), the specification
    // must still be the version recorded here.
    let spec = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testvectors.json");
    if let Ok(spec_text) = std::fs::read(&spec) {
        assert_eq!(
            sha256_hex(&spec_text),
            SPECIFICATION_SHA256,
            "{} changed: copy it into testdata/ and record its SHA-256 here",
            spec.display()
        );
    }
}

#[test]
fn malformed_files_get_named_errors() {
    let path = PathBuf::from("vectors.json");
    let err = TestVectors::parse("{", &path).unwrap_err().to_string();
    assert!(err.contains("vectors.json"), "{err}");
    let err = TestVectors::parse(r#"{"format":"x","version":1,"cases":[]}"#, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `format`: expected \"adabits-testvectors\", found \"x\""),
        "{err}"
    );
    let err = TestVectors::parse(
        r#"{"format":"adabits-testvectors","version":2,"cases":[]}"#,
        &path,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("field `version`: expected 1, found 2"),
        "{err}"
    );
    let bad_shape = r#"{"format":"adabits-testvectors","version":1,"cases":[{"name":"c","group":"g",
        "op":"q_k","config":{},"inputs":{"u":{"shape":[3],"dtype":"float","data":[1,2]}},
        "upstream_gradients":{},"expected_outputs":{},"expected_gradients":{},
        "tolerance":{"abs":0,"rel":0}}]}"#;
    let err = TestVectors::parse(bad_shape, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("case c, tensor u: shape [3] needs 3 elements, found 2"),
        "{err}"
    );
    let err = TestVectors::load(&PathBuf::from("/nonexistent/tv.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/tv.json"), "{err}");
}
