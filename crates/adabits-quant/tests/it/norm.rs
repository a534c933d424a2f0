//! The fused BatchNorm against Burn's `batch_norm_train` (the reference), on random shapes and
//! values: the output, the batch statistics and the gradients of the input, γ and β, to 1e-5
//! relative to each tensor's largest magnitude (the sums run in another order and precision).
//!
//! Flex only (`adabits_quant::batch_norm_train` takes the fused kernels): on other backends both
//! sides would be Burn's, and the module is left out.

use adabits_quant::batch_norm_train;
use burn::tensor::module::BatchNormTrainOutput;
use burn::tensor::{Tensor, TensorData};

use crate::{Lcg, assert_close, device, values};

type Norm = fn(Tensor<4>, Tensor<1>, Tensor<1>, f64) -> BatchNormTrainOutput<4>;

/// `[y, mean, variance, ∂x, ∂γ, ∂β]` for `L = Σ y·r`.
fn with_grads(
    f: Norm,
    x: &TensorData,
    g: &TensorData,
    b: &TensorData,
    r: &TensorData,
) -> [Vec<f64>; 6] {
    let ad = device().autodiff();
    let x = Tensor::<4>::from_data(x.clone(), &ad).require_grad();
    let g = Tensor::<1>::from_data(g.clone(), &ad).require_grad();
    let b = Tensor::<1>::from_data(b.clone(), &ad).require_grad();
    let out = f(x.clone(), g.clone(), b.clone(), 1e-5);
    let r = Tensor::<4>::from_data(r.clone(), &ad);
    let grads = (out.output.clone() * r).sum().backward();
    [
        values(out.output),
        values(out.mean),
        values(out.variance),
        values(x.grad(&grads).expect("input gradient")),
        values(g.grad(&grads).expect("gamma gradient")),
        values(b.grad(&grads).expect("beta gradient")),
    ]
}

fn random(rng: &mut Lcg, shape: &[usize], lo: f32, hi: f32) -> TensorData {
    let n = shape.iter().product();
    TensorData::new(
        (0..n).map(|_| rng.uniform(lo, hi)).collect::<Vec<f32>>(),
        shape.to_vec(),
    )
}

#[test]
fn the_fused_batch_norm_matches_burns_on_random_shapes() {
    let mut rng = Lcg(0xB4);
    let reference: Norm = burn::tensor::module::batch_norm_train;
    let fused: Norm = batch_norm_train;
    let mut shapes: Vec<[usize; 4]> = (0..30)
        .map(|_| {
            [
                1 + rng.below(4),
                1 + rng.below(6),
                1 + rng.below(9),
                1 + rng.below(9),
            ]
        })
        .filter(|s| s[0] * s[2] * s[3] > 1)
        .collect();
    shapes.push([32, 16, 32, 32]);
    for shape in shapes {
        // An offset mean, as activations after a ReLU have.
        let shift = rng.uniform(-2.0, 2.0);
        let x = random(&mut rng, &shape, shift - 1.0, shift + 3.0);
        let g = random(&mut rng, &[shape[1]], 0.5, 1.5);
        let b = random(&mut rng, &[shape[1]], -0.5, 0.5);
        let r = random(&mut rng, &shape, -1.0, 1.0);
        let want = with_grads(reference, &x, &g, &b, &r);
        let got = with_grads(fused, &x, &g, &b, &r);
        for (name, (g, w)) in ["y", "mean", "variance", "∂x", "∂γ", "∂β"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            assert_close(g, w, 1e-5, &format!("{shape:?}: {name}"));
        }
    }
}
