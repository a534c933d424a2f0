//! The model an artifact describes, as a graph a runtime without the training code can run: one
//! list of nodes in execution order, whose layers (convolutions, linear layers, BatchNorms) own
//! the payload's parts in that order, each quantized layer pointing at a per-bit-width table
//! of the bit-widths it resolves to (its policy).
//!
//! Export in `adabits-models` writes it from the model; [`Graph::check`] checks a read one, so
//! a runtime can trust every index and shape in it. It is written compactly (defaults left
//! out, a node's input left out when it is the previous node's) because it travels in every
//! artifact.

use serde::{Deserialize, Serialize};

use crate::EntryBits;

/// A unit quantizer scheme (docs/method.md §2), as `adabits-quant` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// `k/(2^b − 1)`, DoReFa.
    Original,
    /// `k/2^b`, AdaBits.
    Modified,
    /// `(k + ½)/2^b`.
    Centered,
}

/// How a quantized linear layer forms its output in evaluation (docs/method.md §3, P1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinearEval {
    /// The official form: weight `ŵ`, bias `bias / s` (logits divided by `s`).
    Official,
    /// The training form: weight `s·ŵ`, bias `bias`.
    TrainForm,
}

/// What the network does to its input images (values in `[0, 1]`) before the first layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputTransform {
    /// `round(255·x)`: integer pixel values 0..255, no mean or std (the official input, P7).
    Pixels,
    /// `x` itself.
    Unit,
    /// `(x − mean) / std` per channel (the official `normalize` flag); see
    /// [`InputTransform::imagenet`].
    Normalize {
        /// Per-channel mean.
        mean: [f64; 3],
        /// Per-channel standard deviation.
        std: [f64; 3],
    },
}

