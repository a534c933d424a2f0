//! The deployment side of adabits, without Burn: the `.abq` artifact format (one file, every
//! bit-width) and an integer runtime that runs it at any of its bit-widths.
//!
//! - [`Artifact`]: reads, checks and writes `.abq` files (docs/artifact.md). The format has its
//!   only definition here; `adabits-models` exports through it.
//! - [`Graph`]: the model an artifact carries, as layers and operations a runtime can run
//!   without the training code.
//! - [`IntRuntime`]: runs an artifact at any of its bit-widths with integer arithmetic in
//!   every quantized layer (`u8 × i8 → i32` kernels for the detected [`Isa`]), switching
//!   bit-width in memory.
//!
//! A device application depends on this crate alone.

// Libraries print nothing: they return typed errors and report through their callers.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod engine;
mod format;
mod fs;
pub mod graph;

pub use engine::{Crossover, IntRuntime, Isa, NodeTime, Residency, RuntimeError, crossover};
pub use format::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, Artifact, ArtifactError, ArtifactHeader, BitRow,
    LayerPayload, NormPayload, QuantPayload, WeightPlan, crc32, pack, packed_len, split_payload,
    unpack_shifted,
};
pub use fs::write_atomically;
pub use graph::Graph;
