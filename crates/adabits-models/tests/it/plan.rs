//! Precision plans on whole models: a uniform plan is the model at that bit-width, bit for bit;
//! a mixed plan runs each layer at its own entry.

use adabits_models::{
    Architecture, Model, ModelConfig, Plan, quantized_layers, with_plan, without_plan,
};
use adabits_quant::{BitWidth, BitWidths};
use burn::tensor::{Distribution, Tensor};

fn plan(json: &str) -> Plan {
    serde_json::from_str(json).unwrap()
}

fn logits(model: &Model, images: &Tensor<4>, bits: u8) -> Vec<f64> {
    model
        .forward(images.clone(), BitWidth::new(bits).unwrap())
        .into_data()
        .iter::<f64>()
        .collect()
}

/// Every family: the plan `{"default": B}` equals the model at `B` at each entry (training
/// form: batch statistics, so that an untrained model's logits are not all zero), whatever
/// bit-width `forward` is given; the plan that raises only the classifier's input to 8 bits
/// differs from both uniform ones.
#[test]
fn a_uniform_plan_is_the_model_at_that_bit_width_for_every_family() {
    let device = crate::device().autodiff();
    let entries: BitWidths = "8,4".parse().unwrap();
    for (arch, width, side) in [
        (Architecture::CifarResNet(20), 0.25, 16),
        (Architecture::MobileNetV1, 0.25, 32),
        (Architecture::MobileNetV2, 0.35, 32),
        (Architecture::ImageNetResNet(18), 0.125, 32),
    ] {
        let model = ModelConfig::new(arch, entries.clone())
            .with_width_mult(width)
            .with_num_classes(10)
            .init_seeded(3, &device)
            .unwrap();
        let layers = quantized_layers(&model);
        let images =
            Tensor::<4>::random([2, 3, side, side], Distribution::Uniform(0.0, 1.0), &device);
        let eval = model;
        assert!(
            logits(&eval, &images, 4).iter().any(|&v| v != 0.0),
            "{arch}"
        );
        for b in [8u8, 4] {
            let uniform = plan(&format!(r#"{{"default": {b}}}"#))
                .resolve(&layers, &entries)
                .unwrap();
            let planned = with_plan(&eval, &uniform).unwrap();
            let want = logits(&eval, &images, b);
            // The plan decides, not the bit-width given.
            for given in [8u8, 4] {
                crate::assert_same_computation(
                    &logits(&planned, &images, given),
                    &want,
                    &format!("{arch} plan {b}, forward at {given}"),
                );
            }
        }
        let classifier = layers.last().unwrap().clone();
        let mixed = plan(&format!(
            r#"{{"default": 4, "layers": {{"{classifier}": 8}}}}"#
        ))
        .resolve(&layers, &entries)
        .unwrap();
        let planned = with_plan(&eval, &mixed).unwrap();
        let got = logits(&planned, &images, 4);
        assert_ne!(got, logits(&eval, &images, 4), "{arch}");
        assert_ne!(got, logits(&eval, &images, 8), "{arch}");
        // Undone, the model runs the bit-width given again.
        assert_eq!(
            logits(&without_plan(&planned), &images, 4),
            logits(&eval, &images, 4),
            "{arch}"
        );
    }
}

#[test]
fn in_evaluation_form_a_plan_uses_each_layers_batchnorm_entry() {
    use burn::module::Module;
    let device = crate::device().autodiff();
    let entries: BitWidths = "8,4".parse().unwrap();
    let model = ModelConfig::new(Architecture::CifarResNet(20), entries.clone())
        .with_width_mult(0.25)
        .init_seeded(5, &device)
        .unwrap();
    // Training-form passes give each entry its own running statistics.
    for b in [8u8, 4] {
        let images = Tensor::<4>::random([8, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &device);
        let _ = logits(&model, &images, b);
    }
    let eval = model.valid();
    let images = Tensor::<4>::random(
        [2, 3, 16, 16],
        Distribution::Uniform(0.0, 1.0),
        &eval.devices()[0],
    );
    assert_ne!(logits(&eval, &images, 4), logits(&eval, &images, 8));
    let layers = quantized_layers(&eval);
    for b in [8u8, 4] {
        let uniform = plan(&format!(r#"{{"default": {b}}}"#))
            .resolve(&layers, &entries)
            .unwrap();
        let other = if b == 8 { 4 } else { 8 };
        crate::assert_same_computation(
            &logits(&with_plan(&eval, &uniform).unwrap(), &images, other),
            &logits(&eval, &images, b),
            &format!("evaluation form, plan {b}"),
        );
    }
}

#[test]
fn a_plan_resolved_for_another_model_is_refused() {
    let device = crate::device();
    let entries: BitWidths = "8,4".parse().unwrap();
    let small = ModelConfig::new(Architecture::CifarResNet(20), entries.clone()).init(&device);
    let other = ModelConfig::new(Architecture::MobileNetV1, entries.clone())
        .with_width_mult(0.25)
        .init(&device);
    let resolved = plan(r#"{"default": 8}"#)
        .resolve(&quantized_layers(&small), &entries)
        .unwrap();
    let err = with_plan(&other, &resolved).unwrap_err().to_string();
    assert!(
        err.contains("gives `") && err.contains("no precision"),
        "{err}"
    );
}
