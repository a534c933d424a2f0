//! `cargo xtask docs`: runs the command blocks of the README and docs/ as a newcomer would, on
//! a copy of the repository's files, and fails naming the file, line and command that does not
//! run as written.
//!
//! Every ` ```sh ` block runs, one line at a time, in a scratch copy of the tracked files with
//! the `adabits` binary (a debug build, built first) on `PATH`; a `cargo` line runs in the
//! repository itself (a build from the copy would share the target folder with the
//! repository's own sources and confuse cargo's freshness checks), writing into the copy. A
//! few lines are changed, each change printed, where running them as written would repeat
//! another CI step or take the machine for long:
//!
//! - `cargo install --path crates/adabits-cli`, `cargo build … -p adabits-cli`: the binary
//!   built first stands in for them;
//! - `cargo run --release -p adabits-cli -- ARGS`: `adabits ARGS` with that binary;
//! - `cargo xtask reproduce`: with `--quick --profile dev --out COPY/runs/reproduce` (the same
//!   pipeline on a tiny grid, with the debug binary instead of a release build, its report in
//!   the copy);
//! - `cargo test …`: not run (CI runs the tests as a step of their own).
//!
//! A block that cannot run on a CPU machine without downloads (it needs a GPU, PyTorch, a
//! dataset, or an idle machine for minutes of timing) says so on the line before it, as
//! `<!-- docs: needs WHAT -->`; it is listed with that reason instead of run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One command block of a Markdown file.
#[derive(Debug, PartialEq)]
pub(crate) struct Block {
    /// Line of the opening fence (from 1).
    pub(crate) line: usize,
    /// Why it is not run, from a `<!-- docs: needs … -->` line before the fence.
    pub(crate) needs: Option<String>,
    /// The command lines with their line numbers (comment-only and blank lines left out).
    pub(crate) commands: Vec<(usize, String)>,
}

/// The ` ```sh ` blocks of `text`.
pub(crate) fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut current: Option<Block> = None;
    let mut previous = "";
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = line.trim();
        if current.is_some() && trimmed.starts_with("```") {
            out.extend(current.take());
            continue;
        }
        match &mut current {
            Some(block) => {
                let command = strip_comment(trimmed);
                if !command.is_empty() {
                    block.commands.push((n, command.to_string()));
                }
            }
            None if trimmed == "```sh" => {
                let needs = previous
                    .trim()
                    .strip_prefix("<!-- docs: needs ")
                    .and_then(|r| r.strip_suffix("-->"))
                    .map(|r| r.trim().to_string());
                current = Some(Block {
                    line: n,
                    needs,
                    commands: Vec::new(),
                });
            }
            None => {}
        }
        if !trimmed.is_empty() {
            previous = line;
        }
    }
    out
}

/// A command line without its trailing `# comment` (a `#` that starts a word, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if prev.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    line.trim_end()
}

/// What to run for a documented command line: `Ok(command)` (changed or not) or `Err(why)`
/// when it is not run.
pub(crate) fn rewrite(command: &str, scratch: &Path) -> Result<String, &'static str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let starts = |prefix: &[&str]| words.starts_with(prefix);
    if starts(&["cargo", "test"]) {
        return Err("the tests: CI runs them as a step of their own");
    }
    if starts(&["cargo", "install"]) && command.contains("crates/adabits-cli")
        || starts(&["cargo", "build"]) && command.contains("adabits-cli")
    {
        return Err("builds the adabits binary: the one built for this check stands in");
    }
    if let Some(rest) = command.split_once("-p adabits-cli -- ").map(|(_, r)| r)
        && starts(&["cargo", "run"])
    {
        return Ok(format!("adabits {rest}"));
    }
    if starts(&["cargo", "xtask", "reproduce"]) && !command.contains("--full") {
        let out = scratch.join("runs/reproduce");
        return Ok(format!(
            "{command} --quick --profile dev --out {}",
            out.display()
        ));
    }
    Ok(command.to_string())
}

/// The Markdown files whose blocks are checked, relative to the root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    for dir in ["docs", "crates"] {
        let mut found: Vec<PathBuf> = walk(&root.join(dir))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Copies the files git tracks (as they are in the working tree) from `root` to `to`.
fn copy_tracked(root: &Path, to: &Path) -> Result<(), String> {
    let listed = Command::new("git")
        .current_dir(root)
        .args(["ls-files", "-z"])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !listed.status.success() {
        return Err("git ls-files failed: the check copies the repository's tracked files".into());
    }
    for name in listed.stdout.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name);
        let (from, target) = (root.join(&*name), to.join(&*name));
        if !from.is_file() {
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::copy(&from, &target)
            .map_err(|e| format!("cannot copy {}: {e}", from.display()))?;
    }
    Ok(())
}

