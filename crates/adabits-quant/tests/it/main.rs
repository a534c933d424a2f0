//! Integration tests of `adabits-quant`: the specification's test vectors, properties against
//! the scalar reference, and the integer codes.
//!
//! The backend is the CPU (flex) by default; `--features test-wgpu` runs the same suite on wgpu
//! and `--features test-ndarray` on ndarray.

mod clip;
mod codes;
// The fused convolution and BatchNorm exist on Flex only; elsewhere both sides of these
// comparisons would be Burn's own op (and on lavapipe every new shape compiles new kernels).
#[cfg(not(any(feature = "test-wgpu", feature = "test-ndarray")))]
mod conv;
mod fused;
#[cfg(not(any(feature = "test-wgpu", feature = "test-ndarray")))]
mod norm;
mod properties;
mod routing;
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

/// A small deterministic generator for shapes and data (the tests must not depend on a seed
/// that changes from run to run).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next 31 random bits.
    pub fn next_bits(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_bits() % n as u64) as usize
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * (self.next_bits() as f32 / (1u64 << 31) as f32)
    }
}

/// Every element within `tol` of the composed value, relative to the largest composed magnitude
/// (a gradient's small elements are sums of cancelling terms).
pub fn assert_close(fused: &[f64], composed: &[f64], tol: f64, what: &str) {
    assert_eq!(fused.len(), composed.len(), "{what}: lengths");
    let scale = composed.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (f, c)) in fused.iter().zip(composed).enumerate() {
        assert!(
            (f - c).abs() <= tol * scale,
            "{what}: element {i}: fused {f} vs composed {c} (scale {scale})"
        );
    }
}
