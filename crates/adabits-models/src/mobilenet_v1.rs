//! MobileNet-V1 as built by the official code (docs/method.md §8.1).

use adabits_quant::{BitPolicy, BitWidth, BitWidths};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::TransformImages;
use crate::builder::{LayerBuilder, eight, make_divisible, pool_and_classify, stem_policy};
use crate::layout::stage_layer_names;
use crate::profile::{LayerShape, avg_pool_shape};
use crate::{ConvBnRelu, InputTransform, LayerMut, OfficialLayout, QLinear, QuantSettings};

/// The (channels, blocks, first stride) of the five stages.
const STAGES: [(usize, usize, usize); 5] = [
    (64, 1, 1),
    (128, 2, 2),
    (256, 2, 2),
    (512, 6, 2),
    (1024, 2, 2),
];

/// Configuration of a [`MobileNetV1`].
#[derive(Config, Debug)]
pub struct MobileNetV1Config {
    /// The bit-widths the model is trained for, in training order.
    pub bits: BitWidths,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Width multiplier; channels are rounded to a multiple of 8 (at least 8).
    #[config(default = 1.0)]
    pub width_mult: f64,
    /// Quantization settings of every layer.
    #[config(default = "QuantSettings::new()")]
    pub quant: QuantSettings,
    /// What is done to the input images: `round(255·x)` by default (official, P7).
    #[config(default = "InputTransform::Pixels")]
    pub input: InputTransform,
}

/// MobileNet-V1: a 3×3 stem, 13 depthwise-separable blocks, average pooling and a classifier.
///
/// The stem is weight-only with weights at `max(b, 8)`; the classifier keeps weights at
/// `max(b, 8)` and quantizes its input at `b` (docs/method.md §5).
#[derive(Module, Debug)]
pub struct MobileNetV1 {
    stem: ConvBnRelu,
    /// (depthwise, pointwise) pairs.
    blocks: Vec<(ConvBnRelu, ConvBnRelu)>,
    classifier: QLinear,
    #[module(skip)]
    input: InputTransform,
}

impl MobileNetV1Config {
    /// Creates the model with the official initialisation; seed the device for reproducibility.
    pub fn init(&self, device: &Device) -> MobileNetV1 {
        let b = LayerBuilder {
            bits: &self.bits,
            quant: &self.quant,
            device,
        };
        let width = |c: usize| make_divisible(c as f64 * self.width_mult);
        let stem_out = width(32);
        let stem = b.conv_bn([3, stem_out], 3, 2, 1, stem_policy(eight()), false);
        let mut blocks = Vec::new();
        let mut c_in = stem_out;
        for (c, n, s) in STAGES {
            let c_out = width(c);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push((
                    b.conv_bn([c_in, c_in], 3, stride, c_in, BitPolicy::BODY, false),
                    b.conv_bn([c_in, c_out], 1, 1, 1, BitPolicy::BODY, false),
                ));
                c_in = c_out;
            }
        }
        let classifier = b.classifier(c_in, self.num_classes, eight());
        MobileNetV1 {
            stem,
            blocks,
            classifier,
            input: self.input.clone(),
        }
    }
}

impl OfficialLayout for MobileNetV1 {
    /// `head.{0,1}`, `stage_<s>_layer_<i>.body.{0,1}` (depthwise) and `.body.{3,4}` (pointwise),
    /// `classifier.0`: the official `q_mobilenet_v1.py` names.
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>)) {
        self.stem.visit_official("head", 0, visit);
        let names = stage_layer_names(STAGES.iter().map(|&(_, n, _)| n));
        for (name, (dw, pw)) in names.iter().zip(&mut self.blocks) {
            dw.visit_official(&format!("{name}.body"), 0, visit);
            pw.visit_official(&format!("{name}.body"), 3, visit);
        }
        visit("classifier.0", LayerMut::Linear(&mut self.classifier));
    }
}

impl MobileNetV1 {
    /// Records the model's operations for the artifact's graph.
    pub(crate) fn trace(&self, t: &mut crate::deploy::Tracer) {
        let mut x = self
            .stem
            .trace(t, "head", 0, crate::deploy::Tracer::INPUT, true);
        let names = stage_layer_names(STAGES.iter().map(|&(_, n, _)| n));
        for (name, (dw, pw)) in names.iter().zip(&self.blocks) {
            let body = format!("{name}.body");
            x = dw.trace(t, &body, 0, x, true);
            x = pw.trace(t, &body, 3, x, true);
        }
        t.pool_and_classify("classifier.0", x);
    }

    /// Logits at `bits` for images with values in `[0, 1]`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>, bits: BitWidth) -> Tensor<2> {
        let mut x = self.stem.forward(self.input.apply(images), bits);
        for (dw, pw) in &self.blocks {
            x = pw.forward(dw.forward(x, bits), bits);
        }
        pool_and_classify(x, &self.classifier, bits)
    }

    /// The static cost description of every layer for `h`×`w` inputs (see [`crate::cost`]).
    pub fn layer_shapes(&self, input: [usize; 2]) -> Vec<LayerShape> {
        let mut stem = self.stem.conv.layer_shape("stem", input);
        stem.first = true;
        let mut rows = vec![stem];
        let mut hw = self.stem.conv.output_size(input);
        for (i, (dw, pw)) in self.blocks.iter().enumerate() {
            rows.push(dw.conv.layer_shape(format!("block{i}.dw"), hw));
            hw = dw.conv.output_size(hw);
            rows.push(pw.conv.layer_shape(format!("block{i}.pw"), hw));
        }
        let [_, d_in] = self.classifier.weight.dims();
        rows.push(avg_pool_shape(d_in, hw));
        rows.push(self.classifier.layer_shape("classifier"));
        rows
    }
}
