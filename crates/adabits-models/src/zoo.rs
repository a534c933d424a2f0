//! Every model behind one configuration and one module type, so training, evaluation and the
//! command line can name an architecture at run time.

use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use adabits_quant::{At, BitWidth, BitWidths};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, ExecutionError, Tensor};
use serde::{Deserialize, Serialize};

use crate::{
    CifarResNet, CifarResNetConfig, ImageNetResNet, ImageNetResNetConfig, InputTransform, LayerMut,
    LayerShape, MobileNetV1, MobileNetV1Config, MobileNetV2, MobileNetV2Config, OfficialLayout,
    QuantSettings, ResolvedPlan, SwitchBatchNorm2d, quantized_layers, with_plan,
};

/// An architecture of the zoo.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Architecture {
    /// CIFAR ResNet of depth `6n + 2` (20, 32, 44, 56, 110).
    CifarResNet(usize),
    /// ImageNet (torchvision-layout) ResNet of depth 18, 34, 50, 101 or 152.
    ImageNetResNet(usize),
    /// MobileNet-V1.
    MobileNetV1,
    /// MobileNet-V2.
    MobileNetV2,
}

impl Architecture {
    /// The names [`FromStr`] accepts.
    pub const NAMES: [&'static str; 12] = [
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenet_v1",
        "mobilenet_v2",
    ];

    /// The input size the architecture is made for: 32×32 (CIFAR ResNets) or 224×224.
    pub fn default_input_size(self) -> usize {
        match self {
            Self::CifarResNet(_) => 32,
            _ => 224,
        }
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CifarResNet(d) | Self::ImageNetResNet(d) => write!(f, "resnet{d}"),
            Self::MobileNetV1 => f.write_str("mobilenet_v1"),
            Self::MobileNetV2 => f.write_str("mobilenet_v2"),
        }
    }
}

impl FromStr for Architecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase().replace('-', "_");
        let arch = match name.as_str() {
            "mobilenet_v1" | "mobilenetv1" => Self::MobileNetV1,
            "mobilenet_v2" | "mobilenetv2" => Self::MobileNetV2,
            _ => match name.strip_prefix("resnet").and_then(|d| d.parse().ok()) {
                Some(d @ (20 | 32 | 44 | 56 | 110)) => Self::CifarResNet(d),
                Some(d @ (18 | 34 | 50 | 101 | 152)) => Self::ImageNetResNet(d),
                _ => {
                    return Err(format!(
                        "unknown model `{s}`: expected one of {}",
                        Self::NAMES.join(", ")
                    ));
                }
            },
        };
        Ok(arch)
    }
}

impl TryFrom<String> for Architecture {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Architecture> for String {
    fn from(a: Architecture) -> Self {
        a.to_string()
    }
}

/// The configuration of any model of the zoo.
#[derive(Config, Debug, PartialEq)]
pub struct ModelConfig {
    /// The architecture.
    pub arch: Architecture,
    /// The entries the model is trained for (bit-widths and `wWaA` precisions), in training
    /// order.
    pub bits: BitWidths,
    /// Output classes.
    #[config(default = 10)]
    pub num_classes: usize,
    /// Width multiplier.
    #[config(default = 1.0)]
    pub width_mult: f64,
    /// Quantization settings of every layer.
    #[config(default = "QuantSettings::new()")]
    pub quant: QuantSettings,
    /// What is done to the input images: `round(255·x)` by default (official, P7).
    #[config(default = "InputTransform::Pixels")]
    pub input: InputTransform,
    /// MobileNet-V2 only: clip the linear-bottleneck outputs symmetrically (`double_side`).
    #[config(default = false)]
    pub double_side: bool,
}

/// Held while a model draws its initial weights (see [`ModelConfig::init_seeded`]).
static DRAWS: Mutex<()> = Mutex::new(());

impl ModelConfig {
    /// Creates the model with the official initialisation, its weights drawn from `seed`: the
    /// same seed gives the same weights on the same backend, however many other threads of the
    /// process create models this way meanwhile.
    ///
    /// [`init`](Self::init) after [`Device::seed`] is not enough once two threads create
    /// models: the backends' generator is process-wide (on wgpu and CUDA one generator serves
    /// every device), so another thread seeding or drawing in between changes the weights.
    /// Here the seed and the draws happen under one process-wide lock, and a device sync before
    /// the lock is released makes sure the draws have run (kernel fusion may hold operations
    /// back until a stream is drained). A thread that draws random tensors outside this
    /// function still moves the shared generator.
    ///
    /// # Errors
    ///
    /// The device failed to execute the draws.
    ///
    /// # Panics
    ///
    /// As [`init`](Self::init).
    pub fn init_seeded(&self, seed: u64, device: &Device) -> Result<Model, ExecutionError> {
        let _guard = DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
        device.seed(seed);
        let model = self.build(device);
        device.sync()?;
        Ok(model)
    }

    /// An upper estimate of the model's parameter count that does not build it at its width:
    /// the count at width 1 (built on `device`) times `max(1, width)²`, as a layer's weights
    /// grow with the product of its input and output widths. What a caller checks a large
    /// width against before allocating it.
    pub fn estimated_parameters(&self, device: &Device) -> f64 {
        let base = self.clone().with_width_mult(1.0).init(device).num_params() as f64;
        base * self.width_mult.max(1.0).powi(2)
    }

    /// Creates the model with the official initialisation; seed the device for
    /// reproducibility, or use [`init_seeded`](Self::init_seeded) where other threads also draw.
    ///
    /// # Panics
    ///
    /// Panics on a depth the architecture does not have (impossible for a parsed
    /// [`Architecture`]).
    pub fn init(&self, device: &Device) -> Model {
        // Under the lock of `init_seeded`: an unseeded build on another thread must not draw
        // between a seeded build's seed and its draws (a resume builds a model it then
        // overwrites while another run starts).
        let _guard = DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
        let model = self.build(device);
        // The draws run before the lock is released; a failed device reports at the next
        // operation that reads the model.
        let _ = device.sync();
        model
    }

