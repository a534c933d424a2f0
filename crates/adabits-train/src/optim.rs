//! The official optimiser: SGD with Nesterov momentum, weight decay only on non-depthwise conv
//! weights and linear weights, and the per-iteration cosine or per-epoch multistep schedules
//! with the large-batch warm-up (docs/method.md §7).

use std::collections::BTreeMap;

use adabits_models::{StateDict, StateTensor};
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// The learning-rate schedule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `(1 + cos(π·t))/2` over the iterations after warm-up (`cos_annealing_iter`).
    Cosine,
    /// Multiplied by `gamma` at each milestone epoch (`multistep`).
    MultiStep {
        /// Epochs (counted from 0) at which the rate drops.
        milestones: Vec<usize>,
        /// The factor.
        gamma: f64,
    },
    /// A constant rate.
    Constant,
}

impl Schedule {
    /// The schedule without its settings.
    pub fn kind(&self) -> ScheduleKind {
        match self {
            Self::Cosine => ScheduleKind::Cosine,
            Self::MultiStep { .. } => ScheduleKind::MultiStep,
            Self::Constant => ScheduleKind::Constant,
        }
    }
}

/// A [`Schedule`] without its settings: what a command line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ScheduleKind {
    /// Cosine over all iterations.
    Cosine,
    /// ×gamma at each milestone epoch.
    #[cfg_attr(feature = "clap", value(name = "multistep"))]
    MultiStep,
    /// Constant.
    Constant,
}

impl ScheduleKind {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::MultiStep => "multistep",
            Self::Constant => "constant",
        }
    }
}

/// The optimiser's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// The base learning rate (for a batch of up to 256).
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Weight decay of non-depthwise conv weights and linear weights.
    pub weight_decay: f64,
    /// The schedule.
    #[serde(deserialize_with = "crate::config::strict")]
    pub schedule: Schedule,
    /// Warm-up epochs; by default the official rule: 5 for batches above 256, else 0.
    pub warmup_epochs: Option<usize>,
    /// Scale the learning rate by `batch/256` for batches above 256 (official).
    pub scale_lr: bool,
    /// Scale the summed gradient down to this global L2 norm when it is longer (over every
    /// trainable tensor, before weight decay and momentum, as PyTorch's `clip_grad_norm_`);
    /// `None` (official) never clips.
    pub clip_grad_norm: Option<f64>,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 4e-5,
            schedule: Schedule::Cosine,
            warmup_epochs: None,
            scale_lr: true,
            clip_grad_norm: None,
        }
    }
}

/// The learning rate at every iteration of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct LrPlan {
    base: f64,
    schedule: Schedule,
    warmup_iters: usize,
    total_iters: usize,
    bs_ratio: f64,
    iters_per_epoch: usize,
}

impl LrPlan {
    /// The plan of `config` for `epochs` epochs of `iters_per_epoch` steps at `batch_size`.
    pub fn new(
        config: &OptimConfig,
        batch_size: usize,
        epochs: usize,
        iters_per_epoch: usize,
    ) -> Self {
        let large = batch_size > 256;
        let warmup_epochs = config.warmup_epochs.unwrap_or(if large { 5 } else { 0 });
        let (base, bs_ratio) = if large && config.scale_lr {
            (
                config.lr * batch_size as f64 / 256.0,
                256.0 / batch_size as f64,
            )
        } else {
            (config.lr, 1.0)
        };
        let total_iters = (epochs * iters_per_epoch).max(1);
        Self {
            base,
            schedule: config.schedule.clone(),
            warmup_iters: (warmup_epochs * iters_per_epoch).min(total_iters.saturating_sub(1)),
            total_iters,
            bs_ratio: if warmup_epochs > 0 { bs_ratio } else { 1.0 },
            iters_per_epoch: iters_per_epoch.max(1),
        }
    }

