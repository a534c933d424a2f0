//! Import of PyTorch state dicts in the official code's key layout (docs/method.md §6): an
//! adaptive checkpoint, or a full-precision one spread to every bit-width. The files are
//! SafeTensors: convert a PyTorch checkpoint with
//! `safetensors.torch.save_file(torch.load(f)["model"], "model.safetensors")`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use adabits_quant::{BitPolicy, ClippingLevels};
use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};

use crate::layout::{LayerMut, OfficialLayout};
use crate::state_dict::{StateDict, StateDictError, StateTensor};
use crate::{BnSharing, SwitchBatchNorm2d};

/// How a state dict is mapped onto a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportMode {
    /// The dict comes from a model with the same bit-width list (an AdaBits checkpoint of the
    /// official code): every tensor must be there with its shape, and nothing else may be
    /// (`num_batches_tracked` is accepted and ignored).
    Adaptive,
    /// The dict comes from a single-bit-width (for example full-precision) model, as the official
    /// `fp_pretrained` loading does (docs/method.md §7): the BatchNorm `bn.0` (or a plain BatchNorm's
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
    /// The clipping levels of `wWaA` entries taken from the level the official code clipped
    /// them with (that of their activation bit-width), as `key[own] from [official]`.
    pub pair_levels: Vec<String>,
}

/// Why a state dict could not be imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The state dict file could not be read.
    #[error(transparent)]
    File(#[from] StateDictError),
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
    fn layer(&mut self, prefix: &str, mut layer: LayerMut<'_>, write: bool) {
        let weight = format!("{prefix}.weight");
        match &mut layer {
            LayerMut::Conv(conv) => self.param(&weight, &mut conv.weight, write),
            LayerMut::Linear(linear) => self.param(&weight, &mut linear.weight, write),
            LayerMut::Norm(bn) => return self.norm(prefix, bn, write),
        }
        if let Some(bias) = layer.bias_mut() {
            self.param(&format!("{prefix}.bias"), bias, write);
        }
        let policy = match &layer {
            LayerMut::Conv(conv) => conv.policy(),
            LayerMut::Linear(linear) => linear.policy(),
            LayerMut::Norm(_) => unreachable!("returned above"),
        };
        if let Some(levels) = layer.alpha_mut() {
            let key = format!("{prefix}.alpha");
            self.alpha(&key, &mut levels.alpha, write);
            if write && self.mode == ImportMode::Adaptive {
                self.pair_levels(&key, levels, &policy);
            }
        }
    }

    /// An official adaptive checkpoint's `wWaA` entries were clipped with the level of their
    /// activation bit-width, and their own never trained: gives each pair entry that level, so
    /// that the model runs the pair as the official code did
    /// (docs/decisions/0002-precisions-and-plans.md).
    fn pair_levels(&mut self, key: &str, levels: &mut ClippingLevels, policy: &BitPolicy) {
        if !levels.is_switchable() {
            return;
        }
        let moves: Vec<(usize, usize)> = levels
            .bits()
            .entries()
            .filter(|at| at.precision.as_uniform().is_none())
            .map(|at| {
                (
                    levels.entry_index(at.entry),
                    levels.official_index(at, policy),
                )
            })
            .filter(|(own, official)| own != official)
            .collect();
        if moves.is_empty() {
            return;
        }
        let alpha = levels.alpha.val();
        let mut values: Vec<f32> = alpha.to_data().iter::<f32>().collect();
        for &(own, official) in &moves {
            values[own] = values[official];
            self.report
                .pair_levels
                .push(format!("{key}[{own}] from [{official}]"));
        }
        let tensor = Tensor::from_data(TensorData::new(values, alpha.dims()), &alpha.device());
        levels.alpha = levels
            .alpha
            .clone()
            .transform_for_load(tensor, levels.alpha.id);
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

enum Slot<'a> {
    Param(&'a mut Param<Tensor<1>>),
    State(&'a mut RunningState<Tensor<1>>),
}

fn to_tensor<const D: usize>(t: &StateTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.values.clone(), t.shape.clone()), device)
}
