//! ImageNet ResNets in the torchvision layout (docs/method.md §8.4: the official code has none; this
//! is the plausible reconstruction the specification describes).

use adabits_quant::{BitPolicy, BitWidth, BitWidths};
use burn::config::Config;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

use crate::TransformImages;
use crate::builder::{LayerBuilder, eight, pool_and_classify, stem_policy};
use crate::deploy::Tracer;
use crate::profile::{LayerShape, avg_pool_shape};
use crate::{
    BasicBlock, InputTransform, LayerMut, OfficialLayout, QConv2d, QLinear, QuantSettings,
    SwitchBatchNorm2d,
};

/// Configuration of an [`ImageNetResNet`].
#[derive(Config, Debug)]
pub struct ImageNetResNetConfig {
    /// Depth: 18 or 34 (basic blocks), 50, 101 or 152 (bottlenecks).
    pub depth: usize,
    /// The bit-widths the model is trained for, in training order.
    pub bits: BitWidths,
    /// Output classes.
    #[config(default = 1000)]
    pub num_classes: usize,
    /// Width multiplier of the stage widths 64, 128, 256, 512.
    #[config(default = 1.0)]
    pub width_mult: f64,
    /// Quantization settings of every layer.
    #[config(default = "QuantSettings::new()")]
    pub quant: QuantSettings,
    /// What is done to the input images: `round(255·x)` by default (official, P7).
    #[config(default = "InputTransform::Pixels")]
    pub input: InputTransform,
}

/// A bottleneck block: 1×1 → 3×3 (stride) → 1×1 (×4 channels), plus the shortcut, then ReLU.
#[derive(Module, Debug)]
pub struct Bottleneck {
    conv1: QConv2d,
    bn1: SwitchBatchNorm2d,
    conv2: QConv2d,
    bn2: SwitchBatchNorm2d,
    conv3: QConv2d,
    bn3: SwitchBatchNorm2d,
    shortcut: Option<(QConv2d, SwitchBatchNorm2d)>,
}

impl Bottleneck {
    fn forward(&self, x: Tensor<4>, bits: BitWidth) -> Tensor<4> {
        let y = relu(self.bn1.forward(self.conv1.forward(x.clone(), bits), bits));
        let y = relu(self.bn2.forward(self.conv2.forward(y, bits), bits));
        let y = self.bn3.forward(self.conv3.forward(y, bits), bits);
        let skip = match &self.shortcut {
            Some((conv, bn)) => bn.forward(conv.forward(x, bits), bits),
            None => x,
        };
        relu(y + skip)
    }

    fn layer_shapes(&self, name: &str, hw: [usize; 2]) -> (Vec<LayerShape>, [usize; 2]) {
        let mut rows = vec![self.conv1.layer_shape(format!("{name}.conv1"), hw)];
        rows.push(self.conv2.layer_shape(format!("{name}.conv2"), hw));
        let next = self.conv2.output_size(hw);
        rows.push(self.conv3.layer_shape(format!("{name}.conv3"), next));
        if let Some((conv, _)) = &self.shortcut {
            rows.push(conv.layer_shape(format!("{name}.shortcut"), hw));
        }
        (rows, next)
    }
}

/// A torchvision-style ResNet: 7×7 stem (weight-only, 8-bit weights), 3×3 max pool, four stages,
/// average pooling and a classifier with weights at `max(b, 8)`.
#[derive(Module, Debug)]
pub struct ImageNetResNet {
    stem: QConv2d,
    stem_bn: SwitchBatchNorm2d,
    basic: Vec<BasicBlock>,
    bottlenecks: Vec<Bottleneck>,
    classifier: QLinear,
    #[module(skip)]
    input: InputTransform,
}

