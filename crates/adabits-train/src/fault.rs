//! Crash points for the crash-safety tests.
//!
//! `ADABITS_CRASH_AT=NAME:N` makes the process abort (no destructor, no flush of anything but
//! what the OS already holds, as `kill -9` would) the `N`th time (from 1) it reaches the point
//! `NAME`; `NAME` alone means the first time. Unset, every point is one relaxed load. The points
//! sit between the steps of writing a checkpoint, where a kill at a random instant is unlikely
//! to land.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that arms a crash point.
pub const CRASH_AT: &str = "ADABITS_CRASH_AT";

/// The armed point and at which hit it fires.
fn armed() -> Option<&'static (String, usize)> {
    static ARMED: OnceLock<Option<(String, usize)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var(CRASH_AT).ok()?;
            match spec.split_once(':') {
                Some((name, n)) => Some((name.to_string(), n.parse().ok()?)),
                None => Some((spec, 1)),
            }
        })
        .as_ref()
}

/// Aborts the process here if `ADABITS_CRASH_AT` names this point and hit.
pub(crate) fn point(name: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    if let Some((armed, at)) = armed()
        && armed == name
        && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *at
    {
        std::process::abort();
    }
}
