//! Ctrl-C: the first one asks the run to stop after its current step, the second exits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Makes Ctrl-C (SIGINT, and SIGTERM) set `stop`: the run then finishes its current step,
/// saves a checkpoint and returns [`adabits_train::RunStatus::Interrupted`]. A second Ctrl-C
/// while the first is handled exits at once with status 130. Only one handler can be installed
/// per process.
pub(crate) fn stop_on_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))
}
