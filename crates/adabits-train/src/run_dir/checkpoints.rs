//! A run's checkpoint folders: each written in full under a temporary name with a checksum per
//! file, then renamed; one atomic pointer file names the latest and the best folder together.
//!
//! Order of a checkpoint, so that a crash at any instant leaves a consistent run:
//! 1. the folder is written as `.NAME.tmp-PID/` (model, optimiser, state, then
//!    `checksums.json`) and renamed to `NAME/`;
//! 2. `pointers.json` is replaced atomically (a temporary file, then a rename) with the new
//!    `latest` and, if this checkpoint scored best, the new `best`: both move in one step, and
//!    the `best` it names is always the folder whose recorded score is the best;
//! 3. only then are folders that neither pointer names removed.
//!
//! A crash before step 2 leaves the old pointers, which name complete folders; one after it
//! leaves at most an unnamed folder or temporary, removed by the next writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{RunDir, Which, read_json};
use crate::error::{TrainError, run_file};
use crate::fault;

/// The pointer file.
const POINTERS: &str = "pointers.json";
/// The checksums of a checkpoint folder's files.
const CHECKSUMS: &str = "checksums.json";

/// Which folders the run's pointers name (`checkpoints/pointers.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Pointers {
    /// The latest checkpoint.
    pub(super) latest: Option<String>,
    /// The best-scoring checkpoint at the run's bit-widths.
    pub(super) best: Option<String>,
}

impl Pointers {
    fn get(&self, which: Which) -> Option<&str> {
        match which {
            Which::Latest | Which::Ema => self.latest.as_deref(),
            Which::Best => self.best.as_deref(),
        }
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.latest.iter().chain(&self.best).map(String::as_str)
    }
}

/// The SHA-256 of each file of a checkpoint folder (`checksums.json`), by file name.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checksums {
    sha256: BTreeMap<String, String>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `name` is a checkpoint folder's name: one plain path component.
fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.starts_with('.')
}

/// Whether a directory entry is a temporary left by a write that did not finish.
fn temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

impl RunDir {
    pub(super) fn checkpoints(&self) -> PathBuf {
        self.root.join(super::CHECKPOINTS)
    }

    pub(super) fn pointers_path(&self) -> PathBuf {
        self.checkpoints().join(POINTERS)
    }

    /// The pointers, or none when the run has not written a checkpoint yet.
    pub(super) fn pointers(&self) -> Result<Pointers, TrainError> {
        let path = self.pointers_path();
        if !path.exists() {
            let legacy = self.checkpoints().join("latest");
            if legacy.is_file() {
                return Err(run_file(
                    &legacy,
                    "a pointer file of an older adabits (before checksummed checkpoints, pointers.json), which this version does not read: train the run again",
                ));
            }
            return Ok(Pointers::default());
        }
        let pointers: Pointers = read_json(&path)?;
        for name in pointers.names() {
            if !plain_name(name) {
                return Err(run_file(
                    &path,
                    format!("expected checkpoint folder names, found {name:?}"),
                ));
            }
        }
        Ok(pointers)
    }

    /// Whether the run has a checkpoint to resume from (an unreadable pointer file counts as
    /// one, so that loading it names the damage).
    pub fn has_checkpoint(&self) -> bool {
        self.pointers().map_or(true, |p| p.latest.is_some())
    }

    /// The folder of the `which` checkpoint.
    ///
    /// # Errors
    ///
    /// [`TrainError::NoCheckpoint`] when the run has none yet; [`TrainError::RunFile`] naming
    /// `pointers.json` when it is unreadable.
    pub fn checkpoint_dir(&self, which: Which) -> Result<PathBuf, TrainError> {
        let pointers = self.pointers()?;
        let name = pointers
            .get(which)
            .ok_or_else(|| TrainError::NoCheckpoint {
                path: self.root.clone(),
                which,
            })?;
        Ok(self.checkpoints().join(name))
    }

