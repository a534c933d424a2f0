//! Weight quantization: DoReFa tanh normalisation, unit quantization and SAT constant rescaling
//! (docs/method.md §3).

use burn::config::Config;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::unit::{unit_codes, unit_quantize};
use crate::{BitWidth, QuantScheme};

/// How the SAT rescale constant `c` of `s = c / std(ŵ)` is chosen (the official `rescale_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RescaleType {
    /// `c = 1/√n` with `n` the fan-out: SAT's constant rescaling (official default).
    Constant,
    /// `c = std(W)`, the unbiased standard deviation of the latent weights (detached).
    Stddev,
    /// `c = 1/√m` with `m` the fan-in (`in·kh·kw/groups`, or `in` for a linear layer): not in
    /// the official code. For a classifier it keeps the logits' scale independent of the
    /// feature count, where the fan-out (the class count) lets it grow with √features
    /// (docs/recipe.md).
    FanIn,
}

/// Whether the layer runs in training or evaluation form. Only [`LinearEval`] depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMode {
    /// Training form (`model.train()` in PyTorch).
    Train,
    /// Evaluation form (`model.eval()` in PyTorch).
    Eval,
}

/// What a rescaled linear layer does in [`QuantMode::Eval`] (parity default P1, docs/method.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearEval {
    /// The official behaviour (default): the weight is *not* multiplied by `s` and the bias is
    /// divided by `s`, so eval logits are the train-form logits divided by `s`. The argmax is
    /// unchanged; loss values are not.
    Official,
    /// The cleaner behaviour: eval uses the train form (`W_eff = s·ŵ`, bias untouched), so eval
    /// and train logits agree. Changes TV4/TV5 `y_eval` and every reported eval loss.
    TrainForm,
}

/// The settings of one layer's weight quantizer.
///
/// Models build one per layer kind: convolutions use the official `rescale_conv` flag (default
/// off, on in the CIFAR recipe), linear layers the `rescale` flag (default on).
#[derive(Config, Debug, PartialEq)]
pub struct WeightQuantConfig {
    /// The unit quantizer (official `weight_quant_scheme`, default `modified`).
    #[config(default = "QuantScheme::Modified")]
    pub scheme: QuantScheme,
    /// Whether full-precision weights are still tanh-normalised (official `clamp`, default on,
    /// parity default P3). Off: the raw weights are used at 32 bits.
    #[config(default = true)]
    pub clamp: bool,
    /// Whether the SAT rescale `s = c / std(ŵ)` is applied.
    #[config(default = true)]
    pub rescale: bool,
    /// How `c` is chosen when rescaling.
    #[config(default = "RescaleType::Constant")]
    pub rescale_type: RescaleType,
    /// Eval-mode behaviour of linear layers.
    #[config(default = "LinearEval::Official")]
    pub linear_eval: LinearEval,
}

/// The fan-out `n` of a convolution weight `[out, in/groups, kh, kw]`: `out·kh·kw`, also for
/// grouped and depthwise convolutions (docs/method.md §3, §13.19).
pub fn conv_fan_out(weight_dims: [usize; 4]) -> usize {
    weight_dims[0] * weight_dims[2] * weight_dims[3]
}

/// The fan-out `n` of a linear weight `[out_features, in_features]`: `out_features`.
pub fn linear_fan_out(weight_dims: [usize; 2]) -> usize {
    weight_dims[0]
}

/// Every intermediate of the weight quantizer, for tests and diagnostics.
///
/// `None` marks a step that the configuration skips (no tanh without `clamp` at full precision,
/// no unit quantization at full precision, no scale without `rescale`).
#[derive(Clone, Debug)]
pub struct WeightQuantTrace<const D: usize> {
    /// `t = tanh(W)`.
    pub tanh: Option<Tensor<D>>,
    /// `M = max|t|` over all elements, shape `[1]`; attached to the graph (it carries gradient).
    pub max_abs: Option<Tensor<1>>,
    /// `u = (t/M + 1)/2`, in `[0, 1]`.
    pub unit: Option<Tensor<D>>,
    /// `q = Q_b(u)` (straight-through).
    pub q: Option<Tensor<D>>,
    /// The quantized weight `ŵ = 2q − 1` (or `t/M`, or `W`, at full precision).
    pub w_hat: Tensor<D>,
    /// The detached SAT scale `s`, shape `[1]`.
    pub scale: Option<Tensor<1>>,
}

