//! Integration tests of `adabits-models`.
//!
//! The backend is the CPU (flex) by default; `--features test-wgpu` runs them on wgpu.

mod checkpoint;
mod deploy;
mod import;
mod layers;
mod models;
mod profile;
mod switch_bn;

use burn::tensor::Device;

/// The device every test runs on.
#[cfg(feature = "test-wgpu")]
pub fn device() -> Device {
    Device::wgpu(Default::default())
}

/// The device every test runs on.
#[cfg(not(feature = "test-wgpu"))]
pub fn device() -> Device {
    Device::flex()
}
