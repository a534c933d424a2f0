//! The fused convolution against Burn's `conv2d` (the reference), on random shapes, strides and
//! paddings (asymmetric ones among them), with and without bias: the output and the gradients
//! of the input, the weight and the bias, to 1e-5 relative to each tensor's largest magnitude
//! (the products sum in another order).
//!
//! Flex only (`adabits_quant::conv2d` takes the fused kernels for every case here): on other
//! backends both sides would be Burn's, and the module is left out.

use adabits_quant::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};

use crate::{Lcg, assert_close, device, values};

/// One random case: `x`, `weight`, options, whether it has a bias.
struct Case {
    x: [usize; 4],
    weight: [usize; 4],
    options: ConvOptions<2>,
    bias: bool,
}

fn random_case(rng: &mut Lcg) -> Case {
    let (kh, kw) = (1 + rng.below(3), 1 + rng.below(3));
    let stride = [1 + rng.below(2), 1 + rng.below(2)];
    // Mostly paddings below the kernel size (the transposed-convolution gradient), sometimes
    // as large as the kernel (the col2im gradient).
    let mut pad = |k: usize| {
        let extra = usize::from(rng.below(4) == 0);
        rng.below(k + extra)
    };
    let padding = [(pad(kh), pad(kh)), (pad(kw), pad(kw))];
    let h = kh.saturating_sub(padding[0].0 + padding[0].1).max(1) + rng.below(8);
    let w = kw.saturating_sub(padding[1].0 + padding[1].1).max(1) + rng.below(8);
    let (c_in, c_out) = (1 + rng.below(5), 1 + rng.below(6));
    Case {
        x: [1 + rng.below(3), c_in, h, w],
        weight: [c_out, c_in, kh, kw],
        options: ConvOptions {
            stride,
            padding,
            dilation: [1, 1],
            groups: 1,
        },
        bias: rng.below(3) == 0,
    }
}

fn random_tensor<const D: usize>(rng: &mut Lcg, shape: [usize; D]) -> TensorData {
    let n = shape.iter().product();
    TensorData::new(
        (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect::<Vec<f32>>(),
        shape,
    )
}

type Conv = fn(Tensor<4>, Tensor<4>, Option<Tensor<1>>, ConvOptions<2>) -> Tensor<4>;

/// `[y, ∂x, ∂W, ∂b]` for `L = Σ y·r`.
fn with_grads(
    f: Conv,
    case: &Case,
    x: &TensorData,
    w: &TensorData,
    b: &TensorData,
    r: &TensorData,
) -> [Vec<f64>; 4] {
    let ad = device().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &ad).require_grad();
    let w = Tensor::<4>::from_data(w.clone(), &ad).require_grad();
    let b = Tensor::<1>::from_data(b.clone(), &ad).require_grad();
    let bias = case.bias.then(|| b.clone());
    let y = f(x.clone(), w.clone(), bias, case.options.clone());
    let r = Tensor::<4>::from_data(r.clone(), &ad);
    let grads = (y.clone() * r).sum().backward();
    let db = if case.bias {
        values(b.grad(&grads).expect("bias gradient"))
    } else {
        Vec::new()
    };
    [
        values(y),
        values(x.grad(&grads).expect("input gradient")),
        values(w.grad(&grads).expect("weight gradient")),
        db,
    ]
}

#[test]
fn the_fused_convolution_matches_burns_on_random_shapes() {
    let mut rng = Lcg(0xC0_4E);
    let reference: Conv = burn::tensor::module::conv2d;
    let fused: Conv = conv2d;
    for i in 0..60 {
        let case = random_case(&mut rng);
        let x = random_tensor(&mut rng, case.x);
        let w = random_tensor(&mut rng, case.weight);
        let b = random_tensor(&mut rng, [case.weight[0]]);
        let out = |size: usize, (begin, end): (usize, usize), k: usize, s: usize| {
            (size + begin + end - k) / s + 1
        };
        let (o, k) = (&case.options, case.weight);
        let y_shape = [
            case.x[0],
            k[0],
            out(case.x[2], o.padding[0], k[2], o.stride[0]),
            out(case.x[3], o.padding[1], k[3], o.stride[1]),
        ];
        let r = random_tensor(&mut rng, y_shape);
        let want = with_grads(reference, &case, &x, &w, &b, &r);
        let got = with_grads(fused, &case, &x, &w, &b, &r);
        let what = format!(
            "case {i}: x {:?}, w {:?}, stride {:?}, padding {:?}, bias {}",
            case.x, case.weight, case.options.stride, case.options.padding, case.bias
        );
        for (name, (g, w)) in ["y", "∂x", "∂W", "∂b"].iter().zip(got.iter().zip(&want)) {
            assert_close(g, w, 1e-5, &format!("{what}: {name}"));
        }
    }
}

/// The ResNet shapes the models train with, where the products are long: a batch of 32x32
/// images through a 3x3 convolution, a strided one and a 1x1 shortcut.
#[test]
fn the_fused_convolution_matches_burns_on_resnet_shapes() {
    let mut rng = Lcg(7);
    let reference: Conv = burn::tensor::module::conv2d;
    for (x, w, s, p) in [
        ([4, 16, 32, 32], [16, 16, 3, 3], 1, 1),
        ([4, 16, 32, 32], [32, 16, 3, 3], 2, 1),
        ([4, 16, 32, 32], [32, 16, 1, 1], 2, 0),
        ([4, 3, 32, 32], [16, 3, 3, 3], 1, 1),
        // The last stages of the ImageNet models at small inputs: planes of 1 and 2 pixels.
        ([2, 8, 1, 1], [8, 8, 3, 3], 1, 1),
        ([2, 8, 2, 2], [16, 8, 3, 3], 2, 1),
        ([2, 8, 2, 2], [8, 8, 3, 3], 1, 1),
    ] {
        let case = Case {
            x,
            weight: w,
            options: ConvOptions {
                stride: [s, s],
                padding: [(p, p), (p, p)],
                dilation: [1, 1],
                groups: 1,
            },
            bias: false,
        };
        let out = (x[2] + 2 * p - w[2]) / s + 1;
        let xs = random_tensor(&mut rng, x);
        let ws = random_tensor(&mut rng, w);
        let bs = random_tensor(&mut rng, [w[0]]);
        let r = random_tensor(&mut rng, [x[0], w[0], out, out]);
        let want = with_grads(reference, &case, &xs, &ws, &bs, &r);
        let got = with_grads(conv2d, &case, &xs, &ws, &bs, &r);
        for (name, (fused, reference)) in ["y", "∂x", "∂W"].iter().zip(got.iter().zip(&want)) {
            assert_close(fused, reference, 1e-5, &format!("{x:?} * {w:?}: {name}"));
        }
    }
}