impl ImageNetResNetConfig {
    /// Creates the model with the official initialisation; seed the device for reproducibility.
    ///
    /// # Panics
    ///
    /// Panics unless `depth` is 18, 34, 50, 101 or 152.
    pub fn init(&self, device: &Device) -> ImageNetResNet {
        let (bottleneck, layers) = match self.depth {
            18 => (false, [2, 2, 2, 2]),
            34 => (false, [3, 4, 6, 3]),
            50 => (true, [3, 4, 6, 3]),
            101 => (true, [3, 4, 23, 3]),
            152 => (true, [3, 8, 36, 3]),
            other => panic!("ImageNet ResNet depth must be 18, 34, 50, 101 or 152, got {other}"),
        };
        let b = LayerBuilder {
            bits: &self.bits,
            quant: &self.quant,
            device,
        };
        let conv =
            |c_in, c_out, k, stride| b.conv([c_in, c_out], k, stride, 1, BitPolicy::BODY, false);
        let bn = |c| b.bn(c);
        let width = |c: usize| ((c as f64 * self.width_mult).round() as usize).max(1);
        let stem_out = width(64);
        let mut basic = Vec::new();
        let mut bottlenecks = Vec::new();
        let mut c_in = stem_out;
        for (stage, &n) in layers.iter().enumerate() {
            let planes = width(64 << stage);
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let c_out = if bottleneck { planes * 4 } else { planes };
                let shortcut = (stride != 1 || c_in != c_out)
                    .then(|| (conv(c_in, c_out, 1, stride), bn(c_out)));
                if bottleneck {
                    bottlenecks.push(Bottleneck {
                        conv1: conv(c_in, planes, 1, 1),
                        bn1: bn(planes),
                        conv2: conv(planes, planes, 3, stride),
                        bn2: bn(planes),
                        conv3: conv(planes, c_out, 1, 1),
                        bn3: bn(c_out),
                        shortcut,
                    });
                } else {
                    basic.push(BasicBlock::new(
                        conv(c_in, c_out, 3, stride),
                        bn(c_out),
                        conv(c_out, c_out, 3, 1),
                        bn(c_out),
                        shortcut,
                    ));
                }
                c_in = c_out;
            }
        }
        ImageNetResNet {
            stem: b.conv([3, stem_out], 7, 2, 1, stem_policy(eight()), false),
            stem_bn: bn(stem_out),
            basic,
            bottlenecks,
            classifier: b.classifier(c_in, self.num_classes, eight()),
            input: self.input.clone(),
        }
    }
}

const MAX_POOL: MaxPoolOptions<2> = MaxPoolOptions {
    kernel_size: [3, 3],
    stride: [2, 2],
    padding: [(1, 1), (1, 1)],
    dilation: [1, 1],
    ceil_mode: false,
};

/// torchvision's block names: `layer<s>.<i>` with stages counted from 1, a new stage starting at
/// every block after the first that has a projection shortcut.
fn torchvision_block_names<'a>(
    shortcuts: impl Iterator<Item = bool> + 'a,
) -> impl Iterator<Item = String> + 'a {
    let (mut stage, mut index) = (1, 0);
    shortcuts.enumerate().map(move |(k, shortcut)| {
        if k > 0 && shortcut {
            stage += 1;
            index = 0;
        }
        let name = format!("layer{stage}.{index}");
        index += 1;
        name
    })
}

