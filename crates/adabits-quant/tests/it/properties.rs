//! Properties of the tensor implementation, checked against the plain-`f64` reference.
//!
//! Inputs are generated as `f32` and widened exactly to `f64`, so the reference sees the same
//! numbers. Where `f32` and `f64` arithmetic could land on opposite sides of a rounding boundary
//! (a genuine, harmless difference of one level), the element is kept away from the boundary.

use adabits_quant::{
    ActQuantConfig, BitWidth, QuantScheme, WeightQuantConfig, pact, quantize_weight, reference,
    unit_quantize,
};
use burn::tensor::{Tensor, TensorData};
use proptest::prelude::*;

use crate::{device, values};

fn bits_upto(max: u8) -> impl Strategy<Value = BitWidth> {
    (1..=max).prop_map(|b| BitWidth::new(b).unwrap())
}

fn scheme() -> impl Strategy<Value = QuantScheme> {
    prop_oneof![
        Just(QuantScheme::Original),
        Just(QuantScheme::Modified),
        Just(QuantScheme::Centered)
    ]
}

fn tensor1(data: &[f32]) -> Tensor<1> {
    Tensor::from_data(TensorData::new(data.to_vec(), [data.len()]), &device())
}

fn autodiff_tensor1(data: &[f32]) -> Tensor<1> {
    Tensor::from_data(
        TensorData::new(data.to_vec(), [data.len()]),
        &device().autodiff(),
    )
    .require_grad()
}

/// Distance of `scaled` to the nearest decision boundary of the scheme's integer code: a
/// half-integer for `original` (round), an integer for the floor schemes.
fn boundary_distance(scaled: f64, scheme: QuantScheme) -> f64 {
    match scheme {
        QuantScheme::Original => ((scaled - 0.5).rem_euclid(1.0) - 0.5).abs(),
        _ => (scaled - scaled.round()).abs(),
    }
}

/// The value multiplied before rounding or flooring.
fn code_scale(bits: BitWidth, scheme: QuantScheme) -> f64 {
    let levels = f64::from(bits.levels());
    match scheme {
        QuantScheme::Original => levels - 1.0,
        _ => levels,
    }
}

fn close(a: f64, e: f64, tol: f64) -> bool {
    (a - e).abs() <= tol.max(tol * e.abs())
}

