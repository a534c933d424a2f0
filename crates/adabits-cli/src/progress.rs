//! A terminal progress bar for training runs.

use indicatif::{ProgressBar, ProgressStyle};

use adabits_quant::BitWidth;
use adabits_train::{EpochRecord, Progress, StepInfo};

/// Draws a progress bar per epoch (per-bit loss, images/s, learning rate) on stderr when it is a
/// terminal, and prints one summary line per epoch (validation top-1 and loss per bit-width).
#[derive(Debug, Default)]
pub(crate) struct TerminalProgress {
    bar: Option<ProgressBar>,
    stages: usize,
}

impl TerminalProgress {
    /// A progress display for a run of `stages` stages.
    pub(crate) fn new(stages: usize) -> Self {
        Self { bar: None, stages }
    }
}

impl Progress for TerminalProgress {
    fn stage(&mut self, stage: usize, bits: &[BitWidth], epochs: usize) {
        if self.stages > 1 {
            let what = if bits == [BitWidth::FULL] {
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
            let losses: Vec<String> = info
                .losses
                .iter()
                .map(|(b, l)| format!("{b}b {l:.3}"))
                .collect();
            bar.set_position(info.batch as u64 + 1);
            bar.set_message(format!(
                "loss {} | {:.0} img/s | lr {:.4}",
                losses.join(" "),
                info.images_per_second,
                info.lr
            ));
        }
    }

    fn epoch_end(&mut self, record: &EpochRecord) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let val: Vec<String> = record
            .val
            .iter()
            .map(|(b, s)| format!("{b}b {:.2}% ({:.3})", s.top1, s.loss))
            .collect();
        eprintln!(
            "epoch {:>3}: val top-1 (loss) {} | {:.0} img/s",
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
