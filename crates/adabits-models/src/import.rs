//! PyTorch state dicts in the official code's key layout: import (an adaptive checkpoint, or a
//! full-precision one spread to every bit-width) and export.
//!
//! The official models name their tensors `<layer>.weight`, `<layer>.bias` and `<layer>.alpha`
//! for quantized convs and linears (`alpha` has one entry per bit-width with S-CL, and is a
//! scalar otherwise), and `<layer>.bn.<i>.{weight,bias,running_mean,running_var,
//! num_batches_tracked}` for the BatchNorm of the `i`-th bit-width (METHOD.md §6). Each model
//! says where its layers sit in that layout through [`OfficialLayout`]. The files are
//! SafeTensors: convert a PyTorch checkpoint with
//! `safetensors.torch.save_file(torch.load(f)["model"], "model.safetensors")`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::checkpoint::write_atomically;
use crate::{BnSharing, QConv2d, QLinear, SwitchBatchNorm2d};

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

    fn from_tensor<const D: usize>(tensor: Tensor<D>) -> Self {
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
    /// [`ImportError::Io`] if the file cannot be read, [`ImportError::Format`] if it is not
    /// SafeTensors or holds a tensor of another type (the error names it).
    pub fn read(path: &Path) -> Result<Self, ImportError> {
        let bytes = std::fs::read(path).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut dict = Self::from_bytes(&bytes).map_err(|reason| ImportError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        dict.source = Some(path.to_path_buf());
        Ok(dict)
    }

    /// Parses the bytes of a SafeTensors file (see [`read`](Self::read)).
    ///
    /// # Errors
    ///
    /// A description of what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
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

    /// The SafeTensors bytes of the dict (floats as `f32`, integers as `i64`).
    ///
    /// # Errors
    ///
    /// The serialiser's message.
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
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
    /// [`ImportError::Io`] if the file cannot be written; a previous file at `path` is then left
    /// untouched.
    pub fn write(&self, path: &Path) -> Result<(), ImportError> {
        let bytes = self.to_bytes().map_err(|reason| ImportError::Format {
            path: path.to_path_buf(),
            reason,
        })?;
        write_atomically(path, &bytes).map_err(|source| ImportError::Io {
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

    fn source(&self) -> PathBuf {
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

/// A layer of a model, as [`OfficialLayout::visit_official`] hands it out.
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A quantized convolution: `weight`, `bias` (if any), `alpha`.
    Conv(&'a mut QConv2d),
    /// A switchable BatchNorm: `bn.<i>.*` (and `weight`, `bias` when the affine is shared).
    Norm(&'a mut SwitchBatchNorm2d),
    /// A quantized linear layer: `weight`, `bias` (if any), `alpha`.
    Linear(&'a mut QLinear),
}

/// A model whose layers have names in the official PyTorch code's state dicts.
pub trait OfficialLayout: Module + Clone {
    /// Calls `visit` with the official key prefix of every layer that holds tensors (for example
    /// `stage_0_layer_1.body.3` for the second conv of a CIFAR ResNet block), in module order.
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>));
}

/// How a state dict is mapped onto a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// The dict comes from a model with the same bit-width list (an AdaBits checkpoint of the
    /// official code): every tensor must be there with its shape, and nothing else may be
    /// (`num_batches_tracked` is accepted and ignored).
    Adaptive,
    /// The dict comes from a single-bit-width (for example full-precision) model, as the official
    /// `fp_pretrained` loading does (METHOD.md §7): the BatchNorm `bn.0` (or a plain BatchNorm's
    /// `weight`/`bias`/`running_*`) is copied to every bit-width, a single `alpha` is replicated
    /// to every bit-width, a missing `alpha` keeps its initial value, and keys the model does not
    /// have are dropped. Weights and BatchNorm tensors must be there with their shapes.
    FullPrecision,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// How many model tensors were written.
    pub loaded: usize,
    /// Keys whose single value was copied to every bit-width (BatchNorm, `alpha`).
    pub replicated: Vec<String>,
    /// Keys the model has but the dict lacks, left at their initial value (`alpha` only).
    pub kept_initial: Vec<String>,
    /// Keys of the dict the model does not use (full-precision import only; `num_batches_tracked`
    /// and unused BatchNorm copies are not listed).
    pub dropped: Vec<String>,
}

/// Why a state dict could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
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
    /// The state dict does not fit the model.
    #[error("{path}: the state dict does not fit the model: {}", mismatch_detail(.missing, .unexpected, .misshaped))]
    Mismatch {
        /// The file (`<state dict>` for one built in memory).
        path: PathBuf,
        /// Keys the model needs that the dict lacks, with the expected shape.
        missing: Vec<String>,
        /// Keys of the dict the model does not have.
        unexpected: Vec<String>,
        /// Keys whose shape is wrong: `key: expected [..], found [..]`.
        misshaped: Vec<String>,
    },
}

fn mismatch_detail(missing: &[String], unexpected: &[String], misshaped: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut out = String::new();
    for (what, list) in [
        ("missing", missing),
        ("unexpected", unexpected),
        ("wrong shape", misshaped),
    ] {
        if list.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push_str("; ");
        }
        let _ = write!(
            out,
            "{} {what}: {}",
            list.len(),
            list[..list.len().min(SHOWN)].join(", ")
        );
        if list.len() > SHOWN {
            let _ = write!(out, " and {} more", list.len() - SHOWN);
        }
    }
    out
}

/// The model's tensors in the official layout (what the official code's `state_dict()` holds,
/// `num_batches_tracked` included, as 0: Adabits does not count batches, and PyTorch uses the
/// count only when `momentum` is `None`).
pub fn export_official<M: OfficialLayout>(model: &M) -> StateDict {
    let mut model = model.clone();
    let mut dict = StateDict::new();
    model.visit_official(&mut |prefix, layer| match layer {
        LayerMut::Conv(conv) => {
            export_weights(&mut dict, prefix, conv.weight.val(), conv.bias.as_ref());
            export_alpha(
                &mut dict,
                prefix,
                conv.alpha.alpha.val(),
                conv.alpha.is_switchable(),
            );
        }
        LayerMut::Linear(linear) => {
            export_weights(&mut dict, prefix, linear.weight.val(), linear.bias.as_ref());
            export_alpha(
                &mut dict,
                prefix,
                linear.alpha.alpha.val(),
                linear.alpha.is_switchable(),
            );
        }
        LayerMut::Norm(bn) => {
            let bits = bn.bit_count();
            for i in 0..bits {
                // The shared-BN ablation keeps one BatchNorm; the official code has one per
                // bit-width and uses the first, so every copy gets the same values.
                let entry = &bn.entries[i.min(bn.entries.len() - 1)];
                let at = |field: &str| format!("{prefix}.bn.{i}.{field}");
                if let (Some(g), Some(b)) = (&entry.gamma, &entry.beta) {
                    dict.insert(at("weight"), StateTensor::from_tensor(g.val()));
                    dict.insert(at("bias"), StateTensor::from_tensor(b.val()));
                }
                let mean = entry.running_mean.value_sync();
                let var = entry.running_var.value_sync();
                dict.insert(at("running_mean"), StateTensor::from_tensor(mean));
                dict.insert(at("running_var"), StateTensor::from_tensor(var));
                dict.insert(
                    at("num_batches_tracked"),
                    StateTensor {
                        shape: vec![],
                        values: vec![0.0],
                        integer: true,
                    },
                );
            }
            if let (Some(g), Some(b)) = (&bn.shared_gamma, &bn.shared_beta) {
                dict.insert(
                    format!("{prefix}.weight"),
                    StateTensor::from_tensor(g.val()),
                );
                dict.insert(format!("{prefix}.bias"), StateTensor::from_tensor(b.val()));
            }
        }
    });
    dict
}

fn export_weights<const D: usize>(
    dict: &mut StateDict,
    prefix: &str,
    weight: Tensor<D>,
    bias: Option<&Param<Tensor<1>>>,
) {
    dict.insert(format!("{prefix}.weight"), StateTensor::from_tensor(weight));
    if let Some(bias) = bias {
        dict.insert(
            format!("{prefix}.bias"),
            StateTensor::from_tensor(bias.val()),
        );
    }
}

fn export_alpha(dict: &mut StateDict, prefix: &str, alpha: Tensor<1>, switchable: bool) {
    let mut tensor = StateTensor::from_tensor(alpha);
    if !switchable {
        // The official shared `alpha` is a 0-d tensor.
        tensor.shape.clear();
    }
    dict.insert(format!("{prefix}.alpha"), tensor);
}

/// Starts an adaptive model from a trained single-bit-width model of the same architecture (for
/// example one trained at full precision, bit list `[32]`): the weights are copied, each
/// BatchNorm and `alpha` is spread to every bit-width, as [`ImportMode::FullPrecision`] does.
///
/// # Errors
///
/// [`ImportError::Mismatch`] if the architectures differ.
pub fn adapt_from<M: OfficialLayout>(
    source: &M,
    adaptive: M,
) -> Result<(M, ImportReport), ImportError> {
    import_official(
        adaptive,
        &export_official(source),
        ImportMode::FullPrecision,
    )
}

/// Copies the first bit-width's BatchNorm entries and clipping levels to every other bit-width
/// of `model`: what a model trained at full precision (which runs on the first entry, see
/// [`BitWidths::index_or_first`](adabits_quant::BitWidths::index_or_first)) hands to the
/// adaptive stage that follows, as the official `fp_pretrained` loading does (METHOD.md §7).
/// Weights, shared BatchNorm and shared clipping levels are unchanged.
///
/// # Errors
///
/// [`ImportError::Mismatch`] only if the model's own layout is inconsistent (a bug).
pub fn spread_first<M: OfficialLayout>(model: M) -> Result<M, ImportError> {
    let mut dict = export_official(&model);
    let keys: Vec<String> = dict.keys().map(str::to_string).collect();
    for key in keys {
        let Some(tensor) = dict.get(&key).cloned() else {
            continue;
        };
        if let Some((head, rest)) = key.rsplit_once(".bn.")
            && let Some((index, field)) = rest.split_once('.')
            && index.parse::<usize>().is_ok_and(|i| i > 0)
        {
            if let Some(first) = dict.get(&format!("{head}.bn.0.{field}")).cloned() {
                dict.insert(key, first);
            }
        } else if key.ends_with(".alpha") && tensor.shape.len() == 1 {
            let mut spread = tensor.clone();
            spread.values.fill(tensor.values[0]);
            dict.insert(key, spread);
        }
    }
    import_official(model, &dict, ImportMode::Adaptive).map(|(model, _)| model)
}

/// Reads a SafeTensors state dict in the official layout and imports it (see
/// [`import_official`]).
///
/// # Errors
///
/// As [`StateDict::read`] and [`import_official`]; the errors name the file.
pub fn import_pytorch<M: OfficialLayout>(
    model: M,
    path: &Path,
    mode: ImportMode,
) -> Result<(M, ImportReport), ImportError> {
    let dict = StateDict::read(path)?;
    import_official(model, &dict, mode)
}

/// Writes `dict`'s tensors into `model` as `mode` says. Nothing is written unless every tensor
/// fits.
///
/// # Errors
///
/// [`ImportError::Mismatch`], naming every missing, unexpected (in [`ImportMode::Adaptive`]) and
/// mis-shaped key.
pub fn import_official<M: OfficialLayout>(
    model: M,
    dict: &StateDict,
    mode: ImportMode,
) -> Result<(M, ImportReport), ImportError> {
    let mut plan = Plan {
        dict,
        mode,
        used: BTreeSet::new(),
        tolerated: BTreeSet::new(),
        missing: Vec::new(),
        misshaped: Vec::new(),
        report: ImportReport::default(),
    };
    // First pass: check everything, change nothing.
    let mut probe = model.clone();
    probe.visit_official(&mut |prefix, layer| plan.layer(prefix, layer, false));
    let unused: Vec<String> = dict
        .keys()
        .filter(|k| !plan.used.contains(*k) && !plan.tolerated.contains(*k))
        .filter(|k| !k.ends_with(".num_batches_tracked"))
        .map(str::to_string)
        .collect();
    let unexpected = match mode {
        ImportMode::Adaptive => unused,
        ImportMode::FullPrecision => {
            plan.report.dropped = unused;
            Vec::new()
        }
    };
    if !plan.missing.is_empty() || !plan.misshaped.is_empty() || !unexpected.is_empty() {
        return Err(ImportError::Mismatch {
            path: dict.source(),
            missing: plan.missing,
            unexpected,
            misshaped: plan.misshaped,
        });
    }
    // Second pass: write.
    let mut model = model;
    plan.report.replicated.clear();
    plan.report.kept_initial.clear();
    plan.report.loaded = 0;
    model.visit_official(&mut |prefix, layer| plan.layer(prefix, layer, true));
    Ok((model, plan.report))
}

/// The state of one import: what was used, what is wrong.
struct Plan<'d> {
    dict: &'d StateDict,
    mode: ImportMode,
    /// Keys the model has a place for (whether or not their shape fits).
    used: BTreeSet<String>,
    /// Keys that are known but unused (the extra BatchNorm copies of the shared-BN ablation).
    tolerated: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    report: ImportReport,
}

impl Plan<'_> {
    fn layer(&mut self, prefix: &str, layer: LayerMut<'_>, write: bool) {
        match layer {
            LayerMut::Conv(conv) => {
                self.param(&format!("{prefix}.weight"), &mut conv.weight, write);
                if let Some(bias) = &mut conv.bias {
                    self.param(&format!("{prefix}.bias"), bias, write);
                }
                self.alpha(&format!("{prefix}.alpha"), &mut conv.alpha.alpha, write);
            }
            LayerMut::Linear(linear) => {
                self.param(&format!("{prefix}.weight"), &mut linear.weight, write);
                if let Some(bias) = &mut linear.bias {
                    self.param(&format!("{prefix}.bias"), bias, write);
                }
                self.alpha(&format!("{prefix}.alpha"), &mut linear.alpha.alpha, write);
            }
            LayerMut::Norm(bn) => self.norm(prefix, bn, write),
        }
    }

    /// Looks `key` up and checks its shape; records what is wrong.
    fn lookup(&mut self, key: &str, shape: &[usize]) -> Option<&'_ StateTensor> {
        match self.dict.get(key) {
            None => {
                let entry = format!("{key} {shape:?}");
                if !self.missing.contains(&entry) {
                    self.missing.push(entry);
                }
                None
            }
            Some(t) if t.shape != shape => {
                self.used.insert(key.to_string());
                let entry = format!("{key}: expected {shape:?}, found {:?}", t.shape);
                if !self.misshaped.contains(&entry) {
                    self.misshaped.push(entry);
                }
                None
            }
            Some(t) => {
                self.used.insert(key.to_string());
                Some(t)
            }
        }
    }

    fn param<const D: usize>(&mut self, key: &str, param: &mut Param<Tensor<D>>, write: bool) {
        let shape = param.val().dims().to_vec();
        let Some(t) = self.lookup(key, &shape) else {
            return;
        };
        if write {
            let tensor = to_tensor::<D>(t, &param.val().device());
            *param = param.clone().transform_for_load(tensor, param.id);
            self.report.loaded += 1;
        }
    }

    fn alpha(&mut self, key: &str, alpha: &mut Param<Tensor<1>>, write: bool) {
        let [len] = alpha.val().dims();
        let Some(t) = self.dict.get(key) else {
            match self.mode {
                ImportMode::Adaptive => self.missing.push(format!("{key} [{len}]")),
                ImportMode::FullPrecision => self.report.kept_initial.push(key.to_string()),
            }
            return;
        };
        let numel = t.values.len();
        let scalar = t.shape.is_empty() || t.shape == [1];
        let fits = match self.mode {
            // A shared alpha is a 0-d tensor in the official code; accept `[1]` too.
            ImportMode::Adaptive => t.shape == [len] || (len == 1 && t.shape.is_empty()),
            ImportMode::FullPrecision => scalar || t.shape == [len],
        };
        self.used.insert(key.to_string());
        if !fits {
            let expected = if len == 1 {
                "[] or [1]".to_string()
            } else {
                format!("[{len}]")
            };
            self.misshaped
                .push(format!("{key}: expected {expected}, found {:?}", t.shape));
            return;
        }
        if !write {
            return;
        }
        let values = if numel == len {
            t.values.clone()
        } else {
            self.report.replicated.push(key.to_string());
            vec![t.values[0]; len]
        };
        let device = alpha.val().device();
        let tensor = Tensor::from_data(TensorData::new(values, [len]), &device);
        *alpha = alpha.clone().transform_for_load(tensor, alpha.id);
        self.report.loaded += 1;
    }

    fn norm(&mut self, prefix: &str, bn: &mut SwitchBatchNorm2d, write: bool) {
        let bits = bn.bit_count();
        let c = bn.num_features();
        let sharing = bn.sharing();
        let per_bit_affine = sharing != BnSharing::SharedAffine;
        if sharing == BnSharing::SharedAffine {
            for (field, param) in [
                ("weight", bn.shared_gamma.as_mut()),
                ("bias", bn.shared_beta.as_mut()),
            ] {
                let param = param.expect("a shared affine BatchNorm has a shared γ and β");
                // A full-precision source may be a plain BatchNorm with its own affine.
                let key = self.fp_source(prefix, field);
                self.param(&key, param, write);
            }
        }
        for (i, entry) in bn.entries.iter_mut().enumerate() {
            let mut fields: Vec<(&str, Slot<'_>)> = Vec::new();
            if per_bit_affine {
                let gamma = entry.gamma.as_mut().expect("a per-bit affine has γ");
                let beta = entry.beta.as_mut().expect("a per-bit affine has β");
                fields.push(("weight", Slot::Param(gamma)));
                fields.push(("bias", Slot::Param(beta)));
            }
            fields.push(("running_mean", Slot::State(&mut entry.running_mean)));
            fields.push(("running_var", Slot::State(&mut entry.running_var)));
            for (field, slot) in fields {
                let key = match self.mode {
                    ImportMode::Adaptive => format!("{prefix}.bn.{i}.{field}"),
                    ImportMode::FullPrecision => {
                        let key = self.fp_source(prefix, field);
                        if i == 0 && bits > 1 && write {
                            self.report.replicated.push(key.clone());
                        }
                        key
                    }
                };
                let Some(t) = self.lookup(&key, &[c]) else {
                    continue;
                };
                if !write {
                    continue;
                }
                match slot {
                    Slot::Param(param) => {
                        let tensor = to_tensor::<1>(t, &param.val().device());
                        *param = param.clone().transform_for_load(tensor, param.id);
                    }
                    Slot::State(state) => {
                        let device = state.value_sync().device();
                        *state = RunningState::new(to_tensor::<1>(t, &device));
                    }
                }
                self.report.loaded += 1;
            }
        }
        // The shared-BN ablation keeps one BatchNorm where the official code keeps one per
        // bit-width (and uses the first): the other copies are known, not unexpected.
        if self.mode == ImportMode::Adaptive && bn.entries.len() < bits {
            for i in bn.entries.len()..bits {
                for field in ["weight", "bias", "running_mean", "running_var"] {
                    self.tolerated.insert(format!("{prefix}.bn.{i}.{field}"));
                }
            }
        }
        if self.mode == ImportMode::FullPrecision {
            // Only `bn.0` is read; other copies of a multi-bit source are not "dropped" keys.
            for key in self.dict.keys() {
                if key.starts_with(&format!("{prefix}.bn."))
                    && !key.starts_with(&format!("{prefix}.bn.0."))
                {
                    self.tolerated.insert(key.to_string());
                }
            }
        }
    }

    /// The key `field` of the BatchNorm at `prefix` is read from. A full-precision import reads
    /// `bn.0` of a switchable BatchNorm or, failing that, a plain BatchNorm's own tensor; an
    /// adaptive import reads the shared affine of a statistics-sharing BatchNorm.
    fn fp_source(&self, prefix: &str, field: &str) -> String {
        let indexed = format!("{prefix}.bn.0.{field}");
        let plain = format!("{prefix}.{field}");
        match self.mode {
            ImportMode::Adaptive => plain,
            ImportMode::FullPrecision
                if self.dict.get(&indexed).is_none() && self.dict.get(&plain).is_some() =>
            {
                plain
            }
            ImportMode::FullPrecision => indexed,
        }
    }
}

/// The official block names `stage_<s>_layer_<i>` of stages with `counts` blocks each, in order.
pub(crate) fn stage_layer_names(counts: impl IntoIterator<Item = usize>) -> Vec<String> {
    counts
        .into_iter()
        .enumerate()
        .flat_map(|(s, n)| (0..n).map(move |i| format!("stage_{s}_layer_{i}")))
        .collect()
}

enum Slot<'a> {
    Param(&'a mut Param<Tensor<1>>),
    State(&'a mut RunningState<Tensor<1>>),
}

fn to_tensor<const D: usize>(t: &StateTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.values.clone(), t.shape.clone()), device)
}