    /// The learning rate of iteration `i` (counted from 0 over the whole run).
    pub fn lr(&self, i: usize) -> f64 {
        let w = self.warmup_iters;
        if i < w {
            let ratio = if self.bs_ratio < 1.0 {
                self.bs_ratio
            } else {
                0.0
            };
            return self.base * (ratio + (1.0 - ratio) * i as f64 / w as f64);
        }
        let factor = match &self.schedule {
            Schedule::Cosine => {
                let t = (i - w) as f64 / (self.total_iters - w).max(1) as f64;
                (1.0 + (std::f64::consts::PI * t.min(1.0)).cos()) / 2.0
            }
            Schedule::MultiStep { milestones, gamma } => {
                let epoch = i / self.iters_per_epoch;
                gamma.powi(milestones.iter().filter(|&&m| m <= epoch).count() as i32)
            }
            Schedule::Constant => 1.0,
        };
        self.base * factor
    }
}

/// Whether a tensor of `shape` gets weight decay: 4-D with `shape[1] != 1` (non-depthwise
/// conv) or 2-D (linear weight); never BatchNorm, biases, clipping levels or depthwise convs.
pub fn decays(shape: &[usize]) -> bool {
    (shape.len() == 4 && shape[1] != 1) || shape.len() == 2
}

/// How a model's trainable tensors split into weight-decay groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecayGroups {
    /// Non-depthwise conv weights and linear weights: with weight decay.
    pub decayed: usize,
    /// Depthwise conv weights: without.
    pub depthwise: usize,
    /// Everything else: BatchNorm parameters and running statistics, biases, clipping levels
    /// (running statistics never get a gradient, the rest gets no decay).
    pub other: usize,
}

/// SGD as PyTorch computes it (dampening 0): `d = g + λ·w` (λ by [`decays`]),
/// `v = μ·v + d` (`v = d` at the first step), `d = d + μ·v` with Nesterov (else `d = v`),
/// `w = w − lr·d`.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: OptimConfig,
    /// Momentum buffers by parameter path, flattened.
    buffers: BTreeMap<String, Tensor<1>>,
}

impl Sgd {
    /// A fresh optimiser.
    pub fn new(config: OptimConfig) -> Self {
        Self {
            config,
            buffers: BTreeMap::new(),
        }
    }

    /// Applies one step with `grads` at learning rate `lr`; parameters without a gradient are
    /// left alone. With [`OptimConfig::clip_grad_norm`] the gradients are first scaled down to
    /// that global norm when they are longer.
    pub fn step<M: Module>(&mut self, model: M, grads: GradientsParams, lr: f64) -> M {
        let scale = match self.config.clip_grad_norm {
            Some(max) => {
                let norm = grad_norm(&model, &grads);
                if norm.is_finite() && norm > max {
                    max / norm
                } else {
                    1.0
                }
            }
            None => 1.0,
        };
        let mut mapper = SgdMapper {
            sgd: self,
            grads,
            lr,
            scale,
            path: Vec::new(),
        };
        model.map(&mut mapper)
    }

    /// How `model`'s float tensors split into the weight-decay groups.
    pub fn decay_groups<M: Module>(model: &M) -> DecayGroups {
        let mut groups = DecayGroups::default();
        model.visit(&mut groups);
        groups
    }

    /// The momentum buffers, by parameter path.
    pub fn state(&self) -> StateDict {
        let mut dict = StateDict::new();
        for (path, buffer) in &self.buffers {
            let data = buffer.clone().into_data();
            let values = data.iter::<f32>().collect::<Vec<_>>();
            dict.insert(path.clone(), StateTensor::new(vec![values.len()], values));
        }
        dict
    }

    /// Restores the momentum buffers saved by [`state`](Self::state) for `model`: every
    /// buffer must name a float parameter of `model` and hold as many values as it, and hold no
    /// NaN or infinity.
    ///
    /// # Errors
    ///
    /// What is wrong, naming the buffer (nothing is restored then).
    pub fn load_state<M: Module>(
        &mut self,
        dict: &StateDict,
        model: &M,
        device: &Device,
    ) -> Result<(), String> {
        let sizes = parameter_sizes(model);
        let mut buffers = BTreeMap::new();
        for key in dict.keys() {
            let t = dict.get(key).expect("listed key");
            let Some(&size) = sizes.get(key) else {
                return Err(format!(
                    "the momentum buffer `{key}` names no parameter of the model"
                ));
            };
            if t.values.len() != size || t.shape.iter().product::<usize>() != size {
                return Err(format!(
                    "the momentum buffer `{key}`: expected {size} values (its parameter's), found {} (shape {:?})",
                    t.values.len(),
                    t.shape
                ));
            }
            if t.values.iter().any(|v| !v.is_finite()) {
                return Err(format!(
                    "the momentum buffer `{key}` holds a NaN or an infinity"
                ));
            }
            let tensor = Tensor::<1>::from_data(TensorData::new(t.values.clone(), [size]), device);
            buffers.insert(key.to_string(), tensor);
        }
        self.buffers = buffers;
        Ok(())
    }
}

