//! Training progress: a bar on a terminal, plain lines elsewhere.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use adabits_quant::{BitWidth, Precision};
use adabits_train::{EpochRecord, Progress, StepInfo};

/// Draws a progress bar per epoch (per-bit loss, images/s, learning rate) on stderr when it is a
/// terminal; elsewhere (a pipe, a file, CI) prints the same as a plain line every `log_every`
/// steps, with the epoch's ETA. Prints one summary line per epoch (validation top-1 and loss
/// per bit-width) either way.
#[derive(Debug)]
pub(crate) struct TerminalProgress {
    bar: Option<ProgressBar>,
    stages: usize,
    /// Steps between plain lines when stderr is not a terminal (none: a bar, or 0: no lines).
    plain_every: Option<usize>,
    /// When the epoch began.
    epoch_started: Instant,
}

impl TerminalProgress {
    /// A progress display for a run of `stages` stages, with a plain line every `log_every`
    /// steps where stderr is not a terminal.
    pub(crate) fn new(stages: usize, log_every: usize) -> Self {
        Self {
            bar: None,
            stages,
            plain_every: (!std::io::stderr().is_terminal()).then_some(log_every),
            epoch_started: Instant::now(),
        }
    }
}

/// The loss per bit-width of a step, `8b 1.234 4b 2.345`.
fn losses(info: &StepInfo) -> String {
    let losses: Vec<String> = info
        .losses
        .iter()
        .map(|(b, l)| format!("{b}b {l:.3}"))
        .collect();
    losses.join(" ")
}

/// `m:ss`, or `h:mm:ss` from an hour.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s / 3600 {
        0 => format!("{}:{:02}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}", s / 60 % 60, s % 60),
    }
}

impl Progress for TerminalProgress {
    fn stage(&mut self, stage: usize, bits: &[Precision], epochs: usize) {
        if self.stages > 1 {
            let what = if bits == [Precision::uniform(BitWidth::FULL)] {
                "full precision".to_string()
            } else {
                let bits: Vec<String> = bits.iter().map(ToString::to_string).collect();
                format!("{} bits", bits.join(","))
            };
            eprintln!(
                "stage {}/{}: {what}, {epochs} epochs",
                stage + 1,
                self.stages
            );
        }
    }

    fn epoch_start(&mut self, _stage: usize, epoch: usize, batches: usize) {
        self.epoch_started = Instant::now();
        if self.plain_every.is_some() {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {pos}/{len} {msg} ({elapsed} < {eta})",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}", epoch + 1));
        self.bar = Some(bar);
    }

    fn step(&mut self, info: &StepInfo) {
        if let Some(bar) = &self.bar {
            bar.set_position(info.batch as u64 + 1);
            bar.set_message(format!(
                "loss {} | {:.0} img/s | lr {:.4}",
                losses(info),
                info.images_per_second,
                info.lr
            ));
        }
        let done = info.batch + 1;
        if let Some(every) = self.plain_every
            && every > 0
            && (done.is_multiple_of(every) || done == info.batches)
        {
            let elapsed = self.epoch_started.elapsed();
            let left = elapsed.mul_f64((info.batches - done) as f64 / done as f64);
            eprintln!(
                "epoch {:>3} step {done}/{} | loss {} | {:.0} img/s | lr {:.4} | ETA {}",
                info.epoch + 1,
                info.batches,
                losses(info),
                info.images_per_second,
                info.lr,
                clock(left)
            );
        }
    }

    fn epoch_end(&mut self, record: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let val: Vec<String> = crate::output::highest_first(&record.val)
            .into_iter()
            .map(|(b, s)| format!("{b}b {:.2}% ({:.3})", s.top1, s.loss))
            .collect();
        let ema = record.ema.as_ref().map_or(String::new(), |ema| {
            let top1: Vec<String> = crate::output::highest_first(ema)
                .into_iter()
                .map(|(b, s)| format!("{b}b {:.2}%", s.top1))
                .collect();
            format!(" | EMA top-1 {}", top1.join(", "))
        });
        eprintln!(
            "epoch {:>3}: val top-1 (loss) {}{ema} | {:.0} img/s",
            record.epoch + 1,
            val.join(", "),
            record.images_per_second
        );
    }

    fn note(&mut self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(message),
            None => eprintln!("{message}"),
        }
    }
}
