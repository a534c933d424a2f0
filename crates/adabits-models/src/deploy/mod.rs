//! Deployment: one low-bit artifact (`.abq`) for every bit-width of a model, and a runtime that
//! runs it at any of them on a Burn device, switching without reading the file again.
//!
//! The format has its one definition in `adabits-runtime` (docs/artifact.md): a SafeTensors
//! file with the packed weight codes, the scalars (scales, biases, clipping levels, folded
//! BatchNorms) and a JSON header holding the model's configuration and its graph.
//! [`export_artifact`] writes a model through it; [`Runtime`] rebuilds the model from the
//! header, decodes the codes of the chosen bit-width into its layers (a shift and a scale per
//! weight) and runs it with Burn: the same arithmetic as the fake-quantized model's evaluation,
//! so both give the same logits.

mod export;
mod runtime;
mod select;
mod trace;

pub use adabits_runtime::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, Artifact, ArtifactError, ArtifactHeader, BitRow, EntryBits,
};
pub use export::{entry_precision, export_artifact, file_entry};
pub use runtime::{Runtime, artifact_model};
pub use select::{Budget, Selection, select};
pub(crate) use trace::Tracer;