/// The number of values of each float parameter of `model`, by the path the optimiser keys
/// its buffers with.
fn parameter_sizes<M: Module>(model: &M) -> BTreeMap<String, usize> {
    struct Sizes {
        path: Vec<String>,
        sizes: BTreeMap<String, usize>,
    }
    impl burn::module::ModuleVisitor for Sizes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let size = param.val().dims().iter().product();
            self.sizes.insert(self.path.join("."), size);
        }
    }
    let mut sizes = Sizes {
        path: Vec::new(),
        sizes: BTreeMap::new(),
    };
    model.visit(&mut sizes);
    sizes.sizes
}

impl burn::module::ModuleVisitor for DecayGroups {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.val().dims();
        if decays(&shape) {
            self.decayed += 1;
        } else if D == 4 {
            self.depthwise += 1;
        } else {
            self.other += 1;
        }
    }
}

/// Adds the one-element `value` to the running `total` (on the total's device), starting it
/// if there is none: a sum over a model's tensors that is read back once.
pub(crate) fn accumulate(total: &mut Option<Tensor<1>>, value: Tensor<1>) {
    *total = Some(match total.take() {
        Some(t) => {
            let device = t.device();
            t + value.to_device(&device)
        }
        None => value,
    });
}

/// The global L2 norm of `grads` over `model`'s float parameters (one value read back).
pub fn grad_norm<M: Module>(model: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a> {
        grads: &'a GradientsParams,
        total: Option<Tensor<1>>,
    }
    impl burn::module::ModuleVisitor for Norm<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                accumulate(&mut self.total, g.clone().mul(g).sum());
            }
        }
    }
    let mut norm = Norm { grads, total: None };
    model.visit(&mut norm);
    norm.total.map_or(0.0, |t| t.into_scalar::<f64>().sqrt())
}

struct SgdMapper<'a> {
    sgd: &'a mut Sgd,
    grads: GradientsParams,
    lr: f64,
    /// The gradient clip's factor (1 without clipping).
    scale: f64,
    path: Vec<String>,
}

impl ModuleMapper for SgdMapper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return param;
        };
        let (id, tensor, mapper) = param.consume();
        let require_grad = tensor.is_require_grad();
        let checkpointing = tensor.gradient_checkpointing_strategy();
        let weights = tensor.inner();
        let shape = weights.dims();
        let n: usize = shape.iter().product();
        let config = &self.sgd.config;
        let mut d = grad.reshape([n]);
        if self.scale != 1.0 {
            d = d.mul_scalar(self.scale);
        }
        let w = weights.reshape([n]);
        if config.weight_decay != 0.0 && decays(&shape) {
            d = d + w.clone().mul_scalar(config.weight_decay);
        }
        if config.momentum != 0.0 {
            let key = self.path.join(".");
            let buffer = match self.sgd.buffers.remove(&key) {
                Some(v) => v.mul_scalar(config.momentum) + d.clone(),
                None => d.clone(),
            };
            d = if config.nesterov {
                d + buffer.clone().mul_scalar(config.momentum)
            } else {
                buffer.clone()
            };
            self.sgd.buffers.insert(key, buffer);
        }
        let updated = (w - d.mul_scalar(self.lr)).reshape(shape);
        let mut tensor = Tensor::from_inner(updated);
        if let Some(strategy) = checkpointing {
            tensor = tensor.with_gradient_checkpointing_strategy(strategy);
        }
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