    /// Writes a checkpoint folder `name` (the files `write` puts into the folder it is given,
    /// then their checksums), then moves `latest` (and, if `best`, `best`) to it in one atomic
    /// write and removes the folders no pointer names. Called with the run's lock held.
    pub(super) fn save_checkpoint(
        &self,
        name: &str,
        best: bool,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let mut pointers = self.pointers()?;
        if pointers.names().any(|n| n == name) {
            return Err(TrainError::Internal(format!(
                "a new checkpoint would replace the kept checkpoint {name}"
            )));
        }
        self.write_folder(name, write)?;
        pointers.latest = Some(name.to_string());
        if best {
            pointers.best = Some(name.to_string());
        }
        self.write_pointers(&pointers)?;
        fault::point("checkpoint.pointed");
        self.remove_unpointed(&pointers);
        Ok(())
    }

    /// Writes a checkpoint folder that both pointers name, for a model with no training state
    /// (what `adabits calibrate` writes): `name`, or `name-2`, `name-3`… while a pointer names
    /// it. Called with the run's lock held.
    pub(super) fn save_model_only(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let old = self.pointers()?;
        let mut free = name.to_string();
        for n in 2.. {
            if !old.names().any(|p| p == free) {
                break;
            }
            free = format!("{name}-{n}");
        }
        self.write_folder(&free, write)?;
        let pointers = Pointers {
            latest: Some(free.clone()),
            best: Some(free),
        };
        self.write_pointers(&pointers)?;
        self.remove_unpointed(&pointers);
        Ok(())
    }

