//! Integration tests of `adabits-models`.
//!
//! The backend is the CPU (flex) by default.

mod checkpoint;
mod deploy;
mod import;
mod layers;
mod models;
mod profile;
mod switch_bn;

use burn::tensor::Device;

/// The device every test runs on.
pub fn device() -> Device {
    Device::flex()
}