/// 64 cases per property, or `$PROPTEST_CASES` (longer runs on a GPU, for example).
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn unit_quantizer_matches_the_reference(
        u in prop::collection::vec(0.0f32..=1.0, 1..64),
        bits in bits_upto(8),
        scheme in scheme(),
    ) {
        let u: Vec<f32> = u
            .into_iter()
            .filter(|&v| boundary_distance(f64::from(v) * code_scale(bits, scheme), scheme) > 1e-3)
            .collect();
        prop_assume!(!u.is_empty());
        let q = values(unit_quantize(tensor1(&u), bits, scheme));
        for (&x, &got) in u.iter().zip(&q) {
            let want = reference::unit_quantize(f64::from(x), bits, scheme);
            prop_assert!(close(got, want, 1e-6), "Q({x}) = {got}, reference {want}");
        }
    }

    #[test]
    fn unit_quantizer_is_idempotent_monotone_and_has_at_most_two_to_the_b_levels(
        mut u in prop::collection::vec(0.0f32..=1.0, 1..256),
        bits in bits_upto(4),
        scheme in scheme(),
    ) {
        u.sort_by(f32::total_cmp);
        let q = unit_quantize(tensor1(&u), bits, scheme);
        let qq = values(unit_quantize(q.clone(), bits, scheme));
        let q = values(q);
        for (a, b) in q.iter().zip(&qq) {
            prop_assert!(close(*a, *b, 1e-6), "Q(Q(u)) = {b} but Q(u) = {a}");
        }
        for pair in q.windows(2) {
            prop_assert!(pair[0] <= pair[1], "not monotone: {} then {}", pair[0], pair[1]);
        }
        let mut levels = q.clone();
        levels.dedup();
        prop_assert!(levels.len() <= bits.levels() as usize, "{} levels", levels.len());
    }

    #[test]
    fn unit_quantizer_error_is_bounded_by_its_step(
        u in prop::collection::vec(0.0f32..=1.0, 1..64),
        bits in bits_upto(8),
        scheme in scheme(),
    ) {
        let q = values(unit_quantize(tensor1(&u), bits, scheme));
        let step = reference::unit_step(bits, scheme);
        for (&x, &got) in u.iter().zip(&q) {
            let err = f64::from(x) - got;
            match scheme {
                // Round to nearest and mid-bin: at most half a step either way.
                QuantScheme::Original | QuantScheme::Centered => {
                    prop_assert!(err.abs() <= step / 2.0 + 1e-6, "u {x}: error {err}, step {step}");
                }
                // Floor: below the input by less than a step (a full step at u = 1).
                QuantScheme::Modified => {
                    prop_assert!((-1e-6..=step + 1e-6).contains(&err), "u {x}: error {err}, step {step}");
                }
            }
        }
    }

    #[test]
    fn unit_quantizer_gradient_is_the_identity(
        u in prop::collection::vec(0.0f32..=1.0, 1..64),
        upstream in prop::collection::vec(-2.0f32..2.0, 64),
        bits in bits_upto(8),
        scheme in scheme(),
    ) {
        let x = autodiff_tensor1(&u);
        let g = Tensor::from_data(
            TensorData::new(upstream[..u.len()].to_vec(), [u.len()]),
            &device().autodiff(),
        );
        let grads = (unit_quantize(x.clone(), bits, scheme) * g).sum().backward();
        let got = values(x.grad(&grads).unwrap());
        for (a, e) in got.iter().zip(&upstream) {
            prop_assert!(close(*a, f64::from(*e), 1e-6), "gradient {a}, upstream {e}");
        }
    }

    #[test]
    fn pact_matches_the_reference_forward_and_backward(
        x in prop::collection::vec(-30.0f32..30.0, 1..48),
        alpha_param in prop_oneof![0.5f32..12.0, -12.0f32..-0.5],
        bits in prop_oneof![bits_upto(8), Just(BitWidth::FULL)],
        scheme in scheme(),
        double_sided in any::<bool>(),
        pact_fp in any::<bool>(),
    ) {
        let config = ActQuantConfig::new()
            .with_scheme(scheme)
            .with_double_sided(double_sided)
            .with_pact_fp(pact_fp);
        let alpha = f64::from(alpha_param).abs();
        // Keep elements off the clip edges and off the code boundaries.
        let x: Vec<f32> = x
            .into_iter()
            .filter(|&v| {
                let v = f64::from(v);
                let near_edge = (v.abs() - alpha).abs() < 1e-3 || v.abs() < 1e-3;
                let unit = if double_sided { (v / alpha + 1.0) / 2.0 } else { v / alpha };
                let near_code = !bits.is_full_precision()
                    && (0.0..=1.0).contains(&unit)
                    && boundary_distance(unit * code_scale(bits, scheme), scheme) < 1e-3;
                !near_edge && !near_code
            })
            .collect();
        prop_assume!(!x.is_empty());
        let xt = autodiff_tensor1(&x);
        let at = autodiff_tensor1(&[alpha_param]);
        let y = pact(xt.clone(), at.clone(), bits, &config);
        let grads = y.clone().sum().backward();
        let y = values(y);
        let dx = values(xt.grad(&grads).unwrap());
        let dalpha = at.grad(&grads).map(values).map_or(0.0, |v| v[0]);

        let mut dalpha_ref = 0.0;
        for (i, &xi) in x.iter().enumerate() {
            let r = reference::pact(f64::from(xi), f64::from(alpha_param), bits, &config);
            dalpha_ref += r.dy_dalpha_param;
            prop_assert!(close(y[i], r.y, 1e-5), "y({xi}) = {}, reference {}", y[i], r.y);
            prop_assert!(close(dx[i], r.dy_dx, 1e-6), "dy/dx({xi}) = {}, reference {}", dx[i], r.dy_dx);
            let quantizes = !bits.is_full_precision() || pact_fp;
            if quantizes {
                let (lo, hi) = if double_sided { (-alpha, alpha) } else { (0.0, alpha) };
                prop_assert!(y[i] >= lo - 1e-5 && y[i] <= hi + 1e-5, "y = {} outside [{lo}, {hi}]", y[i]);
            }
            // Inside the clip range the error is at most half a step of the α-scaled grid
            // (round-to-nearest schemes) and the gradient is 1.
            let inside = if double_sided { f64::from(xi).abs() < alpha } else { xi > 0.0 && f64::from(xi) < alpha };
            if inside && !bits.is_full_precision() && scheme != QuantScheme::Modified {
                let span = if double_sided { 2.0 * alpha } else { alpha };
                let half_step = span * reference::unit_step(bits, scheme) / 2.0;
                prop_assert!((y[i] - f64::from(xi)).abs() <= half_step + 1e-5, "x {xi}: y {}", y[i]);
            }
            if inside && quantizes {
                // α·(1/α) (and the ½·2 of the double-sided map) in f32: 1 to within an ulp.
                prop_assert!(close(dx[i], 1.0, 1e-6), "gradient {} inside the clip range", dx[i]);
            }
        }
        prop_assert!(
            (dalpha - dalpha_ref).abs() <= 1e-4 * (1.0 + dalpha_ref.abs()),
            "dL/dalpha_param = {dalpha}, reference {dalpha_ref}"
        );
    }

    #[test]
    fn weight_quantizer_matches_the_reference_forward_and_backward(
        w in prop::collection::vec(-3.0f32..3.0, 2..64),
        upstream in prop::collection::vec(-2.0f32..2.0, 64),
        bits in prop_oneof![bits_upto(8), Just(BitWidth::FULL)],
        scheme in scheme(),
        clamp in any::<bool>(),
        rescale in any::<bool>(),
        fan_out in 1usize..512,
    ) {
        let config = WeightQuantConfig::new()
            .with_scheme(scheme)
            .with_clamp(clamp)
            .with_rescale(rescale);
        let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let r = reference::quantize_weight(&w64, bits, fan_out, &config);
        // No ties at the maximum (parity default P9), no code boundaries, no constant ŵ.
        let top = r.tanh.iter().filter(|t| (t.abs() - r.max_abs).abs() < 1e-6).count();
        prop_assume!(top == 1);
        if !bits.is_full_precision() {
            let scale = code_scale(bits, scheme);
            prop_assume!(r.unit.iter().all(|u| boundary_distance(u * scale, scheme) > 1e-4));
        }
        prop_assume!(!rescale || reference::unbiased_std(&r.w_hat) > 1e-3);

        let wt = autodiff_tensor1(&w);
        let g = &upstream[..w.len()];
        let gt = Tensor::from_data(TensorData::new(g.to_vec(), [w.len()]), &device().autodiff());
        let q = quantize_weight(wt.clone(), bits, fan_out, &config);
        let scale = q.scale.clone().map(values).map_or(1.0, |s| s[0]);
        let w_eff = q.effective();
        let grads = (w_eff.clone() * gt).sum().backward();
        let w_eff = values(w_eff);
        let dw = values(wt.grad(&grads).unwrap());
        let g64: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
        let dw_ref = reference::weight_gradient(&w64, &g64, bits, fan_out, &config);

        prop_assert!(close(scale, r.scale, 1e-5), "scale {scale}, reference {}", r.scale);
        for i in 0..w.len() {
            prop_assert!(close(w_eff[i], r.w_eff[i], 1e-5), "W_eff[{i}] = {}, reference {}", w_eff[i], r.w_eff[i]);
            prop_assert!(
                (dw[i] - dw_ref[i]).abs() <= 1e-4 * (1.0 + dw_ref[i].abs()),
                "dL/dW[{i}] = {}, reference {}", dw[i], dw_ref[i]
            );
        }
    }
}

#[test]
fn the_fan_in_rescale_uses_the_input_count_of_a_linear_weight() {
    // A [3, 5] linear weight: fan-out 3, fan-in 5. c = 1/√5, s = c / std(ŵ).
    let w: Vec<f32> = (0..15).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
    let config = WeightQuantConfig::new()
        .with_scheme(adabits_quant::QuantScheme::Centered)
        .with_rescale_type(adabits_quant::RescaleType::FanIn);
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let bits = crate::bw(4);
    let r = reference::quantize_weight_fans(&w64, bits, [3, 5], &config);
    let expected = 1.0 / 5f64.sqrt() / reference::unbiased_std(&r.w_hat);
    assert!(close(r.scale, expected, 1e-12));
    let wt = Tensor::<2>::from_data(TensorData::new(w, [3, 5]), &device());
    let q = quantize_weight(wt, bits, 3, &config);
    let scale = values(q.scale.unwrap())[0];
    assert!(close(scale, r.scale, 1e-5), "{scale} vs {}", r.scale);
}