    /// Writes the folder `name` in full under a temporary name (what `write` puts there, then
    /// `checksums.json`) and renames it; a failed write leaves nothing behind.
    fn write_folder(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        let dir = self.checkpoints();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let written = (|| {
            let _ = std::fs::remove_dir_all(&tmp);
            std::fs::create_dir_all(&tmp).map_err(|e| run_file(&tmp, e))?;
            write(&tmp)?;
            write_checksums(&tmp)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        fault::point("checkpoint.written");
        let target = dir.join(name);
        let _ = std::fs::remove_dir_all(&target);
        if let Err(e) = std::fs::rename(&tmp, &target) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(run_file(&target, e));
        }
        sync_dir(&dir);
        fault::point("checkpoint.renamed");
        Ok(())
    }

    fn write_pointers(&self, pointers: &Pointers) -> Result<(), TrainError> {
        let path = self.pointers_path();
        let json = serde_json::to_string_pretty(pointers).expect("pointers serialise");
        adabits_models::write_atomically(&path, json.as_bytes()).map_err(|e| run_file(&path, e))?;
        sync_dir(&self.checkpoints());
        Ok(())
    }

    /// Removes the checkpoint folders no pointer names (temporaries are left to
    /// [`remove_temporaries`](Self::remove_temporaries)).
    fn remove_unpointed(&self, pointers: &Pointers) {
        let Ok(entries) = std::fs::read_dir(self.checkpoints()) else {
            return;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir()
                && plain_name(&file_name)
                && !pointers.names().any(|n| n == file_name)
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Removes what writes that did not finish left behind: `.NAME.tmp-PID` files and folders
    /// in the run directory and in `checkpoints/`. Safe only with the run's lock held: another
    /// writer's temporaries would go too. (A complete folder no pointer names is left to the
    /// next checkpoint, which removes it once its own pointers are written.)
    pub(super) fn remove_temporaries(&self) {
        for dir in [self.root.clone(), self.checkpoints()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if temporary(&entry.file_name().to_string_lossy()) {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        }
    }

    /// Checks the checkpoint folder `dir` against its `checksums.json`: the files `required`
    /// must be listed, and every file listed must be there with its checksum.
    ///
    /// # Errors
    ///
    /// [`TrainError::RunFile`] naming the file that is missing, unlisted or changed.
    pub(super) fn verify(&self, dir: &Path, required: &[&str]) -> Result<(), TrainError> {
        let path = dir.join(CHECKSUMS);
        if !path.is_file() {
            return Err(run_file(
                &path,
                "missing: the checkpoint folder is incomplete or was written by an older adabits",
            ));
        }
        let checksums: Checksums = read_json(&path)?;
        if let Some(file) = required
            .iter()
            .find(|f| !checksums.sha256.contains_key(**f))
        {
            return Err(run_file(
                &path,
                format!("expected a checksum of {file}, found none"),
            ));
        }
        for (file, expected) in &checksums.sha256 {
            if !plain_name(file) {
                return Err(run_file(
                    &path,
                    format!("expected file names, found {file:?}"),
                ));
            }
            let file_path = dir.join(file);
            let bytes = std::fs::read(&file_path).map_err(|e| run_file(&file_path, e))?;
            let found = sha256_hex(&bytes);
            if &found != expected {
                return Err(run_file(
                    &file_path,
                    format!(
                        "checksum mismatch: the file was changed or damaged after it was written (SHA-256 {found}, {CHECKSUMS} says {expected})"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The folder of the `which` checkpoint and its state file `file` parsed (`None` for a
    /// folder without one: a model with no training state), or `None` when the run has no
    /// such checkpoint.
    pub(super) fn checkpoint_state<T: serde::de::DeserializeOwned>(
        &self,
        which: Which,
        file: &str,
    ) -> Result<Option<(PathBuf, Option<T>)>, TrainError> {
        let Some(dir) = self
            .pointers()?
            .get(which)
            .map(|n| self.checkpoints().join(n))
        else {
            return Ok(None);
        };
        let path = dir.join(file);
        let state = if path.exists() {
            Some(read_json(&path)?)
        } else {
            None
        };
        Ok(Some((dir, state)))
    }
}

/// Writes the SHA-256 of every file of the folder `dir` into its `checksums.json`, synced.
fn write_checksums(dir: &Path) -> Result<(), TrainError> {
    let mut checksums = Checksums::default();
    let entries = std::fs::read_dir(dir).map_err(|e| run_file(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| run_file(dir, e))?;
        let path = entry.path();
        if path.is_file() {
            let bytes = std::fs::read(&path).map_err(|e| run_file(&path, e))?;
            checksums.sha256.insert(
                entry.file_name().to_string_lossy().into_owned(),
                sha256_hex(&bytes),
            );
        }
    }
    let json = serde_json::to_string_pretty(&checksums).expect("checksums serialise");
    let path = dir.join(CHECKSUMS);
    adabits_models::write_atomically(&path, json.as_bytes()).map_err(|e| run_file(&path, e))?;
    sync_dir(dir);
    Ok(())
}

/// Makes a folder's entries (renames, new files) durable; not every platform can.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_run_of_an_older_version_is_named_as_such() {
        let root = std::env::temp_dir().join(format!("adabits-legacy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let run = RunDir::new(&root);
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        std::fs::write(run.checkpoints().join("latest"), "s0-e0001-b00000-step8").unwrap();
        let err = run.checkpoint_dir(Which::Latest).unwrap_err().to_string();
        assert!(
            err.contains("checkpoints/latest: a pointer file of an older adabits"),
            "{err}"
        );
        assert!(run.has_checkpoint());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind_and_the_pointers_as_they_were() {
        let root =
            std::env::temp_dir().join(format!("adabits-failed-write-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let run = RunDir::new(&root);
        std::fs::create_dir_all(run.checkpoints()).unwrap();
        run.save_checkpoint("a", true, |dir| {
            std::fs::write(dir.join("model.safetensors"), b"model").map_err(|e| run_file(dir, e))
        })
        .unwrap();
        // A write that fails half-way (as on a full disk).
        let err = run
            .save_checkpoint("b", true, |dir| {
                std::fs::write(dir.join("model.safetensors"), b"half").unwrap();
                Err(run_file(dir, "No space left on device"))
            })
            .unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(entries(&run.checkpoints()), ["a", "pointers.json"]);
        let pointers = run.pointers().unwrap();
        assert_eq!(
            (pointers.latest.as_deref(), pointers.best.as_deref()),
            (Some("a"), Some("a"))
        );
        run.verify(&run.checkpoints().join("a"), &["model.safetensors"])
            .unwrap();
        // A new checkpoint that is not the best keeps `best`, and the folder it names.
        run.save_checkpoint("c", false, |dir| {
            std::fs::write(dir.join("model.safetensors"), b"c").map_err(|e| run_file(dir, e))
        })
        .unwrap();
        assert_eq!(entries(&run.checkpoints()), ["a", "c", "pointers.json"]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
