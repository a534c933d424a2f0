//! SIGINT (Ctrl-C) and SIGTERM: the first asks the run to stop after its current step and save
//! a checkpoint; a second Ctrl-C exits at once. The process then exits with 128 + the signal's
//! number (130 for SIGINT, 143 for SIGTERM), as a shell expects of a program a signal stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// Which signal asked the run to stop, if one did.
#[derive(Clone, Debug, Default)]
pub(crate) struct Caught(Arc<AtomicI32>);

impl Caught {
    /// The exit status for the signal caught (128 + its number), or `None`.
    pub(crate) fn exit_status(&self) -> Option<u8> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            signal => u8::try_from(128 + signal).ok(),
        }
    }
}

/// Makes SIGINT and SIGTERM set `stop`: the run then finishes its current step, saves a
/// checkpoint and returns [`adabits_train::RunStatus::Interrupted`]. A second SIGINT while
/// the first is handled exits at once with status 130. Installed once per process.
#[cfg(unix)]
pub(crate) fn stop_on_signals(stop: Arc<AtomicBool>) -> anyhow::Result<Caught> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    let caught = Caught::default();
    let slot = caught.0.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if stop.swap(true, Ordering::SeqCst) {
                if signal == SIGINT {
                    std::process::exit(130);
                }
                continue;
            }
            slot.store(signal, Ordering::SeqCst);
            if signal == SIGINT {
                eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
            } else {
                eprintln!("\nterminated: stopping after this step");
            }
        }
    });
    Ok(caught)
}

/// Makes Ctrl-C set `stop` (the first), or exit at once with status 130 (the second).
#[cfg(not(unix))]
pub(crate) fn stop_on_signals(stop: Arc<AtomicBool>) -> anyhow::Result<Caught> {
    let caught = Caught::default();
    let slot = caught.0.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        slot.store(2, Ordering::SeqCst);
        eprintln!("\nstopping after this step (Ctrl-C again to quit at once)");
    })
    .map_err(|e| anyhow::anyhow!("cannot install the Ctrl-C handler: {e}"))?;
    Ok(caught)
}
