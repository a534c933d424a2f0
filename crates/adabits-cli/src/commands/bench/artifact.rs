//! `adabits bench --artifact F`: the integer runtime against the `f32` Burn evaluation of the
//! same artifact, per bit-width, at batch 1 (latency) and batch N (throughput), in one run with
//! the same threads.

use std::path::Path;

use adabits_models::{Artifact, Runtime, entry_precision};
use adabits_runtime::{EntryBits, IntRuntime, Residency};
use burn::tensor::{Device, Tensor, TensorData};

use super::time_ms;

/// One row: an engine at a bit-width and batch size.
#[derive(Debug, serde::Serialize)]
pub(super) struct EngineRow {
    /// `int` (the integer runtime) or `f32` (the Burn evaluation on `device`).
    pub(super) engine: &'static str,
    /// The integer runtime's residency: `packed` (w-bit numerators, laid out per call) or
    /// `expanded` (the kernels' layout kept); `null` for `f32`.
    pub(super) residency: Option<&'static str>,
    /// The entry (a bit-width, or a `wWaA` pair).
    pub(super) bits: EntryBits,
    /// Images per forward pass.
    pub(super) batch: usize,
    /// Median milliseconds per forward pass.
    pub(super) ms: f64,
    /// Images per second.
    pub(super) throughput: f64,
    /// Weight bytes the engine keeps at this bit-width (the integer runtime's packed
    /// numerators; the Burn model's `f32` weights).
    pub(super) weight_bytes: usize,
}

/// Times both engines at every bit-width of the artifact at `path`, at batch 1 and `batch`.
pub(super) fn engines(
    path: &Path,
    device: &Device,
    batch: usize,
    iters: usize,
) -> anyhow::Result<(Vec<EngineRow>, String)> {
    let artifact = Artifact::read(path)?;
    let graph = &artifact.header.graph;
    let [h, w] = graph.input_size;
    let c = graph.in_channels;
    let bits = graph.bits.clone();
    let mut int = IntRuntime::new(artifact.clone())?;
    let isa = int.isa().name().to_string();
    let mut f32_runtime = Runtime::new(artifact, device)?;
    let f32_bytes = 4 * f32_runtime.artifact().header.weights as usize;
    // Deterministic images in [0, 1].
    let pixels: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i as u64 * 2_654_435_761) % 1000) as f32 / 999.0)
        .collect();
    let mut rows = Vec::new();
    for &b in &bits {
        int.set_entry(b)?;
        f32_runtime.set_bits(entry_precision(b))?;
        for n in [1, batch] {
            let images = &pixels[..n * c * h * w];
            let residencies = [
                (Residency::Packed, "packed"),
                (Residency::Expanded, "expanded"),
            ];
            for (residency, name) in residencies {
                int.set_residency(residency);
                let mut failure = None;
                let ms = time_ms(device, 1, iters, || {
                    if let Err(e) = int.forward(images, n, [h, w]) {
                        failure = Some(e);
                    }
                })?;
                if let Some(e) = failure {
                    return Err(e.into());
                }
                rows.push(EngineRow {
                    engine: "int",
                    residency: Some(name),
                    bits: b,
                    batch: n,
                    ms,
                    throughput: n as f64 / (ms * 1e-3),
                    weight_bytes: int.resident_weight_bytes() + int.expanded_weight_bytes(),
                });
            }
            int.set_residency(Residency::Packed);
            let tensor =
                Tensor::<4>::from_data(TensorData::new(images.to_vec(), [n, c, h, w]), device);
            let ms = time_ms(device, 1, iters, || {
                let _ = f32_runtime.forward(tensor.clone()).into_data();
            })?;
            rows.push(EngineRow {
                engine: "f32",
                residency: None,
                bits: b,
                batch: n,
                ms,
                throughput: n as f64 / (ms * 1e-3),
                weight_bytes: f32_bytes,
            });
        }
    }
    Ok((rows, isa))
}

/// One node of the integer runtime's profile at one bit-width.
#[derive(Debug, serde::Serialize)]
pub(super) struct ProfileRow {
    /// The entry (a bit-width, or a `wWaA` pair).
    pub(super) bits: EntryBits,
    /// The layer's name, or the operation's.
    pub(super) node: String,
    /// Milliseconds per image (the weights' layout: per call).
    pub(super) ms: f64,
    /// Multiply-accumulates per image.
    pub(super) macs: u64,
    /// Billions of multiply-accumulates per second.
    pub(super) gmacs: f64,
}

/// The integer runtime's time per node at every bit-width, over `batch` images run one after
/// another (each layer on every thread).
pub(super) fn profile(path: &Path, batch: usize) -> anyhow::Result<Vec<ProfileRow>> {
    let artifact = Artifact::read(path)?;
    let graph = &artifact.header.graph;
    let [h, w] = graph.input_size;
    let c = graph.in_channels;
    let bits = graph.bits.clone();
    let mut int = IntRuntime::new(artifact)?;
    let pixels: Vec<f32> = (0..batch * c * h * w)
        .map(|i| ((i as u64 * 2_654_435_761) % 1000) as f32 / 999.0)
        .collect();
    let mut rows = Vec::new();
    for b in bits {
        int.set_entry(b)?;
        for (i, t) in int.profile(&pixels, batch, [h, w])?.into_iter().enumerate() {
            // The first row is once per call, the others per image summed over the batch.
            let ms = if i == 0 { t.ms } else { t.ms / batch as f64 };
            rows.push(ProfileRow {
                bits: b,
                gmacs: t.macs as f64 / (ms * 1e-3) / 1e9,
                node: t.name,
                ms,
                macs: t.macs,
            });
        }
    }
    Ok(rows)
}