impl InputTransform {
    /// Normalisation with the ImageNet statistics torchvision uses.
    pub fn imagenet() -> Self {
        Self::Normalize {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// What a quantized layer uses at one of the model's bit-widths; written as the array
/// `[weight_bits, act_bits, alpha]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "[usize; 3]", into = "[usize; 3]")]
pub struct Resolved {
    /// Weight bit-width (1..=8).
    pub weight_bits: u8,
    /// Activation bit-width: 1..=8, or 32 when the input is used as it is (a weight-only layer).
    pub act_bits: u8,
    /// Which clipping level (index into the layer's `alphas`).
    pub alpha: usize,
}

impl From<[usize; 3]> for Resolved {
    fn from([w, a, alpha]: [usize; 3]) -> Self {
        // Out-of-range values become 0, which `Graph::check` refuses.
        let bits = |b: usize| u8::try_from(b).unwrap_or(0);
        Self {
            weight_bits: bits(w),
            act_bits: bits(a),
            alpha,
        }
    }
}

impl From<Resolved> for [usize; 3] {
    fn from(r: Resolved) -> Self {
        [usize::from(r.weight_bits), usize::from(r.act_bits), r.alpha]
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_one(v: &usize) -> bool {
    *v == 1
}

fn one() -> usize {
    1
}

fn ones() -> [usize; 2] {
    [1, 1]
}

fn is_ones(v: &[usize; 2]) -> bool {
    *v == [1, 1]
}

fn is_zeros(v: &[usize; 2]) -> bool {
    *v == [0, 0]
}

/// A quantized convolution (PyTorch weight layout `[out, in/groups, kh, kw]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvNode {
    /// The layer's name (its official state-dict prefix).
    pub name: String,
    /// The input value; `None`: the previous node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<usize>,
    /// Input and output channels.
    pub channels: [usize; 2],
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Stride.
    #[serde(default = "ones", skip_serializing_if = "is_ones")]
    pub stride: [usize; 2],
    /// Symmetric zero padding.
    #[serde(default, skip_serializing_if = "is_zeros")]
    pub padding: [usize; 2],
    /// Dilation: the spacing between the kernel's taps (1, the default, for adjacent taps).
    #[serde(default = "ones", skip_serializing_if = "is_ones")]
    pub dilation: [usize; 2],
    /// Groups.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub groups: usize,
    /// Whether the layer has a bias.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bias: bool,
    /// Whether the input is clipped to `[−α, α]` (double-sided PACT) instead of `[0, α]`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub double_sided: bool,
    /// Which of the graph's `policies` the layer follows.
    pub policy: usize,
    /// The name of the switchable BatchNorm that follows the convolution, if any: folded into
    /// a per-channel `x·scale + bias` per entry (the graph's `norm` table says which entry
    /// each bit-width uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<String>,
}

impl ConvNode {
    /// The number of weights.
    pub fn weights(&self) -> usize {
        self.channels[1] * (self.channels[0] / self.groups.max(1)) * self.kernel[0] * self.kernel[1]
    }

    /// The output size for an `h`×`w` input, `None` where the (dilated) kernel does not fit.
    pub fn output_size(&self, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
        let out = |size: usize, i: usize| {
            let padded = size + 2 * self.padding[i];
            let span = self.dilation[i] * (self.kernel[i].max(1) - 1) + 1;
            (padded >= span).then(|| (padded - span) / self.stride[i] + 1)
        };
        Some([out(h, 0)?, out(w, 1)?])
    }
}

/// A quantized linear layer (weight `[out, in]`) on a `[batch, features]` value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearNode {
    /// The layer's name.
    pub name: String,
    /// The input value; `None`: the previous node's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<usize>,
    /// Input and output features.
    pub features: [usize; 2],
    /// Whether the layer has a bias.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bias: bool,
    /// Which of the graph's `policies` the layer follows.
    pub policy: usize,
}

/// One operation of the graph. Value 0 is the transformed input; the `i`-th node produces
/// value `i + 1`, and may only read values produced before it. The layers (convolutions with
/// their BatchNorms, linear layers) own the payload's parts in node order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Node {
    /// A quantized convolution (its input quantized at the layer's activation bit-width), with
    /// its BatchNorm if it has one.
    Conv(ConvNode),
    /// A quantized linear layer.
    Linear(LinearNode),
    /// `max(x, 0)`.
    Relu {
        /// The input value; `None`: the previous node's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<usize>,
    },
    /// `a + b`, of equal shapes.
    Add {
        /// The first operand.
        a: usize,
        /// The second operand.
        b: usize,
    },
    /// Max pooling with implicit `−∞` padding.
    MaxPool {
        /// The input value; `None`: the previous node's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<usize>,
        /// Window height and width.
        kernel: [usize; 2],
        /// Stride.
        stride: [usize; 2],
        /// Padding.
        padding: [usize; 2],
    },
    /// Global average pooling: `[batch, c, h, w]` to `[batch, c]`.
    GlobalAvgPool {
        /// The input value; `None`: the previous node's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<usize>,
    },
}

impl Node {
    /// The node's name, if it is a layer with parameters.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Conv(c) => Some(&c.name),
            Self::Linear(l) => Some(&l.name),
            _ => None,
        }
    }

    /// The values the node reads, where node `index` sits at position `index`.
    pub fn inputs(&self, index: usize) -> Vec<usize> {
        let or_previous = |input: &Option<usize>| input.unwrap_or(index);
        match self {
            Self::Conv(ConvNode { input, .. })
            | Self::Linear(LinearNode { input, .. })
            | Self::Relu { input }
            | Self::MaxPool { input, .. }
            | Self::GlobalAvgPool { input } => vec![or_previous(input)],
            Self::Add { a, b } => vec![*a, *b],
        }
    }
}

/// Which BatchNorm entry each bit-width uses (every BatchNorm of a model shares the rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NormTable {
    /// Entries stored per BatchNorm.
    pub entries: usize,
    /// The entry of each bit-width of the model, in its order.
    pub resolved: Vec<usize>,
}

