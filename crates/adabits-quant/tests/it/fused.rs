//! The fused quantizers against the composed ops (the reference), on random shapes, forward and
//! gradients, with exact ties and the clipping boundaries.
//!
//! On Flex (feature `flex`, on in `cargo test --workspace`) and on wgpu (`--features
//! test-wgpu`, the CubeCL kernels) `pact` and `quantize_weight` take the fused kernels and
//! `pact_composed` / `quantize_weight_composed` the tensor ops; forward values must agree bit
//! for bit (the kernels do the same `f32` operations), gradients to 1e-5 relative (full-tensor
//! sums are accumulated in another order). On ndarray both sides are the composed ops.

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
/// values: `∂y/∂α = z − c/α` inside the clipping range and `z = y/α` outside (docs/method.md §4).
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
            (Some(f), Some(c)) => {
                // Both against the scale in `f64`: the fused kernels sum in `f64` on Flex and
                // pairwise in `f32` on CubeCL (a relative error near log2(n)·ε per sum), the
                // composed path in whatever order the backend's reduction takes (on wgpu its
                // autotuned kernels; the bound of any `f32` order is n·ε per sum). Against each
                // other they differed by 2.2e-6 in case 46 on lavapipe.
                let w64 = values(w.clone());
                let numerator = match config.rescale_type {
                    RescaleType::Constant => 1.0 / (conv_fan_out(shape) as f64).sqrt(),
                    RescaleType::FanIn => 1.0 / ((shape[1] * shape[2] * shape[3]) as f64).sqrt(),
                    RescaleType::Stddev => std_f64(&w64),
                };
                let exact = numerator / std_f64(&fused.0);
                let eps = f64::from(f32::EPSILON);
                let pairwise = 2.0 * (n as f64).log2().ceil().max(1.0) * eps;
                assert!(
                    (f - exact).abs() <= pairwise * exact,
                    "{what}: fused s {f} vs {exact} in f64"
                );
                assert!(
                    (c - exact).abs() <= 2.0 * n as f64 * eps * exact,
                    "{what}: composed s {c} vs {exact} in f64"
                );
            }
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

#[test]
fn fused_quantizers_match_the_composed_ops_on_large_tensors_and_repeat_bit_for_bit() {
    // Large enough that the CubeCL reductions reach their cap of cubes (2^20 elements) and
    // Flex's span many chunks; each fused result must also repeat exactly from run to run.
    let mut rng = Lcg(23);
    let d = device();
    let shape = [2, 40, 128, 128];
    let n: usize = shape.iter().product();
    let alpha = 2.5f32;
    let x = tensor4(pact_input(&mut rng, n, alpha), shape, &d);
    let r = tensor4((0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(), shape, &d);
    let config = ActQuantConfig::new().with_scheme(QuantScheme::Centered);
    let fused = pact_with_grads(pact, &x, alpha, &r, bw(4), &config);
    let again = pact_with_grads(pact, &x, alpha, &r, bw(4), &config);
    let composed = pact_with_grads(pact_composed, &x, alpha, &r, bw(4), &config);
    assert_bitwise(&fused.0, &composed.0, "large PACT: y");
    assert_close(&fused.1, &composed.1, 1e-6, "large PACT: ∂x");
    let (exact, magnitude) = alpha_grad_in_f64(&values(x), &values(r), &fused.0, alpha, &config);
    assert!(
        (fused.2[0] - exact).abs() <= 1e-5 * magnitude,
        "large PACT: ∂α fused {} vs f64 {exact}",
        fused.2[0]
    );
    assert_bitwise(&fused.2, &again.2, "large PACT: ∂α repeated");

    let shape = [256, 256, 3, 3];
    let n: usize = shape.iter().product();
    let mut data: Vec<f32> = (0..n).map(|_| rng.uniform(-0.3, 0.3)).collect();
    data[n / 3] = 0.5;
    data[n - 7] = -0.5;
    let w = tensor4(data, shape, &d);
    let r = tensor4((0..n).map(|_| rng.uniform(-1.0, 1.0)).collect(), shape, &d);
    let config = WeightQuantConfig::new().with_rescale_type(RescaleType::Stddev);
    let fused = weight_with_grads(quantize_weight, &w, &r, bw(5), &config);
    let again = weight_with_grads(quantize_weight, &w, &r, bw(5), &config);
    let composed = weight_with_grads(quantize_weight_composed, &w, &r, bw(5), &config);
    assert_bitwise(&fused.0, &composed.0, "large weight: ŵ");
    // Over 590k elements the composed path's `f32` variance drifts (on lavapipe by about 1e-3
    // relative), so the scale and the gradient, which carries it, are held against `f64`.
    let f = fused.1.unwrap();
    let (w_values, r_values) = (values(w), values(r));
    let exact = std_f64(&w_values) / std_f64(&fused.0);
    assert!(
        (f - exact).abs() <= 1e-5 * exact,
        "large weight: s fused {f} vs f64 {exact} (composed {:?})",
        composed.1
    );
    // Away from the maximum, ∂W is element-wise; at the two tied elements it carries Σ G·t over
    // every element, whose rounding error scales with Σ|G·t|, as for PACT's ∂α.
    let (reference, through_max_magnitude) = weight_grad_f64(&w_values, &r_values, exact);
    let ties = [n / 3, n - 7];
    let untied = |g: &[f64]| -> Vec<f64> {
        g.iter()
            .enumerate()
            .filter(|(i, _)| !ties.contains(i))
            .map(|(_, &g)| g)
            .collect()
    };
    assert_close(
        &untied(&fused.2),
        &untied(&reference),
        1e-5,
        "large weight: ∂W vs f64",
    );
    for i in ties {
        assert!(
            (fused.2[i] - reference[i]).abs() <= 1e-6 * through_max_magnitude,
            "large weight: ∂W at the tie {i}: fused {} vs f64 {}",
            fused.2[i],
            reference[i]
        );
    }
    assert_eq!(fused.1, again.1, "large weight: s repeated");
    assert_bitwise(&fused.2, &again.2, "large weight: ∂W repeated");
}

/// `∂L/∂W` for `L = Σ s·ŵ·r` in `f64` (docs/method.md §3, the maximum's gradient split evenly among
/// the ties), with `t = tanh(W)` rounded to `f32` as the kernels compute it; and
/// `Σ|G·t|/(M²·#tied)`, the scale of the rounding error of the maximum's share.
fn weight_grad_f64(w: &[f64], r: &[f64], scale: f64) -> (Vec<f64>, f64) {
    let t: Vec<f64> = w.iter().map(|&w| f64::from((w as f32).tanh())).collect();
    let m = t.iter().fold(0.0f64, |m, t| m.max(t.abs()));
    let tied = t.iter().filter(|t| t.abs() == m).count() as f64;
    let sum_gt: f64 = t.iter().zip(r).map(|(t, r)| scale * r * t).sum();
    let magnitude: f64 = t.iter().zip(r).map(|(t, r)| (scale * r * t).abs()).sum();
    let grad = t
        .iter()
        .zip(r)
        .map(|(&t, &r)| {
            let through_max = if t.abs() == m {
                -t.signum() * sum_gt / (m * m * tied)
            } else {
                0.0
            };
            (1.0 - t * t) * (scale * r / m + through_max)
        })
        .collect();
    (grad, magnitude / (m * m * tied))
}

/// The unbiased standard deviation, in `f64`.
fn std_f64(x: &[f64]) -> f64 {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (x.len() - 1) as f64;
    var.sqrt()
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
