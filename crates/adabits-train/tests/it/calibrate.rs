//! BatchNorm calibration.

use std::sync::Arc;

use adabits_models::{Architecture, Model, ModelConfig};
use adabits_quant::BitWidth;
use adabits_train::calibrate;
use adabits_train::data::{Dataset, Loader, SyntheticConfig, synthetic};

/// Every BatchNorm's folded scale and bias at `bits`, flattened.
fn folded(model: &mut Model, bits: BitWidth) -> Vec<f32> {
    let mut values = Vec::new();
    model.for_each_norm(|bn| {
        let (scale, bias) = bn.folded(bits);
        values.extend(scale.into_data().iter::<f32>());
        values.extend(bias.into_data().iter::<f32>());
    });
    values
}

#[test]
fn calibration_leaves_the_statistics_of_training_form_passes_with_plain_averages() {
    let config = ModelConfig::new(Architecture::CifarResNet(8), "8,4".parse().unwrap())
        .with_width_mult(0.25);
    let ad = crate::device().autodiff();
    let model = config.init(&ad);
    let (train, _) = synthetic(&SyntheticConfig {
        train: 48,
        val: 8,
        side: 8,
        ..SyntheticConfig::default()
    });
    let train: Arc<dyn Dataset> = Arc::new(train);
    let loader = Loader::new(train, 16, true, 3);
    let bits = BitWidth::new(4).unwrap();
    let at = config.bits.find(bits).unwrap();
    let mut calibrated = calibrate(&model, at, &loader, 2, &ad).unwrap();

    // The reference: the same batches through the training form, statistics reset first,
    // momentum 1/(k+1) at pass k (a plain average), gradients tracked as in training.
    let mut reference = model.clone();
    reference.for_each_norm(|bn| bn.reset_statistics(bits));
    for (k, batch) in loader.epoch(0, 0, &ad).take(2).enumerate() {
        reference.for_each_norm(|bn| bn.set_momentum(1.0 / (k + 1) as f64));
        let _ = reference.forward(batch.unwrap().images, bits);
    }
    let (got, want) = (folded(&mut calibrated, bits), folded(&mut reference, bits));
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "value {i}: {g} against {w}"
        );
    }
    // The statistics moved (a fresh model's are mean 0, variance 1), and the other entry and
    // the model given are left as they were.
    let mut fresh = model.clone();
    assert_ne!(got, folded(&mut fresh, bits));
    let eight = BitWidth::new(8).unwrap();
    assert_eq!(folded(&mut calibrated, eight), folded(&mut fresh, eight));
}
