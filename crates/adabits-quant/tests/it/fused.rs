//! The fused quantizers against the composed ops (the reference), on random shapes, forward and
//! gradients, with exact ties and the clipping boundaries.
//!
//! On Flex (feature `flex`, on in `cargo test --workspace`) `pact` and `quantize_weight` take
//! the fused kernels and `pact_composed` / `quantize_weight_composed` the tensor ops; forward
//! values must agree bit for bit (the kernels do the same `f32` operations), gradients to 1e-5
//! relative (full-tensor sums are accumulated in another order). On other backends both sides
//! are the composed ops.

use adabits_quant::{
    ActQuantConfig, BitWidth, QuantScheme, RescaleType, WeightQuantConfig, conv_fan_out, pact,
    pact_composed, quantize_weight, quantize_weight_composed,
};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::{Lcg, assert_close, bw, device, values};

fn assert_bitwise(fused: &[f64], composed: &[f64], what: &str) {
    assert_eq!(fused.len(), composed.len(), "{what}: lengths");
    for (i, (f, c)) in fused.iter().zip(composed).enumerate() {
        assert!(
            f.to_bits() == c.to_bits() || (f.is_nan() && c.is_nan()),
            "{what}: element {i}: fused {f} vs composed {c}"
        );
    }
}

type PactFn = fn(Tensor<4>, Tensor<1>, BitWidth, &ActQuantConfig) -> Tensor<4>;

/// `(y, ∂L/∂x, ∂L/∂alpha_param)` for `L = Σ y·r`.
fn pact_with_grads(
    f: PactFn,
    x: &Tensor<4>,
    alpha: f32,
    r: &Tensor<4>,
    bits: BitWidth,
    config: &ActQuantConfig,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let ad = device().autodiff();
    let x = Tensor::<4>::from_data(x.to_data(), &ad).require_grad();
    let a = Tensor::<1>::from_data(TensorData::new(vec![alpha], [1]), &ad).require_grad();
    let r = Tensor::<4>::from_data(r.to_data(), &ad);
    let y = f(x.clone(), a.clone(), bits, config);
    let grads = (y.clone() * r).sum().backward();
    let gx = x.grad(&grads).expect("x has a gradient");
    let ga = a.grad(&grads).expect("alpha has a gradient");
    (
        values(y.inner()),
        values(Tensor::from_inner(gx)),
        values(Tensor::from_inner(ga)),
    )
}

/// `(Σ r·∂y/∂alpha_param, Σ|r·∂y/∂alpha_param|)` in `f64`, from the inputs and the forward
/// values: `∂y/∂α = z − c/α` inside the clipping range and `z = y/α` outside (METHOD.md §4).
fn alpha_grad_in_f64(
    x: &[f64],
    r: &[f64],
    y: &[f64],
    alpha_param: f32,
    config: &ActQuantConfig,
) -> (f64, f64) {
    let alpha = f64::from(alpha_param.abs());
    let sign = f64::from(alpha_param.signum());
    let low = if config.double_sided { -alpha } else { 0.0 };
    let (mut sum, mut magnitude) = (0.0, 0.0);
    for ((&x, &r), &y) in x.iter().zip(r).zip(y) {
        let z = y / alpha;
        let term = if x > low && x < alpha {
            z - x / alpha
        } else {
            z
        };
        sum += sign * r * term;
        magnitude += (r * term).abs();
    }
    (sum, magnitude.max(1e-30))
}

fn random_shape(rng: &mut Lcg) -> [usize; 4] {
    [
        1 + rng.below(4),
        1 + rng.below(9),
        1 + rng.below(12),
        1 + rng.below(40),
    ]
}

