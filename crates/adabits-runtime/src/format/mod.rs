//! The artifact's format: its header, its errors and the byte codec (SafeTensors with the
//! header in its metadata). docs/artifact.md is its specification.

mod pack;
mod payload;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

pub use pack::{crc32, pack, packed_len, unpack_shifted};
pub use payload::{LayerPayload, NormPayload, QuantPayload, WeightPlan, split_payload};

use crate::EntryBits;
use crate::fs::write_atomically;
use crate::graph::Graph;

/// The `format` of every artifact's header.
pub const ARTIFACT_FORMAT: &str = "adabits-abq";
/// The newest artifact format version, which this build writes for a list with a `wWaA` pair
/// entry (4 adds them). A list of bit-widths only is written as version 3, byte for byte as
/// before, so that older readers still take it; this build reads both.
pub const ARTIFACT_VERSION: u32 = 4;
/// The versions this build reads.
pub const ARTIFACT_VERSIONS: [u32; 2] = [3, ARTIFACT_VERSION];
/// The metadata key that holds the header.
const HEADER_KEY: &str = "adabits";

/// One entry's row of the artifact's table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BitRow {
    /// The entry: a bit-width, or a `wWaA` pair.
    pub bits: EntryBits,
    /// Validation top-1 (%) where known (from the run's last evaluation).
    pub top1: Option<f64>,
    /// GBitOPs per image (official accounting).
    pub gbitops: f64,
    /// Model size in bytes at this bit-width (official accounting), a whole number rounded up
    /// in files written since byte counts are whole. It stays a JSON float: the header's
    /// checksum covers its serialised text, so older version-3 files (whose sizes may carry
    /// float noise, `102647.99999999999`) must serialise as they were written.
    pub model_bytes: f64,
}

/// The artifact's header (the SafeTensors metadata `adabits`, as JSON).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ArtifactHeader {
    /// Always [`ARTIFACT_FORMAT`].
    pub format: String,
    /// The format version: 3 for a list of bit-widths, [`ARTIFACT_VERSION`] for one with a
    /// `wWaA` pair.
    pub version: u32,
    /// The model's configuration as the trainer wrote it (`adabits-models`' `ModelConfig`):
    /// opaque to this crate, which runs `graph`.
    pub model: serde_json::Value,
    /// The model as a graph of layers and operations.
    pub graph: Graph,
    /// One row per entry, in the model's order.
    pub table: Vec<BitRow>,
    /// Bytes of packed codes.
    pub code_bytes: u64,
    /// Number of `f32` scalars.
    pub scalar_count: u64,
    /// The number of quantized weights.
    pub weights: u64,
    /// CRC-32 (IEEE) of the header itself (as this build serialises it, with this field 0),
    /// then the packed codes, then the scalars' little-endian bytes: see
    /// [`ArtifactHeader::checksum`].
    pub crc32: u32,
    /// Where the weights came from (a run directory or checkpoint), if known.
    pub source: Option<String>,
}

impl ArtifactHeader {
    /// The CRC-32 of this header (serialised with `crc32` set to 0, fields in declaration
    /// order), `codes` and `scalar_bytes`: what `crc32` must hold. An edit of any header field
    /// changes it, as an edit of the payload does.
    pub fn checksum(&self, codes: &[u8], scalar_bytes: &[u8]) -> u32 {
        let mut canonical = self.clone();
        canonical.crc32 = 0;
        let text = serde_json::to_string(&canonical).expect("the header serialises");
        crc32(&[text.as_bytes(), codes, scalar_bytes])
    }

    /// The ideal size: the codes at their bit-widths (`weights × bits / 8`) plus 4 bytes per
    /// scalar.
    pub fn ideal_bytes(&self) -> u64 {
        self.code_bytes + 4 * self.scalar_count
    }
}

/// What can go wrong with an artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a SafeTensors file, or a damaged or truncated one.
    #[error("{path}: not a readable artifact: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A SafeTensors file without an adabits header, or with another format.
    #[error("{path}: the metadata field `{field}`: expected {expected}, found {found}")]
    Header {
        /// The file.
        path: PathBuf,
        /// The field.
        field: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A version this build cannot read.
    #[error(
        "{path}: artifact format version {found}, this build reads versions {expected}; re-export the artifact with this version of adabits"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The versions this build reads, as `3 and 4`.
        expected: String,
        /// The file's version.
        found: u32,
    },
    /// A tensor the format requires is missing, or has the wrong type or size.
    #[error("{path}: tensor `{name}`: expected {expected}, found {found}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// The payload does not match its checksum: the file is corrupted.
    #[error(
        "{path}: checksum mismatch: the header says CRC-32 {expected:08x}, the header and payload have {found:08x}; the file is corrupted or was edited"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The header's CRC-32.
        expected: u32,
        /// The payload's CRC-32.
        found: u32,
    },
    /// The model cannot be exported, or the payload does not fit the model.
    #[error("{0}")]
    Layout(String),
    /// An entry (bit-width or `wWaA` pair) the artifact does not hold.
    #[error("{entry} is not one of the artifact's entries ({list})")]
    UnknownBits {
        /// The entry asked for, as messages name it (`3 bits`, `w2a8`).
        entry: String,
        /// The artifact's entries, as `8,w4a8,4`.
        list: String,
    },
}

