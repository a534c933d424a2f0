//! Integration tests of `adabits-train`. The backend is the CPU (flex) by default.

mod calibrate;
mod data;
mod entries;
mod init;
mod optim;
mod reliability;
mod search;
mod train;

use burn::tensor::Device;

/// The device every test runs on.
#[cfg(feature = "test-wgpu")]
pub fn device() -> Device {
    Device::wgpu(Default::default())
}

/// The device every test runs on.
#[cfg(all(feature = "test-ndarray", not(feature = "test-wgpu")))]
#[allow(deprecated)] // ndarray is deprecated upstream, and we still test it.
pub fn device() -> Device {
    Device::ndarray()
}

/// The device every test runs on.
#[cfg(not(any(feature = "test-wgpu", feature = "test-ndarray")))]
pub fn device() -> Device {
    Device::flex()
}
