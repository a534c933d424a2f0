//! The 2-D convolution the quantized layers run, as one backend operation with a hand-written
//! backward pass on Flex.
//!
//! Burn's Flex convolution computes the weight gradient as a convolution of the input with the
//! output gradient (a `[H_out, W_out]` kernel over the batch as channels) and the input gradient
//! as a transposed convolution, each with its own layout conversions; on CIFAR ResNet-20 shapes
//! they take 1.5–2× and 2× the forward's time, and the three are about three quarters of a
//! training step (`docs/performance.md`). Here the forward, the input gradient and the weight
//! gradient are each one im2col (or col2im) and one matrix product per image
//! ([`cpu`](self) kernels, `gemm` with its AVX-512 kernels chosen at run time), recorded as one
//! autodiff node.
//!
//! [`conv2d`] routes to it on Flex for `f32`, `groups = 1` and `dilation = 1`, unless
//! [`crate::set_kernels`] chose [`crate::Kernels::Composed`]; everything else takes Burn's
//! [`burn::tensor::module::conv2d`], which stays the reference the tests hold this one against.

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "flex")]
mod gemm;

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::Tensor;
use burn::tensor::ops::ConvOptions;

/// What one convolution computes, beside its tensors (`groups = 1`, `dilation = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    /// The stride per spatial dimension.
    pub stride: [usize; 2],
    /// The zero padding per spatial dimension, `(before, after)`.
    pub padding: [(usize, usize); 2],
}

/// The convolution as a Burn backend extension.
///
/// Implemented for Flex (feature `flex`) and for `Autodiff` over a backend with
/// [`ConvKernels`]; [`conv2d`] routes here only for those backends.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedConvOps: Backend {
    // Without `flex` the generated dispatch has no backend to pass the arguments to.
    #[allow(unused_variables)]
    /// `conv2d(x, weight)` without bias: `x: [batch, C_in, H, W]`, `weight: [C_out, C_in, kh,
    /// kw]`, output `[batch, C_out, H_out, W_out]`.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;
}

/// The forward and backward kernels of a backend, which its `Autodiff` wrapper records as one
/// node.
pub trait ConvKernels: Backend {
    /// The convolution's output.
    fn conv_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// `∂L/∂x` from `∂L/∂y`.
    fn conv_backward_x(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;

    /// `∂L/∂weight` from `∂L/∂y`.
    fn conv_backward_weight(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: ConvSpec,
    ) -> FloatTensor<Self>;
}

/// `conv2d(x, weight) + bias`, as [`burn::tensor::module::conv2d`] computes it, through the
/// fused kernels where they apply (see the [module docs](self)).
///
/// # Shapes
///
/// `x`: `[batch, C_in, H, W]`, `weight`: `[C_out, C_in / groups, kh, kw]`, `bias`: `[C_out]`;
/// output `[batch, C_out, H_out, W_out]`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let fits = options.groups == 1
        && options.dilation == [1, 1]
        && x.dims()[1] == weight.dims()[1]
        && crate::fused::routable_on_flex(&x)
        && crate::fused::routable_on_flex(&weight);
    if !fits {
        return burn::tensor::module::conv2d(x, weight, bias, options);
    }
    let spec = ConvSpec {
        stride: options.stride,
        padding: options.padding,
    };
    let y = Tensor::<4>::from_dispatch(<burn::backend::Dispatch as FusedConvOps>::fused_conv2d(
        x.into_dispatch(),
        weight.into_dispatch(),
        spec,
    ));
    match bias {
        Some(bias) => {
            let c_out = bias.dims()[0];
            y + bias.reshape([1, c_out, 1, 1])
        }
        None => y,
    }
}
