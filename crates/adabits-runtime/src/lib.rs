//! The deployment side of adabits, without Burn: the `.abq` artifact format (one file, every
//! bit-width) and an integer runtime that runs it at any of its bit-widths.
//!
//! - [`Artifact`]: reads, checks and writes `.abq` files (docs/artifact.md). The format has its
//!   only definition here; `adabits-models` exports through it.
//! - [`Graph`]: the model an artifact carries, as layers and operations a runtime can run
//!   without the training code, and its list of entries ([`EntryBits`]: a bit-width such as
//!   `8`, or weights and activations at their own, `w4a8`).
//! - [`IntRuntime`]: runs an artifact at any of its bit-widths with integer arithmetic in
//!   every quantized layer (`u8 × i8 → i32` kernels for the detected [`Isa`]), switching
//!   bit-width in memory.
//!
//! A device application depends on this crate alone.
//!
//! # Example
//!
//! The artifact stores each layer's weight codes once, at its highest bit-width; a lower
//! bit-width's codes are a right shift of them:
//!
//! ```
//! use adabits_runtime::{pack, packed_len, unpack_shifted};
//!
//! // Four 4-bit codes in two bytes.
//! let mut bytes = Vec::new();
//! pack(&[3, 15, 8, 0], 4, &mut bytes);
//! assert_eq!(bytes.len(), packed_len(4, 4));
//! assert_eq!(unpack_shifted(&bytes, 4, 4, 0), [3, 15, 8, 0]);
//! // The same codes at 2 bits: each shifted right by 2.
//! assert_eq!(unpack_shifted(&bytes, 4, 4, 2), [0, 3, 2, 0]);
//! ```

// Libraries print nothing: they return typed errors and report through their callers.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod engine;
mod entry;
mod format;
mod fs;
pub mod graph;

pub use engine::{Crossover, IntRuntime, Isa, NodeTime, Residency, RuntimeError, crossover};
pub use entry::{EntryBits, EntryBitsError};
pub use format::{
    ARTIFACT_FORMAT, ARTIFACT_VERSION, ARTIFACT_VERSIONS, Artifact, ArtifactError, ArtifactHeader,
    BitRow, LayerPayload, NormPayload, QuantPayload, WeightPlan, crc32, pack, packed_len,
    split_payload, unpack_shifted,
};
pub use fs::write_atomically;
pub use graph::Graph;
