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
//! - Burn's CubeCL backend (wgpu, and any CubeCL runtime; feature `cube`, on through `wgpu`):
//!   the CubeCL kernels of `fused/cube/`, each pass one kernel launch, the full-tensor sums
//!   reduced on the device in a fixed order; Burn's Fusion runs them as opaque operations of its
//!   lazy stream ([`QuantKernels`] is a backend extension for that).
//! - ndarray, and any case the kernels do not cover (a dtype other than `f32`,
//!   PACT's `pact_fp` clip at full precision, no `clamp` at full precision), takes the composed
//!   ops, which stay the reference: the test suite checks the fused paths against them and the
//!   specification's vectors, forward and gradients.
//!
//! [`set_kernels`] chooses between the two for the whole process (the CLI's `--kernels`).

mod autodiff;
#[cfg(feature = "flex")]
mod cpu;
#[cfg(feature = "cube")]
mod cube;
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
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
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
/// Implemented for Flex (feature `flex`), for Burn's CubeCL backend (feature `cube`, through
/// `wgpu`) and for `Autodiff` over a backend with [`QuantKernels`]; [`crate::pact`] and
/// [`crate::quantize_weight`] route here only for those backends.
#[backend_extension(Flex: cfg(feature = "flex"), Cube: cfg(feature = "cube"), Autodiff)]
pub trait FusedQuantOps: Backend {
    // Without a kernel feature the generated dispatch has no backend to pass the arguments to.
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

/// The length of the weight quantizer's statistics tensor, the state its backward pass reads
/// beside `t = tanh(W)`; its slots are [`STAT_MAX`], [`STAT_TIED`], [`STAT_SCALE`] and
/// backend-specific scratch.
pub const WEIGHT_STATS: usize = 8;
/// [`WEIGHT_STATS`] slot: `M = max|t|`.
pub const STAT_MAX: usize = 0;
/// [`WEIGHT_STATS`] slot: how many elements have `|t| = M`, as an `f32`.
pub const STAT_TIED: usize = 1;
/// [`WEIGHT_STATS`] slot: the SAT scale `s` (1 without a rescale).
pub const STAT_SCALE: usize = 2;

/// The forward and backward kernels of a backend, which its `Autodiff` wrapper records as one
/// node each; a backend extension so that Burn's Fusion wrapper of the CubeCL backend runs them
/// as opaque operations in its lazy stream.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube")
)]
pub trait QuantKernels: Backend {
    #[allow(unused_variables)]
    /// PACT's forward value.
    #[fusion(dtype = x, shape = x)]
    fn pact_forward(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        spec: PactSpec,
    ) -> FloatTensor<Self>;

    #[allow(unused_variables)]
    /// PACT's gradients: `(∂L/∂x, ∂L/∂alpha_param)`, the second of shape `[1]`.
    #[fusion(meta = |x, alpha_param, _grad, _spec| (x.clone(), alpha_param.clone()))]
    fn pact_backward(
        x: FloatTensor<Self>,
        alpha_param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: PactSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    #[allow(unused_variables)]
    /// The weight quantizer's forward pass: `(ŵ, s, t, stats)`, with `s` of shape `[1]`,
    /// `t = tanh(W)` and `stats` of shape `[WEIGHT_STATS]`, the last two for the backward.
    #[fusion(meta = weight_forward_meta)]
    fn weight_forward(
        weight: FloatTensor<Self>,
        spec: WeightSpec,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );

    #[allow(unused_variables)]
    /// `∂L/∂W` from `t = tanh(W)`, the forward statistics and `∂L/∂ŵ`.
    #[fusion(dtype = tanh, shape = tanh)]
    fn weight_backward(
        tanh: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The shapes and dtypes of [`QuantKernels::weight_forward`]'s outputs.
#[cfg(feature = "cube")]
fn weight_forward_meta(
    weight: &burn::backend::fusion::custom::TensorSpec,
    _spec: &WeightSpec,
) -> (
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
    burn::backend::fusion::custom::TensorSpec,
) {
    use burn::backend::fusion::custom::TensorSpec;
    use burn::tensor::Shape;
    (
        weight.clone(),
        TensorSpec::new(Shape::new([1]), weight.dtype),
        weight.clone(),
        TensorSpec::new(Shape::new([WEIGHT_STATS]), weight.dtype),
    )
}

/// Whether `tensor` lives on a backend with the fused quantizer kernels (Flex, and CubeCL with
/// feature `cube`), in `f32`, and the process has not chosen the composed ops.
pub(crate) fn routable<const D: usize>(tensor: &Tensor<D>) -> bool {
    kernels_apply(tensor) && on_fused_backend(&tensor.device())
}

/// Whether `tensor` lives on Flex, in `f32`, and the process has not chosen the composed ops:
/// the convolution and BatchNorm kernels exist on Flex only, so on CubeCL (wgpu) those layers
/// run Burn's own ops while the quantizers stay fused.
pub(crate) fn routable_on_flex<const D: usize>(tensor: &Tensor<D>) -> bool {
    kernels_apply(tensor) && on_flex(&tensor.device())
}

fn kernels_apply<const D: usize>(tensor: &Tensor<D>) -> bool {
    kernels() != Kernels::Composed && tensor.dtype() == DType::F32
}

fn on_flex(device: &burn::tensor::Device) -> bool {
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        burn::backend::DispatchDevice::Flex(_) => true,
        _ => false,
    }
}

fn on_fused_backend(device: &burn::tensor::Device) -> bool {
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        burn::backend::DispatchDevice::Flex(_) => true,
        #[cfg(feature = "cube")]
        burn::backend::DispatchDevice::Cube(_) => true,
        _ => false,
    }
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
