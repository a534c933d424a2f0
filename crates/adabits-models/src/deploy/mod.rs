//! Deployment: one low-bit artifact (`.abq`) for every bit-width of a model, and the runtime
//! that runs it at any of them, switching without reading the file again.
//!
//! The artifact is a SafeTensors file with two tensors and a JSON header in its metadata
//! (docs/artifact.md has the byte layout):
//!
//! - `codes` (`U8`): the integer weight codes of every quantized layer, packed at the layer's
//!   highest weight bit-width. For the modified and centered schemes every lower bit-width's
//!   codes are these shifted right (the bit-shift property, docs/method.md §2), so one set serves
//!   all; for the original scheme, where the shift is not exact, each weight bit-width's codes
//!   are stored.
//! - `scalars` (`F32`): per layer, the SAT scale of each weight bit-width, the bias, the
//!   clipping levels of every bit-width; per BatchNorm, every bit-width's statistics and affine
//!   folded into a per-channel scale and bias.
//! - metadata `adabits`: an [`ArtifactHeader`] (format, version, model configuration, a table
//!   per bit-width, sizes and the CRC-32 of the payload).
//!
//! [`Runtime`] rebuilds the model from the header, decodes the codes of the chosen bit-width
//! into its layers (a shift and a scale per weight) and runs it: the same arithmetic as the
//! fake-quantized model's evaluation, so both give the same logits.

mod export;
mod format;
mod runtime;
mod select;

pub use format::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, Artifact, ArtifactError, ArtifactHeader, BitRow,
};
pub use runtime::Runtime;
pub use select::{Budget, Selection, select};
