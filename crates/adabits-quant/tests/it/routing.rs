//! The layers' convolution and training-form BatchNorm run on every backend: through the
//! fused kernels on Flex, and as Burn's own ops everywhere else (bit for bit), with gradients.

use adabits_quant::{batch_norm_train, conv2d};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Distribution, Gradients, Tensor};

use crate::{assert_close, device, values};

/// Whether the test device has the fused convolution and BatchNorm (Flex only).
fn fused_here() -> bool {
    cfg!(not(any(feature = "test-wgpu", feature = "test-ndarray")))
}

fn compare(found: Vec<f64>, burn: Vec<f64>, what: &str) {
    if fused_here() {
        assert_close(&found, &burn, 1e-5, what);
    } else {
        assert_eq!(found, burn, "{what}: not Burn's own op");
    }
}

/// [`compare`] for the gradient of `param` in both graphs.
fn compare_grads<const D: usize>(
    param: &Tensor<D>,
    ours: &Gradients,
    burn: &Gradients,
    what: &str,
) {
    compare(
        values(param.grad(ours).unwrap()),
        values(param.grad(burn).unwrap()),
        what,
    );
}

#[test]
fn conv2d_and_batch_norm_run_on_every_backend_forward_and_backward() {
    let device = device().autodiff();
    let x =
        Tensor::<4>::random([2, 3, 6, 6], Distribution::Uniform(-1.0, 1.0), &device).require_grad();
    let w =
        Tensor::<4>::random([4, 3, 3, 3], Distribution::Uniform(-1.0, 1.0), &device).require_grad();
    let options = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
    let ours = conv2d(x.clone(), w.clone(), None, options.clone());
    let theirs = burn::tensor::module::conv2d(x.clone(), w.clone(), None, options);
    let g_ours = ours.clone().sum().backward();
    let g_theirs = theirs.clone().sum().backward();
    compare(values(ours), values(theirs), "conv y");
    compare_grads(&w, &g_ours, &g_theirs, "conv ∂w");
    compare_grads(&x, &g_ours, &g_theirs, "conv ∂x");

    let gamma = Tensor::<1>::random([3], Distribution::Uniform(0.5, 1.5), &device).require_grad();
    let beta = Tensor::<1>::random([3], Distribution::Uniform(-0.5, 0.5), &device).require_grad();
    let ours = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5);
    let theirs = burn::tensor::module::batch_norm_train(x.clone(), gamma.clone(), beta, 1e-5);
    // A random weighting: the gradient of Σy² through a BatchNorm is zero in exact arithmetic
    // (Σx̂² is the element count), which would compare rounding noise.
    let r = Tensor::<4>::random([2, 3, 6, 6], Distribution::Uniform(-1.0, 1.0), &device);
    let g_ours = (ours.output.clone() * r.clone()).sum().backward();
    let g_theirs = (theirs.output.clone() * r).sum().backward();
    compare(values(ours.output), values(theirs.output), "batch norm y");
    compare_grads(&gamma, &g_ours, &g_theirs, "batch norm ∂γ");
    compare_grads(&x, &g_ours, &g_theirs, "batch norm ∂x");
}
