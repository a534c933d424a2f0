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

/// The mean cross-entropy of `logits` against `labels` smoothed by `epsilon` (timm's
/// `LabelSmoothingCrossEntropy`): `(1 − ε)·CE + ε·mean_c(−log p_c)`, the cross-entropy with
/// targets `1 − ε + ε/C` on the label and `ε/C` elsewhere. `ε = 0` is [`cross_entropy`].
///
/// # Shapes
///
/// `logits`: `[batch, classes]`; `labels`: `[batch]`; output `[1]`.
pub fn smoothed_cross_entropy(
    logits: Tensor<2>,
    labels: Tensor<1, Int>,
    epsilon: f64,
) -> Tensor<1> {
    if epsilon == 0.0 {
        return cross_entropy(logits, labels);
    }
    let [n, _] = logits.dims();
    let log_p = log_softmax(logits, 1);
    let picked = log_p.clone().gather(1, labels.reshape([n, 1])).mean().neg();
    let uniform = log_p.mean().neg();
    (picked.mul_scalar(1.0 - epsilon) + uniform.mul_scalar(epsilon)).reshape([1])
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
    fn smoothed_cross_entropy_mixes_the_label_and_the_uniform_target() {
        let device = burn::tensor::Device::flex();
        let logits = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(vec![2.0f32, 0.0, -1.0, 0.5, 0.5, 3.0], [2, 3]),
            &device,
        );
        let labels =
            Tensor::<1, Int>::from_data(burn::tensor::TensorData::new(vec![0i64, 2], [2]), &device);
        // By hand: log-softmax of each row, then (1 − ε)·(−log p_label) + ε·mean_c(−log p_c).
        let rows = [[2.0f64, 0.0, -1.0], [0.5, 0.5, 3.0]];
        let eps = 0.1;
        let want: f64 = rows
            .iter()
            .zip([0usize, 2])
            .map(|(r, y)| {
                let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
                let nll: Vec<f64> = r.iter().map(|v| lse - v).collect();
                (1.0 - eps) * nll[y] + eps * nll.iter().sum::<f64>() / 3.0
            })
            .sum::<f64>()
            / 2.0;
        let got = smoothed_cross_entropy(logits.clone(), labels.clone(), eps).into_scalar::<f64>();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let plain = cross_entropy(logits.clone(), labels.clone()).into_scalar::<f64>();
        let zero = smoothed_cross_entropy(logits, labels, 0.0).into_scalar::<f64>();
        assert_eq!(zero, plain);
        assert!((got - plain).abs() > 1e-3);
    }

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
