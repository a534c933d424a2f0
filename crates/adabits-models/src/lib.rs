//! Switchable-precision layers and models of AdaBits (`QConv2d`, `QLinear`, switchable
//! BatchNorm, MobileNet-V1/V2, ResNet) and the cost profiler.
//!
//! Not implemented yet: this crate is an empty placeholder in the workspace until the models
//! land. The quantizers they will use are in [`adabits_quant`].

pub use adabits_quant;
