//! The two quantizers a layer calls, [`pact`] and [`quantize_weight`]: each runs the fused
//! kernel where the backend has one ([`crate::fused`]) and the composed chain of tensor ops
//! ([`pact_composed`], [`quantize_weight_composed`]) elsewhere. The routing lives here so that
//! the composed references and the fused kernels do not import each other.

use burn::tensor::Tensor;

use crate::BitWidth;
use crate::activation::{ActQuantConfig, pact_composed};
use crate::fused::{fused_pact, fused_weight};
use crate::weight::{
    QuantizedWeight, WeightQuantConfig, check_arguments, quantize_weight_composed,
};

/// PACT on a layer's input, with the clipping level `α = |alpha_param|`.
///
/// Runs when `bita < 32` or `pact_fp` is set; otherwise returns `x` unchanged (no ReLU, no clip:
/// parity default P3). `bita` is the resolved activation bit-width ([`LayerBits`](crate::LayerBits)), which
/// is 32 for weight-only layers.
///
/// ```text
/// single-sided:  c = min(relu(x), α);              y = α·Q_b(c/α)
/// double-sided:  c = min(max(x, −α), α);           y = α·(2·Q_b((c/α + 1)/2) − 1)
/// full precision with pact_fp:                      y = c
/// ```
///
/// Gradients follow the official autograd exactly: `∂y/∂x = 1` for `0 < x < α` (`−α < x < α`
/// double-sided) and 0 elsewhere, including at `x = 0` and `x = α`; `∂y/∂α = Q(v) − v` inside
/// the range and `Q(1)` above it (SAT's calibrated-gradient PACT with the original scheme), and
/// `∂L/∂alpha_param = sign(alpha_param)·∂L/∂α` (TV3).
///
/// # Shapes
///
/// `x`: any shape; `alpha_param`: `[1]`. The output has the shape of `x`.
///
/// On a backend with the fused kernels (Flex, [`crate::fused`]) this is one operation forward
/// and one backward; elsewhere it is [`pact_composed`].
pub fn pact<const D: usize>(
    x: Tensor<D>,
    alpha_param: Tensor<1>,
    bita: BitWidth,
    config: &ActQuantConfig,
) -> Tensor<D> {
    if bita.is_full_precision() && !config.pact_fp {
        return x;
    }
    match fused_pact(&x, &alpha_param, bita, config) {
        Some(y) => y,
        None => pact_composed(x, alpha_param, bita, config),
    }
}

/// Quantizes a weight tensor at `bitw` bits: [`quantize_weight_traced`](crate::quantize_weight_traced) without the
/// intermediates.
///
/// # Shapes
///
/// Any shape; `scale` is `[1]`.
///
/// # Panics
///
/// As [`quantize_weight_traced`](crate::quantize_weight_traced).
///
/// On a backend with the fused kernels (Flex, [`crate::fused`]) this is one operation forward
/// and one backward; elsewhere it is [`quantize_weight_composed`].
pub fn quantize_weight<const D: usize>(
    weight: Tensor<D>,
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> QuantizedWeight<D> {
    check_arguments(&weight, fan_out, config);
    match fused_weight(&weight, bitw, fan_out, config) {
        Some((w_hat, scale)) => QuantizedWeight { w_hat, scale },
        None => quantize_weight_composed(weight, bitw, fan_out, config),
    }
}
