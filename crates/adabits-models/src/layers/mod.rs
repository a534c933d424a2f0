//! Quantized layers.

use adabits_quant::{ActQuantConfig, BitPolicy, BitWidth, WeightQuantConfig};

mod conv_bn_relu;
mod qconv;
mod qlinear;
mod switch_bn;

pub use conv_bn_relu::ConvBnRelu;
pub use qconv::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
pub use switch_bn::{BnEntry, BnSharing, SwitchBatchNorm2d, SwitchBatchNorm2dConfig};

/// How a quantized layer ([`QConv2d`], [`QLinear`]) quantizes: which bit-widths it resolves to
/// ([`BitPolicy`]), its weight quantizer and its input (PACT) quantizer. Plain settings, not
/// parameters: a checkpoint holds none of them (the model's configuration rebuilds them).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerQuant {
    /// The layer's precision policy.
    pub policy: BitPolicy,
    /// The weight quantizer.
    pub weight: WeightQuantConfig,
    /// The input activations' quantizer.
    pub act: ActQuantConfig,
}

impl LayerQuant {
    /// The settings of the layer once deployed: the weight is used as it is (the
    /// full-precision path without tanh or rescale); activations keep their bit-widths.
    fn deployed(&self) -> Self {
        let mut policy = self.policy;
        policy.bitw_min = Some(BitWidth::FULL);
        let weight = WeightQuantConfig::new()
            .with_scheme(self.weight.scheme)
            .with_clamp(false)
            .with_rescale(false);
        Self {
            policy,
            weight,
            act: self.act.clone(),
        }
    }
}
