//! The test-vector file: its schema, read and validated.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use super::VectorsError;

/// A parsed test-vector file.
#[derive(Clone, Debug, Deserialize)]
pub struct TestVectors {
    /// Must be `"adabits-testvectors"`.
    pub format: String,
    /// Schema version; this crate reads version 1.
    pub version: u32,
    /// The cases, in file order.
    pub cases: Vec<Case>,
}

/// One test case (docs/method.md §12.9 "Case fields").
#[derive(Clone, Debug, Deserialize)]
pub struct Case {
    /// Unique id, e.g. `tv3c_pact_double_sided`.
    pub name: String,
    /// The §12 vector it belongs to (`TV1` … `TV8`).
    pub group: String,
    /// What to run: `q_k`, `weight_quant`, `pact`, `qlinear`, `input_pixels`, `bit_codes`,
    /// `joint_step_qlinear`.
    pub op: String,
    /// Non-tensor settings.
    pub config: BTreeMap<String, Value>,
    /// Named input tensors.
    pub inputs: BTreeMap<String, TensorSpec>,
    /// `∂L/∂output` fed to backward, keyed by output name.
    pub upstream_gradients: BTreeMap<String, TensorSpec>,
    /// Named expected outputs.
    pub expected_outputs: BTreeMap<String, TensorSpec>,
    /// Expected `∂L/∂input`, keyed by input name.
    pub expected_gradients: BTreeMap<String, TensorSpec>,
    /// Pass criterion for float tensors.
    pub tolerance: Tolerance,
}

/// A tensor in the file: flat row-major data with a shape (`[]` is a scalar).
#[derive(Clone, Debug, Deserialize)]
pub struct TensorSpec {
    /// Dimensions; empty for a scalar.
    pub shape: Vec<usize>,
    /// `"float"` or `"int"`.
    pub dtype: String,
    /// Elements in row-major order.
    pub data: Vec<f64>,
}

/// `|actual − expected| ≤ max(abs, rel·|expected|)` for every element.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
pub struct Tolerance {
    /// Absolute tolerance.
    pub abs: f64,
    /// Relative tolerance.
    pub rel: f64,
}

impl TestVectors {
    /// Reads and validates a test-vector file.
    ///
    /// # Errors
    ///
    /// [`VectorsError::Io`] if the file cannot be read, [`VectorsError::Malformed`] if it is
    /// not JSON of the expected format, version and structure.
    pub fn load(path: &Path) -> Result<Self, VectorsError> {
        let text = std::fs::read_to_string(path).map_err(|source| VectorsError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses test vectors from JSON text; `path` is used in error messages.
    ///
    /// # Errors
    ///
    /// [`VectorsError::Malformed`] on bad JSON, a wrong `format` or `version`, or a tensor
    /// whose data length does not match its shape.
    pub fn parse(text: &str, path: &Path) -> Result<Self, VectorsError> {
        let malformed = |reason: String| VectorsError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let vectors: TestVectors =
            serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
        if vectors.format != "adabits-testvectors" {
            return Err(malformed(format!(
                "field `format`: expected \"adabits-testvectors\", found {:?}",
                vectors.format
            )));
        }
        if vectors.version != 1 {
            return Err(malformed(format!(
                "field `version`: expected 1, found {}",
                vectors.version
            )));
        }
        for case in &vectors.cases {
            let tensors = case
                .inputs
                .iter()
                .chain(&case.upstream_gradients)
                .chain(&case.expected_outputs)
                .chain(&case.expected_gradients);
            for (name, spec) in tensors {
                let expected: usize = spec.shape.iter().product();
                if expected != spec.data.len() {
                    return Err(malformed(format!(
                        "case {}, tensor {name}: shape {:?} needs {expected} elements, found {}",
                        case.name,
                        spec.shape,
                        spec.data.len()
                    )));
                }
            }
        }
        Ok(vectors)
    }
}
