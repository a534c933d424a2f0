//! Switchable BatchNorm: one set of BatchNorm statistics (and affine parameters) per bit-width
//! (docs/method.md §6).

use adabits_quant::{BitWidth, BitWidths, batch_norm_train};
use burn::config::Config;
use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// What is kept per bit-width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BnSharing {
    /// One complete BatchNorm per bit-width (the official `switchbn = True`, default).
    Switchable,
    /// One BatchNorm for every bit-width (the shared-BN ablation, `switchbn = False`).
    Shared,
    /// Statistics per bit-width, one shared affine `γ`, `β` (the official `stats_sharing`).
    SharedAffine,
}

/// Configuration of a [`SwitchBatchNorm2d`].
#[derive(Config, Debug)]
pub struct SwitchBatchNorm2dConfig {
    /// Channels.
    pub num_features: usize,
    /// The model's bit-widths, in training order.
    pub bits: BitWidths,
    /// What is kept per bit-width.
    #[config(default = "BnSharing::Switchable")]
    pub sharing: BnSharing,
    /// `ε` (PyTorch's default).
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Running-statistics momentum (PyTorch's default).
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// One bit-width's BatchNorm: running statistics and, unless the affine is shared, `γ` and `β`.
#[derive(Module, Debug)]
pub struct BnEntry {
    /// `γ`, shape `[C]` (absent with [`BnSharing::SharedAffine`]).
    pub gamma: Option<Param<Tensor<1>>>,
    /// `β`, shape `[C]` (absent with [`BnSharing::SharedAffine`]).
    pub beta: Option<Param<Tensor<1>>>,
    /// Running mean, shape `[C]`.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance, shape `[C]`.
    pub running_var: RunningState<Tensor<1>>,
}

/// BatchNorm with one entry per bit-width, selected by the raw active bit-width (its position in
/// the list, or 0 when absent; parity default P5).
///
/// Training form (input on an autodiff device): normalise with the batch statistics and update
/// the selected entry's running statistics as PyTorch does,
/// `running = (1 − m)·running + m·batch`, with the **unbiased** batch variance
/// (`n/(n−1)` times the population variance, `n = N·H·W`). Burn's own `BatchNorm` uses the
/// biased variance there; we follow PyTorch so that statistics, calibration and imported
/// checkpoints agree with the official code. Evaluation form: normalise with the running
/// statistics.
#[derive(Module, Debug)]
pub struct SwitchBatchNorm2d {
    /// The per-bit-width entries (one with [`BnSharing::Shared`]).
    pub entries: Vec<BnEntry>,
    /// The shared `γ` with [`BnSharing::SharedAffine`].
    pub shared_gamma: Option<Param<Tensor<1>>>,
    /// The shared `β` with [`BnSharing::SharedAffine`].
    pub shared_beta: Option<Param<Tensor<1>>>,
    #[module(skip)]
    bits: BitWidths,
    epsilon: f64,
    momentum: f64,
    /// The entry used whatever bit-width `forward` is given, under a precision plan (`None`:
    /// the bit-width's).
    #[module(skip)]
    planned: Option<usize>,
}

impl SwitchBatchNorm2dConfig {
    /// Creates the layer: `γ = 1`, `β = 0`, running mean 0 and variance 1 (docs/method.md §7).
    ///
    /// # Panics
    ///
    /// Panics if `num_features` is zero.
    pub fn init(&self, device: &Device) -> SwitchBatchNorm2d {
        assert!(
            self.num_features > 0,
            "num_features must be greater than zero"
        );
        let c = self.num_features;
        let count = match self.sharing {
            BnSharing::Shared => 1,
            _ => self.bits.len(),
        };
        let per_bit_affine = self.sharing != BnSharing::SharedAffine;
        let entries = (0..count)
            .map(|_| BnEntry {
                gamma: per_bit_affine.then(|| Param::from_tensor(Tensor::ones([c], device))),
                beta: per_bit_affine.then(|| Param::from_tensor(Tensor::zeros([c], device))),
                running_mean: RunningState::new(Tensor::zeros([c], device)),
                running_var: RunningState::new(Tensor::ones([c], device)),
            })
            .collect();
        SwitchBatchNorm2d {
            entries,
            shared_gamma: (!per_bit_affine).then(|| Param::from_tensor(Tensor::ones([c], device))),
            shared_beta: (!per_bit_affine).then(|| Param::from_tensor(Tensor::zeros([c], device))),
            bits: self.bits.clone(),
            epsilon: self.epsilon,
            momentum: self.momentum,
            planned: None,
        }
    }
}

impl SwitchBatchNorm2d {
    /// The number of bit-widths of the model (the official code keeps one BatchNorm per entry).
    pub fn bit_count(&self) -> usize {
        self.bits.len()
    }

    /// The number of channels.
    pub fn num_features(&self) -> usize {
        self.entries[0].running_mean.value().dims()[0]
    }

    /// What is kept per bit-width.
    pub fn sharing(&self) -> BnSharing {
        if self.shared_gamma.is_some() {
            BnSharing::SharedAffine
        } else if self.entries.len() == 1 && self.bits.len() > 1 {
            BnSharing::Shared
        } else {
            BnSharing::Switchable
        }
    }

    /// The running-statistics momentum.
    pub fn momentum(&self) -> f64 {
        self.momentum
    }

    /// Sets the running-statistics momentum; `1/(k+1)` on the `k`-th batch (from 0) after
    /// [`reset_statistics`](Self::reset_statistics) gives the plain average over the batches
    /// (PyTorch's `momentum = None`), which is how BatchNorm calibration re-estimates them.
    pub fn set_momentum(&mut self, momentum: f64) {
        self.momentum = momentum;
    }

    /// Resets the running statistics of the entry of `bits` (mean 0, variance 1), or of the
    /// planned entry under a precision plan (so that calibration re-estimates what the plan
    /// runs).
    pub fn reset_statistics(&mut self, bits: BitWidth) {
        self.reset_statistics_entry(self.bits.index_or_first(bits));
    }

    /// Resets the running statistics of the model's list entry `entry` (the one entry when
    /// shared), or of the planned entry under a precision plan.
    pub fn reset_statistics_entry(&mut self, entry: usize) {
        let index = match self.planned {
            _ if self.entries.len() == 1 => 0,
            Some(planned) => planned,
            None => entry,
        };
        let entry = &mut self.entries[index];
        let mean = entry.running_mean.value_sync();
        let device = mean.device();
        let [c] = mean.dims();
        entry.running_mean = RunningState::new(Tensor::zeros([c], &device));
        entry.running_var = RunningState::new(Tensor::ones([c], &device));
    }

    /// The entry used for `bits`.
    pub fn index(&self, bits: BitWidth) -> usize {
        if self.entries.len() == 1 {
            0
        } else {
            self.bits.index_or_first(bits)
        }
    }

    /// The stored entry used for the model's list entry `entry`: itself, or 0 when shared.
    pub fn entry_index(&self, entry: usize) -> usize {
        if self.entries.len() == 1 { 0 } else { entry }
    }

    /// Normalises `x` with the entry of `bits`.
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, C, h, w]`; output the same.
    ///
    /// # Panics
    ///
    /// Panics if the channel count differs from the layer's, or if the training form gets a
    /// batch of a single value per channel.
    pub fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        self.forward_entry(x, self.planned.unwrap_or_else(|| self.index(bits)))
    }

    /// Makes [`forward`](Self::forward) use entry `entry` whatever bit-width it is given (a
    /// precision plan: the entry of the convolution before it), or the bit-width's again with
    /// `None`.
    pub fn set_planned(&mut self, entry: Option<usize>) {
        self.planned = entry;
    }

    /// Normalises `x` with the model's list entry `entry` (the one entry when shared).
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, C, h, w]`; output the same.
    ///
    /// # Panics
    ///
    /// As [`forward`](Self::forward), and if `entry` is not an entry of the model's list.
    pub fn forward_entry(&self, x: Tensor<4>, entry: usize) -> Tensor<4> {
        assert!(
            entry < self.bits.len(),
            "entry {entry} of a list of {} bit-widths",
            self.bits.len()
        );
        let index = self.entry_index(entry);
        let [n, c, h, w] = x.dims();
        let device = x.device();
        if !device.is_autodiff() {
            // Evaluation: the folded per-channel scale and bias (shared affine included), the
            // values a deployment artifact stores, so that both compute alike.
            let (scale, bias) = self.folded_entry(index);
            let scale = scale.to_device(&device).reshape([1, c, 1, 1]);
            let bias = bias.to_device(&device).reshape([1, c, 1, 1]);
            return x * scale + bias;
        }
        let entry = &self.entries[index];
        let (gamma, beta) = match (&entry.gamma, &entry.beta) {
            (Some(g), Some(b)) => (g.val(), b.val()),
            _ => (Tensor::ones([c], &device), Tensor::zeros([c], &device)),
        };
        let count = n * h * w;
        assert!(
            count > 1,
            "batch norm training needs more than one value per channel"
        );
        let out = batch_norm_train(x, gamma, beta, self.epsilon);
        let unbiased = out.variance.mul_scalar(count as f64 / (count - 1) as f64);
        let m = self.momentum;
        let mean = entry.running_mean.value_sync().to_device(&device);
        let var = entry.running_var.value_sync().to_device(&device);
        entry
            .running_mean
            .update((mean.mul_scalar(1.0 - m) + out.mean.mul_scalar(m)).detach());
        entry
            .running_var
            .update((var.mul_scalar(1.0 - m) + unbiased.mul_scalar(m)).detach());
        // Fold this thread's update into the stored value now, so that `valid()`, saving and
        // evaluation all see it (Burn's `value()` may otherwise lag by one update).
        let _ = entry.running_mean.value_sync();
        let _ = entry.running_var.value_sync();
        let y = out.output;
        match (&self.shared_gamma, &self.shared_beta) {
            (Some(g), Some(b)) => y * g.val().reshape([1, c, 1, 1]) + b.val().reshape([1, c, 1, 1]),
            _ => y,
        }
    }

    /// The evaluation form of the entry of `bits` as one per-channel scale and bias:
    /// `y = x·scale + bias` with `scale = γ/√(var + ε)` and `bias = β − mean·scale`, then the
    /// shared affine `g`, `b` folded in (`scale·g`, `bias·g + b`).
    ///
    /// # Shapes
    ///
    /// Both `[C]`.
    pub fn folded(&self, bits: BitWidth) -> (Tensor<1>, Tensor<1>) {
        self.folded_entry(self.index(bits))
    }

    /// [`folded`](Self::folded) for entry `index` (see [`index`](Self::index)).
    ///
    /// # Panics
    ///
    /// Panics if `index` is not below [`entry_count`](Self::entry_count).
    pub fn folded_entry(&self, index: usize) -> (Tensor<1>, Tensor<1>) {
        let entry = &self.entries[index];
        let mean = entry.running_mean.value_sync();
        let var = entry.running_var.value_sync();
        let device = mean.device();
        let [c] = mean.dims();
        let mut scale = var.add_scalar(self.epsilon).sqrt().recip();
        if let Some(g) = &entry.gamma {
            scale = scale * g.val().to_device(&device);
        }
        let mut bias = Tensor::zeros([c], &device) - mean * scale.clone();
        if let Some(b) = &entry.beta {
            bias = bias + b.val().to_device(&device);
        }
        if let (Some(g), Some(b)) = (&self.shared_gamma, &self.shared_beta) {
            let g = g.val().to_device(&device);
            scale = scale * g.clone();
            bias = bias * g + b.val().to_device(&device);
        }
        (scale, bias)
    }

    /// Makes every bit-width's entry the given folded scale and bias (deployment): afterwards
    /// [`folded`](Self::folded) returns exactly these values (`γ = scale`, `β = bias`, mean 0,
    /// variance 1, `ε = 0`, no shared affine).
    ///
    /// # Panics
    ///
    /// Panics unless there is one `(scale, bias)` pair of `[C]` tensors per entry.
    pub fn deploy(&mut self, folded: Vec<(Tensor<1>, Tensor<1>)>) {
        assert_eq!(folded.len(), self.entries.len(), "one pair per entry");
        for (entry, (scale, bias)) in self.entries.iter_mut().zip(folded) {
            let device = scale.device();
            let [c] = scale.dims();
            entry.gamma = Some(Param::from_tensor(scale));
            entry.beta = Some(Param::from_tensor(bias));
            entry.running_mean = RunningState::new(Tensor::zeros([c], &device));
            entry.running_var = RunningState::new(Tensor::ones([c], &device));
        }
        self.shared_gamma = None;
        self.shared_beta = None;
        self.epsilon = 0.0;
    }

    /// The number of entries (one per bit-width, or one when shared).
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }
}