/// A deployment artifact in memory: its header and its checked payload.
#[derive(Clone, Debug)]
pub struct Artifact {
    /// The header.
    pub header: ArtifactHeader,
    codes: Vec<u8>,
    scalars: Vec<f32>,
}

/// The little-endian bytes of `scalars`.
fn scalar_bytes(scalars: &[f32]) -> Vec<u8> {
    scalars.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl Artifact {
    /// An artifact of `graph` with its payload, sealed with its checksum. `model` is the
    /// trainer's configuration (kept as it is), `table` one row per entry of `graph.bits`. The
    /// version is 3 for a list of bit-widths and [`ARTIFACT_VERSION`] for one with a pair.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Layout`] when the graph is malformed, the table does not list its
    /// bit-widths or the payload does not fit it.
    pub fn new(
        model: serde_json::Value,
        graph: Graph,
        table: Vec<BitRow>,
        source: Option<String>,
        codes: Vec<u8>,
        scalars: Vec<f32>,
    ) -> Result<Self, ArtifactError> {
        let weights = weight_count(&graph);
        let mut header = ArtifactHeader {
            format: ARTIFACT_FORMAT.into(),
            version: if graph.is_uniform() {
                ARTIFACT_VERSIONS[0]
            } else {
                ARTIFACT_VERSION
            },
            model,
            graph,
            table,
            code_bytes: codes.len() as u64,
            scalar_count: scalars.len() as u64,
            weights,
            crc32: 0,
            source,
        };
        check(&header, &codes, &scalars).map_err(|(field, expected, found)| {
            ArtifactError::Layout(format!("`{field}`: expected {expected}, found {found}"))
        })?;
        header.crc32 = header.checksum(&codes, &scalar_bytes(&scalars));
        Ok(Self {
            header,
            codes,
            scalars,
        })
    }

    /// The packed weight codes.
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }

    /// The scalars (scales, biases, clipping levels, folded BatchNorms).
    pub fn scalars(&self) -> &[f32] {
        &self.scalars
    }

    /// The payload split per layer of the graph, in its order.
    pub fn layers(&self) -> Vec<LayerPayload<'_>> {
        split_payload(&self.header.graph, &self.codes, &self.scalars)
            .expect("the payload was checked against the graph when the artifact was made")
    }

    /// The entries of the artifact (bit-widths or `wWaA` pairs), in the model's order.
    pub fn bits(&self) -> &[EntryBits] {
        &self.header.graph.bits
    }

    /// The artifact as SafeTensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let scalar_bytes = scalar_bytes(&self.scalars);
        let header = serde_json::to_string(&self.header).expect("the header serialises");
        let metadata = HashMap::from([(HEADER_KEY.to_string(), header)]);
        let views = [
            (
                "codes",
                safetensors::tensor::TensorView::new(
                    Dtype::U8,
                    vec![self.codes.len()],
                    &self.codes,
                )
                .expect("the codes tensor is consistent"),
            ),
            (
                "scalars",
                safetensors::tensor::TensorView::new(
                    Dtype::F32,
                    vec![self.scalars.len()],
                    &scalar_bytes,
                )
                .expect("the scalars tensor is consistent"),
            ),
        ];
        safetensors::serialize(views, Some(metadata)).expect("serialising two tensors succeeds")
    }

    /// Writes the artifact to `path` atomically (a temporary file, then a rename) and returns
    /// its size in bytes.
    ///
    /// # Errors
    ///
    /// [`ArtifactError::Io`]; an existing file at `path` is then left as it was.
    pub fn write(&self, path: &Path) -> Result<u64, ArtifactError> {
        let bytes = self.to_bytes();
        write_atomically(path, &bytes).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(bytes.len() as u64)
    }

    /// Reads and checks an artifact file.
    ///
    /// # Errors
    ///
    /// Every [`ArtifactError`] but `UnknownBits`, naming the file.
    pub fn read(path: &Path) -> Result<Self, ArtifactError> {
        let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses and checks artifact bytes; `path` names them in errors.
    ///
    /// # Errors
    ///
    /// As [`read`](Self::read).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, ArtifactError> {
        let path = path.to_path_buf();
        let format = |reason: String| ArtifactError::Format {
            path: path.clone(),
            reason,
        };
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let header_field = |expected: &str, found: &str| ArtifactError::Header {
            path: path.clone(),
            field: HEADER_KEY.into(),
            expected: expected.into(),
            found: found.into(),
        };
        let text = metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get(HEADER_KEY))
            .ok_or_else(|| {
                header_field(
                    "the adabits header (a SafeTensors file written by `adabits export`)",
                    "no such field",
                )
            })?;
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| header_field("a JSON object", &format!("unreadable JSON ({e})")))?;
        let found_format = value["format"].as_str().unwrap_or("nothing");
        if found_format != ARTIFACT_FORMAT {
            return Err(ArtifactError::Header {
                path: path.clone(),
                field: "adabits.format".into(),
                expected: format!("{ARTIFACT_FORMAT:?}"),
                found: format!("{found_format:?}"),
            });
        }
        let version = value["version"].as_u64().unwrap_or(0);
        let Some(version) = ARTIFACT_VERSIONS
            .into_iter()
            .find(|&v| u64::from(v) == version)
        else {
            return Err(ArtifactError::Version {
                path: path.clone(),
                expected: ARTIFACT_VERSIONS.map(|v| v.to_string()).join(" and "),
                found: u32::try_from(version).unwrap_or(u32::MAX),
            });
        };
        let header: ArtifactHeader = serde_json::from_value(value)
            .map_err(|e| header_field(&format!("a version-{version} header"), &e.to_string()))?;
        let tensor = |name: &str, dtype: Dtype, len: u64| -> Result<Vec<u8>, ArtifactError> {
            let bad = |found: String| ArtifactError::Tensor {
                path: path.clone(),
                name: name.into(),
                expected: format!("{dtype:?} of {len} elements"),
                found,
            };
            let view = tensors
                .tensor(name)
                .map_err(|_| bad("no such tensor".into()))?;
            let elements: usize = view.shape().iter().product();
            if view.dtype() != dtype || elements as u64 != len {
                return Err(bad(format!("{:?} of {elements} elements", view.dtype())));
            }
            Ok(view.data().to_vec())
        };
        let codes = tensor("codes", Dtype::U8, header.code_bytes)?;
        let scalar_bytes = tensor("scalars", Dtype::F32, header.scalar_count)?;
        let found = header.checksum(&codes, &scalar_bytes);
        if found != header.crc32 {
            return Err(ArtifactError::Checksum {
                path,
                expected: header.crc32,
                found,
            });
        }
        let scalars: Vec<f32> = scalar_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // A sealed header can still describe a graph this build cannot run (a file written by
        // something else): refuse it here, so that every later use can trust it.
        check(&header, &codes, &scalars).map_err(|(field, expected, found)| {
            ArtifactError::Header {
                path,
                field: field.into(),
                expected,
                found,
            }
        })?;
        Ok(Self {
            header,
            codes,
            scalars,
        })
    }
}

