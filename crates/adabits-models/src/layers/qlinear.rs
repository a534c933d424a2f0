//! `QLinear`: a linear layer whose weights and inputs are quantized at the bit-width passed to
//! `forward` (docs/method.md §3–§5).

use adabits_quant::{
    ActQuantConfig, At, BitPolicy, BitWidth, BitWidths, ClippingLevels, ClippingLevelsConfig,
    LINEAR_ALPHA_INIT, LayerBits, QuantMode, WeightQuantConfig, linear_fan_out, pact,
    quantize_weight,
};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::{Device, Distribution, Tensor};

use super::LayerQuant;
use crate::profile::{LayerShape, OpKind};

/// Configuration of a [`QLinear`].
#[derive(Config, Debug)]
pub struct QLinearConfig {
    /// Input features.
    pub d_input: usize,
    /// Output features.
    pub d_output: usize,
    /// The model's bit-widths, in training order (indexes the clipping levels).
    pub bits: BitWidths,
    /// Whether the layer has a bias (the classifiers do).
    #[config(default = true)]
    pub bias: bool,
    /// Per-layer precision policy (classifier: `bitw_min`).
    #[config(default = "BitPolicy::BODY")]
    pub policy: BitPolicy,
    /// Weight quantizer. The official `rescale` defaults to on for linear layers.
    #[config(default = "WeightQuantConfig::new()")]
    pub weight_quant: WeightQuantConfig,
    /// Activation quantizer (linear layers have no double-sided mode).
    #[config(default = "ActQuantConfig::new()")]
    pub act_quant: ActQuantConfig,
    /// One clipping level per bit-width (S-CL) or a shared one.
    #[config(default = true)]
    pub switchable_alpha: bool,
    /// Initial clipping level.
    #[config(default = "LINEAR_ALPHA_INIT")]
    pub alpha_init: f64,
    /// Standard deviation of the initial weights (official: 0.01).
    #[config(default = 0.01)]
    pub init_std: f64,
}

/// A quantized linear layer with the PyTorch weight layout `[out, in]`.
///
/// `y = pact(x)·W_effᵀ + b`. In [`QuantMode::Eval`] with the official
/// [`LinearEval`](adabits_quant::LinearEval) the weight is left unscaled and the bias divided by
/// `s`, so eval logits are the train-form logits divided by `s` (parity default P1).
#[derive(Module, Debug)]
pub struct QLinear {
    /// The latent full-precision weight, `[out, in]`.
    pub weight: Param<Tensor<2>>,
    /// The bias, `[out]`, if any.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input clipping levels.
    pub alpha: ClippingLevels,
    #[module(skip)]
    quant: LayerQuant,
    /// What the layer runs at whatever bit-width `forward` is given, under a precision plan
    /// ([`crate::Plan`]; `None`: the bit-width given).
    #[module(skip)]
    planned: Option<At>,
}

impl QLinearConfig {
    /// Creates the layer with the official initialisation (docs/method.md §7): weights
    /// `N(0, init_std)` (`init_std` = 0.01), bias 0, clipping levels at `alpha_init`.
    pub fn init(&self, device: &Device) -> QLinear {
        let weight = Tensor::random(
            [self.d_output, self.d_input],
            Distribution::Normal(0.0, self.init_std),
            device,
        );
        QLinear {
            weight: Param::from_tensor(weight),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([self.d_output], device))),
            alpha: ClippingLevelsConfig::new(self.bits.clone(), self.alpha_init)
                .with_switchable(self.switchable_alpha)
                .init(device),
            quant: LayerQuant {
                policy: self.policy,
                weight: self.weight_quant.clone(),
                act: self.act_quant.clone(),
            },
            planned: None,
        }
    }
}

