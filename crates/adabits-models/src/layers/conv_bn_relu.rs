//! A quantized convolution, its switchable BatchNorm and a ReLU: the MobileNets' unit.

use adabits_quant::BitWidth;
use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use super::{QConv2d, SwitchBatchNorm2d};
use crate::layout::LayerMut;

/// A quantized conv followed by a switchable BatchNorm and a ReLU.
#[derive(Module, Debug)]
pub struct ConvBnRelu {
    /// The convolution.
    pub conv: QConv2d,
    /// The BatchNorm.
    pub bn: SwitchBatchNorm2d,
}

impl ConvBnRelu {
    /// `relu(bn(conv(x)))` at `bits`.
    ///
    /// # Shapes
    ///
    /// `[batch, in, h, w]` to `[batch, out, h_out, w_out]`.
    pub fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        relu(self.bn.forward(self.conv.forward(x, bits), bits))
    }

    /// Hands out the conv as `<prefix>.<i>` and the BatchNorm as `<prefix>.<i + 1>` (the
    /// official `nn.Sequential` positions).
    /// Records conv, BatchNorm and (if `relu`) the ReLU on value `x`, with the names
    /// [`visit_official`](Self::visit_official) gives them, and returns the output value.
    pub(crate) fn trace(
        &self,
        t: &mut crate::deploy::Tracer,
        prefix: &str,
        i: usize,
        x: usize,
        relu: bool,
    ) -> usize {
        let y = t.conv_bn(&format!("{prefix}.{i}"), &format!("{prefix}.{}", i + 1), x);
        if relu { t.relu(y) } else { y }
    }

    pub(crate) fn visit_official(
        &mut self,
        prefix: &str,
        i: usize,
        visit: &mut dyn FnMut(&str, LayerMut<'_>),
    ) {
        visit(&format!("{prefix}.{i}"), LayerMut::Conv(&mut self.conv));
        visit(&format!("{prefix}.{}", i + 1), LayerMut::Norm(&mut self.bn));
    }
}