/// A quantized weight `ŵ` and its detached SAT scale `s`, before the layer applies them.
#[derive(Clone, Debug)]
pub struct QuantizedWeight<const D: usize> {
    /// The quantized weight `ŵ`.
    pub w_hat: Tensor<D>,
    /// The detached SAT scale `s` (shape `[1]`), if rescaling is on.
    pub scale: Option<Tensor<1>>,
}

impl<const D: usize> QuantizedWeight<D> {
    /// The effective weight `W_eff = s·ŵ` (or `ŵ` without rescaling): what convolutions use in
    /// both modes and linear layers use in training.
    ///
    /// # Shapes
    ///
    /// The shape of `w_hat`; `s` (`[1]`) is broadcast.
    pub fn effective(self) -> Tensor<D> {
        match self.scale {
            Some(s) => self.w_hat * s.reshape([1; D]),
            None => self.w_hat,
        }
    }
}

impl QuantizedWeight<2> {
    /// The weight and bias a linear layer uses in `mode` (docs/method.md §3).
    ///
    /// Train, or eval with [`LinearEval::TrainForm`]: `(s·ŵ, bias)`. Eval with
    /// [`LinearEval::Official`]: `(ŵ, bias / s)`, so `y_eval = y_train / s` (TV4, TV5).
    ///
    /// # Shapes
    ///
    /// `w_hat` is `[out, in]`; `bias` is `[out]`.
    pub fn linear_params(
        self,
        bias: Option<Tensor<1>>,
        mode: QuantMode,
        eval: LinearEval,
    ) -> (Tensor<2>, Option<Tensor<1>>) {
        match (mode, eval, self.scale.clone()) {
            (QuantMode::Eval, LinearEval::Official, Some(s)) => (self.w_hat, bias.map(|b| b / s)),
            _ => (self.effective(), bias),
        }
    }
}

