//! Activation quantization: PACT with a learnable clipping level (docs/method.md §4).

use burn::config::Config;
use burn::tensor::Tensor;

use crate::unit::unit_quantize;
use crate::{BitWidth, QuantScheme};

/// The settings of one layer's activation quantizer.
#[derive(Config, Debug, PartialEq)]
pub struct ActQuantConfig {
    /// The unit quantizer (official `act_quant_scheme`, default `original`).
    #[config(default = "QuantScheme::Original")]
    pub scheme: QuantScheme,
    /// Clip to `[−α, α]` instead of `[0, α]` (official `double_side`, conv layers only; parity
    /// default P2 keeps it off).
    #[config(default = false)]
    pub double_sided: bool,
    /// Clip, without quantizing, at full precision too (official `pact_fp`, default off).
    #[config(default = false)]
    pub pact_fp: bool,
}

/// PACT on a layer's input, with the clipping level `α = |alpha_param|`.
///
/// Runs when `bita < 32` or `pact_fp` is set; otherwise returns `x` unchanged (no ReLU, no clip:
/// parity default P3). `bita` is the resolved activation bit-width ([`crate::LayerBits`]), which
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
    match crate::fused::fused_pact(&x, &alpha_param, bita, config) {
        Some(y) => y,
        None => pact_composed(x, alpha_param, bita, config),
    }
}

/// [`pact`] as a chain of Burn tensor ops, on every backend: the reference that the fused
/// kernels are tested against.
pub fn pact_composed<const D: usize>(
    x: Tensor<D>,
    alpha_param: Tensor<1>,
    bita: BitWidth,
    config: &ActQuantConfig,
) -> Tensor<D> {
    if bita.is_full_precision() && !config.pact_fp {
        return x;
    }
    let shape = x.shape();
    let alpha = alpha_param.abs().reshape([1; D]).expand(shape);
    let lower = if config.double_sided {
        // where(x > −α, x, −α)
        let neg_alpha = alpha.clone().neg();
        x.clone()
            .mask_where(x.greater(neg_alpha.clone()).bool_not(), neg_alpha)
    } else {
        relu_zero_grad_at_zero(x)
    };
    // where(c < α, c, α): at c == α the α branch is taken, so the gradient goes to α.
    let clipped = lower
        .clone()
        .mask_where(lower.lower(alpha.clone()).bool_not(), alpha.clone());
    if bita.is_full_precision() {
        return clipped;
    }
    if config.double_sided {
        let u = (clipped / alpha.clone()).add_scalar(1.0).div_scalar(2.0);
        let z = unit_quantize(u, bita, config.scheme)
            .mul_scalar(2.0)
            .sub_scalar(1.0);
        alpha * z
    } else {
        let v = clipped / alpha.clone();
        alpha * unit_quantize(v, bita, config.scheme)
    }
}

/// `relu(x)` whose gradient at exactly `x = 0` is 0, as PyTorch's.
fn relu_zero_grad_at_zero<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let non_positive = x.clone().lower_equal_elem(0.0);
    x.mask_fill(non_positive, 0.0)
}
