//! A bag of named tensors in a SafeTensors file: the official layout's state dicts (read,
//! written, compared), and the optimiser's saved state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use safetensors::{Dtype, SafeTensors};

use crate::checkpoint::write_atomically;

/// A state dict file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateDictError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not a SafeTensors file of numeric tensors.
    #[error("{path}: not a readable SafeTensors state dict: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One tensor of a state dict: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    /// The shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values in row-major order, as `f32`.
    pub values: Vec<f32>,
    /// Whether the tensor holds integers (written back as `i64`, like `num_batches_tracked`).
    pub integer: bool,
}

impl StateTensor {
    /// A float tensor.
    ///
    /// # Panics
    ///
    /// Panics if `values` does not have `shape`'s number of elements.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "a tensor of shape {shape:?} needs that many values"
        );
        Self {
            shape,
            values,
            integer: false,
        }
    }

    /// The tensor's values, read back from its device.
    pub(crate) fn from_tensor<const D: usize>(tensor: Tensor<D>) -> Self {
        let data = tensor.into_data();
        let shape = data.shape().to_vec();
        let values = data.iter::<f32>().collect();
        Self::new(shape, values)
    }
}

/// A PyTorch state dict: tensors by key, in the official code's layout.
#[derive(Clone, Debug, Default)]
pub struct StateDict {
    tensors: BTreeMap<String, StateTensor>,
    source: Option<PathBuf>,
}

impl StateDict {
    /// An empty state dict.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads a SafeTensors file. Float tensors of any width (`f16`, `bf16`, `f32`, `f64`) and
    /// integer tensors are accepted; a `module.` prefix on every key (from `DataParallel`) is
    /// removed.
    ///
    /// # Errors
    ///
    /// [`StateDictError::Io`] if the file cannot be read, [`StateDictError::Format`] if it is
    /// not SafeTensors or holds a tensor of another type (the error names it).
    pub fn read(path: &Path) -> Result<Self, StateDictError> {
        let bytes = std::fs::read(path).map_err(|source| StateDictError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut dict = Self::from_bytes(&bytes).map_err(|reason| StateDictError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        dict.source = Some(path.to_path_buf());
        Ok(dict)
    }

    /// Parses the bytes of a SafeTensors file (see [`read`](Self::read)); the error says what
    /// is wrong, and [`read`](Self::read) names the file with it.
    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let file = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let mut tensors = BTreeMap::new();
        for (name, view) in file.tensors() {
            let tensor = decode(view.dtype(), view.shape(), view.data()).map_err(|found| {
                format!(
                    "tensor `{name}`: expected a float or integer tensor, found dtype {found:?}"
                )
            })?;
            tensors.insert(name, tensor);
        }
        let prefixed = !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module."));
        if prefixed {
            tensors = tensors
                .into_iter()
                .map(|(k, v)| (k["module.".len()..].to_string(), v))
                .collect();
        }
        Ok(Self {
            tensors,
            source: None,
        })
    }

    /// The SafeTensors bytes of the dict (floats as `f32`, integers as `i64`); the error is the
    /// serialiser's message, which [`write`](Self::write) names the file with.
    fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let (dtype, bytes) = if t.integer {
                    let bytes = t.values.iter().flat_map(|&v| (v as i64).to_le_bytes());
                    (Dtype::I64, bytes.collect())
                } else {
                    (
                        Dtype::F32,
                        t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    )
                };
                (k.clone(), dtype, t.shape.clone(), bytes)
            })
            .collect();
        let views = encoded
            .iter()
            .map(|(k, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|view| (k.clone(), view))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        safetensors::serialize(views, None).map_err(|e| e.to_string())
    }

    /// Writes the dict as a SafeTensors file, atomically.
    ///
    /// # Errors
    ///
    /// [`StateDictError::Io`] if the file cannot be written; a previous file at `path` is then
    /// left untouched.
    pub fn write(&self, path: &Path) -> Result<(), StateDictError> {
        let bytes = self.to_bytes().map_err(|reason| StateDictError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        write_atomically(path, &bytes).map_err(|source| StateDictError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, tensor: StateTensor) {
        self.tensors.insert(key.into(), tensor);
    }

    /// Removes a tensor.
    pub fn remove(&mut self, key: &str) -> Option<StateTensor> {
        self.tensors.remove(key)
    }

    /// The tensor under `key`.
    pub fn get(&self, key: &str) -> Option<&StateTensor> {
        self.tensors.get(key)
    }

    /// How many copies a layer holds of the tensors keyed `…<marker><i>.…` (the official
    /// BatchNorms `.bn.`, an adabits checkpoint's `.entries.`): the largest `i` plus one, or
    /// `None` when no key has the marker.
    pub fn indexed_copies(&self, marker: &str) -> Option<usize> {
        self.keys()
            .filter_map(|k| {
                k.split(marker)
                    .nth(1)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map(|i| i + 1)
    }

    /// The keys, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The file the dict was read from, or `<state dict>` for one built in memory.
    pub(crate) fn source(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<state dict>"))
    }
}

fn decode(dtype: Dtype, shape: &[usize], data: &[u8]) -> Result<StateTensor, Dtype> {
    fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        data.chunks_exact(N)
            .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
    }
    let (values, integer): (Vec<f32>, bool) = match dtype {
        Dtype::F32 => (chunks(data).map(f32::from_le_bytes).collect(), false),
        Dtype::F64 => (
            chunks(data).map(|b| f64::from_le_bytes(b) as f32).collect(),
            false,
        ),
        Dtype::F16 => (
            chunks(data)
                .map(|b| half::f16::from_le_bytes(b).to_f32())
                .collect(),
            false,
        ),
        Dtype::BF16 => (
            chunks(data)
                .map(|b| half::bf16::from_le_bytes(b).to_f32())
                .collect(),
            false,
        ),
        Dtype::I64 => (
            chunks(data).map(|b| i64::from_le_bytes(b) as f32).collect(),
            true,
        ),
        Dtype::I32 => (
            chunks(data).map(|b| i32::from_le_bytes(b) as f32).collect(),
            true,
        ),
        Dtype::U8 => (data.iter().map(|&b| f32::from(b)).collect(), true),
        other => return Err(other),
    };
    Ok(StateTensor {
        shape: shape.to_vec(),
        values,
        integer,
    })
}
