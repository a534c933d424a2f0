//! Integration tests of `adabits-quant`: the specification's test vectors, properties against
//! the scalar reference, and the integer codes.
//!
//! The backend is the CPU (flex) by default; `--features test-wgpu` runs the same suite on wgpu
//! and `--features test-ndarray` on ndarray.

mod clip;
mod codes;
mod fused;
mod properties;
mod vectors;

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

/// A valid bit-width.
pub fn bw(bits: u8) -> adabits_quant::BitWidth {
    adabits_quant::BitWidth::new(bits).unwrap()
}

/// Reads a float tensor back as `f64`s.
pub fn values<const D: usize>(t: burn::tensor::Tensor<D>) -> Vec<f64> {
    t.into_data().iter::<f64>().collect()
}
