//! Switchable BatchNorm: per-bit-width statistics with PyTorch's running-variance update.

use adabits_models::{BnSharing, SwitchBatchNorm2dConfig};
use adabits_quant::{BitWidth, BitWidths};
use burn::module::Param;
use burn::tensor::{Distribution, Tensor};

fn bw(b: u8) -> BitWidth {
    BitWidth::new(b).unwrap()
}

fn bits() -> BitWidths {
    "8,6,4".parse().unwrap()
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}

/// Per-channel mean and unbiased variance of `[n, c, h, w]` data.
fn channel_stats(x: &[f64], [n, c, h, w]: [usize; 4]) -> Vec<(f64, f64)> {
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> = (0..n)
                .flat_map(|b| (0..h * w).map(move |k| (b, k)))
                .map(|(b, k)| x[(b * c + ch) * h * w + k])
                .collect();
            let m = vals.iter().sum::<f64>() / vals.len() as f64;
            let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64;
            (m, v)
        })
        .collect()
}

#[test]
fn training_updates_only_the_active_entry_with_the_unbiased_variance() {
    let device = crate::device().autodiff();
    device.seed(5);
    let bn = SwitchBatchNorm2dConfig::new(3, bits()).init(&device);
    let shape = [4, 3, 2, 2];
    let x = Tensor::<4>::random(shape, Distribution::Normal(2.0, 3.0), &device);
    let xs = values(x.clone());
    let y = values(bn.forward(x, bw(6)));
    let stats = channel_stats(&xs, shape);
    // The output is normalised with the batch statistics (population variance).
    for (i, &v) in y.iter().enumerate() {
        let ch = (i / 4) % 3;
        let (m, var_unbiased) = stats[ch];
        let var_pop = var_unbiased * 15.0 / 16.0;
        let want = (xs[i] - m) / (var_pop + 1e-5).sqrt();
        assert!((v - want).abs() < 1e-4, "element {i}: {v} vs {want}");
    }
    for (idx, entry) in bn.entries.iter().enumerate() {
        let mean = values(entry.running_mean.value_sync());
        let var = values(entry.running_var.value_sync());
        for ch in 0..3 {
            let (want_mean, want_var) = if idx == 1 {
                (0.1 * stats[ch].0, 0.9 + 0.1 * stats[ch].1)
            } else {
                (0.0, 1.0)
            };
            assert!(
                (mean[ch] - want_mean).abs() < 1e-5,
                "entry {idx} mean {mean:?}"
            );
            assert!((var[ch] - want_var).abs() < 1e-4, "entry {idx} var {var:?}");
        }
    }
}

#[test]
fn evaluation_uses_the_running_statistics_of_the_selected_entry() {
    let device = crate::device();
    let mut bn = SwitchBatchNorm2dConfig::new(2, bits()).init(&device);
    bn.entries[2].running_mean =
        burn::module::RunningState::new(Tensor::from_floats([1.0, -2.0], &device));
    bn.entries[2].running_var =
        burn::module::RunningState::new(Tensor::from_floats([4.0, 0.25], &device));
    bn.entries[2].gamma = Some(Param::from_tensor(Tensor::from_floats([2.0, 1.0], &device)));
    bn.entries[2].beta = Some(Param::from_tensor(Tensor::from_floats([0.5, 0.0], &device)));
    let x = Tensor::<4>::from_floats([[[[3.0]], [[-1.0]]]], &device);
    let y = values(bn.forward(x.clone(), bw(4)));
    let want = [
        2.0 * (3.0 - 1.0) / (4.0f64 + 1e-5).sqrt() + 0.5,
        (-1.0 + 2.0) / (0.25f64 + 1e-5).sqrt(),
    ];
    for (a, e) in y.iter().zip(want) {
        assert!((a - e).abs() < 1e-5, "{y:?} vs {want:?}");
    }
    // 8 bits uses entry 0 (fresh statistics), so the output differs.
    assert_ne!(values(bn.forward(x, bw(8))), y);
}

