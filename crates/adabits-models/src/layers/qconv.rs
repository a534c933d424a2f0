//! `QConv2d`: a convolution whose weights and input activations are quantized at the bit-width
//! passed to `forward` (docs/method.md §3–§5).

use adabits_quant::{
    ActQuantConfig, At, BitPolicy, BitWidth, BitWidths, CONV_ALPHA_INIT, ClippingLevels,
    ClippingLevelsConfig, LayerBits, WeightQuantConfig, conv_fan_out, conv2d, pact,
    quantize_weight,
};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};

use super::LayerQuant;
use crate::profile::{LayerShape, OpKind};

/// Configuration of a [`QConv2d`].
#[derive(Config, Debug)]
pub struct QConv2dConfig {
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// The model's bit-widths, in training order (indexes the clipping levels).
    pub bits: BitWidths,
    /// Stride.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Symmetric zero padding.
    #[config(default = "[0, 0]")]
    pub padding: [usize; 2],
    /// Dilation: the spacing between the kernel's taps (the official `QConv2d`'s `dilation`).
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Groups (`channels[0]` for a depthwise convolution).
    #[config(default = 1)]
    pub groups: usize,
    /// Whether the layer has a bias.
    #[config(default = false)]
    pub bias: bool,
    /// Per-layer precision policy (first convolution: weight-only with a minimum).
    #[config(default = "BitPolicy::BODY")]
    pub policy: BitPolicy,
    /// Weight quantizer. The official `rescale_conv` defaults to off.
    #[config(default = "WeightQuantConfig::new().with_rescale(false)")]
    pub weight_quant: WeightQuantConfig,
    /// Activation quantizer.
    #[config(default = "ActQuantConfig::new()")]
    pub act_quant: ActQuantConfig,
    /// One clipping level per bit-width (S-CL) or a shared one.
    #[config(default = true)]
    pub switchable_alpha: bool,
    /// Initial clipping level.
    #[config(default = "CONV_ALPHA_INIT")]
    pub alpha_init: f64,
}

/// A quantized 2-D convolution (PyTorch weight layout `[out, in/groups, kh, kw]`).
///
/// `forward(x, bits)` resolves `bits` through the layer's [`BitPolicy`], applies PACT with the
/// clipping level of the activation bit-width to `x`, quantizes the weight at the weight
/// bit-width, and convolves: `y = conv2d(pact(x), s·ŵ) + bias`.
#[derive(Module, Debug)]
pub struct QConv2d {
    /// The latent full-precision weight, `[out, in/groups, kh, kw]`.
    pub weight: Param<Tensor<4>>,
    /// The bias, `[out]`, if any.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input clipping levels.
    pub alpha: ClippingLevels,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    groups: usize,
    #[module(skip)]
    quant: LayerQuant,
    /// What the layer runs at whatever bit-width `forward` is given, under a precision plan
    /// ([`crate::Plan`]; `None`: the bit-width given).
    #[module(skip)]
    planned: Option<At>,
}

impl QConv2dConfig {
    /// Creates the layer with the official initialisation (docs/method.md §7): weights
    /// `N(0, √(2/(kh·kw·out)))` (fan-out, depthwise included), bias 0, clipping levels at
    /// `alpha_init`.
    ///
    /// # Panics
    ///
    /// Panics if the channels are not divisible by `groups`, or a stride or dilation is 0.
    pub fn init(&self, device: &Device) -> QConv2d {
        assert!(
            self.stride.iter().chain(&self.dilation).all(|&v| v > 0),
            "stride and dilation must be at least 1. Got stride={:?}, dilation={:?}",
            self.stride,
            self.dilation
        );
        let [c_in, c_out] = self.channels;
        assert!(
            self.groups > 0 && c_in % self.groups == 0 && c_out % self.groups == 0,
            "channels must be divisible by the number of groups. Got channels={:?}, groups={}",
            self.channels,
            self.groups
        );
        let shape = [
            c_out,
            c_in / self.groups,
            self.kernel_size[0],
            self.kernel_size[1],
        ];
        let std = (2.0 / conv_fan_out(shape) as f64).sqrt();
        let weight = Tensor::random(shape, Distribution::Normal(0.0, std), device);
        QConv2d {
            weight: Param::from_tensor(weight),
            bias: self
                .bias
                .then(|| Param::from_tensor(Tensor::zeros([c_out], device))),
            alpha: ClippingLevelsConfig::new(self.bits.clone(), self.alpha_init)
                .with_switchable(self.switchable_alpha)
                .init(device),
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
            quant: LayerQuant {
                policy: self.policy,
                weight: self.weight_quant.clone(),
                act: self.act_quant.clone(),
            },
            planned: None,
        }
    }
}

