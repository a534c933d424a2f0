//! One writer per run directory: an exclusive lock on `OUT/run.lock`, held while a process
//! writes into the run and released by the OS when that process exits or dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{TrainError, run_file};

/// The lock file: it holds the pid of the process that holds the lock.
const LOCK: &str = "run.lock";

/// The exclusive lock on a run directory; dropping it releases the lock.
///
/// The lock is the operating system's advisory file lock (`flock` on Unix, `LockFileEx` on
/// Windows, through [`File::try_lock`]), so a process killed with `kill -9` releases it too: the
/// file itself stays, and the next holder writes its pid into it.
#[derive(Debug)]
pub struct RunLock {
    /// Held open for as long as the lock is held.
    _file: File,
}

impl RunLock {
    /// Takes the lock of the run directory `root` (created if missing), without waiting.
    ///
    /// # Errors
    ///
    /// [`TrainError::Busy`] with the holder's pid when another process holds it;
    /// [`TrainError::RunFile`] when the folder or the lock file cannot be created.
    pub(super) fn take(root: &Path) -> Result<Self, TrainError> {
        std::fs::create_dir_all(root).map_err(|e| run_file(root, e))?;
        let path = root.join(LOCK);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| run_file(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(TrainError::Busy {
                    path: root.to_path_buf(),
                    pid: text.trim().parse().ok(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(run_file(&path, e)),
        }
        let pid = std::process::id().to_string();
        (|| {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(pid.as_bytes())?;
            file.sync_all()
        })()
        .map_err(|e| run_file(&path, e))?;
        Ok(Self { _file: file })
    }
}
