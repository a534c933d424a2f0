//! Quantized layers.

mod conv_bn_relu;
mod qconv;
mod qlinear;
mod switch_bn;

pub use conv_bn_relu::ConvBnRelu;
pub use qconv::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
pub use switch_bn::{BnEntry, BnSharing, SwitchBatchNorm2d, SwitchBatchNorm2dConfig};

/// The weight quantizer and policy of a deployed layer: the weight is used as it is (the
/// full-precision path without tanh or rescale); activations keep their bit-widths.
fn deployed(
    quant: &adabits_quant::WeightQuantConfig,
    mut policy: adabits_quant::BitPolicy,
) -> (adabits_quant::WeightQuantConfig, adabits_quant::BitPolicy) {
    policy.bitw_min = Some(adabits_quant::BitWidth::FULL);
    let quant = adabits_quant::WeightQuantConfig::new()
        .with_scheme(quant.scheme)
        .with_clamp(false)
        .with_rescale(false);
    (quant, policy)
}
