//! MobileNet-V2 as built by the official code (docs/method.md §8.2).

use adabits_quant::{BitPolicy, BitWidth, BitWidths};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use crate::TransformImages;
use crate::builder::{LayerBuilder, eight, make_divisible, pool_and_classify, stem_policy};
use crate::layout::stage_layer_names;
use crate::profile::{LayerShape, avg_pool_shape};
use crate::{ConvBnRelu, InputTransform, LayerMut, OfficialLayout, QLinear, QuantSettings};

/// The (expansion t, channels c, blocks n, first stride s) table.
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];

/// Configuration of a [`MobileNetV2`].
#[derive(Config, Debug)]
pub struct MobileNetV2Config {
    /// The bit-widths the model is trained for, in training order.
    pub bits: BitWidths,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Width multiplier; channels are rounded to a multiple of 8 (at least 8).
    #[config(default = 1.0)]
    pub width_mult: f64,
    /// Clip the linear-bottleneck outputs symmetrically to `[−α, α]` where they feed a quantized
    /// conv (the official `double_side`). Off (the default, parity P2): they pass through PACT's
    /// ReLU, an extra ReLU standard MobileNet-V2 does not have.
    #[config(default = false)]
    pub double_side: bool,
    /// Quantization settings of every layer.
    #[config(default = "QuantSettings::new()")]
    pub quant: QuantSettings,
    /// What is done to the input images: `round(255·x)` by default (official, P7).
    #[config(default = "InputTransform::Pixels")]
    pub input: InputTransform,
}

/// An inverted residual block: optional 1×1 expansion, 3×3 depthwise, linear 1×1 projection.
#[derive(Module, Debug)]
pub struct InvertedResidual {
    /// The expansion (absent when t = 1).
    pub expand: Option<ConvBnRelu>,
    /// The depthwise convolution.
    pub depthwise: ConvBnRelu,
    /// The linear projection: conv and BN, no ReLU.
    pub project: ConvBnRelu,
    /// Whether the input is added to the output.
    pub residual: bool,
}

impl InvertedResidual {
    fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(expand) = &self.expand {
            y = expand.forward(y, bits);
        }
        y = self.depthwise.forward(y, bits);
        y = self
            .project
            .bn
            .forward(self.project.conv.forward(y, bits), bits);
        if self.residual { y + x } else { y }
    }
}

/// MobileNet-V2 with quantized convolutions, switchable BatchNorm and a quantized classifier.
#[derive(Module, Debug)]
pub struct MobileNetV2 {
    stem: ConvBnRelu,
    blocks: Vec<InvertedResidual>,
    tail: ConvBnRelu,
    classifier: QLinear,
    #[module(skip)]
    input: InputTransform,
}

impl MobileNetV2Config {
    /// Creates the model with the official initialisation; seed the device for reproducibility.
    pub fn init(&self, device: &Device) -> MobileNetV2 {
        let b = LayerBuilder {
            bits: &self.bits,
            quant: &self.quant,
            device,
        };
        let body = BitPolicy::BODY;
        let ds = self.double_side;
        let stem_out = make_divisible(32.0 * self.width_mult);
        let stem = b.conv_bn([3, stem_out], 3, 2, 1, stem_policy(eight()), false);
        let mut blocks = Vec::new();
        let mut c_in = stem_out;
        for (t, c, n, s) in SETTINGS {
            let c_out = make_divisible(c as f64 * self.width_mult);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = c_in * t;
                blocks.push(InvertedResidual {
                    // The expansion reads the previous block's linear output.
                    expand: (t != 1).then(|| b.conv_bn([c_in, hidden], 1, 1, 1, body, ds)),
                    // The official code also passes `double_side` to the depthwise conv of the
                    // t = 1 block (whose input is the stem's ReLU output); no other depthwise.
                    depthwise: b.conv_bn([hidden, hidden], 3, stride, hidden, body, ds && t == 1),
                    project: b.conv_bn([hidden, c_out], 1, 1, 1, body, false),
                    residual: stride == 1 && c_in == c_out,
                });
                c_in = c_out;
            }
        }
        let last = make_divisible(1280.0 * self.width_mult.max(1.0));
        let tail = b.conv_bn([c_in, last], 1, 1, 1, body, ds);
        let classifier = b.classifier(last, self.num_classes, eight());
        MobileNetV2 {
            stem,
            blocks,
            tail,
            classifier,
            input: self.input.clone(),
        }
    }
}

