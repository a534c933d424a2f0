//! The step primitives every strategy is built from: a joint optimiser step over a list of
//! bit-widths, an evaluation pass, a BatchNorm calibration.

use std::collections::BTreeMap;

use adabits_models::Model;
use adabits_quant::{At, Precision};
use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::Device;

use crate::data::Loader;
use crate::error::TrainError;
use crate::metrics::{Meter, Scores, cross_entropy, distillation, smoothed_cross_entropy};
use crate::optim::Sgd;
use crate::records::key;

/// What [`joint_step`] calls after each entry's forward pass: the entry's precision, its mean
/// cross-entropy and its logits.
pub type BitHook<'a> = dyn FnMut(Precision, f64, &[f32]) -> Result<(), TrainError> + 'a;

/// What a training step minimises for each bit-width.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Objective {
    /// Add the KL divergence from the previous bit-width's detached outputs.
    pub distill: bool,
    /// Label smoothing `ε` of the cross-entropy ([`smoothed_cross_entropy`]); 0 for none.
    pub label_smoothing: f64,
}

/// One optimiser step: for each entry of `bits` in order, a forward pass
/// ([`Model::forward_at`]), the mean cross-entropy
/// (smoothed as `objective` says, plus with `objective.distill` the KL divergence from the
/// previous bit-width's detached outputs) and its backward pass, gradients summed; then one
/// [`Sgd`] step at `lr`. `on_bit` sees each bit-width's plain cross-entropy (what the loss
/// curve and the guards read) and logits (`[batch, classes]`, row-major) right after its
/// forward pass and may stop the step with an error, leaving the model unchanged.
///
/// # Errors
///
/// Whatever `on_bit` returns.
pub fn joint_step(
    model: Model,
    sgd: &mut Sgd,
    bits: &[At],
    batch: &crate::data::Batch,
    lr: f64,
    objective: Objective,
    on_bit: &mut BitHook<'_>,
) -> Result<Model, TrainError> {
    let distill = objective.distill;
    let mut accumulator = GradientsAccumulator::new();
    let mut teacher = None;
    for &at in bits {
        let logits = model.forward_at(batch.images.clone(), at);
        let (ce, ce_value) = if objective.label_smoothing == 0.0 {
            let ce = cross_entropy(logits.clone(), batch.labels.clone());
            let value = ce.clone().into_scalar::<f64>();
            (ce, value)
        } else {
            let plain = cross_entropy(logits.clone().detach(), batch.labels.clone());
            let smoothed = smoothed_cross_entropy(
                logits.clone(),
                batch.labels.clone(),
                objective.label_smoothing,
            );
            (smoothed, plain.into_scalar::<f64>())
        };
        let values: Vec<f32> = logits.clone().detach().into_data().iter::<f32>().collect();
        on_bit(at.precision, ce_value, &values)?;
        let loss = match (distill, teacher.take()) {
            (true, Some(t)) => ce + distillation(logits.clone(), t),
            _ => ce,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        accumulator.accumulate(&model, grads);
        if distill {
            teacher = Some(logits.detach());
        }
    }
    Ok(sgd.step(model, accumulator.grads(), lr))
}

/// Evaluates `model` at each entry of `bits` on every batch of `loader` (evaluation form: running
/// BatchNorm statistics, the official eval-form classifier), on `device`.
///
/// # Errors
///
/// [`TrainError::Data`] when a batch cannot be read.
pub fn evaluate(
    model: &Model,
    bits: &[At],
    loader: &Loader,
    device: &Device,
) -> Result<BTreeMap<String, Scores>, TrainError> {
    let valid = model.valid();
    // One copy per entry: a `wWaA` entry runs as a plan set on a copy's layers.
    let models: Vec<Model> = bits.iter().map(|&at| valid.for_entry(at)).collect();
    let mut meters: BTreeMap<String, Meter> = BTreeMap::new();
    for batch in loader.epoch(0, 0, device) {
        let batch = batch?;
        for (&at, eval) in bits.iter().zip(&models) {
            let logits = eval.forward(batch.images.clone(), at.precision.weight);
            let loss = cross_entropy(logits.clone(), batch.labels.clone()).into_scalar::<f64>();
            let values: Vec<f32> = logits.into_data().iter::<f32>().collect();
            meters
                .entry(key(at.precision))
                .or_default()
                .add(loss, &values, &batch.targets);
        }
    }
    Ok(meters.into_iter().map(|(k, m)| (k, m.summary())).collect())
}

/// A copy of `model` (on the autodiff device `ad`) whose BatchNorm statistics for entry `bits` are
/// reset and re-estimated as plain averages over the first `batches` batches of `loader`
/// (BatchNorm calibration).
///
/// # Errors
///
/// [`TrainError::Data`] when a batch cannot be read.
pub fn calibrate(
    model: &Model,
    bits: At,
    loader: &Loader,
    batches: usize,
    ad: &Device,
) -> Result<Model, TrainError> {
    let mut model = model.clone();
    let mut momentum = 0.1;
    model.for_each_norm(|bn| {
        momentum = bn.momentum();
        bn.reset_statistics_entry(bits.entry);
    });
    let n = batches.min(loader.batches_per_epoch());
    // The passes run on the autodiff device (BatchNorm's training form) but on a copy whose
    // parameters track no gradient, so that they record no graph: Burn frees a graph only
    // at a backward pass, and a pass without one would otherwise keep every activation.
    // The copy shares the fresh running statistics with `model` (Burn's `RunningState` is
    // shared between clones and kept by `no_grad`), so its updates land in `model`.
    let mut probe = model.for_entry(bits).no_grad();
    for (k, batch) in loader.epoch(0, 0, ad).take(n).enumerate() {
        let batch = batch?;
        probe.for_each_norm(|bn| bn.set_momentum(1.0 / (k + 1) as f64));
        let _ = probe.forward(batch.images, bits.precision.weight);
    }
    drop(probe);
    model.for_each_norm(|bn| bn.set_momentum(momentum));
    Ok(model)
}