impl OfficialLayout for ImageNetResNet {
    /// The official code has no ImageNet ResNet; this is torchvision's layout with the official
    /// per-layer additions: `conv1`, `bn1`, `layer<s>.<i>.{conv1,bn1,conv2,bn2[,conv3,bn3]}`,
    /// `layer<s>.<i>.downsample.{0,1}`, `fc`, each conv and `fc` with an `alpha` and each
    /// BatchNorm as `bn.<i>.*`. A torchvision full-precision checkpoint (plain BatchNorm keys)
    /// imports with [`crate::ImportMode::FullPrecision`].
    fn visit_official(&mut self, visit: &mut dyn FnMut(&str, LayerMut<'_>)) {
        visit("conv1", LayerMut::Conv(&mut self.stem));
        visit("bn1", LayerMut::Norm(&mut self.stem_bn));
        let names: Vec<String> =
            torchvision_block_names(self.basic.iter().map(BasicBlock::has_shortcut)).collect();
        for (name, block) in names.iter().zip(&mut self.basic) {
            block.visit_official(name, BASIC_NAMES, visit);
        }
        let names: Vec<String> =
            torchvision_block_names(self.bottlenecks.iter().map(|b| b.shortcut.is_some()))
                .collect();
        for (name, block) in names.iter().zip(&mut self.bottlenecks) {
            let [c1, b1, c2, b2, c3, b3, dc, db] = bottleneck_names(name);
            visit(&c1, LayerMut::Conv(&mut block.conv1));
            visit(&b1, LayerMut::Norm(&mut block.bn1));
            visit(&c2, LayerMut::Conv(&mut block.conv2));
            visit(&b2, LayerMut::Norm(&mut block.bn2));
            visit(&c3, LayerMut::Conv(&mut block.conv3));
            visit(&b3, LayerMut::Norm(&mut block.bn3));
            if let Some((conv, bn)) = &mut block.shortcut {
                visit(&dc, LayerMut::Conv(conv));
                visit(&db, LayerMut::Norm(bn));
            }
        }
        visit("fc", LayerMut::Linear(&mut self.classifier));
    }
}

impl ImageNetResNet {
    /// Records the model's operations for the artifact's graph.
    pub(crate) fn trace(&self, t: &mut Tracer) {
        let x = t.conv_bn("conv1", "bn1", Tracer::INPUT);
        let x = t.relu(x);
        let pool = MAX_POOL;
        let mut x = t.max_pool(
            x,
            pool.kernel_size,
            pool.stride,
            [pool.padding[0].0, pool.padding[1].0],
        );
        let names: Vec<String> =
            torchvision_block_names(self.basic.iter().map(BasicBlock::has_shortcut)).collect();
        for (name, block) in names.iter().zip(&self.basic) {
            x = block.trace(t, name, BASIC_NAMES, x);
        }
        let names: Vec<String> =
            torchvision_block_names(self.bottlenecks.iter().map(|b| b.shortcut.is_some()))
                .collect();
        for (name, block) in names.iter().zip(&self.bottlenecks) {
            let [c1, b1, c2, b2, c3, b3, dc, db] = bottleneck_names(name);
            let y = t.conv_bn(&c1, &b1, x);
            let y = t.relu(y);
            let y = t.conv_bn(&c2, &b2, y);
            let y = t.relu(y);
            let y = t.conv_bn(&c3, &b3, y);
            let skip = match &block.shortcut {
                Some(_) => t.conv_bn(&dc, &db, x),
                None => x,
            };
            let sum = t.add(y, skip);
            x = t.relu(sum);
        }
        t.pool_and_classify("fc", x);
    }

    /// Logits at `bits` for images with values in `[0, 1]`.
    ///
    /// # Shapes
    ///
    /// `images`: `[batch, 3, h, w]`; output `[batch, num_classes]`.
    pub fn forward(&self, images: Tensor<4>, bits: BitWidth) -> Tensor<2> {
        let x = self.input.apply(images);
        let x = relu(self.stem_bn.forward(self.stem.forward(x, bits), bits));
        let mut x = max_pool2d(x, MAX_POOL);
        for block in &self.basic {
            x = block.forward(x, bits);
        }
        for block in &self.bottlenecks {
            x = block.forward(x, bits);
        }
        pool_and_classify(x, &self.classifier, bits)
    }

    /// The static cost description of every layer for `h`×`w` inputs (see [`crate::cost`]).
    /// The max pool has no counting rule in the official profiler and is left out.
    pub fn layer_shapes(&self, input: [usize; 2]) -> Vec<LayerShape> {
        let mut stem = self.stem.layer_shape("stem", input);
        stem.first = true;
        let mut rows = vec![stem];
        let [h, w] = self.stem.output_size(input);
        let mut hw = [(h - 1) / 2 + 1, (w - 1) / 2 + 1];
        for (i, block) in self.basic.iter().enumerate() {
            let (block_rows, next) = block.layer_shapes(&format!("block{i}"), hw);
            rows.extend(block_rows);
            hw = next;
        }
        for (i, block) in self.bottlenecks.iter().enumerate() {
            let (block_rows, next) = block.layer_shapes(&format!("block{i}"), hw);
            rows.extend(block_rows);
            hw = next;
        }
        let [_, d_in] = self.classifier.weight.dims();
        rows.push(avg_pool_shape(d_in, hw));
        rows.push(self.classifier.layer_shape("classifier"));
        rows
    }
}

/// The torchvision names of a basic block's layers: conv1, bn1, conv2, bn2 and the shortcut's.
const BASIC_NAMES: [&str; 6] = [
    "conv1",
    "bn1",
    "conv2",
    "bn2",
    "downsample.0",
    "downsample.1",
];

/// The torchvision names of bottleneck `name`'s layers: three convs and BatchNorms, then the
/// shortcut's.
fn bottleneck_names(name: &str) -> [String; 8] {
    [
        "conv1",
        "bn1",
        "conv2",
        "bn2",
        "conv3",
        "bn3",
        "downsample.0",
        "downsample.1",
    ]
    .map(|layer| format!("{name}.{layer}"))
}
