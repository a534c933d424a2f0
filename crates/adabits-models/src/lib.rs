//! Switchable-precision layers and models of AdaBits.
//!
//! Available: [`QConv2d`] and [`QLinear`], whose weights and input activations are quantized at
//! the bit-width passed to `forward`, so one set of weights runs at every bit-width, and
//! [`SwitchBatchNorm2d`], one BatchNorm per bit-width. Still to come (issue 3): the models
//! (MobileNet-V1/V2, ResNet) and the cost profiler.

mod layers;

pub use adabits_quant;
pub use layers::{
    BnEntry, BnSharing, QConv2d, QConv2dConfig, QLinear, QLinearConfig, SwitchBatchNorm2d,
    SwitchBatchNorm2dConfig,
};