fn tensor4(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Data that hits every region of PACT: below −α, exactly −α, 0, exactly α, above α, inside,
/// and inputs whose `x/α` is a multiple of 1/8 (rounding ties and floor boundaries at low bits).
fn pact_input(rng: &mut Lcg, n: usize, alpha: f32) -> Vec<f32> {
    (0..n)
        .map(|_| match rng.below(10) {
            8 => alpha * (rng.below(17) as f32 / 8.0 - 1.0),
            9 => alpha * 0.5,
            0 => 0.0,
            1 => alpha,
            2 => -alpha,
            3 => rng.uniform(alpha, 3.0 * alpha),
            4 => rng.uniform(-3.0 * alpha, -alpha),
            _ => rng.uniform(-alpha, alpha),
        })
        .collect()
}

#[test]
fn fused_pact_matches_the_composed_ops_on_random_shapes_forward_and_gradients() {
    let mut rng = Lcg(7);
    let d = device();
    for case in 0..60 {
        let shape = random_shape(&mut rng);
        let n = shape.iter().product();
        let alpha = rng.uniform(0.5, 9.0) * if case % 5 == 0 { -1.0 } else { 1.0 };
        let x = tensor4(pact_input(&mut rng, n, alpha.abs()), shape, &d);
        let r = tensor4((0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(), shape, &d);
        let bits = bw(1 + rng.below(8) as u8);
        let scheme = QuantScheme::ALL[rng.below(3)];
        let config = ActQuantConfig::new()
            .with_scheme(scheme)
            .with_double_sided(case % 3 == 0);
        let what = format!("case {case}: {shape:?} α {alpha} @{bits}b {scheme} {config:?}");
        let fused = pact_with_grads(pact, &x, alpha, &r, bits, &config);
        let composed = pact_with_grads(pact_composed, &x, alpha, &r, bits, &config);
        assert_bitwise(&fused.0, &composed.0, &format!("{what}: y"));
        assert_close(&fused.1, &composed.1, 1e-6, &format!("{what}: ∂x"));
        // ∂L/∂α is a sum of n terms of both signs: check the fused sum against the same
        // terms summed in f64, and the composed f32 sum against the fused one, each relative
        // to Σ|term| (what a sum's rounding error scales with).
        let (exact, magnitude) =
            alpha_grad_in_f64(&values(x), &values(r), &fused.0, alpha, &config);
        let (f, c) = (fused.2[0], composed.2[0]);
        assert!(
            (f - exact).abs() <= 1e-6 * magnitude,
            "{what}: ∂α fused {f} vs f64 {exact}"
        );
        assert!(
            (c - f).abs() <= 1e-5 * magnitude,
            "{what}: ∂α composed {c} vs fused {f}"
        );
    }
}

#[test]
fn fused_pact_without_autodiff_and_on_a_permuted_tensor_matches_the_composed_ops() {
    let d = device();
    let x = Tensor::<4>::random([2, 3, 5, 7], Distribution::Normal(1.0, 4.0), &d);
    let x = x.permute([0, 2, 3, 1]);
    let alpha = Tensor::<1>::from_data(TensorData::new(vec![3.5f32], [1]), &d);
    let config = ActQuantConfig::new();
    let fused = pact(x.clone(), alpha.clone(), bw(3), &config);
    let composed = pact_composed(x, alpha, bw(3), &config);
    assert_eq!(fused.dims(), composed.dims());
    assert_bitwise(&values(fused), &values(composed), "permuted");
}

type WeightFn =
    fn(Tensor<4>, BitWidth, usize, &WeightQuantConfig) -> adabits_quant::QuantizedWeight<4>;

/// `(ŵ, s, ∂L/∂W)` for `L = Σ W_eff·r`.
fn weight_with_grads(
    f: WeightFn,
    w: &Tensor<4>,
    r: &Tensor<4>,
    bits: BitWidth,
    config: &WeightQuantConfig,
) -> (Vec<f64>, Option<f64>, Vec<f64>) {
    let ad = device().autodiff();
    let w = Tensor::<4>::from_data(w.to_data(), &ad).require_grad();
    let r = Tensor::<4>::from_data(r.to_data(), &ad);
    let q = f(w.clone(), bits, conv_fan_out(w.dims()), config);
    let w_hat = values(q.w_hat.clone().inner());
    let scale = q.scale.clone().map(|s| values(s.inner())[0]);
    let grads = (q.effective() * r).sum().backward();
    let gw = w.grad(&grads).expect("the weight has a gradient");
    (w_hat, scale, values(Tensor::from_inner(gw)))
}

fn weight_configs(case: usize) -> WeightQuantConfig {
    let scheme = QuantScheme::ALL[case % 3];
    let config = WeightQuantConfig::new().with_scheme(scheme);
    match case % 4 {
        0 => config.with_rescale(false),
        1 => config.with_rescale_type(RescaleType::Constant),
        2 => config.with_rescale_type(RescaleType::Stddev),
        _ => config.with_rescale_type(RescaleType::FanIn),
    }
}

#[test]
fn fused_weight_quantizer_matches_the_composed_ops_on_random_shapes_forward_and_gradients() {
    let mut rng = Lcg(11);
    let d = device();
    for case in 0..48 {
        let shape = [
            1 + rng.below(24),
            1 + rng.below(16),
            [1, 3, 5][rng.below(3)],
            [1, 3][rng.below(2)],
        ];
        let n: usize = shape.iter().product();
        if n < 2 {
            continue;
        }
        let mut data: Vec<f32> = (0..n).map(|_| rng.uniform(-0.3, 0.3)).collect();
        // Exact ties at the maximum in a third of the cases, of both signs.
        if case % 3 == 0 && n > 3 {
            data[0] = 0.45;
            data[n - 1] = -0.45;
            data[n / 2] = 0.45;
        }
        let w = tensor4(data, shape, &d);
        let r = tensor4((0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(), shape, &d);
        let bits = if case % 8 == 7 {
            BitWidth::FULL
        } else {
            bw(1 + rng.below(8) as u8)
        };
        let config = weight_configs(case);
        let what = format!("case {case}: {shape:?} @{bits}b {config:?}");
        let fused = weight_with_grads(quantize_weight, &w, &r, bits, &config);
        let composed = weight_with_grads(quantize_weight_composed, &w, &r, bits, &config);
        assert_bitwise(&fused.0, &composed.0, &format!("{what}: ŵ"));
        match (fused.1, composed.1) {
            (Some(f), Some(c)) => assert!((f - c).abs() <= 1e-6 * c.abs(), "{what}: s {f} vs {c}"),
            (None, None) => {}
            other => panic!("{what}: scales {other:?}"),
        }
        assert_close(&fused.2, &composed.2, 1e-5, &format!("{what}: ∂W"));
    }
}

#[test]
fn fused_weight_quantizer_splits_the_maximum_gradient_among_exact_ties() {
    // Two elements tied at max|tanh W|, with opposite signs: each gets half of ∂L/∂M, with
    // its own sign (P9); the composed path builds the same split from tensor ops.
    let d = device();
    let w = tensor4(vec![0.5, -0.5, 0.1, -0.2, 0.3, 0.05], [1, 1, 2, 3], &d);
    let r = tensor4(vec![1.0, 0.5, -0.25, 2.0, 0.75, -1.0], [1, 1, 2, 3], &d);
    let config = WeightQuantConfig::new().with_rescale(false);
    let fused = weight_with_grads(quantize_weight, &w, &r, bw(2), &config);
    let composed = weight_with_grads(quantize_weight_composed, &w, &r, bw(2), &config);
    assert_bitwise(&fused.0, &composed.0, "ŵ");
    assert_close(&fused.2, &composed.2, 1e-6, "∂W");
    // The tied elements' gradients differ from the untied formula G·(1 − t²)/M.
    let t = 0.5f64.tanh();
    let untied = 1.0 * (1.0 - t * t) / t;
    assert!(
        (fused.2[0] - untied).abs() > 1e-3,
        "the tie takes part of ∂L/∂M"
    );
}

proptest! {
    #![proptest_config(Config::with_cases(24))]

    /// PACT on random 1-D data (proptest shrinks a failure to a small case).
    #[test]
    fn fused_pact_matches_composed_on_arbitrary_values(
        data in prop::collection::vec(-20.0f32..20.0, 1..300),
        alpha in 0.25f32..12.0,
        bits in 1u8..=16,
        scheme in 0usize..3,
        double_sided in any::<bool>(),
    ) {
        let d = device();
        let n = data.len();
        let x = Tensor::<1>::from_data(TensorData::new(data, [n]), &d);
        let a = Tensor::<1>::from_data(TensorData::new(vec![alpha], [1]), &d);
        let config = ActQuantConfig::new()
            .with_scheme(QuantScheme::ALL[scheme])
            .with_double_sided(double_sided);
        let fused = values(pact(x.clone(), a.clone(), bw(bits), &config));
        let composed = values(pact_composed(x, a, bw(bits), &config));
        for (f, c) in fused.iter().zip(&composed) {
            prop_assert_eq!(f.to_bits(), c.to_bits());
        }
    }
}
