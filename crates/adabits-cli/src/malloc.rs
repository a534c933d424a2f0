//! glibc's allocator tuned for tensors: large blocks stay in the heap instead of going back to
//! the kernel on every free.
//!
//! glibc serves a block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and
//! unmaps it on `free`, so every large tensor (a batch-128 activation, an im2col buffer, a
//! gradient) pays a page fault and a page clear per 4 KiB on its first touch: on the 2-core
//! machine a PACT pass over a 32 MiB activation ran at 5 GB/s where the same copy runs at
//! 40 GB/s, and a ResNet-20 joint step spent about 10 % of its time in the kernel
//! (docs/performance.md). Raising the mmap and trim thresholds keeps freed blocks for reuse.
//!
//! The thresholds are glibc tunables, read once when a process starts, so the binary re-executes
//! itself once with `GLIBC_TUNABLES` set (same process id, arguments, streams and environment
//! otherwise). `ADABITS_MALLOC_TUNING=0` turns this off; a `GLIBC_TUNABLES` that already sets the
//! mmap threshold is left alone. Other platforms are untouched.

/// The tunables: blocks up to 512 MiB from the heap, trimmed back to the kernel above 1 GiB free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TUNABLES: &str =
    "glibc.malloc.mmap_threshold=536870912:glibc.malloc.trim_threshold=1073741824";

/// Re-executes the process with the tuned allocator if it does not run with it yet; returns
/// only when it does, or when re-executing is off, unneeded or failed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn tune() {
    use std::os::unix::process::CommandExt;

    const VAR: &str = "GLIBC_TUNABLES";
    const DONE: &str = "ADABITS_MALLOC_TUNED";
    if std::env::var_os(DONE).is_some()
        || std::env::var("ADABITS_MALLOC_TUNING").is_ok_and(|v| v == "0")
    {
        return;
    }
    let current = std::env::var(VAR).unwrap_or_default();
    if current.contains("glibc.malloc.mmap_threshold") {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let value = if current.is_empty() {
        TUNABLES.to_string()
    } else {
        format!("{current}:{TUNABLES}")
    };
    // `exec` returns only on failure; the process then carries on with the default allocator.
    let _failed = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, value)
        .env(DONE, "1")
        .exec();
}

/// Other platforms keep their allocator's defaults.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn tune() {}
