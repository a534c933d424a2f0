//! Runs the specification's test vectors (`testvectors.json`, docs/method.md §12.9) against this
//! crate's tensor implementation on any device.
//!
//! The test suite and `adabits check-numerics` both use it, so the same numbers are checked in CI
//! on the CPU and by users on their own GPU.

mod error;
mod report;
mod runner;
mod schema;

use std::path::{Path, PathBuf};

pub use error::VectorsError;
pub use report::{CaseReport, Check};
pub use runner::{run_all, run_case};
pub use schema::{Case, TensorSpec, TestVectors, Tolerance};

/// The default location of the test vectors inside this repository, relative to the workspace
/// root: a copy of the specification's `shared/testvectors.json` kept in sync by a test.
pub const REPO_VECTORS_PATH: &str = "testdata/testvectors.json";

/// Path of the repository copy of the test vectors, from this crate's manifest directory.
pub fn repo_vectors_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(REPO_VECTORS_PATH)
}
