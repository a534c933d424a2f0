//! Builds the layers of a model from its bit-widths and quantization settings, so every model
//! creates its convolutions, BatchNorms and classifier the same way.

use adabits_quant::{BitPolicy, BitWidth, BitWidths};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use crate::{
    ConvBnRelu, QConv2d, QConv2dConfig, QLinear, QLinearConfig, QuantSettings, SwitchBatchNorm2d,
    SwitchBatchNorm2dConfig,
};

/// The layer factory of one model.
pub(crate) struct LayerBuilder<'a> {
    pub(crate) bits: &'a BitWidths,
    pub(crate) quant: &'a QuantSettings,
    pub(crate) device: &'a Device,
}

impl LayerBuilder<'_> {
    /// A `k`×`k` quantized conv with "same" padding.
    pub(crate) fn conv(
        &self,
        [c_in, c_out]: [usize; 2],
        k: usize,
        stride: usize,
        groups: usize,
        policy: BitPolicy,
        double_sided: bool,
    ) -> QConv2d {
        let mut policy = policy;
        if groups > 1 && groups == c_in && groups == c_out {
            // Depthwise: its input may have a floor of its own.
            if let Some(min) = self.quant.depthwise_bita_min {
                policy.bita_min = Some(policy.bita_min.map_or(min, |b| b.max(min)));
            }
        }
        QConv2dConfig::new([c_in, c_out], [k, k], self.bits.clone())
            .with_stride([stride, stride])
            .with_padding([k / 2, k / 2])
            .with_groups(groups)
            .with_policy(policy)
            .with_weight_quant(self.quant.conv_weight())
            .with_act_quant(self.quant.act(double_sided))
            .with_switchable_alpha(self.quant.switchable_alpha)
            .with_alpha_init(self.quant.conv_alpha_init)
            .init(self.device)
    }

    /// A switchable BatchNorm over `channels`.
    pub(crate) fn bn(&self, channels: usize) -> SwitchBatchNorm2d {
        SwitchBatchNorm2dConfig::new(channels, self.bits.clone())
            .with_sharing(self.quant.bn)
            .init(self.device)
    }

    /// A conv followed by its BatchNorm.
    pub(crate) fn conv_bn(
        &self,
        channels: [usize; 2],
        k: usize,
        stride: usize,
        groups: usize,
        policy: BitPolicy,
        double_sided: bool,
    ) -> ConvBnRelu {
        ConvBnRelu {
            conv: self.conv(channels, k, stride, groups, policy, double_sided),
            bn: self.bn(channels[1]),
        }
    }

    /// The classifier: bias, weights at least `bitw_min`, input at the active bit-width.
    pub(crate) fn classifier(&self, d_input: usize, classes: usize, bitw_min: BitWidth) -> QLinear {
        QLinearConfig::new(d_input, classes, self.bits.clone())
            .with_policy(BitPolicy {
                bitw_min: Some(bitw_min),
                ..BitPolicy::BODY
            })
            .with_weight_quant(self.quant.linear_weight())
            .with_act_quant(self.quant.act(false))
            .with_switchable_alpha(self.quant.switchable_alpha)
            .with_init_std(self.quant.classifier_init_std)
            .with_alpha_init(self.quant.linear_alpha_init)
            .init(self.device)
    }
}

/// The weight-only policy of a first conv with weights at least `bitw_min` (docs/method.md §5).
pub(crate) fn stem_policy(bitw_min: BitWidth) -> BitPolicy {
    BitPolicy {
        bitw_min: Some(bitw_min),
        bita_min: Some(eight()),
        weight_only: true,
    }
}

/// 8 bits, the minimum of the ImageNet models' first and last layers.
pub(crate) fn eight() -> BitWidth {
    BitWidth::new(8).expect("8 is a bit-width")
}

/// Global average pooling followed by the classifier: the tail every model shares.
///
/// # Shapes
///
/// `x`: `[batch, C, h, w]`; output `[batch, classes]`.
pub(crate) fn pool_and_classify(x: Tensor<4>, classifier: &QLinear, bits: BitWidth) -> Tensor<2> {
    let pooled = adaptive_avg_pool2d(x, [1, 1]).flatten::<2>(1, 3);
    classifier.forward(pooled, bits)
}

/// `channels` rounded to a multiple of 8, at least 8 (the MobileNets' width rule).
pub(crate) fn make_divisible(channels: f64) -> usize {
    (((channels / 8.0).round() as usize) * 8).max(8)
}