#[test]
fn entries_are_chosen_by_position_and_absent_bits_use_the_first() {
    let device = crate::device();
    let bn = SwitchBatchNorm2dConfig::new(2, bits()).init(&device);
    assert_eq!(bn.entries.len(), 3);
    assert_eq!(bn.index(bw(8)), 0);
    assert_eq!(bn.index(bw(4)), 2);
    assert_eq!(bn.index(bw(5)), 0);
    assert_eq!(bn.index(BitWidth::FULL), 0);
}

#[test]
fn shared_and_shared_affine_variants() {
    let device = crate::device();
    let shared = SwitchBatchNorm2dConfig::new(2, bits())
        .with_sharing(BnSharing::Shared)
        .init(&device);
    assert_eq!(shared.entries.len(), 1);
    assert_eq!(shared.index(bw(4)), 0);
    let split = SwitchBatchNorm2dConfig::new(2, bits())
        .with_sharing(BnSharing::SharedAffine)
        .init(&device);
    assert_eq!(split.entries.len(), 3);
    assert!(
        split
            .entries
            .iter()
            .all(|e| e.gamma.is_none() && e.beta.is_none())
    );
    let mut split = split;
    split.shared_gamma = Some(Param::from_tensor(Tensor::from_floats([3.0, 3.0], &device)));
    let x = Tensor::<4>::from_floats([[[[2.0]], [[-2.0]]]], &device);
    let y = values(split.forward(x, bw(6)));
    let want = [
        3.0 * 2.0 / (1.0f64 + 1e-5).sqrt(),
        3.0 * -2.0 / (1.0f64 + 1e-5).sqrt(),
    ];
    for (a, e) in y.iter().zip(want) {
        assert!((a - e).abs() < 1e-5, "{y:?} vs {want:?}");
    }
}

#[test]
fn an_entry_selects_the_same_batchnorm_as_its_bit_width() {
    let device = crate::device().autodiff();
    device.seed(9);
    let bn = SwitchBatchNorm2dConfig::new(3, bits()).init(&device);
    let x = Tensor::<4>::random([4, 3, 2, 2], Distribution::Normal(1.0, 2.0), &device);
    // Training form: entry 1 is the 6-bit BatchNorm, and only its statistics move.
    let _ = bn.forward_entry(x.clone(), 1);
    let eval = |entry: usize| values(bn.forward_entry(x.clone().inner(), entry));
    let by_bits = |b: u8| values(bn.forward(x.clone().inner(), bw(b)));
    assert_eq!(eval(1), by_bits(6));
    assert_eq!(eval(0), by_bits(8));
    assert_ne!(eval(1), eval(0));
    assert_eq!(
        eval(2),
        eval(0),
        "the 4-bit entry is untouched, as the 8-bit one"
    );
}

#[test]
fn under_a_plan_a_reset_clears_the_planned_entry() {
    let device = crate::device().autodiff();
    device.seed(11);
    let mut bn = SwitchBatchNorm2dConfig::new(3, bits()).init(&device);
    let x = Tensor::<4>::random([4, 3, 2, 2], Distribution::Normal(1.0, 2.0), &device);
    for entry in 0..3 {
        let _ = bn.forward_entry(x.clone(), entry);
    }
    let stats = |bn: &adabits_models::SwitchBatchNorm2d, i: usize| {
        values(bn.entries[i].running_mean.value())
    };
    let before: Vec<_> = (0..3).map(|i| stats(&bn, i)).collect();
    bn.set_planned(Some(1));
    // Calibration resets "the entry of the bit-width it calibrates": under a plan, the planned one.
    bn.reset_statistics(bw(8));
    assert_eq!(stats(&bn, 0), before[0]);
    assert_eq!(stats(&bn, 1), vec![0.0; 3]);
    assert_eq!(stats(&bn, 2), before[2]);
}
