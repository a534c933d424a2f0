//! Whether a model fits in the machine's memory, checked before it is built.

use adabits_models::ModelConfig;
use burn::tensor::Device;

use crate::error::TrainError;

/// Refuses a model wider than 1 whose parameters (estimated by
/// [`ModelConfig::estimated_parameters`], without building it at its width) would take more
/// than the machine's memory at `bytes_per_parameter` bytes each (4 to hold it, 16 to train
/// it: weights, gradients, momentum and an updated copy). Models of width 1 or less are the
/// architectures' own sizes and are not checked; neither are they where the OS does not tell
/// its memory.
///
/// # Errors
///
/// [`TrainError::Config`] naming `model.width_mult`, with the estimate and the memory.
pub fn fits_in_memory(
    model: &ModelConfig,
    device: &Device,
    bytes_per_parameter: u32,
) -> Result<(), TrainError> {
    if model.width_mult <= 1.0 {
        return Ok(());
    }
    let Some(memory) = memory_bytes() else {
        return Ok(());
    };
    let params = model.estimated_parameters(device);
    let needed = params * f64::from(bytes_per_parameter);
    if needed <= memory as f64 {
        return Ok(());
    }
    Err(TrainError::Config {
        field: "model.width_mult".into(),
        expected: format!(
            "a model that fits in this machine's {:.1} GB of memory (at this width {} has about {params:.2e} parameters, {:.3e} GB)",
            memory as f64 / 1e9,
            model.arch,
            needed / 1e9
        ),
        found: model.width_mult.to_string(),
    })
}

/// The machine's memory in bytes, where the OS tells (`MemTotal` of `/proc/meminfo`).
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
