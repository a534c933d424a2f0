//! The device the models crate's test binaries run on: the CPU (flex) by default, wgpu with
//! `--features test-wgpu`. Each test binary includes this file as its `device` module.

use burn::tensor::Device;

/// The device every test runs on.
#[cfg(feature = "test-wgpu")]
pub(crate) fn device() -> Device {
    Device::wgpu(Default::default())
}

/// The device every test runs on.
#[cfg(not(feature = "test-wgpu"))]
pub(crate) fn device() -> Device {
    Device::flex()
}