/// The number of quantized weights of `graph`.
fn weight_count(graph: &Graph) -> u64 {
    graph
        .layers()
        .map(|node| match node {
            crate::graph::Node::Conv(c) => c.weights() as u64,
            crate::graph::Node::Linear(l) => (l.features[0] * l.features[1]) as u64,
            _ => 0,
        })
        .sum()
}

/// The checks every artifact passes: a well-formed graph at its input size, one table row per
/// bit-width in its order, and a payload that fits the graph exactly.
///
/// The error is `(field, expected, found)`.
fn check(
    header: &ArtifactHeader,
    codes: &[u8],
    scalars: &[f32],
) -> Result<(), (&'static str, String, String)> {
    let graph = &header.graph;
    let in_graph = |e: String| {
        (
            "adabits.graph",
            "a model graph that fits the payload".to_string(),
            e,
        )
    };
    graph.check(graph.input_size).map_err(in_graph)?;
    // Version 3 predates pair entries: a reader of version 3 must not be handed one.
    if header.version < 4 && !graph.is_uniform() {
        return Err((
            "adabits.version",
            "4 for a list with a wWaA pair".to_string(),
            format!("{} with the list {}", header.version, graph.list()),
        ));
    }
    let rows: Vec<EntryBits> = header.table.iter().map(|r| r.bits).collect();
    if rows != graph.bits {
        let list = |l: &[EntryBits]| {
            l.iter()
                .map(EntryBits::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        return Err((
            "adabits.table",
            format!(
                "one row per entry of the model, in its order: {}",
                graph.list()
            ),
            format!("rows for {}", list(&rows)),
        ));
    }
    if header.weights != weight_count(graph) {
        return Err((
            "adabits.weights",
            format!("the graph's {} weights", weight_count(graph)),
            header.weights.to_string(),
        ));
    }
    split_payload(graph, codes, scalars)
        .map(|_| ())
        .map_err(in_graph)
}
