//! Integer codes and the bit-shift property (docs/method.md §2, TV7).

use crate::bw;
use adabits_quant::{
    QuantError, QuantScheme, WeightQuantConfig, codes_to_unit, quantize_weight, shift_codes,
    weight_codes,
};
use burn::tensor::{Distribution, Tensor};

fn random_weight() -> Tensor<4> {
    let device = crate::device();
    device.seed(7);
    Tensor::random([16, 8, 3, 3], Distribution::Normal(0.0, 0.5), &device)
}

fn ints<const D: usize>(t: Tensor<D, burn::tensor::Int>) -> Vec<i64> {
    t.into_data().iter::<i64>().collect()
}

#[test]
fn lower_bit_codes_are_the_eight_bit_codes_shifted_right() {
    let w = random_weight();
    for scheme in [QuantScheme::Modified, QuantScheme::Centered] {
        let codes8 = weight_codes(w.clone(), bw(8), scheme);
        for b in 1..8 {
            let direct = ints(weight_codes(w.clone(), bw(b), scheme));
            let shifted = ints(shift_codes(codes8.clone(), scheme, bw(8), bw(b)).unwrap());
            assert_eq!(direct, shifted, "{scheme} at {b} bits");
        }
    }
}

#[test]
fn the_original_scheme_has_no_shift_property() {
    let w = random_weight();
    let codes8 = weight_codes(w.clone(), bw(8), QuantScheme::Original);
    let codes4 = ints(weight_codes(w, bw(4), QuantScheme::Original));
    let shifted = ints(codes8.clone().bitwise_right_shift_scalar(4));
    assert_ne!(
        codes4, shifted,
        "a shift happened to be exact on this sample"
    );
    let err = shift_codes(codes8, QuantScheme::Original, bw(8), bw(4)).unwrap_err();
    assert!(matches!(err, QuantError::NoShiftProperty { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("original scheme has no bit-shift property"),
        "{err}"
    );
}

#[test]
fn shifts_only_go_down() {
    let codes = weight_codes(random_weight(), bw(4), QuantScheme::Modified);
    for (from, to) in [(4, 4), (4, 6), (32, 4)] {
        let err = shift_codes(codes.clone(), QuantScheme::Modified, bw(from), bw(to)).unwrap_err();
        assert!(
            matches!(err, QuantError::InvalidShift { .. }),
            "{from}->{to}: {err}"
        );
    }
}

#[test]
fn codes_reproduce_the_quantized_weight() {
    // ŵ = 2·Q(u) − 1 with Q(u) recovered from the integer code: what deployment will rely on.
    let w = random_weight();
    for scheme in QuantScheme::ALL {
        for b in [2, 4, 5, 8] {
            let config = WeightQuantConfig::new()
                .with_scheme(scheme)
                .with_rescale(false);
            let w_hat = crate::values(quantize_weight(w.clone(), bw(b), 16 * 9, &config).w_hat);
            let codes = weight_codes(w.clone(), bw(b), scheme);
            let from_codes = crate::values(
                codes_to_unit(codes, bw(b), scheme)
                    .mul_scalar(2.0)
                    .sub_scalar(1.0),
            );
            for (i, (a, e)) in from_codes.iter().zip(&w_hat).enumerate() {
                assert!(
                    (a - e).abs() <= 1e-6,
                    "{scheme} {b} bits, element {i}: {a} vs {e}"
                );
            }
            let levels: std::collections::BTreeSet<i64> =
                w_hat.iter().map(|v| (v * 1e6).round() as i64).collect();
            assert!(
                levels.len() <= 1 << b,
                "{scheme} {b} bits: {} levels",
                levels.len()
            );
        }
    }
}

#[test]
fn tied_maxima_split_the_max_gradient_evenly() {
    // Parity default P9: PyTorch 2.x splits the gradient of max|tanh(W)| evenly among tied
    // elements. W has two elements tied at |w| = 2 (one of each sign).
    use adabits_quant::reference;
    let w = [0.5f32, -2.0, 0.1, 2.0];
    let g = [1.0f32, -2.0, 0.5, 0.25];
    let device = crate::device().autodiff();
    let wt = Tensor::<1>::from_data(burn::tensor::TensorData::new(w.to_vec(), [4]), &device)
        .require_grad();
    let gt = Tensor::<1>::from_data(burn::tensor::TensorData::new(g.to_vec(), [4]), &device);
    let config = WeightQuantConfig::new();
    let w_eff = quantize_weight(wt.clone(), bw(2), 2, &config).effective();
    let grads = (w_eff * gt).sum().backward();
    let got = crate::values(wt.grad(&grads).unwrap());
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let g64: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
    let want = reference::weight_gradient(&w64, &g64, bw(2), 2, &config);
    for (i, (a, e)) in got.iter().zip(&want).enumerate() {
        assert!(
            (a - e).abs() <= 1e-5,
            "element {i}: burn {a}, even split {e}; all {got:?} vs {want:?}"
        );
    }
}

#[test]
fn values_a_rounding_error_outside_the_unit_interval_stay_on_the_grid() {
    // GPU division may return c/α = −1 − ε or t/M = 1 + ε (seen on an H200 with wgpu); the codes
    // must stay in 0..2^b and Q in [0, 1].
    use adabits_quant::{unit_codes, unit_quantize};
    let u = Tensor::<1>::from_floats([-1e-7, -0.0, 1.0 + 1e-6, 1.0], &crate::device());
    for scheme in QuantScheme::ALL {
        for b in [1, 2, 4, 8] {
            let codes = ints(unit_codes(u.clone(), bw(b), scheme));
            assert_eq!(
                codes,
                [0, 0, (1 << b) - 1, (1 << b) - 1],
                "{scheme} {b} bits"
            );
            let q = crate::values(unit_quantize(u.clone(), bw(b), scheme));
            assert!(
                q.iter().all(|v| (0.0..=1.0).contains(v)),
                "{scheme} {b} bits: {q:?}"
            );
        }
    }
}

#[test]
fn double_sided_pact_far_below_the_clip_gives_minus_alpha() {
    // The case that failed on an H200 before u was clamped: c/α = −1 − ε gave z = −2, y = −2α.
    use adabits_quant::{ActQuantConfig, pact};
    let device = crate::device();
    let x = Tensor::<1>::from_floats([-23.567265], &device);
    let alpha = Tensor::<1>::from_floats([-2.2410717], &device);
    let config = ActQuantConfig::new()
        .with_scheme(QuantScheme::Modified)
        .with_double_sided(true);
    for b in [1, 2, 3, 8] {
        let y = crate::values(pact(x.clone(), alpha.clone(), bw(b), &config));
        assert!((y[0] + 2.2410717).abs() < 1e-5, "{b} bits: y = {}", y[0]);
    }
}