/// The model an artifact holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    /// The model's entries (bit-widths, or `wWaA` pairs), in its (training) order.
    pub bits: Vec<EntryBits>,
    /// The weight scheme.
    pub weight_scheme: Scheme,
    /// The activation scheme.
    pub act_scheme: Scheme,
    /// How the linear layers form their output.
    pub linear_eval: LinearEval,
    /// Input channels.
    pub in_channels: usize,
    /// The input height and width the model was trained and profiled at (any size its layers
    /// fit can be run).
    pub input_size: [usize; 2],
    /// The input transform.
    pub input: InputTransform,
    /// The distinct per-bit-width tables of the quantized layers: one entry per bit-width of
    /// the model, in its order.
    pub policies: Vec<Vec<Resolved>>,
    /// Clipping levels stored per quantized layer (one per bit-width, or one shared).
    pub alphas: usize,
    /// The BatchNorms' entry table.
    pub norm: NormTable,
    /// The operations, in execution order; the last one's value is the output (logits).
    pub nodes: Vec<Node>,
}

/// The most channels (or features) a layer may have: the sizes a file claims are checked before
/// anything is allocated for them.
pub const MAX_CHANNELS: usize = 1 << 16;
/// The largest kernel, stride or padding.
pub const MAX_WINDOW: usize = 1 << 10;
/// The largest input side.
pub const MAX_SIDE: usize = 1 << 14;
/// The most values a layer's output may hold per image.
pub const MAX_ELEMENTS: usize = 1 << 28;
/// The most clipping levels or BatchNorm entries per layer.
pub const MAX_ENTRIES: usize = 256;

/// The shape of a value: `[c, h, w]` maps or `[features]` vectors (per image).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A `[c, h, w]` feature map.
    Map([usize; 3]),
    /// A `[features]` vector.
    Vector(usize),
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Map([c, h, w]) => write!(f, "[{c}, {h}, {w}]"),
            Self::Vector(n) => write!(f, "[{n}]"),
        }
    }
}

