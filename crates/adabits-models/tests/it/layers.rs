//! `QConv2d` and `QLinear` against the plain-`f64` reference of `adabits-quant`, at several
//! bit-widths from the same weights.

use adabits_models::{QConv2dConfig, QLinearConfig};
use adabits_quant::reference;
use adabits_quant::{ActQuantConfig, BitPolicy, BitWidth, BitWidths, QuantMode};
use adabits_quant::{WeightQuantConfig, conv_fan_out};
use burn::module::Param;
use burn::tensor::{Tensor, TensorData};

fn bw(b: u8) -> BitWidth {
    BitWidth::new(b).unwrap()
}

/// A small deterministic generator of values in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

const TESTED: [u8; 4] = [2, 4, 8, 32];

/// Activation values kept 1e-3 away from the clip edges and from every code boundary of the
/// tested bit-widths, so `f32` and the `f64` reference pick the same level.
fn activations(n: usize, alpha: f64, rng: &mut Lcg) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let mut x = rng.next() * 6.0 + 3.0;
            for _ in 0..1000 {
                let v = f64::from(x);
                let near_edge = v.abs() < 1e-3 || (v - alpha).abs() < 1e-3;
                let near_code = TESTED.iter().filter(|&&b| b < 32).any(|&b| {
                    let scaled = v.clamp(0.0, alpha) / alpha * f64::from((1u32 << b) - 1);
                    ((scaled - 0.5).rem_euclid(1.0) - 0.5).abs() < 1e-3
                });
                if !near_edge && !near_code {
                    break;
                }
                x += 0.0137;
            }
            x
        })
        .collect()
}

/// Weights whose unit values sit 1e-4 away from every code boundary of the tested bit-widths
/// (modified scheme), with a single largest |w|.
fn weights(n: usize, rng: &mut Lcg) -> Vec<f32> {
    let mut w: Vec<f32> = (0..n).map(|_| rng.next() * 0.3).collect();
    w[0] = 0.5; // the unique maximum
    let m = 0.5f64.tanh();
    for v in w.iter_mut().skip(1) {
        for _ in 0..1000 {
            let u = (f64::from(*v).tanh() / m + 1.0) / 2.0;
            let near = TESTED.iter().filter(|&&b| b < 32).any(|&b| {
                let scaled = u * f64::from(1u32 << b);
                (scaled - scaled.round()).abs() < 1e-4
            });
            if !near {
                break;
            }
            *v += 1e-3;
        }
    }
    w
}

fn close(a: f64, e: f64) -> bool {
    (a - e).abs() <= 1e-4 * (1.0 + e.abs())
}

/// `conv2d` in `f64` on flat row-major tensors.
#[allow(clippy::too_many_arguments)]
fn conv_reference(
    x: &[f64],
    [n, c_in, h, w]: [usize; 4],
    weight: &[f64],
    [c_out, c_per_group, kh, kw]: [usize; 4],
    stride: usize,
    pad: usize,
    groups: usize,
    dilation: usize,
) -> Vec<f64> {
    let ho = (h + 2 * pad - dilation * (kh - 1) - 1) / stride + 1;
    let wo = (w + 2 * pad - dilation * (kw - 1) - 1) / stride + 1;
    let out_per_group = c_out / groups;
    let mut y = vec![0.0; n * c_out * ho * wo];
    for b in 0..n {
        for o in 0..c_out {
            let g = o / out_per_group;
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = 0.0;
                    for c in 0..c_per_group {
                        let ci = g * c_per_group + c;
                        for p in 0..kh {
                            for q in 0..kw {
                                let (r, s) = (
                                    (i * stride + p * dilation) as isize - pad as isize,
                                    (j * stride + q * dilation) as isize - pad as isize,
                                );
                                if r < 0 || s < 0 || r >= h as isize || s >= w as isize {
                                    continue;
                                }
                                let xv = x[((b * c_in + ci) * h + r as usize) * w + s as usize];
                                let wv = weight[((o * c_per_group + c) * kh + p) * kw + q];
                                acc += xv * wv;
                            }
                        }
                    }
                    y[((b * c_out + o) * ho + i) * wo + j] = acc;
                }
            }
        }
    }
    y
}

fn check_conv(groups: usize, c_in: usize, c_out: usize, stride: usize, rescale: bool) {
    check_dilated_conv(groups, c_in, c_out, stride, rescale, 1);
}

