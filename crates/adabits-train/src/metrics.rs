//! Losses and accuracy meters.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// The mean cross-entropy of `logits` against `labels`.
///
/// # Shapes
///
/// `logits`: `[batch, classes]`; `labels`: `[batch]`; output `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let picked = log_p.gather(1, labels.reshape([n, 1]));
    picked.mean().neg().reshape([1])
}

/// The mean `KL(softmax(teacher) ‖ softmax(student))` over the batch; the teacher is detached.
///
/// # Shapes
///
/// `student`, `teacher`: `[batch, classes]`; output `[1]`.
pub fn distillation(student: Tensor<2>, teacher: Tensor<2>) -> Tensor<1> {
    let [n, _] = student.dims();
    let teacher = teacher.detach();
    let p_t = softmax(teacher.clone(), 1);
    let kl = p_t * (log_softmax(teacher, 1) - log_softmax(student, 1));
    kl.sum().div_scalar(n as f64).reshape([1])
}

/// Running sums of loss and top-1/top-5 hits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Meter {
    /// Sum of per-sample losses.
    pub loss_sum: f64,
    /// Correct top-1 predictions.
    pub top1: u64,
    /// Correct top-5 predictions.
    pub top5: u64,
    /// Samples seen.
    pub count: u64,
}

impl Meter {
    /// Adds a batch: its mean loss and its logits (`[batch, classes]`, row-major) against
    /// `targets`.
    pub fn add(&mut self, mean_loss: f64, logits: &[f32], targets: &[usize]) {
        let n = targets.len();
        if n == 0 {
            return;
        }
        let classes = logits.len() / n;
        for (row, &target) in logits.chunks_exact(classes).zip(targets) {
            let own = row[target];
            // Rank of the target: classes scoring higher, ties going to the lower index.
            let above = row
                .iter()
                .enumerate()
                .filter(|&(j, &v)| v > own || (v == own && j < target))
                .count();
            self.top1 += u64::from(above == 0);
            self.top5 += u64::from(above < 5);
        }
        self.loss_sum += mean_loss * n as f64;
        self.count += n as u64;
    }

    /// The summary: mean loss and accuracies in percent.
    pub fn summary(&self) -> Scores {
        let n = self.count.max(1) as f64;
        Scores {
            loss: self.loss_sum / n,
            top1: 100.0 * self.top1 as f64 / n,
            top5: 100.0 * self.top5 as f64 / n,
        }
    }
}

/// Loss and accuracies (percent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Top-1 accuracy, percent.
    pub top1: f64,
    /// Top-5 accuracy, percent.
    pub top5: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_meter_counts_top1_and_top5_with_ties_to_the_lower_index() {
        let mut m = Meter::default();
        // 6 classes; row 0 target 2 is best, row 1 target 0 is 6th, row 2 target 5 ties with 0.
        let logits = [
            0.1, 0.2, 0.9, 0.0, 0.0, 0.0, //
            0.0, 0.1, 0.2, 0.3, 0.4, 0.5, //
            0.7, 0.1, 0.1, 0.1, 0.1, 0.7,
        ];
        m.add(2.0, &logits, &[2, 0, 5]);
        assert_eq!((m.top1, m.top5, m.count), (1, 2, 3));
        let s = m.summary();
        assert!((s.loss - 2.0).abs() < 1e-12 && (s.top1 - 100.0 / 3.0).abs() < 1e-9);
    }
}
