//! CIFAR ResNet-20/32/44/56/110 in the official layout (docs/method.md §8.3).

use adabits_quant::{BitPolicy, BitWidth, BitWidths};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::TransformImages;
use crate::builder::{LayerBuilder, pool_and_classify, stem_policy};
use crate::deploy::Tracer;
use crate::profile::{LayerShape, avg_pool_shape};
use crate::{
    InputTransform, LayerMut, OfficialLayout, QConv2d, QLinear, QuantSettings, SwitchBatchNorm2d,
};

/// Configuration of a [`CifarResNet`].
#[derive(Config, Debug)]
pub struct CifarResNetConfig {
    /// Depth: 20, 32, 44, 56 or 110 (`6n + 2`).
    pub depth: usize,
    /// The bit-widths the model is trained for, in training order.
    pub bits: BitWidths,
    /// Output classes.
    #[config(default = 10)]
    pub num_classes: usize,
    /// Width multiplier of the stage widths 16, 32, 64.
    #[config(default = 1.0)]
    pub width_mult: f64,
    /// Quantization settings of every layer.
    #[config(default = "QuantSettings::new()")]
    pub quant: QuantSettings,
    /// What is done to the input images: `round(255·x)` by default (official, P7).
    #[config(default = "InputTransform::Pixels")]
    pub input: InputTransform,
}

/// A basic residual block: conv3x3 → BN → ReLU → conv3x3 → BN, plus the shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    conv1: QConv2d,
    bn1: SwitchBatchNorm2d,
    conv2: QConv2d,
    bn2: SwitchBatchNorm2d,
    /// Projection shortcut (quantized 1x1 conv + BN) when the shape changes.
    shortcut: Option<(QConv2d, SwitchBatchNorm2d)>,
}

impl BasicBlock {
    /// Assembles a block (the ImageNet ResNets share it).
    pub(crate) fn new(
        conv1: QConv2d,
        bn1: SwitchBatchNorm2d,
        conv2: QConv2d,
        bn2: SwitchBatchNorm2d,
        shortcut: Option<(QConv2d, SwitchBatchNorm2d)>,
    ) -> Self {
        Self {
            conv1,
            bn1,
            conv2,
            bn2,
            shortcut,
        }
    }

    /// Cost rows of the block for an input of size `hw`, and its output size.
    pub(crate) fn layer_shapes(&self, name: &str, hw: [usize; 2]) -> (Vec<LayerShape>, [usize; 2]) {
        let mut rows = vec![self.conv1.layer_shape(format!("{name}.conv1"), hw)];
        let next = self.conv1.output_size(hw);
        rows.push(self.conv2.layer_shape(format!("{name}.conv2"), next));
        if let Some((conv, _)) = &self.shortcut {
            rows.push(conv.layer_shape(format!("{name}.shortcut"), hw));
        }
        (rows, next)
    }

    /// Whether the block has a projection shortcut.
    pub(crate) fn has_shortcut(&self) -> bool {
        self.shortcut.is_some()
    }

    /// Hands out the layers under `prefix`, named by `names`: conv1, bn1, conv2, bn2 and the
    /// shortcut's conv and BatchNorm.
    pub(crate) fn visit_official(
        &mut self,
        prefix: &str,
        names: [&str; 6],
        visit: &mut dyn FnMut(&str, LayerMut<'_>),
    ) {
        visit(
            &format!("{prefix}.{}", names[0]),
            LayerMut::Conv(&mut self.conv1),
        );
        visit(
            &format!("{prefix}.{}", names[1]),
            LayerMut::Norm(&mut self.bn1),
        );
        visit(
            &format!("{prefix}.{}", names[2]),
            LayerMut::Conv(&mut self.conv2),
        );
        visit(
            &format!("{prefix}.{}", names[3]),
            LayerMut::Norm(&mut self.bn2),
        );
        if let Some((conv, bn)) = &mut self.shortcut {
            visit(&format!("{prefix}.{}", names[4]), LayerMut::Conv(conv));
            visit(&format!("{prefix}.{}", names[5]), LayerMut::Norm(bn));
        }
    }

    /// Records the block's operations on value `x` (names as in
    /// [`visit_official`](Self::visit_official)) and returns its output value.
    pub(crate) fn trace(&self, t: &mut Tracer, prefix: &str, names: [&str; 6], x: usize) -> usize {
        let name = |i: usize| format!("{prefix}.{}", names[i]);
        let y = t.conv_bn(&name(0), &name(1), x);
        let y = t.relu(y);
        let y = t.conv_bn(&name(2), &name(3), y);
        let skip = match &self.shortcut {
            Some(_) => t.conv_bn(&name(4), &name(5), x),
            None => x,
        };
        let sum = t.add(y, skip);
        t.relu(sum)
    }

    pub(crate) fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        let y = relu(self.bn1.forward(self.conv1.forward(x.clone(), bits), bits));
        let y = self.bn2.forward(self.conv2.forward(y, bits), bits);
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(conv.forward(x, bits), bits),
            None => x,
        };
        relu(y + skip)
    }
}

