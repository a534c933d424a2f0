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

/// [`pact`](crate::pact) as a chain of Burn tensor ops, on every backend: the reference that the fused
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
