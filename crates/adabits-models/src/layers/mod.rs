//! Quantized layers.

mod qconv;
mod qlinear;
mod switch_bn;

pub use qconv::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
pub use switch_bn::{BnEntry, BnSharing, SwitchBatchNorm2d, SwitchBatchNorm2dConfig};