fn check_dilated_conv(
    groups: usize,
    c_in: usize,
    c_out: usize,
    stride: usize,
    rescale: bool,
    dilation: usize,
) {
    let device = crate::device();
    let bits: BitWidths = "8,4,2".parse().unwrap();
    let weight_quant = WeightQuantConfig::new().with_rescale(rescale);
    let mut layer = QConv2dConfig::new([c_in, c_out], [3, 3], bits.clone())
        .with_stride([stride, stride])
        .with_padding([1, 1])
        .with_groups(groups)
        .with_dilation([dilation, dilation])
        .with_weight_quant(weight_quant.clone())
        .init(&device);
    let mut rng = Lcg(groups as u64 * 7 + c_out as u64);
    let w_shape = [c_out, c_in / groups, 3, 3];
    let w = weights(w_shape.iter().product(), &mut rng);
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w.clone(), w_shape),
        &device,
    ));
    // The input grows with the dilated kernel's span, so that every case has several outputs.
    let side = 5 + 2 * (dilation - 1);
    let x_shape = [2, c_in, side, side];
    let x = activations(x_shape.iter().product(), 8.0, &mut rng);
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), x_shape), &device);
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut outputs = Vec::new();
    for b in TESTED.map(bw) {
        let y = layer.forward(xt.clone(), b);
        let [_, _, ho, wo] = y.dims();
        assert_eq!(layer.output_size([side, side]), [ho, wo]);
        let y: Vec<f64> = y.into_data().iter::<f64>().collect();
        let wr = reference::quantize_weight(&w64, b, conv_fan_out(w_shape), &weight_quant);
        let xq: Vec<f64> = x
            .iter()
            .map(|&v| reference::pact(f64::from(v), 8.0, b, &ActQuantConfig::new()).y)
            .collect();
        let want = conv_reference(
            &xq, x_shape, &wr.w_eff, w_shape, stride, 1, groups, dilation,
        );
        assert_eq!(y.len(), want.len());
        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
            assert!(
                close(*a, *e),
                "groups {groups}, dilation {dilation}, {b} bits, element {i}: {a} vs {e}"
            );
        }
        outputs.push(y);
    }
    for (i, pair) in outputs.windows(2).enumerate() {
        assert_ne!(
            pair[0],
            pair[1],
            "bit-widths {} and {} gave the same output",
            TESTED[i],
            TESTED[i + 1]
        );
    }
}

#[test]
fn qconv2d_matches_the_reference_at_every_bit_width() {
    check_conv(1, 4, 6, 1, false);
    check_conv(1, 4, 6, 2, true);
}

#[test]
fn depthwise_qconv2d_matches_the_reference_at_every_bit_width() {
    check_conv(4, 4, 4, 1, false);
    check_conv(4, 4, 4, 2, true);
}

#[test]
fn dilated_qconv2d_matches_the_reference_dense_and_depthwise() {
    check_dilated_conv(1, 4, 6, 1, false, 2);
    check_dilated_conv(1, 3, 5, 2, true, 3);
    check_dilated_conv(4, 4, 4, 1, true, 2);
}

/// The reference PACT of every value of `x` at `bits`, clipped at `alpha`.
fn pact_reference(x: &[f32], alpha: f64, bits: BitWidth) -> Vec<f64> {
    x.iter()
        .map(|&v| reference::pact(f64::from(v), alpha, bits, &ActQuantConfig::new()).y)
        .collect()
}

/// A convolution at separate weight and activation bit-widths, each entry with its own
/// clipping level, against the reference: the official hidden cases, a grouped convolution at
/// `(2, 8)` and `(8, 2)`, through the public layer API.
fn check_pair_conv(groups: usize, c_in: usize, c_out: usize) {
    use adabits_quant::{At, Precision};
    let device = crate::device();
    // Two entries (the list only counts them here): α 8 for the first, 6 for the second.
    let mut layer = QConv2dConfig::new([c_in, c_out], [3, 3], "8,2".parse().unwrap())
        .with_padding([1, 1])
        .with_groups(groups)
        .init(&device);
    layer.alpha.alpha = Param::from_tensor(Tensor::from_floats([8.0f32, 6.0], &device));
    let mut rng = Lcg(groups as u64 * 13 + c_in as u64);
    let w_shape = [c_out, c_in / groups, 3, 3];
    let w = weights(w_shape.iter().product(), &mut rng);
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w.clone(), w_shape),
        &device,
    ));
    let x_shape = [2, c_in, 5, 5];
    // Away from the code boundaries of both clipping levels.
    let x = activations(x_shape.iter().product(), 8.0, &mut rng);
    let x: Vec<f32> = x.iter().map(|&v| v * 0.75).collect();
    let xt = Tensor::<4>::from_data(TensorData::new(x.clone(), x_shape), &device);
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let weight_quant = WeightQuantConfig::new().with_rescale(false);
    let mut outputs = Vec::new();
    for (entry, text, alpha) in [(0, "w2a8", 8.0), (1, "w8a2", 6.0)] {
        let precision: Precision = text.parse().unwrap();
        let y: Vec<f64> = layer
            .forward_at(xt.clone(), At::new(entry, precision))
            .into_data()
            .iter::<f64>()
            .collect();
        let wr = reference::quantize_weight(
            &w64,
            precision.weight,
            conv_fan_out(w_shape),
            &weight_quant,
        );
        let xq = pact_reference(&x, alpha, precision.activation);
        let want = conv_reference(&xq, x_shape, &wr.w_eff, w_shape, 1, 1, groups, 1);
        for (i, (a, e)) in y.iter().zip(&want).enumerate() {
            assert!(
                close(*a, *e),
                "groups {groups}, {text}, element {i}: {a} vs {e}"
            );
        }
        outputs.push(y);
    }
    assert_ne!(outputs[0], outputs[1]);
    // A uniform entry is the bit-width's forward pass, bit for bit.
    for (entry, b) in [(0, 8), (1, 2)] {
        let at: Vec<f32> = layer
            .forward_at(xt.clone(), At::new(entry, bw(b)))
            .into_data()
            .iter::<f32>()
            .collect();
        let plain: Vec<f32> = layer
            .forward(xt.clone(), bw(b))
            .into_data()
            .iter::<f32>()
            .collect();
        assert_eq!(at, plain, "{b} bits");
    }
}

