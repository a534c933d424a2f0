//! The `--device` flag: one variant per backend compiled into the binary.

use std::fmt;

use burn::tensor::Device;
use clap::ValueEnum;

#[cfg(not(any(feature = "flex", feature = "ndarray", feature = "wgpu")))]
compile_error!(
    "adabits-cli needs a backend: enable at least one of the features flex, ndarray, wgpu"
);

/// A compute device, among the backends this binary was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum DeviceArg {
    /// The pure-Rust CPU backend (flex); the default.
    #[cfg(feature = "flex")]
    Flex,
    /// The ndarray CPU backend (deprecated upstream, kept for comparison).
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// The GPU through wgpu (Vulkan, Metal or DX12).
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl Default for DeviceArg {
    /// The first compiled backend in the order flex, ndarray, wgpu: a CPU when one is
    /// compiled in, so that a plain run never needs a GPU.
    fn default() -> Self {
        Self::value_variants()[0]
    }
}

impl DeviceArg {
    /// The Burn device.
    pub(crate) fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            Self::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison with flex
            Self::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Device::wgpu(Default::default()),
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        f.write_str(&name)
    }
}