/// Runs the check from `root`; the scratch copy goes to `scratch` (removed first).
pub(crate) fn run(root: &Path, scratch: &Path) -> Result<(), String> {
    println!("[1/3] building the adabits binary (debug, flex)");
    let adabits = crate::cargo::build_profile(root, "flex", false)?;
    let bin_dir = adabits
        .parent()
        .ok_or("the adabits binary has no folder")?
        .to_path_buf();
    println!("[2/3] copying the tracked files to {}", scratch.display());
    let _ = std::fs::remove_dir_all(scratch);
    copy_tracked(root, scratch)?;
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Builds the blocks start (xtask, the release binary of reproduce) share the target folder.
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    println!("[3/3] running the command blocks");
    let (mut ran, mut skipped, mut failures) = (0, Vec::new(), Vec::new());
    for doc in documents(root) {
        let text = std::fs::read_to_string(root.join(&doc))
            .map_err(|e| format!("cannot read {}: {e}", doc.display()))?;
        for block in blocks(&text) {
            let at = format!("{}:{}", doc.display(), block.line);
            if let Some(needs) = &block.needs {
                println!("      {at}: not run (needs {needs})");
                skipped.push(at);
                continue;
            }
            for (line, command) in &block.commands {
                let at = format!("{}:{line}", doc.display());
                let run = match rewrite(command, scratch) {
                    Ok(run) => run,
                    Err(why) => {
                        println!("      {at}: `{command}` not run ({why})");
                        continue;
                    }
                };
                if run == *command {
                    println!("      {at}: {command}");
                } else {
                    println!("      {at}: {command}\n            runs as: {run}");
                }
                let started = Instant::now();
                let dir = if run.starts_with("cargo ") {
                    root
                } else {
                    scratch
                };
                let output = Command::new("bash")
                    .current_dir(dir)
                    .args(["-c", &run])
                    .env("PATH", &path)
                    .env("CARGO_TARGET_DIR", &target)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run bash: {e}"))?;
                ran += 1;
                if output.status.success() {
                    println!("            ok, {:.0} s", started.elapsed().as_secs_f64());
                } else {
                    let tail = |bytes: &[u8]| {
                        let text = String::from_utf8_lossy(bytes);
                        let lines: Vec<&str> = text.lines().collect();
                        lines[lines.len().saturating_sub(8)..].join("\n            ")
                    };
                    println!(
                        "            FAILED ({}):\n            {}\n            {}",
                        output.status,
                        tail(&output.stdout),
                        tail(&output.stderr)
                    );
                    failures.push(format!("{at}: `{command}`"));
                }
            }
        }
    }
    println!(
        "{ran} commands run, {} failed; {} blocks not run for what they need",
        failures.len(),
        skipped.len()
    );
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(scratch);
        Ok(())
    } else {
        Err(format!(
            "documented commands that do not run as written (their files are in {}):\n  {}",
            scratch.display(),
            failures.join("\n  ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_read_with_their_line_numbers_and_needs() {
        let text = "\
# Title

```sh
cargo xtask reproduce        # the main job
# a comment line

adabits select --max-bytes 12000
```

<!-- docs: needs a GPU -->
```sh
adabits bench --device wgpu   # on the GPU
```

```rust
let x = 1; # not a shell block
```
";
        let found = blocks(text);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].line, 3);
        assert_eq!(found[0].needs, None);
        assert_eq!(
            found[0].commands,
            [
                (4, "cargo xtask reproduce".to_string()),
                (7, "adabits select --max-bytes 12000".to_string())
            ]
        );
        assert_eq!(found[1].needs.as_deref(), Some("a GPU"));
        assert_eq!(found[1].commands[0].1, "adabits bench --device wgpu");
        // A `#` inside quotes or a word is not a comment.
        assert_eq!(strip_comment("echo 'a # b' c#d # e"), "echo 'a # b' c#d");
    }

    #[test]
    fn long_or_repeated_commands_are_changed_and_the_rest_run_as_written() {
        let scratch = Path::new("/tmp/copy");
        let rewrite = |c: &str| super::rewrite(c, scratch);
        assert_eq!(
            rewrite("cargo xtask reproduce").unwrap(),
            "cargo xtask reproduce --quick --profile dev --out /tmp/copy/runs/reproduce"
        );
        assert_eq!(
            rewrite("cargo xtask reproduce --full --dataset cifar10 --data-dir d").unwrap(),
            "cargo xtask reproduce --full --dataset cifar10 --data-dir d"
        );
        assert_eq!(
            rewrite("cargo run --release -p adabits-cli -- train --epochs 1").unwrap(),
            "adabits train --epochs 1"
        );
        assert!(rewrite("cargo test --workspace").is_err());
        assert!(rewrite("cargo install --path crates/adabits-cli --locked").is_err());
        assert!(rewrite("cargo build --release -p adabits-cli").is_err());
        assert_eq!(
            rewrite("adabits export --checkpoint runs/r20 --out r20.abq").unwrap(),
            "adabits export --checkpoint runs/r20 --out r20.abq"
        );
    }
}
