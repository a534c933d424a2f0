//! Fused quantizers: PACT and the weight quantizer as one backend operation each, with a
//! hand-written backward pass.
//!
//! The composed paths of [`crate::pact`] and [`crate::quantize_weight`] are chains of a dozen
//! element-wise ops and full-tensor reductions, each a pass over memory and an autodiff record.
//! Here each quantizer is one Burn backend extension ([`FusedQuantOps`]) whose forward is one
//! kernel and whose backward is one kernel (two passes for the weight: `Σ G·t`, then the
//! gradient), recorded as a single autodiff node.
//!
//! - Flex: the kernels of `fused/cpu/`, one pass over contiguous `f32` memory, vectorised by the
//!   compiler and split over threads with rayon (feature `flex`).
//! - Every other backend, and any case the kernels do not cover (a dtype other than `f32`,
//!   PACT's `pact_fp` clip at full precision, no `clamp` at full precision), takes the composed
//!   ops, which stay the reference: the test suite checks the fused paths against them and the
//!   specification's vectors, forward and gradients.
//!
//! [`set_kernels`] chooses between the two for the whole process (the CLI's `--kernels`).

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "flex")]
pub(crate) mod flex;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, backend_extension};
use burn::tensor::{DType, Tensor};

use crate::{ActQuantConfig, BitWidth, QuantScheme, WeightQuantConfig};

/// Which implementation the quantizers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// The fused kernels where the backend has them, the composed ops elsewhere (default).
    Fused,
    /// Always the composed tensor ops (the reference).
    Composed,
}

static COMPOSED_ONLY: AtomicBool = AtomicBool::new(false);

/// Chooses the quantizers' implementation for the whole process. The two compute the same
/// values up to the order of full-tensor sums (`docs/performance.md`).
pub fn set_kernels(kernels: Kernels) {
    COMPOSED_ONLY.store(kernels == Kernels::Composed, Ordering::Relaxed);
}

/// The implementation [`set_kernels`] chose.
pub fn kernels() -> Kernels {
    if COMPOSED_ONLY.load(Ordering::Relaxed) {
        Kernels::Composed
    } else {
        Kernels::Fused
    }
}

/// What one PACT call computes, beside its tensors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PactSpec {
    /// The activation bit-width, 1 to 16.
    pub bits: u8,
    /// The unit quantizer.
    pub scheme: QuantScheme,
    /// Clip to `[−α, α]` instead of `[0, α]`.
    pub double_sided: bool,
}

/// How the SAT scale's numerator `c` of `s = c/std(ŵ)` is found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rescale {
    /// A constant `c` (`1/√fan-out` or `1/√fan-in`).
    Constant(f64),
    /// The unbiased standard deviation of the latent weights.
    LatentStd,
}

/// What one weight-quantizer call computes, beside its tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WeightSpec {
    /// The weight bit-width, 1 to 16; `None` for full precision (`ŵ = t/M`).
    pub bits: Option<u8>,
    /// The unit quantizer.
    pub scheme: QuantScheme,
    /// The SAT rescale, if any.
    pub rescale: Option<Rescale>,
}

/// The fused quantizers as a Burn backend extension.
///
/// Implemented for Flex (feature `flex`) and for `Autodiff` over a backend with
/// [`QuantKernels`]; [`crate::pact`] and [`crate::quantize_weight`] route here only for those
/// backends.
#[backend_extension(Flex: cfg(feature = "flex"), Autodiff)]
pub trait FusedQuantOps: Backend {
    // Without `flex` the generated dispatch has no backend to pass the arguments to.
    #[allow(unused_variables)]
    /// PACT: `y = α·Q_b(clip(x)/α)` with `α = |alpha_param|` (see [`crate::pact`]).
    fn fused_pact(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        spec: PactSpec,
    ) -> FloatTensor<Self>;

    #[allow(unused_variables)]
    /// The weight quantizer: `(ŵ, s)`, where `s` (shape `[1]`, detached) is 1 without a rescale
    /// (see [`crate::quantize_weight`]).
    fn fused_weight(
        weight: FloatTensor<Self>,
        spec: WeightSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The forward and backward kernels of a backend, which its `Autodiff` wrapper records as one
/// node each.
pub trait QuantKernels: Backend {
    /// What the weight quantizer keeps for its backward pass.
    type WeightState: Clone + Send + std::fmt::Debug + 'static;

    /// PACT's forward value.
    fn pact_forward(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        spec: PactSpec,
    ) -> FloatTensor<Self>;

    /// PACT's gradients: `(∂L/∂x, ∂L/∂alpha_param)`, the second of shape `[1]`.
    fn pact_backward(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: PactSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The weight quantizer's forward value `(ŵ, s)` and its backward state.
    fn weight_forward(
        weight: FloatTensor<Self>,
        spec: WeightSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, Self::WeightState);

    /// `∂L/∂W` from `∂L/∂ŵ`.
    fn weight_backward(state: Self::WeightState, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether `tensor` lives on a backend with the fused kernels, in `f32`, and the process has
/// not chosen the composed ops.
pub(crate) fn routable<const D: usize>(tensor: &Tensor<D>) -> bool {
    if kernels() == Kernels::Composed || tensor.dtype() != DType::F32 {
        return false;
    }
    on_fused_backend(&tensor.device())
}

#[cfg(feature = "flex")]
fn on_fused_backend(device: &burn::tensor::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

#[cfg(not(feature = "flex"))]
fn on_fused_backend(_device: &burn::tensor::Device) -> bool {
    false
}

/// PACT through the fused kernel, or `None` where the composed ops must run (another backend,
/// another dtype, full precision, or [`Kernels::Composed`]).
pub(crate) fn fused_pact<const D: usize>(
    x: &Tensor<D>,
    alpha_param: &Tensor<1>,
    bita: BitWidth,
    config: &ActQuantConfig,
) -> Option<Tensor<D>> {
    if bita.is_full_precision() || !routable(x) {
        return None;
    }
    let spec = PactSpec {
        bits: bita.get(),
        scheme: config.scheme,
        double_sided: config.double_sided,
    };
    let out = <burn::backend::Dispatch as FusedQuantOps>::fused_pact(
        x.clone().into_dispatch(),
        alpha_param.clone().into_dispatch(),
        spec,
    );
    Some(Tensor::from_dispatch(out))
}

/// The weight quantizer through the fused kernel: `(ŵ, s)`, or `None` where the composed ops
/// must run (another backend or dtype, full precision without `clamp`, or
/// [`Kernels::Composed`]).
pub(crate) fn fused_weight<const D: usize>(
    weight: &Tensor<D>,
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> Option<(Tensor<D>, Option<Tensor<1>>)> {
    if (bitw.is_full_precision() && !config.clamp) || !routable(weight) {
        return None;
    }
    let rescale = config.rescale.then(|| {
        match crate::weight::rescale_constant(config.rescale_type, fan_out, &weight.dims()) {
            Some(c) => Rescale::Constant(c),
            None => Rescale::LatentStd,
        }
    });
    let spec = WeightSpec {
        bits: (!bitw.is_full_precision()).then(|| bitw.get()),
        scheme: config.scheme,
        rescale,
    };
    let (w_hat, scale) = <burn::backend::Dispatch as FusedQuantOps>::fused_weight(
        weight.clone().into_dispatch(),
        spec,
    );
    let scale = Tensor::<1>::from_dispatch(scale);
    Some((
        Tensor::from_dispatch(w_hat),
        spec.rescale.is_some().then_some(scale),
    ))
}
