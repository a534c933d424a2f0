//! Building the `adabits` binary with cargo, and finding where cargo put it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds the release binary with `features` and returns its path.
///
/// The path is the one cargo reports for the built executable, so a `CARGO_TARGET_DIR` or a
/// `build.target-dir` setting is followed.
pub(crate) fn build(root: &Path, features: &str) -> Result<PathBuf, String> {
    build_profile(root, features, true)
}

/// Builds the binary with `features`, optimised (`release`) or not, and returns its path.
pub(crate) fn build_profile(root: &Path, features: &str, release: bool) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .arg("build")
        .args(release.then_some("--release"))
        .args([
            "--quiet",
            "--message-format=json-render-diagnostics",
            "-p",
            "adabits-cli",
            "--no-default-features",
        ])
        .args(["--features", features])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err("building the adabits binary failed".into());
    }
    let messages = String::from_utf8_lossy(&output.stdout);
    executable(&messages, "adabits").ok_or_else(|| {
        "cargo built the adabits binary but did not report where (no compiler-artifact message for it)".into()
    })
}

/// The executable of the binary target `name` in cargo's JSON messages (one object per line),
/// the last one reported.
fn executable(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == name
                && m["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binary_is_where_cargo_says_it_built_it() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"name":"adabits_cli","kind":["lib"]},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"name":"adabits","kind":["bin"]},"executable":"/shared/target/release/adabits"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        assert_eq!(
            executable(&messages, "adabits"),
            Some(PathBuf::from("/shared/target/release/adabits"))
        );
        assert_eq!(executable(&messages, "other"), None);
        assert_eq!(executable("not json\n", "adabits"), None);
    }
}
