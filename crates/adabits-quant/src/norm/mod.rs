//! BatchNorm in training mode (the batch's own statistics) as one backend operation with a
//! hand-written backward pass on Flex.
//!
//! Burn's Autodiff already records `batch_norm_train` as one node, but Flex computes it, and its
//! backward, from composed ops that reduce over `[C, N·H·W]` views: a `swap_dims` and a full
//! copy of the activation for each of the mean, the variance and the two gradient sums, plus a
//! dozen element-wise passes. Here the forward is one statistics pass and one normalising pass
//! per channel, and the backward one sums pass and one gradient pass ([`cpu`](self) kernels),
//! the sums in `f64` in a fixed order.
//!
//! [`batch_norm_train`] routes to it on Flex for `f32` `[N, C, H, W]` inputs, unless
//! [`crate::set_kernels`] chose [`crate::Kernels::Composed`]; everything else takes Burn's
//! [`burn::tensor::module::batch_norm_train`], the reference the tests hold this one against.

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod flex;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::module::BatchNormTrainOutput;

/// BatchNorm in training mode as a Burn backend extension.
///
/// Implemented for Flex (feature `flex`) and for `Autodiff` over a backend with
/// [`BatchNormKernels`]; [`batch_norm_train`] routes here only for those backends.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedBatchNormOps: Backend {
    // Without `flex` the generated dispatch has no backend to pass the arguments to.
    #[allow(unused_variables)]
    /// `(y, mean, variance)` for `x: [N, C, H, W]`: `y = (x − mean)/√(variance + ε)·γ + β` with
    /// the per-channel batch mean and biased variance (both detached).
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The forward and backward kernels of a backend, which its `Autodiff` wrapper records as one
/// node.
pub trait BatchNormKernels: Backend {
    /// `(y, mean, variance)`, as [`FusedBatchNormOps::fused_batch_norm_train`].
    fn batch_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `(∂L/∂x, ∂L/∂γ, ∂L/∂β)` from `∂L/∂y` and the forward's statistics.
    fn batch_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// [`burn::tensor::module::batch_norm_train`] for `[N, C, H, W]` inputs, through the fused
/// kernels where they apply (see the [module docs](self)): the output, and the batch mean and
/// biased variance, detached.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> BatchNormTrainOutput<4> {
    let channels = x.dims()[1];
    let fits = gamma.dims() == [channels]
        && beta.dims() == [channels]
        && crate::fused::routable_on_flex(&x)
        && crate::fused::routable_on_flex(&gamma)
        && crate::fused::routable_on_flex(&beta);
    if !fits {
        return burn::tensor::module::batch_norm_train(x, gamma, beta, epsilon);
    }
    let (output, mean, variance) =
        <burn::backend::Dispatch as FusedBatchNormOps>::fused_batch_norm_train(
            x.into_dispatch(),
            gamma.into_dispatch(),
            beta.into_dispatch(),
            epsilon,
        );
    BatchNormTrainOutput {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}
