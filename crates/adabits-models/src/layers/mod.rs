//! Quantized layers.

mod qconv;
mod qlinear;

pub use qconv::{QConv2d, QConv2dConfig};
pub use qlinear::{QLinear, QLinearConfig};