impl OfficialLayout for MobileNetV2 {
    /// `head.{0,1}`; per block `stage_<s>_layer_<i>.body.{0,1}`, `.{3,4}`, `.{6,7}` for expand,
    /// depthwise and projection (`.{0,1}`, `.{3,4}` without expansion); `tail.{0,1}`;
    /// `classifier.0`: the official `q_mobilenet_v2.py` names.
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>)) {
        self.stem.visit_official("head", 0, visit);
        let names = stage_layer_names(SETTINGS.iter().map(|&(_, _, n, _)| n));
        for (name, block) in names.iter().zip(&mut self.blocks) {
            let body = format!("{name}.body");
            let mut i = 0;
            if let Some(expand) = &mut block.expand {
                expand.visit_official(&body, i, visit);
                i += 3;
            }
            block.depthwise.visit_official(&body, i, visit);
            block.project.visit_official(&body, i + 3, visit);
        }
        self.tail.visit_official("tail", 0, visit);
        visit("classifier.0", LayerMut::Linear(&mut self.classifier));
    }
}

impl MobileNetV2 {
    /// Records the model's operations for the artifact's graph.
    pub(crate) fn trace(&self, t: &mut crate::deploy::Tracer) {
        let mut x = self
            .stem
            .trace(t, "head", 0, crate::deploy::Tracer::INPUT, true);
        let names = stage_layer_names(SETTINGS.iter().map(|&(_, _, n, _)| n));
        for (name, block) in names.iter().zip(&self.blocks) {
            let body = format!("{name}.body");
            let mut y = x;
            let mut i = 0;
            if let Some(expand) = &block.expand {
                y = expand.trace(t, &body, i, y, true);
                i += 3;
            }
            y = block.depthwise.trace(t, &body, i, y, true);
            y = block.project.trace(t, &body, i + 3, y, false);
            x = if block.residual { t.add(y, x) } else { y };
        }
        let x = self.tail.trace(t, "tail", 0, x, true);
        t.pool_and_classify("classifier.0", x);
    }

    /// Logits at `bits` for images with values in `[0, 1]`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>, bits: BitWidth) -> Tensor<2> {
        let mut x = self.stem.forward(self.input.apply(images), bits);
        for block in &self.blocks {
            x = block.forward(x, bits);
        }
        let x = relu(self.tail.bn.forward(self.tail.conv.forward(x, bits), bits));
        pool_and_classify(x, &self.classifier, bits)
    }

    /// The static cost description of every layer for `h`×`w` inputs (see [`crate::cost`]).
    pub fn layer_shapes(&self, input: [usize; 2]) -> Vec<LayerShape> {
        let mut stem = self.stem.conv.layer_shape("stem", input);
        stem.first = true;
        let mut rows = vec![stem];
        let mut hw = self.stem.conv.output_size(input);
        for (i, block) in self.blocks.iter().enumerate() {
            if let Some(expand) = &block.expand {
                rows.push(expand.conv.layer_shape(format!("block{i}.expand"), hw));
            }
            rows.push(block.depthwise.conv.layer_shape(format!("block{i}.dw"), hw));
            hw = block.depthwise.conv.output_size(hw);
            rows.push(
                block
                    .project
                    .conv
                    .layer_shape(format!("block{i}.project"), hw),
            );
        }
        rows.push(self.tail.conv.layer_shape("tail", hw));
        let [_, d_in] = self.classifier.weight.dims();
        rows.push(avg_pool_shape(d_in, hw));
        rows.push(self.classifier.layer_shape("classifier"));
        rows
    }
}