/// CIFAR ResNet with quantized convolutions, switchable BatchNorm and a quantized classifier.
///
/// The first conv is weight-only with weights at `max(bits)`; the classifier keeps its weights at
/// `max(bits)` and quantizes its input at the active bit-width (docs/method.md §5).
#[derive(Module, Debug)]
pub struct CifarResNet {
    stem: QConv2d,
    stem_bn: SwitchBatchNorm2d,
    blocks: Vec<BasicBlock>,
    classifier: QLinear,
    #[module(skip)]
    input: InputTransform,
}

impl CifarResNetConfig {
    /// Creates the model with the official initialisation; seed the device for reproducibility.
    ///
    /// # Panics
    ///
    /// Panics unless `depth` is `6n + 2` with `n ≥ 1`.
    pub fn init(&self, device: &Device) -> CifarResNet {
        assert!(
            self.depth >= 8 && (self.depth - 2).is_multiple_of(6),
            "CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), got {}",
            self.depth
        );
        let n = (self.depth - 2) / 6;
        let b = LayerBuilder {
            bits: &self.bits,
            quant: &self.quant,
            device,
        };
        let widths = [16, 32, 64].map(|w| ((w as f64 * self.width_mult).round() as usize).max(1));
        let top = self.bits.max().weight;
        let conv =
            |c_in, c_out, k, stride| b.conv([c_in, c_out], k, stride, 1, BitPolicy::BODY, false);
        let mut blocks = Vec::new();
        let mut c_in = widths[0];
        for (stage, &c_out) in widths.iter().enumerate() {
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let shortcut = (stride != 1 || c_in != c_out)
                    .then(|| (conv(c_in, c_out, 1, stride), b.bn(c_out)));
                blocks.push(BasicBlock {
                    conv1: conv(c_in, c_out, 3, stride),
                    bn1: b.bn(c_out),
                    conv2: conv(c_out, c_out, 3, 1),
                    bn2: b.bn(c_out),
                    shortcut,
                });
                c_in = c_out;
            }
        }
        CifarResNet {
            stem: b.conv([3, widths[0]], 3, 1, 1, stem_policy(top), false),
            stem_bn: b.bn(widths[0]),
            blocks,
            classifier: b.classifier(widths[2], self.num_classes, top),
            input: self.input.clone(),
        }
    }
}

impl OfficialLayout for CifarResNet {
    /// `head.0`/`head.1` (stem), `stage_<s>_layer_<i>.body.{0,1,3,4}` and `.shortcut.{0,1}`,
    /// `classifier.0`: the official `q_resnet_cifar.py` names.
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>)) {
        visit("head.0", LayerMut::Conv(&mut self.stem));
        visit("head.1", LayerMut::Norm(&mut self.stem_bn));
        let per_stage = self.blocks.len() / 3;
        for (k, block) in self.blocks.iter_mut().enumerate() {
            block.visit_official(&block_prefix(k, per_stage), BLOCK_NAMES, visit);
        }
        visit("classifier.0", LayerMut::Linear(&mut self.classifier));
    }
}

impl CifarResNet {
    /// The static cost description of every layer for `h`×`w` inputs (see [`crate::cost`]).
    pub fn layer_shapes(&self, input: [usize; 2]) -> Vec<LayerShape> {
        let mut stem = self.stem.layer_shape("stem", input);
        stem.first = true;
        let mut rows = vec![stem];
        let mut hw = self.stem.output_size(input);
        for (i, block) in self.blocks.iter().enumerate() {
            let (block_rows, next) = block.layer_shapes(&format!("block{i}"), hw);
            rows.extend(block_rows);
            hw = next;
        }
        let [_, d_in] = self.classifier.weight.dims();
        rows.push(avg_pool_shape(d_in, hw));
        rows.push(self.classifier.layer_shape("classifier"));
        rows
    }

    /// Records the model's operations for the artifact's graph.
    pub(crate) fn trace(&self, t: &mut Tracer) {
        let x = t.conv_bn("head.0", "head.1", Tracer::INPUT);
        let mut x = t.relu(x);
        let per_stage = self.blocks.len() / 3;
        for (k, block) in self.blocks.iter().enumerate() {
            x = block.trace(t, &block_prefix(k, per_stage), BLOCK_NAMES, x);
        }
        t.pool_and_classify("classifier.0", x);
    }

    /// Logits at `bits` for images with values in `[0, 1]`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>, bits: BitWidth) -> Tensor<2> {
        let x = self.input.apply(images);
        let mut x = relu(self.stem_bn.forward(self.stem.forward(x, bits), bits));
        for block in &self.blocks {
            x = block.forward(x, bits);
        }
        pool_and_classify(x, &self.classifier, bits)
    }
}

/// The official names of a block's layers: conv1, bn1, conv2, bn2 and the shortcut's.
const BLOCK_NAMES: [&str; 6] = [
    "body.0",
    "body.1",
    "body.3",
    "body.4",
    "shortcut.0",
    "shortcut.1",
];

/// The official name of block `k` of a CIFAR ResNet with `per_stage` blocks per stage.
fn block_prefix(k: usize, per_stage: usize) -> String {
    format!("stage_{}_layer_{}", k / per_stage, k % per_stage)
}
