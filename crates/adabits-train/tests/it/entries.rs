//! Entries with separate weight and activation bit-widths (`wWaA`) in a model's list: a step at
//! a pair entry trains that entry's clipping levels and BatchNorm, and no other's.

use adabits_models::{Architecture, ModelConfig, export_official};
use adabits_quant::BitWidths;
use adabits_train::data::Batch;
use adabits_train::{Objective, OptimConfig, Sgd, joint_step};
use burn::tensor::{Distribution, Int, Tensor, TensorData};

/// A model's official tensors by name, sorted.
type Tensors = Vec<(String, Vec<f32>)>;

/// The official tensors before and after one SGD step of a fresh `list` model at `entry`
/// alone, and the step's loss.
fn one_step(list: &str, entry: usize) -> (Tensors, Tensors, f64) {
    let ad = crate::device().autodiff();
    let entries: BitWidths = list.parse().unwrap();
    let config =
        ModelConfig::new(Architecture::CifarResNet(8), entries.clone()).with_width_mult(0.25);
    let model = config.init_seeded(5, &ad).unwrap();
    ad.seed(6);
    let images = Tensor::<4>::random([8, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..8).map(|i| i % 10).collect();
    let batch = Batch {
        images,
        labels: Tensor::<1, Int>::from_data(TensorData::new(labels, [8]), &ad),
        targets: (0..8).map(|i| i % 10).collect(),
    };
    let tensors = |m: &adabits_models::Model| {
        let state = export_official(m);
        let mut all: Vec<(String, Vec<f32>)> = state
            .keys()
            .map(|k| (k.to_string(), state.get(k).unwrap().values.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    };
    let before = tensors(&model);
    let mut loss = f64::NAN;
    let stepped = joint_step(
        model,
        &mut Sgd::new(OptimConfig::default()),
        &[entries.at(entry).unwrap()],
        &batch,
        0.1,
        Objective::default(),
        &mut |_, ce, _| {
            loss = ce;
            Ok(())
        },
    )
    .unwrap();
    (before, tensors(&stepped), loss)
}

/// What a step of a two-entry model changed: the list positions of the clipping levels and of
/// the BatchNorm entries that moved in any layer, and whether any weight moved.
fn moved(
    before: &[(String, Vec<f32>)],
    after: &[(String, Vec<f32>)],
) -> (Vec<usize>, Vec<usize>, bool) {
    let mut alpha = Vec::new();
    let mut norm = Vec::new();
    let mut weights = false;
    for ((name, b), (_, a)) in before.iter().zip(after) {
        let changed: Vec<usize> = (0..b.len()).filter(|&i| a[i] != b[i]).collect();
        if name.ends_with(".alpha") && b.len() == 2 {
            alpha.extend(changed);
        } else if let Some(rest) = name.split(".bn.").nth(1) {
            if !changed.is_empty() {
                norm.push(rest[..1].parse::<usize>().unwrap());
            }
        } else if name.ends_with("weight") && !changed.is_empty() {
            weights = true;
        }
    }
    alpha.sort_unstable();
    alpha.dedup();
    norm.sort_unstable();
    norm.dedup();
    (alpha, norm, weights)
}

#[test]
fn a_step_at_a_pair_entry_trains_that_entrys_clipping_levels_and_batchnorm_only() {
    let (before, after, pair_loss) = one_step("8,w4a8", 1);
    let (alpha, norm, weights) = moved(&before, &after);
    assert_eq!(alpha, [1], "clipping-level entries moved by a step at w4a8");
    assert_eq!(norm, [1], "BatchNorm entries moved by a step at w4a8");
    assert!(weights, "the shared weights get the pair's gradient");

    let (before, after, top_loss) = one_step("8,w4a8", 0);
    let (alpha, norm, _) = moved(&before, &after);
    assert_eq!(
        alpha,
        [0],
        "clipping-level entries moved by a step at 8 bits"
    );
    assert_eq!(norm, [0], "BatchNorm entries moved by a step at 8 bits");

    // The same weights at w4a8 and at uniform 4 bits (entry 1 of `8,4`, whose clipping
    // levels and BatchNorm start the same) are different computations: the activations of
    // the pair are at 8 bits.
    let (_, _, four_loss) = one_step("8,4", 1);
    assert!(
        pair_loss.is_finite() && top_loss.is_finite() && four_loss.is_finite(),
        "{pair_loss} {top_loss} {four_loss}"
    );
    assert_ne!(pair_loss, four_loss);
    assert_ne!(pair_loss, top_loss);
}