impl Graph {
    /// The nodes with parameters, in payload order.
    pub fn layers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.name().is_some())
    }

    /// The names of the stored layers in payload order: each convolution, then its
    /// BatchNorm, and the linear layers.
    pub fn layer_names(&self) -> impl Iterator<Item = &str> {
        self.layers().flat_map(|node| {
            let norm = match node {
                Node::Conv(c) => c.norm.as_deref(),
                _ => None,
            };
            node.name().into_iter().chain(norm)
        })
    }

    /// The position of `entry` in the model's list.
    pub fn position(&self, entry: EntryBits) -> Option<usize> {
        self.bits.iter().position(|&e| e == entry)
    }

    /// The highest entry of the list (by weight bit-width, then activation bit-width): the one
    /// the runtimes start at.
    pub fn top(&self) -> Option<EntryBits> {
        self.bits.iter().copied().max()
    }

    /// Whether every entry has weights and activations at one bit-width (an artifact of
    /// version 3 holds only such lists).
    pub fn is_uniform(&self) -> bool {
        self.bits.iter().all(|e| e.as_uniform().is_some())
    }

    /// The list as it is written on the command line: `8,w4a8,4`.
    pub fn list(&self) -> String {
        self.bits
            .iter()
            .map(EntryBits::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The resolved table of policy `i` at the model's bit-width position `position`.
    pub fn resolved(&self, policy: usize, position: usize) -> Option<Resolved> {
        self.policies.get(policy)?.get(position).copied()
    }

    /// Checks that the graph is well formed for `[h, w]` inputs and returns the shape of every
    /// value (value 0 first): every value is read after it is produced, every shape fits, every
    /// layer's sizes and table indices are in range, and the last value is a vector.
    ///
    /// # Errors
    ///
    /// A sentence naming the node and what is wrong.
    pub fn check(&self, input: [usize; 2]) -> Result<Vec<Shape>, String> {
        self.check_tables()?;
        if !(1..=MAX_CHANNELS).contains(&self.in_channels)
            || input.iter().any(|&s| s == 0 || s > MAX_SIDE)
        {
            return Err(format!(
                "an input of {} channels at {}×{}: expected 1 to {MAX_CHANNELS} channels and sides of 1 to {MAX_SIDE}",
                self.in_channels, input[0], input[1]
            ));
        }
        let mut shapes = vec![Shape::Map([self.in_channels, input[0], input[1]])];
        for (i, node) in self.nodes.iter().enumerate() {
            let what = node
                .name()
                .map_or(format!("node {i}"), |n| format!("layer `{n}`"));
            let ins = node.inputs(i);
            let mut read = Vec::with_capacity(ins.len());
            for v in ins {
                read.push(shapes.get(v).copied().ok_or_else(|| {
                    format!("{what} reads value {v}, which is not produced before it")
                })?);
            }
            let map = |s: Shape| match s {
                Shape::Map(m) => Ok(m),
                Shape::Vector(_) => Err(format!("{what} needs a feature map, its input is {s}")),
            };
            let shape = match node {
                Node::Conv(conv) => {
                    let [c, h, w] = map(read[0])?;
                    let [ci, co] = conv.channels;
                    let valid = conv.groups > 0
                        && (1..=MAX_CHANNELS).contains(&ci)
                        && (1..=MAX_CHANNELS).contains(&co)
                        && conv.kernel.iter().all(|&k| k <= MAX_WINDOW)
                        && conv.stride.iter().all(|&s| s <= MAX_WINDOW)
                        && conv.padding.iter().all(|&p| p <= MAX_WINDOW)
                        && conv.dilation.iter().all(|&d| (1..=MAX_WINDOW).contains(&d))
                        && ci % conv.groups == 0
                        && co % conv.groups == 0
                        && conv.kernel.iter().all(|&k| k > 0)
                        && conv.stride.iter().all(|&s| s > 0)
                        && self.policy_fits(conv.policy);
                    if !valid {
                        return Err(format!("{what}: inconsistent sizes or bit-widths"));
                    }
                    if c != ci {
                        return Err(format!("{what} takes {ci} channels, its input has {c}"));
                    }
                    let [ho, wo] = conv.output_size([h, w]).ok_or_else(|| {
                        format!("{what}: the kernel does not fit a {h}×{w} input")
                    })?;
                    Shape::Map([co, ho, wo])
                }
                Node::Linear(linear) => {
                    let [fi, fo] = linear.features;
                    if !(1..=MAX_CHANNELS).contains(&fi)
                        || !(1..=MAX_CHANNELS).contains(&fo)
                        || !self.policy_fits(linear.policy)
                    {
                        return Err(format!("{what}: inconsistent sizes or bit-widths"));
                    }
                    if read[0] != Shape::Vector(fi) {
                        return Err(format!("{what} takes [{fi}], its input is {}", read[0]));
                    }
                    Shape::Vector(fo)
                }
                Node::Relu { .. } => read[0],
                Node::Add { .. } => {
                    if read[0] != read[1] {
                        return Err(format!(
                            "{what} adds values of shapes {} and {}",
                            read[0], read[1]
                        ));
                    }
                    read[0]
                }
                Node::MaxPool {
                    kernel,
                    stride,
                    padding,
                    ..
                } => {
                    let [c, h, w] = map(read[0])?;
                    let out = |size: usize, d: usize| {
                        let padded = size + 2 * padding[d];
                        (kernel[d] <= MAX_WINDOW
                            && stride[d] <= MAX_WINDOW
                            && kernel[d] > 0
                            && stride[d] > 0
                            && padding[d] < kernel[d]
                            && padded >= kernel[d])
                            .then(|| (padded - kernel[d]) / stride[d] + 1)
                    };
                    match (out(h, 0), out(w, 1)) {
                        (Some(ho), Some(wo)) => Shape::Map([c, ho, wo]),
                        _ => return Err(format!("{what}: a max pool that does not fit")),
                    }
                }
                Node::GlobalAvgPool { .. } => Shape::Vector(map(read[0])?[0]),
            };
            let elements = match shape {
                Shape::Map([c, h, w]) => c.checked_mul(h).and_then(|x| x.checked_mul(w)),
                Shape::Vector(n) => Some(n),
            };
            if elements.is_none_or(|e| e > MAX_ELEMENTS) {
                return Err(format!(
                    "{what} makes a value of shape {shape}, above the {MAX_ELEMENTS} values per image this runtime takes"
                ));
            }
            shapes.push(shape);
        }
        match shapes.last() {
            Some(Shape::Vector(_)) if !self.nodes.is_empty() => Ok(shapes),
            _ => Err("the graph's last value is not a vector of logits".into()),
        }
    }

    /// Whether policy `i` exists.
    fn policy_fits(&self, i: usize) -> bool {
        i < self.policies.len()
    }

    /// The checks of the model-wide tables: the bit-widths, every policy and the BatchNorm
    /// table have one valid entry per bit-width.
    fn check_tables(&self) -> Result<(), String> {
        let n = self.bits.len();
        if n == 0 {
            return Err("an empty list of bit-widths: expected one or more entries".into());
        }
        if let Some((i, _)) = self
            .bits
            .iter()
            .enumerate()
            .find(|(i, e)| self.bits[..*i].contains(e))
        {
            return Err(format!(
                "the list {}: entry {i} repeats an earlier one",
                self.list()
            ));
        }
        for (i, policy) in self.policies.iter().enumerate() {
            let valid = policy.len() == n
                && policy.iter().all(|r| {
                    (1..=8).contains(&r.weight_bits)
                        && ((1..=8).contains(&r.act_bits) || r.act_bits == 32)
                        && r.alpha < self.alphas
                });
            if !valid {
                return Err(format!(
                    "policy {i}: expected one entry per bit-width, with weight bits 1..8, activation bits 1..8 or 32 and a clipping level below {}",
                    self.alphas
                ));
            }
        }
        let norm = &self.norm;
        if self.alphas > MAX_ENTRIES || norm.entries > MAX_ENTRIES {
            return Err(format!(
                "{} clipping levels and {} BatchNorm entries per layer: expected at most {MAX_ENTRIES}",
                self.alphas, norm.entries
            ));
        }
        if norm.resolved.len() != n || norm.resolved.iter().any(|&e| e >= norm.entries) {
            return Err(format!(
                "the BatchNorm table: expected one entry index below {} per bit-width",
                norm.entries
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dilated_convolution_reads_and_writes_its_dilation_and_older_files_read_as_undilated() {
        let older = r#"{"name": "conv", "channels": [8, 16], "kernel": [3, 3], "padding": [2, 2], "policy": 0}"#;
        let mut conv: ConvNode = serde_json::from_str(older).unwrap();
        assert_eq!(conv.dilation, [1, 1]);
        assert_eq!(conv.output_size([8, 8]), Some([10, 10]));
        // Written without the field while it is 1, so that undilated headers stay as they were.
        assert!(!serde_json::to_string(&conv).unwrap().contains("dilation"));
        conv.dilation = [2, 2];
        assert_eq!(conv.output_size([8, 8]), Some([8, 8]));
        let json = serde_json::to_string(&conv).unwrap();
        assert!(json.contains(r#""dilation":[2,2]"#), "{json}");
        assert_eq!(serde_json::from_str::<ConvNode>(&json).unwrap(), conv);
        // A kernel spanning more than the padded input does not fit.
        conv.dilation = [4, 4];
        conv.padding = [0, 0];
        assert_eq!(conv.output_size([8, 8]), None);
    }
}