/// Quantizes a weight tensor at `bitw` bits and reports every intermediate.
///
/// ```text
/// bitw < 32:  t = tanh(W);  M = max|t|;  u = (t/M + 1)/2;  q = Q_b(u);  ŵ = 2q − 1
/// bitw = 32:  ŵ = t/M if clamp, else W
/// rescale:    s = c / std(ŵ)  with  c = 1/√n (constant) or std(W) (stddev);  s is detached
/// ```
///
/// `M` is a single maximum over the whole tensor and stays in the graph, so the gradient is
/// `∂L/∂W = (1 − t²)·[s·G/M − 𝟙(argmax)·sign(t)·Σ s·G·t / M²]` with `G = ∂L/∂W_eff` (TV2b);
/// elements tied at the maximum share its gradient evenly, as in PyTorch 2.x (P9). The
/// standard deviations are unbiased (`N − 1`) over all elements. `fan_out` is `n`, from
/// [`conv_fan_out`] or [`linear_fan_out`].
///
/// # Shapes
///
/// Any shape (conv `[out, in/groups, kh, kw]`, linear `[out, in]`); `M` and `s` are `[1]`.
///
/// # Panics
///
/// Panics if `fan_out` is zero, or if rescaling a tensor of fewer than two elements (the
/// unbiased standard deviation is undefined).
pub fn quantize_weight_traced<const D: usize>(
    weight: Tensor<D>,
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> WeightQuantTrace<D> {
    check_arguments(&weight, fan_out, config);
    let latent = weight.clone();
    let (tanh, max_abs, unit, q, w_hat) = if bitw.is_full_precision() && !config.clamp {
        (None, None, None, None, weight)
    } else {
        let t = weight.tanh();
        let m = max_abs_split_evenly(t.clone());
        let normalized = t.clone() / m.clone().reshape([1; D]);
        if bitw.is_full_precision() {
            (Some(t), Some(m), None, None, normalized)
        } else {
            let u = normalized.add_scalar(1.0).div_scalar(2.0);
            let q = unit_quantize(u.clone(), bitw, config.scheme);
            let w_hat = q.clone().mul_scalar(2.0).sub_scalar(1.0);
            (Some(t), Some(m), Some(u), Some(q), w_hat)
        }
    };
    let scale = config.rescale.then(|| {
        let std_w_hat = unbiased_std(w_hat.clone().detach());
        match rescale_constant(config.rescale_type, fan_out, &latent.dims()) {
            Some(c) => std_w_hat.recip().mul_scalar(c),
            None => unbiased_std(latent.detach()) / std_w_hat,
        }
    });
    WeightQuantTrace {
        tanh,
        max_abs,
        unit,
        q,
        w_hat,
        scale,
    }
}

/// [`quantize_weight`](crate::quantize_weight) as a chain of Burn tensor ops, on every backend: the reference that the
/// fused kernels are tested against.
///
/// # Panics
///
/// As [`quantize_weight_traced`].
pub fn quantize_weight_composed<const D: usize>(
    weight: Tensor<D>,
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> QuantizedWeight<D> {
    let trace = quantize_weight_traced(weight, bitw, fan_out, config);
    QuantizedWeight {
        w_hat: trace.w_hat,
        scale: trace.scale,
    }
}

/// The numerator `c` of the SAT scale `s = c/std(ŵ)` when it is a constant: `1/√fan_out`
/// ([`RescaleType::Constant`]) or `1/√fan_in` with `fan_in` the product of every dimension but
/// the first ([`RescaleType::FanIn`]); `None` for [`RescaleType::Stddev`], whose numerator is the
/// latent weights' standard deviation. Shared by the composed and the fused quantizers.
pub(crate) fn rescale_constant(
    rescale_type: RescaleType,
    fan_out: usize,
    dims: &[usize],
) -> Option<f64> {
    match rescale_type {
        RescaleType::Constant => Some(1.0 / (fan_out as f64).sqrt()),
        RescaleType::FanIn => {
            let fan_in = dims.iter().skip(1).product::<usize>().max(1);
            Some(1.0 / (fan_in as f64).sqrt())
        }
        RescaleType::Stddev => None,
    }
}

/// The weight quantizer's preconditions, checked before either path runs.
///
/// # Panics
///
/// Panics if `fan_out` is zero, or if rescaling a tensor of fewer than two elements.
pub(crate) fn check_arguments<const D: usize>(
    weight: &Tensor<D>,
    fan_out: usize,
    config: &WeightQuantConfig,
) {
    assert!(fan_out > 0, "the fan-out of a weight must be positive");
    assert!(
        !config.rescale || weight.shape().num_elements() > 1,
        "rescaling needs at least two weight elements for an unbiased std, got shape {:?}",
        weight.dims()
    );
}

/// The integer code of every weight element at `bitw` bits: the `k` with `ŵ = 2·Q_b(u) − 1`,
/// `u = (tanh(W)/max|tanh(W)| + 1)/2` (see [`unit_codes`]).
///
/// For the modified and centered schemes, the codes at any lower bit-width follow from these by
/// a right shift ([`crate::shift_codes`]), so deployment can store the highest bit-width's codes
/// only.
///
/// # Shapes
///
/// Any shape; the output has the shape of `weight`.
///
/// # Panics
///
/// Panics if `bitw` is full precision.
pub fn weight_codes<const D: usize>(
    weight: Tensor<D>,
    bitw: BitWidth,
    scheme: QuantScheme,
) -> Tensor<D, Int> {
    let t = weight.detach().tanh();
    let m = t.clone().abs().max();
    let u = (t / m.reshape([1; D])).add_scalar(1.0).div_scalar(2.0);
    unit_codes(u, bitw, scheme)
}

/// `max|t|` over all elements, shape `[1]`, whose gradient is split evenly among the elements
/// tied at the maximum, as in PyTorch 2.x (parity default P9).
///
/// Burn's own `max` sends the whole gradient to one tied element (the first, on flex), so the
/// value is built as `M.detach() + (m̄ − m̄.detach())` with `m̄ = Σ|t|·𝟙(tied) / #tied`: the
/// forward value is exactly `M`, and the gradient reaches each tied element with weight
/// `1/#tied`, on every backend.
fn max_abs_split_evenly<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    let abs = t.abs();
    let max = abs.clone().detach().max();
    let tied = abs
        .clone()
        .detach()
        .equal(max.clone().reshape([1; D]).expand(abs.shape()))
        .float();
    let mean_of_tied = (abs * tied.clone()).sum() / tied.sum();
    max + (mean_of_tied.clone() - mean_of_tied.detach())
}

/// The unbiased standard deviation over all elements, shape `[1]`.
fn unbiased_std<const D: usize>(x: Tensor<D>) -> Tensor<1> {
    x.reshape([-1]).var(0).sqrt()
}