impl QConv2d {
    /// Runs the layer at `bits`.
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, in, h, w]`; output `[batch, out, h_out, w_out]`.
    pub fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        if let Some(at) = self.planned {
            return self.forward_at(x, at);
        }
        let resolved = self.quant.policy.resolve(bits);
        self.run(x, resolved, self.alpha.select(resolved.bita))
    }

    /// Runs the layer at `at`: its precision resolved through the layer's [`BitPolicy`], the
    /// clipping level of its entry.
    ///
    /// # Shapes
    ///
    /// `x`: `[batch, in, h, w]`; output `[batch, out, h_out, w_out]`.
    ///
    /// # Panics
    ///
    /// Panics if `at.entry` is not an entry of the layer's list.
    pub fn forward_at(&self, x: Tensor<4>, at: At) -> Tensor<4> {
        let resolved = at.precision.resolve(&self.quant.policy);
        self.run(x, resolved, self.alpha.select_entry(at.entry))
    }

    fn run(&self, x: Tensor<4>, resolved: LayerBits, alpha: Tensor<1>) -> Tensor<4> {
        let x = pact(x, alpha, resolved.bita, &self.quant.act);
        let weight = self.weight.val();
        let fan_out = conv_fan_out(weight.dims());
        let w_eff = quantize_weight(weight, resolved.bitw, fan_out, &self.quant.weight).effective();
        let options = ConvOptions {
            stride: self.stride,
            padding: [
                (self.padding[0], self.padding[0]),
                (self.padding[1], self.padding[1]),
            ],
            dilation: self.dilation,
            groups: self.groups,
        };
        conv2d(x, w_eff, self.bias.as_ref().map(Param::val), options)
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

    /// Deploys the layer with a fixed effective weight and bias (`W_eff = s·ŵ`, decoded from an
    /// artifact): afterwards the weight is used as it is (full-precision path, no tanh, no
    /// rescale), while the input activations are still quantized at the active bit-width.
    pub fn deploy(&mut self, weight: Tensor<4>, bias: Option<Tensor<1>>) {
        self.weight = Param::from_tensor(weight);
        self.bias = bias.map(Param::from_tensor);
        self.quant = self.quant.deployed();
    }

    /// The layer's precision policy.
    pub fn policy(&self) -> BitPolicy {
        self.quant.policy
    }

    /// The stride.
    pub fn stride(&self) -> [usize; 2] {
        self.stride
    }

    /// The symmetric zero padding.
    pub fn padding(&self) -> [usize; 2] {
        self.padding
    }

    /// The dilation.
    pub fn dilation(&self) -> [usize; 2] {
        self.dilation
    }

    /// The number of groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// The output size for an `h`×`w` input: `(h + 2p − d·(k − 1) − 1) / s + 1` per side.
    pub fn output_size(&self, [h, w]: [usize; 2]) -> [usize; 2] {
        let [_, _, kh, kw] = self.weight.dims();
        let side = |n: usize, i: usize, k: usize| {
            (n + 2 * self.padding[i] - self.dilation[i] * (k - 1) - 1) / self.stride[i] + 1
        };
        [side(h, 0, kh), side(w, 1, kw)]
    }

    /// The profiler's description of this layer for an `h`×`w` input:
    /// `MACs = c_in·c_out·kh·kw·h_out·w_out / groups`.
    pub fn layer_shape(&self, name: impl Into<String>, input: [usize; 2]) -> LayerShape {
        let [c_out, c_in_per_group, kh, kw] = self.weight.dims();
        let [h_out, w_out] = self.output_size(input);
        let c_in = c_in_per_group * self.groups;
        LayerShape {
            name: name.into(),
            kind: OpKind::Conv,
            macs: (c_in * c_out * kh * kw * h_out * w_out / self.groups) as u64,
            weights: (c_out * c_in_per_group * kh * kw) as u64,
            bias: self.bias.as_ref().map_or(0, |_| c_out as u64),
            alpha_entries: self.alpha.alpha.dims()[0] as u64,
            policy: self.quant.policy,
            first: false,
        }
    }
}