#[test]
fn grouped_and_depthwise_qconv2d_run_separate_weight_and_activation_bit_widths() {
    check_pair_conv(2, 4, 4);
    check_pair_conv(4, 4, 4);
    check_pair_conv(1, 3, 5);
}

#[test]
fn qlinear_runs_separate_weight_and_activation_bit_widths() {
    use adabits_quant::{At, Precision};
    let device = crate::device();
    let mut layer = QLinearConfig::new(6, 3, "8,4".parse().unwrap()).init(&device);
    layer.alpha.alpha = Param::from_tensor(Tensor::from_floats([10.0f32, 7.0], &device));
    let mut rng = Lcg(5);
    let w = weights(18, &mut rng);
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w.clone(), [3, 6]),
        &device,
    ));
    let x = activations(12, 10.0, &mut rng);
    let x: Vec<f32> = x.iter().map(|&v| v * 0.7).collect();
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 6]), &device);
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for (entry, text, alpha) in [(0, "w4a8", 10.0), (1, "w8a4", 7.0)] {
        let precision: Precision = text.parse().unwrap();
        let wr = reference::quantize_weight(&w64, precision.weight, 3, &WeightQuantConfig::new());
        let xq = pact_reference(&x, alpha, precision.activation);
        let y: Vec<f64> = layer
            .forward_at_mode(xt.clone(), At::new(entry, precision), QuantMode::Train)
            .into_data()
            .iter::<f64>()
            .collect();
        for r in 0..2 {
            for o in 0..3 {
                let dot: f64 = (0..6).map(|k| xq[r * 6 + k] * wr.w_hat[o * 6 + k]).sum();
                let want = wr.scale * dot;
                assert!(
                    close(y[r * 3 + o], want),
                    "{text} [{r},{o}]: {} vs {want}",
                    y[r * 3 + o]
                );
            }
        }
    }
}

#[test]
fn qlinear_matches_the_reference_in_train_and_eval_form() {
    let device = crate::device();
    let bits: BitWidths = "8,4,2".parse().unwrap();
    let policy = BitPolicy {
        bitw_min: Some(bw(8)),
        ..BitPolicy::BODY
    };
    let mut layer = QLinearConfig::new(6, 3, bits)
        .with_policy(policy)
        .init(&device);
    let mut rng = Lcg(11);
    let w = weights(18, &mut rng);
    let b = [0.1f32, -0.2, 0.3];
    layer.weight = Param::from_tensor(Tensor::from_data(
        TensorData::new(w.clone(), [3, 6]),
        &device,
    ));
    layer.bias = Some(Param::from_tensor(Tensor::from_floats(b, &device)));
    let x = activations(12, 10.0, &mut rng);
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [2, 6]), &device);
    let w64: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    for bits in TESTED.map(bw) {
        let resolved = policy.resolve(bits);
        let wr = reference::quantize_weight(&w64, resolved.bitw, 3, &WeightQuantConfig::new());
        let xq: Vec<f64> = x
            .iter()
            .map(|&v| reference::pact(f64::from(v), 10.0, resolved.bita, &ActQuantConfig::new()).y)
            .collect();
        for mode in [QuantMode::Train, QuantMode::Eval] {
            let y: Vec<f64> = layer
                .forward_mode(xt.clone(), bits, mode)
                .into_data()
                .iter::<f64>()
                .collect();
            for r in 0..2 {
                for o in 0..3 {
                    let dot: f64 = (0..6).map(|k| xq[r * 6 + k] * wr.w_hat[o * 6 + k]).sum();
                    let want = match mode {
                        QuantMode::Train => wr.scale * dot + f64::from(b[o]),
                        QuantMode::Eval => dot + f64::from(b[o]) / wr.scale,
                    };
                    let got = y[r * 3 + o];
                    assert!(
                        close(got, want),
                        "{bits} bits {mode:?} [{r},{o}]: {got} vs {want}"
                    );
                }
            }
        }
    }
    // The plain forward picks the form from the device: eval here, train under autodiff.
    let eval = layer
        .forward(xt.clone(), bw(4))
        .into_data()
        .iter::<f64>()
        .collect::<Vec<_>>();
    let explicit = layer
        .forward_mode(xt, bw(4), QuantMode::Eval)
        .into_data()
        .iter::<f64>()
        .collect::<Vec<_>>();
    assert_eq!(eval, explicit);
}
