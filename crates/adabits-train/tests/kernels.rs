//! One joint training step with the fused kernels (quantizers, convolution, BatchNorm) against
//! the same step with the composed ops (the reference). Its own test binary: the kernel choice
//! is process-wide.
//!
//! Every forward pass of the step sees the same parameters. The fused quantizers' forward
//! values are bit-identical, but the fused convolution and BatchNorm sum in another order, so
//! the per-bit-width losses and the parameters after the SGD step must agree to 1e-5 relative,
//! not to the bit.
//!
//! The cases: both weight schemes at {8,5} and at full precision (where no quantizer can
//! amplify a rounding difference). Not a list with a 3-bit pass: there one step with the fused
//! kernels differs from the composed step by up to 7e-3 in some parameters while the losses
//! agree to the bit; it is not explained yet and is open (docs/numerics.md, "Open").

use adabits_models::{Architecture, ModelConfig, export_official};
use adabits_quant::{Kernels, QuantScheme, set_kernels};
use adabits_train::data::Batch;
use adabits_train::{Objective, OptimConfig, Sgd, joint_step};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};

fn device() -> Device {
    Device::flex().autodiff()
}

/// The losses of each bit-width's pass and every parameter after one step with `kernels`.
fn one_step(
    kernels: Kernels,
    scheme: QuantScheme,
    bits: &str,
) -> (Vec<f64>, Vec<(String, Vec<f32>)>) {
    set_kernels(kernels);
    let ad = device();
    ad.seed(7);
    let mut config = ModelConfig::new(Architecture::CifarResNet(20), bits.parse().unwrap())
        .with_width_mult(0.25);
    config.quant.weight_scheme = scheme;
    config.quant.rescale_conv = true;
    let model = config.init(&ad);
    let batch = 8;
    let images = Tensor::<4>::random([batch, 3, 16, 16], Distribution::Uniform(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 10).collect();
    let batch = Batch {
        images,
        labels: Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad),
        targets: (0..batch).map(|i| i % 10).collect(),
    };
    let bits: Vec<_> = config.bits.entries().collect();
    let mut losses = Vec::new();
    let mut sgd = Sgd::new(OptimConfig::default());
    let model = joint_step(
        model,
        &mut sgd,
        &bits,
        &batch,
        0.1,
        Objective::default(),
        &mut |_, loss, _| {
            losses.push(loss);
            Ok(())
        },
    )
    .unwrap();
    let state = export_official(&model);
    let mut params: Vec<(String, Vec<f32>)> = state
        .keys()
        .map(|k| (k.to_string(), state.get(k).unwrap().values.clone()))
        .collect();
    params.sort_by(|a, b| a.0.cmp(&b.0));
    (losses, params)
}

#[test]
fn a_fused_joint_step_matches_the_composed_step() {
    for (scheme, bits) in [
        (QuantScheme::Modified, "8,5"),
        (QuantScheme::Centered, "8,5"),
        (QuantScheme::Modified, "32"),
        (QuantScheme::Centered, "32"),
    ] {
        let (fused_losses, fused) = one_step(Kernels::Fused, scheme, bits);
        let (composed_losses, composed) = one_step(Kernels::Composed, scheme, bits);
        set_kernels(Kernels::Fused);
        assert_eq!(fused_losses.len(), bits.split(',').count());
        for (f, c) in fused_losses.iter().zip(&composed_losses) {
            assert!(
                (f - c).abs() <= 1e-5 * c.abs().max(1.0),
                "{scheme}: losses {fused_losses:?} vs {composed_losses:?}"
            );
        }
        assert_eq!(fused.len(), composed.len());
        let mut largest = 0.0f64;
        for ((name, f), (_, c)) in fused.iter().zip(&composed) {
            for (a, b) in f.iter().zip(c) {
                let d = f64::from((a - b).abs()) / f64::from(b.abs()).max(1.0);
                largest = largest.max(d);
                assert!(
                    d <= 1e-5,
                    "{scheme} {{{bits}}}: {name}: fused {a} vs composed {b}"
                );
            }
        }
        eprintln!("{scheme} {{{bits}}}: largest parameter difference after one step {largest:e}");
    }
}