impl QLinear {
    /// Runs the layer at `bits`, in training form when `x` is on an autodiff device and in
    /// evaluation form otherwise (Burn's convention: `model.valid()` evaluates).
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, in]`; output `[batch, out]`.
    pub fn forward(&self, x: Tensor<2>, bits: BitWidth) -> Tensor<2> {
        let mode = if x.is_autodiff() {
            QuantMode::Train
        } else {
            QuantMode::Eval
        };
        self.forward_mode(x, bits, mode)
    }

    /// Runs the layer at `bits` in an explicit mode.
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, in]`; output `[batch, out]`.
    pub fn forward_mode(&self, x: Tensor<2>, bits: BitWidth, mode: QuantMode) -> Tensor<2> {
        if let Some(at) = self.planned {
            return self.forward_at_mode(x, at, mode);
        }
        let resolved = self.quant.policy.resolve(bits);
        self.run(x, resolved, self.alpha.select(resolved.bita), mode)
    }

    /// Runs the layer at `at` (its precision resolved through the layer's [`BitPolicy`], the
    /// clipping level of its entry) in an explicit mode.
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, in]`; output `[batch, out]`.
    ///
    /// # Panics
    ///
    /// Panics if `at.entry` is not an entry of the layer's list.
    pub fn forward_at_mode(&self, x: Tensor<2>, at: At, mode: QuantMode) -> Tensor<2> {
        let resolved = at.precision.resolve(&self.quant.policy);
        self.run(x, resolved, self.alpha.select_entry(at.entry), mode)
    }

    fn run(
        &self,
        x: Tensor<2>,
        resolved: LayerBits,
        alpha: Tensor<1>,
        mode: QuantMode,
    ) -> Tensor<2> {
        let x = pact(x, alpha, resolved.bita, &self.quant.act);
        let weight = self.weight.val();
        let fan_out = linear_fan_out(weight.dims());
        let (weight, bias) = quantize_weight(weight, resolved.bitw, fan_out, &self.quant.weight)
            .linear_params(
                self.bias.as_ref().map(Param::val),
                mode,
                self.quant.weight.linear_eval,
            );
        let y = x.matmul(weight.transpose());
        match bias {
            Some(b) => y + b.unsqueeze::<2>(),
            None => y,
        }
    }

    /// How the layer quantizes.
    pub fn quant(&self) -> &LayerQuant {
        &self.quant
    }

    /// Makes [`forward`](Self::forward) run `at` whatever bit-width it is given (a precision
    /// plan), or the bit-width again with `None`.
    pub fn set_planned(&mut self, at: Option<At>) {
        self.planned = at;
    }

    /// What the layer runs under a precision plan, if one is set.
    pub fn planned(&self) -> Option<At> {
        self.planned
    }

    /// The weight quantizer.
    pub fn weight_quant(&self) -> &WeightQuantConfig {
        &self.quant.weight
    }

    /// Deploys the layer with a fixed effective weight and bias (the evaluation form (`ŵ` and `bias / s` with the official `LinearEval`), decoded from an
    /// artifact): afterwards the weight is used as it is (full-precision path, no tanh, no
    /// rescale), while the input activations are still quantized at the active bit-width.
    pub fn deploy(&mut self, weight: Tensor<2>, bias: Option<Tensor<1>>) {
        self.weight = Param::from_tensor(weight);
        self.bias = bias.map(Param::from_tensor);
        self.quant = self.quant.deployed();
    }

    /// The layer's precision policy.
    pub fn policy(&self) -> BitPolicy {
        self.quant.policy
    }

    /// The profiler's description of this layer: `MACs = in·out`.
    pub fn layer_shape(&self, name: impl Into<String>) -> LayerShape {
        let [d_out, d_in] = self.weight.dims();
        LayerShape {
            name: name.into(),
            kind: OpKind::Linear,
            macs: (d_in * d_out) as u64,
            weights: (d_in * d_out) as u64,
            bias: self.bias.as_ref().map_or(0, |_| d_out as u64),
            alpha_entries: self.alpha.alpha.dims()[0] as u64,
            policy: self.quant.policy,
            first: false,
        }
    }
}
