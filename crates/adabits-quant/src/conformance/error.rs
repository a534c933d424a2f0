//! Why a test-vector file could not be used.

use std::path::PathBuf;

/// A test-vector file could not be read, or did not have the expected structure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorsError {
    /// The file could not be read.
    #[error("cannot read test vectors from {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file did not have the expected structure.
    #[error("malformed test vectors in {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What was expected and what was found.
        reason: String,
    },
}
