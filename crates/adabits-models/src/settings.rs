//! The quantization settings shared by every layer of a model (the official global flags).

use adabits_quant::{
    ActQuantConfig, BitWidth, LinearEval, QuantScheme, RescaleType, WeightQuantConfig,
};
use burn::config::Config;
use burn::tensor::{Tensor, TensorData};

use crate::BnSharing;

/// What the network does to its input images (values in `[0, 1]`) before the first conv: one
/// definition, in `adabits-runtime`, which the artifact's graph carries.
pub use adabits_runtime::graph::InputTransform;

/// [`InputTransform`] on a batch of images on a Burn device.
pub trait TransformImages {
    /// Applies the transform.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]` (any channel count for `Pixels` and `Unit`); output the
    /// same.
    fn apply(&self, images: Tensor<4>) -> Tensor<4>;
}

impl TransformImages for InputTransform {
    fn apply(&self, images: Tensor<4>) -> Tensor<4> {
        match self {
            Self::Pixels => adabits_quant::input_pixels(images),
            Self::Unit => images,
            Self::Normalize { mean, std } => {
                let device = images.device();
                let column = |v: &[f64; 3]| {
                    let values: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                    Tensor::<4>::from_data(TensorData::new(values, [1, 3, 1, 1]), &device)
                };
                (images - column(mean)) / column(std)
            }
        }
    }
}

/// The official code's global quantization flags, applied to every layer of a model.
///
/// Defaults are the official code defaults (docs/method.md §3–§6); the CIFAR recipe additionally sets
/// `rescale_conv`.
#[derive(Config, Debug, PartialEq)]
pub struct QuantSettings {
    /// Weight scheme (`weight_quant_scheme`).
    #[config(default = "QuantScheme::Modified")]
    pub weight_scheme: QuantScheme,
    /// Activation scheme (`act_quant_scheme`).
    #[config(default = "QuantScheme::Original")]
    pub act_scheme: QuantScheme,
    /// SAT rescale of linear layers (`rescale`).
    #[config(default = true)]
    pub rescale: bool,
    /// SAT rescale of convolutions (`rescale_conv`).
    #[config(default = false)]
    pub rescale_conv: bool,
    /// How the rescale constant is chosen (`rescale_type`).
    #[config(default = "RescaleType::Constant")]
    pub rescale_type: RescaleType,
    /// tanh-normalised weights at full precision (`clamp`).
    #[config(default = true)]
    pub clamp: bool,
    /// One clipping level per bit-width (`switch_alpha`).
    #[config(default = true)]
    pub switchable_alpha: bool,
    /// Per-bit-width BatchNorm (`switchbn`, `stats_sharing`).
    #[config(default = "BnSharing::Switchable")]
    pub bn: BnSharing,
    /// Clip without quantizing at full precision (`pact_fp`).
    #[config(default = false)]
    pub pact_fp: bool,
    /// Eval-mode behaviour of linear layers (parity default P1).
    #[config(default = "LinearEval::Official")]
    pub linear_eval: LinearEval,
    /// Standard deviation of the classifier's initial weights (official: 0.01).
    #[config(default = 0.01)]
    pub classifier_init_std: f64,
    /// Initial clipping level of every quantized conv (official: 8).
    #[config(default = "adabits_quant::CONV_ALPHA_INIT")]
    pub conv_alpha_init: f64,
    /// Initial clipping level of every quantized linear layer (official: 10).
    #[config(default = "adabits_quant::LINEAR_ALPHA_INIT")]
    pub linear_alpha_init: f64,
    /// The rescale constant of linear layers when it differs from `rescale_type` (the default
    /// `adabits` recipe uses [`RescaleType::FanIn`] for the classifier; official: unset).
    #[config(default = "None")]
    pub linear_rescale_type: Option<RescaleType>,
    /// The fewest activation bits of a depthwise convolution's input (official: unset, the
    /// active bit-width). A depthwise filter sees one channel only, and at 2 bits most of it
    /// quantizes to zero; the default `adabits` recipe keeps these inputs at 4 bits or more,
    /// which makes 2-bit MobileNets train from a random start (docs/recipe.md, runs P14–P15).
    /// The profiler and the artifact count the bits each layer really uses.
    #[config(default = "None")]
    pub depthwise_bita_min: Option<BitWidth>,
}

impl QuantSettings {
    /// The weight quantizer of a convolution.
    pub fn conv_weight(&self) -> WeightQuantConfig {
        self.weight(self.rescale_conv)
    }

    /// The weight quantizer of a linear layer.
    pub fn linear_weight(&self) -> WeightQuantConfig {
        self.weight(self.rescale)
            .with_rescale_type(self.linear_rescale_type.unwrap_or(self.rescale_type))
    }

    /// The activation quantizer (`double_sided` only where a model asks for it).
    pub fn act(&self, double_sided: bool) -> ActQuantConfig {
        ActQuantConfig::new()
            .with_scheme(self.act_scheme)
            .with_double_sided(double_sided)
            .with_pact_fp(self.pact_fp)
    }

    fn weight(&self, rescale: bool) -> WeightQuantConfig {
        WeightQuantConfig::new()
            .with_scheme(self.weight_scheme)
            .with_clamp(self.clamp)
            .with_rescale(rescale)
            .with_rescale_type(self.rescale_type)
            .with_linear_eval(self.linear_eval)
    }
}