    /// Builds the model, drawing its initial weights from the device's generator.
    fn build(&self, device: &Device) -> Model {
        let (bits, quant, input) = (self.bits.clone(), self.quant.clone(), self.input.clone());
        match self.arch {
            Architecture::CifarResNet(depth) => Model::CifarResNet(
                CifarResNetConfig::new(depth, bits)
                    .with_num_classes(self.num_classes)
                    .with_width_mult(self.width_mult)
                    .with_quant(quant)
                    .with_input(input)
                    .init(device),
            ),
            Architecture::ImageNetResNet(depth) => Model::ImageNetResNet(
                ImageNetResNetConfig::new(depth, bits)
                    .with_num_classes(self.num_classes)
                    .with_width_mult(self.width_mult)
                    .with_quant(quant)
                    .with_input(input)
                    .init(device),
            ),
            Architecture::MobileNetV1 => Model::MobileNetV1(
                MobileNetV1Config::new(bits)
                    .with_num_classes(self.num_classes)
                    .with_width_mult(self.width_mult)
                    .with_quant(quant)
                    .with_input(input)
                    .init(device),
            ),
            Architecture::MobileNetV2 => Model::MobileNetV2(
                MobileNetV2Config::new(bits)
                    .with_num_classes(self.num_classes)
                    .with_width_mult(self.width_mult)
                    .with_quant(quant)
                    .with_input(input)
                    .with_double_side(self.double_side)
                    .init(device),
            ),
        }
    }
}

/// Any model of the zoo.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Model {
    /// A CIFAR ResNet.
    CifarResNet(CifarResNet),
    /// An ImageNet ResNet.
    ImageNetResNet(ImageNetResNet),
    /// MobileNet-V1.
    MobileNetV1(MobileNetV1),
    /// MobileNet-V2.
    MobileNetV2(MobileNetV2),
}

impl Model {
    /// Logits at `bits` for images with values in `[0, 1]`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>, bits: BitWidth) -> Tensor<2> {
        match self {
            Self::CifarResNet(m) => m.forward(images, bits),
            Self::ImageNetResNet(m) => m.forward(images, bits),
            Self::MobileNetV1(m) => m.forward(images, bits),
            Self::MobileNetV2(m) => m.forward(images, bits),
        }
    }

    /// Logits at entry `at` of the model's list: a uniform entry is [`forward`](Self::forward)
    /// at its bit-width; a `wWaA` entry runs every quantized layer at `at` (weights and
    /// activations at the pair, each through its policy, with the entry's clipping levels and
    /// BatchNorm), as the official code sets the pair as `bits` on every module. The copy that
    /// runs it shares the model's parameters, so gradients reach them as from `forward`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward_at(&self, images: Tensor<4>, at: At) -> Tensor<2> {
        match at.precision.as_uniform() {
            Some(bits) => self.forward(images, bits),
            None => self.at_entry(at).forward(images, at.precision.weight),
        }
    }

    /// A copy of the model to run entry `at` with `forward(images, at.precision.weight)`: the
    /// model itself for a uniform entry, [`at_entry`](Self::at_entry) for a `wWaA` one. For
    /// passes that reuse the copy ([`forward_at`](Self::forward_at) makes none for a uniform
    /// entry).
    pub fn for_entry(&self, at: At) -> Model {
        match at.precision.as_uniform() {
            Some(_) => self.clone(),
            None => self.at_entry(at),
        }
    }

    /// A copy of the model that runs entry `at` whatever bit-width its `forward` is given (a
    /// uniform precision plan at `at`); [`crate::without_plan`] undoes it.
    pub fn at_entry(&self, at: At) -> Model {
        let plan = ResolvedPlan {
            layers: quantized_layers(self)
                .into_iter()
                .map(|l| (l, at))
                .collect(),
        };
        with_plan(self, &plan).expect("a plan of the model's own layers covers them")
    }

    /// Records the model's operations for the artifact's graph.
    pub(crate) fn trace(&self, t: &mut crate::deploy::Tracer) {
        match self {
            Self::CifarResNet(m) => m.trace(t),
            Self::ImageNetResNet(m) => m.trace(t),
            Self::MobileNetV1(m) => m.trace(t),
            Self::MobileNetV2(m) => m.trace(t),
        }
    }

    /// The static cost description of every layer for `h`×`w` inputs (see [`crate::cost`]).
    pub fn layer_shapes(&self, input: [usize; 2]) -> Vec<LayerShape> {
        match self {
            Self::CifarResNet(m) => m.layer_shapes(input),
            Self::ImageNetResNet(m) => m.layer_shapes(input),
            Self::MobileNetV1(m) => m.layer_shapes(input),
            Self::MobileNetV2(m) => m.layer_shapes(input),
        }
    }

    /// Calls `f` on every switchable BatchNorm.
    pub fn for_each_norm(&mut self, mut f: impl FnMut(&mut SwitchBatchNorm2d)) {
        self.visit_official(&mut |_, layer| {
            if let LayerMut::Norm(bn) = layer {
                f(bn);
            }
        });
    }
}

impl OfficialLayout for Model {
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>)) {
        match self {
            Self::CifarResNet(m) => m.visit_official(visit),
            Self::ImageNetResNet(m) => m.visit_official(visit),
            Self::MobileNetV1(m) => m.visit_official(visit),
            Self::MobileNetV2(m) => m.visit_official(visit),
        }
    }
}
