//! The integer runtime: an artifact's graph at any of its bit-widths, with integer arithmetic in
//! every quantized layer's body.
//!
//! Per quantized layer: the input becomes unsigned codes (PACT at the activation bit-width, or
//! the pixel values of a weight-only first layer), the weights are signed numerators decoded
//! from the stored codes (docs/method.md §2; `layer.rs`), the products are summed in `i32` by
//! the kernels of the detected instruction set, and one float epilogue per output applies the
//! two step sizes, the weight scale, the folded BatchNorm and the ReLU after it. Between layers
//! activations are `f32`, channels-last: the residual additions, the pooling and the next
//! layer's quantizer read them.
//!
//! Memory follows the bit-width: at `b` bits each layer keeps its `w`-bit numerators packed
//! ([`IntRuntime::resident_weight_bytes`]); the kernels' layout is made for one layer at a time
//! during [`IntRuntime::forward`]. The artifact's stored codes stay in memory so that
//! [`IntRuntime::set_bits`] can switch to any bit-width without the file.

mod conv;
mod kernels;
mod layer;
mod quantize;

use rayon::prelude::*;

pub use kernels::{Crossover, Isa, crossover};

use crate::format::{Artifact, LayerPayload, QuantPayload};
use crate::graph::{ConvNode, InputTransform, LinearEval, LinearNode, Node, Scheme, Shape};
use conv::{ConvWeights, Epilogue, Geometry};
use layer::Weights;
use quantize::InputCodes;

/// Why the integer runtime cannot run an artifact or an input.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The artifact uses something the integer runtime does not implement.
    #[error("the integer runtime cannot run this artifact: {0}")]
    Unsupported(String),
    /// A bit-width the artifact does not hold.
    #[error("{bits} bits is not one of the artifact's bit-widths ({list})")]
    UnknownBits {
        /// The bit-width asked for.
        bits: u8,
        /// The artifact's bit-widths.
        list: String,
    },
    /// Images of the wrong size, channel count or value range.
    #[error("the input: {0}")]
    Input(String),
}

/// A quantized layer at the active bit-width.
#[derive(Debug)]
struct Active {
    weights: Weights,
    input: InputCodes,
    /// Per output: step × weight scale × 1/D (× the BatchNorm's scale for a convolution).
    mult: Vec<f32>,
    /// Per output: the bias terms.
    add: Vec<f32>,
    /// `A` for a grouped convolution with double-sided inputs ([`Epilogue::offset`]), else 0.
    offset: i32,
}

/// Runs an [`Artifact`] in integers at any of its bit-widths.
#[derive(Debug)]
pub struct IntRuntime {
    artifact: Artifact,
    isa: Isa,
    bits: u8,
    /// Per node: its layer at the active bit-width, for the convolutions and linear layers.
    active: Vec<Option<Active>>,
    /// Per node: what a convolution's epilogue does of the nodes after it.
    fusion: Vec<Fusion>,
    /// Per node: whether the epilogue of a convolution before it does its work.
    absorbed: Vec<bool>,
    /// What stays in memory between calls.
    residency: Residency,
    /// With [`Residency::Expanded`]: every layer in the kernels' layout at the active
    /// bit-width.
    expanded: Option<Vec<Option<Prepared>>>,
}

/// What the integer runtime keeps of the active bit-width's weights between calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Residency {
    /// Each layer's numerators packed at its weight bit-width (`w/8` bytes per weight); every
    /// call lays them out for the kernels first (a linear unpack) and frees that afterwards.
    /// Memory follows the bit-width.
    #[default]
    Packed,
    /// The packed numerators and the kernels' layout of the active bit-width (one byte per
    /// weight more), so that a call starts at once: for latency at small batches.
    Expanded,
}

impl IntRuntime {
    /// Prepares `artifact` at its highest bit-width, with the kernels of [`Isa::detect`].
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Unsupported`] for what the integer runtime does not implement: an input
    /// transform other than `pixels`, the `centered` activation scheme, double-sided PACT
    /// before a padded dense convolution.
    pub fn new(artifact: Artifact) -> Result<Self, RuntimeError> {
        Self::with_isa(artifact, Isa::detect())
    }

    /// As [`new`](Self::new), with the kernels of `isa` (which must be in
    /// [`Isa::available`]).
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new).
    pub fn with_isa(artifact: Artifact, isa: Isa) -> Result<Self, RuntimeError> {
        let graph = &artifact.header.graph;
        if graph.input != InputTransform::Pixels {
            return Err(RuntimeError::Unsupported(format!(
                "its input transform is {:?}; integer layers need the `pixels` input (round(255·x), the default)",
                graph.input
            )));
        }
        if graph.act_scheme == Scheme::Centered {
            return Err(RuntimeError::Unsupported(
                "the `centered` activation scheme has no zero level, so zero padding is not a code"
                    .into(),
            ));
        }
        let (fusion, absorbed) = plan_fusion(&graph.nodes);
        let top = graph.bits.iter().copied().max().unwrap_or(8);
        let mut runtime = Self {
            active: Vec::new(),
            residency: Residency::Packed,
            expanded: None,
            fusion,
            absorbed,
            artifact,
            isa,
            bits: top,
        };
        runtime.set_bits(top)?;
        Ok(runtime)
    }

    /// The artifact.
    pub fn artifact(&self) -> &Artifact {
        &self.artifact
    }

    /// The instruction set the kernels use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The active bit-width.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Bytes of weights the active bit-width keeps: each layer's numerators at its weight
    /// bit-width, packed.
    pub fn resident_weight_bytes(&self) -> usize {
        self.active
            .iter()
            .flatten()
            .map(|a| a.weights.bytes())
            .sum()
    }

    /// Switches to `bits`: decodes each layer's numerators at its weight bit-width from the
    /// codes in memory (a right shift for the `modified` and `centered` schemes) and sets its
    /// clipping level and epilogue.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::UnknownBits`] for a bit-width the artifact does not hold.
    pub fn set_bits(&mut self, bits: u8) -> Result<(), RuntimeError> {
        let graph = &self.artifact.header.graph;
        let Some(position) = graph.bits.iter().position(|&b| b == bits) else {
            return Err(RuntimeError::UnknownBits {
                bits,
                list: graph
                    .bits
                    .iter()
                    .map(u8::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        };
        let mut parts = self.artifact.layers().into_iter();
        let mut active = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let layer = match node {
                Node::Conv(conv) => {
                    let Some(LayerPayload::Quant(part)) = parts.next() else {
                        unreachable!("a checked artifact has a part per layer")
                    };
                    let norm = conv.norm.as_ref().map(|_| match parts.next() {
                        Some(LayerPayload::Norm(norm)) => norm.entry(graph.norm.resolved[position]),
                        _ => unreachable!("a checked artifact has a part per BatchNorm"),
                    });
                    let g = geometry(conv, [0, 0], [0, 0]);
                    let isa = self.isa;
                    let (weights, input, factor, s) = quantized(
                        graph,
                        &part,
                        conv.policy,
                        position,
                        conv.double_sided,
                        |j| ConvWeights::arrange(isa, j, &g),
                    )?;
                    let out = conv.channels[1];
                    // (sum·factor·s + bias), then the BatchNorm's x·scale + shift.
                    let (mut mult, mut add) = (Vec::with_capacity(out), Vec::with_capacity(out));
                    for o in 0..out {
                        let (scale, shift) = norm.map_or((1.0, 0.0), |(a, b)| (a[o], b[o]));
                        let bias = part.bias.map_or(0.0, |b| b[o]);
                        mult.push(factor * s * scale);
                        add.push(bias * scale + shift);
                    }
                    let offset = double_sided_terms(
                        graph, conv, &part, position, &input, &mut mult, &mut add,
                    )?;
                    Some(Active {
                        weights,
                        input,
                        mult,
                        add,
                        offset,
                    })
                }
                Node::Linear(linear) => {
                    let Some(LayerPayload::Quant(part)) = parts.next() else {
                        unreachable!("a checked artifact has a part per layer")
                    };
                    let (weights, input, factor, s) =
                        quantized(graph, &part, linear.policy, position, false, |j| j)?;
                    let out = linear.features[1];
                    // The official evaluation form (P1): weight ŵ, bias / s; the training
                    // form: weight s·ŵ, bias.
                    let (mult, divide) = match graph.linear_eval {
                        LinearEval::Official => (factor, s),
                        LinearEval::TrainForm => (factor * s, 1.0),
                    };
                    Some(Active {
                        weights,
                        input,
                        offset: 0,
                        mult: vec![mult; out],
                        add: (0..out)
                            .map(|o| part.bias.map_or(0.0, |b| b[o]) / divide)
                            .collect(),
                    })
                }
                _ => None,
            };
            active.push(layer);
        }
        self.active = active;
        self.bits = bits;
        self.expanded = (self.residency == Residency::Expanded).then(|| self.prepare_all());
        Ok(())
    }

    /// Sets what stays in memory between calls (lays the active bit-width out at once for
    /// [`Residency::Expanded`], frees that layout for [`Residency::Packed`]).
    pub fn set_residency(&mut self, residency: Residency) {
        self.residency = residency;
        self.expanded = (residency == Residency::Expanded).then(|| self.prepare_all());
    }

    /// What stays in memory between calls.
    pub fn residency(&self) -> Residency {
        self.residency
    }

    /// Bytes of the kernels' layout kept between calls ([`Residency::Expanded`]), else 0.
    pub fn expanded_weight_bytes(&self) -> usize {
        self.expanded.as_ref().map_or(0, |layers| {
            layers.iter().flatten().map(Prepared::bytes).sum()
        })
    }

    /// Every layer in the kernels' layout.
    fn prepare_all(&self) -> Vec<Option<Prepared>> {
        let graph = &self.artifact.header.graph;
        in_pool(|| {
            graph
                .nodes
                .par_iter()
                .enumerate()
                .map(|(i, node)| self.prepare(i, node))
                .collect()
        })
    }

    /// The logits of `images` (`[batch, channels, h, w]`, values in `[0, 1]`, row-major) at
    /// the active bit-width, `[batch, classes]` row-major.
    ///
    /// The kernels' layout of every layer's weights is made once per call from the resident
    /// numerators. A batch runs one image per task on the thread pool, so that each image's
    /// activations stay in its core's cache from layer to layer; a single image runs each
    /// layer on every thread.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Input`] when `images` does not hold `batch` images of the artifact's
    /// channels and a size its layers fit, or holds values outside `[0, 1]`.
    pub fn forward(
        &self,
        images: &[f32],
        batch: usize,
        [h, w]: [usize; 2],
    ) -> Result<Vec<f32>, RuntimeError> {
        in_pool(|| self.forward_in_pool(images, batch, [h, w]))
    }

    /// [`forward`](Self::forward), on a thread of the pool.
    fn forward_in_pool(
        &self,
        images: &[f32],
        batch: usize,
        [h, w]: [usize; 2],
    ) -> Result<Vec<f32>, RuntimeError> {
        let graph = &self.artifact.header.graph;
        let c = graph.in_channels;
        if batch == 0 || images.len() != batch * c * h * w {
            return Err(RuntimeError::Input(format!(
                "expected {batch} images of {c}×{h}×{w} = {} values, found {}",
                batch * c * h * w,
                images.len()
            )));
        }
        let shapes = graph.check([h, w]).map_err(|e| {
            RuntimeError::Input(format!("{h}×{w} images do not fit the model: {e}"))
        })?;
        if batch == 1 && self.expanded.is_none() {
            // One image, weights packed: each layer is laid out just before it runs, in one
            // buffer, so that its weights are in cache for its products and no more than one
            // layer's layout is alive.
            let call = Call {
                channels: c,
                shapes: &shapes,
                prepared: &[],
            };
            return self.run(images, 1, &call, None, 1);
        }
        let fresh;
        let prepared = match &self.expanded {
            Some(layers) => layers,
            None => {
                fresh = self.prepare_all();
                &fresh
            }
        };
        let call = Call {
            channels: c,
            shapes: &shapes,
            prepared,
        };
        let run = |images: &[f32], n: usize, split: usize| self.run(images, n, &call, None, split);
        if batch == 1 {
            return run(images, 1, 1);
        }
        let logits: Vec<Vec<f32>> = images
            .par_chunks(c * h * w)
            .map(|image| run(image, 1, usize::MAX))
            .collect::<Result<_, _>>()?;
        Ok(logits.concat())
    }

    /// Times every node of the graph on `images` (as [`forward`](Self::forward) takes them),
    /// one image after another with each layer on every thread: per node, its name (or
    /// operation), milliseconds summed over the images, and multiply-accumulates per image;
    /// first, the time to lay out the weights for the kernels (once per call).
    ///
    /// # Errors
    ///
    /// As [`forward`](Self::forward).
    pub fn profile(
        &self,
        images: &[f32],
        batch: usize,
        [h, w]: [usize; 2],
    ) -> Result<Vec<NodeTime>, RuntimeError> {
        let graph = &self.artifact.header.graph;
        let c = graph.in_channels;
        self.forward(images, batch, [h, w])?;
        let shapes = graph.check([h, w]).map_err(RuntimeError::Input)?;
        let start = std::time::Instant::now();
        let prepared: Vec<Option<Prepared>> = in_pool(|| {
            graph
                .nodes
                .par_iter()
                .enumerate()
                .map(|(i, node)| self.prepare(i, node))
                .collect()
        });
        let layout_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut times = vec![0.0; graph.nodes.len()];
        let call = Call {
            channels: c,
            shapes: &shapes,
            prepared: &prepared,
        };
        in_pool(|| {
            for image in images.chunks(c * h * w) {
                self.run(image, 1, &call, Some(&mut times), 1)?;
            }
            Ok::<_, RuntimeError>(())
        })?;
        let layout = NodeTime {
            name: "(weights laid out, once per call)".into(),
            ms: layout_ms,
            macs: 0,
        };
        Ok(std::iter::once(layout)
            .chain(graph.nodes.iter().enumerate().map(|(i, node)| {
                let (name, macs) = match (node, shapes[i + 1]) {
                    (Node::Conv(conv), Shape::Map([co, oh, ow])) => (
                        conv.name.clone(),
                        (co * oh * ow * conv.channels[0] / conv.groups
                            * conv.kernel[0]
                            * conv.kernel[1]) as u64,
                    ),
                    (Node::Linear(l), _) => {
                        (l.name.clone(), (l.features[0] * l.features[1]) as u64)
                    }
                    (Node::Relu { .. }, _) => ("relu".into(), 0),
                    (Node::Add { .. }, _) => ("add".into(), 0),
                    (Node::MaxPool { .. }, _) => ("max_pool".into(), 0),
                    (Node::GlobalAvgPool { .. }, _) => ("global_avg_pool".into(), 0),
                    (Node::Conv(conv), _) => (conv.name.clone(), 0),
                };
                NodeTime {
                    name,
                    ms: times[i],
                    macs,
                }
            }))
            .collect())
    }

    /// The kernels' form of node `i`'s weights and its epilogue.
    fn prepare(&self, i: usize, node: &Node) -> Option<Prepared> {
        self.prepare_into(i, node, Vec::new())
    }

    /// [`prepare`](Self::prepare), laying the weights out in `buffer` (whose allocation a
    /// dense convolution keeps: [`Prepared::into_buffer`] gives it back).
    fn prepare_into(&self, i: usize, node: &Node, buffer: Vec<i8>) -> Option<Prepared> {
        let active = self.active[i].as_ref()?;
        let numerators = active.weights.numerators;
        let mut values = buffer;
        active.weights.unpack(self.isa, &mut values);
        Some(match node {
            Node::Conv(conv) => Prepared::Conv(
                ConvWeights::from_arranged(
                    self.isa,
                    values,
                    numerators,
                    &geometry(conv, [0, 0], [0, 0]),
                ),
                Epilogue {
                    numerators,
                    mult: active.mult.clone(),
                    add: active.add.clone(),
                    relu: self.fusion[i].relu,
                    offset: active.offset,
                    accumulate: self.fusion[i].residual.is_some(),
                    // Codes for the next layer, where it alone reads this output.
                    codes: self.fusion[i]
                        .codes_for
                        .and_then(|j| self.active[j].as_ref())
                        .map(|a| a.input)
                        .filter(|input| !matches!(input, InputCodes::Integers)),
                },
            ),
            _ => Prepared::Linear(
                values
                    .iter()
                    .map(|&v| numerators.scale * i32::from(v) + numerators.plus_inputs)
                    .collect(),
            ),
        })
    }

    /// Runs the graph on `batch` images (`[batch][c][h·w]`) with the prepared layers, each
    /// layer's parallel tasks at least `split` items long (`usize::MAX`: on this thread).
    fn run(
        &self,
        images: &[f32],
        batch: usize,
        call: &Call<'_>,
        mut times: Option<&mut [f64]>,
        split: usize,
    ) -> Result<Vec<f32>, RuntimeError> {
        let (c, shapes, prepared) = (call.channels, call.shapes, call.prepared);
        let graph = &self.artifact.header.graph;
        let Shape::Map([_, h, w]) = shapes[0] else {
            unreachable!("the input is a map")
        };
        // The last node that reads each value, so that it is dropped once done.
        let mut last_use = vec![0usize; shapes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            for v in node.inputs(i) {
                last_use[v] = i;
            }
        }
        let mut values: Vec<Option<Vec<f32>>> = vec![None; shapes.len()];
        // Codes an epilogue made for the one convolution that reads the value.
        let mut made_codes: Vec<Option<Vec<u8>>> = vec![None; shapes.len()];
        values[0] = Some(pixels(images, batch, c, h * w)?);
        let mut codes = Vec::new();
        let mut spare = Vec::new();
        let produced = "a value is produced before it is read";
        // The value `v` for node `at`: moved out where `at` is its last reader (reading it
        // once), else copied.
        let take = |values: &mut Vec<Option<Vec<f32>>>, v: usize, at: usize| -> Vec<f32> {
            let reads = graph.nodes[at]
                .inputs(at)
                .iter()
                .filter(|&&u| u == v)
                .count();
            if last_use[v] == at && reads == 1 {
                values[v].take().expect(produced)
            } else {
                values[v].clone().expect(produced)
            }
        };
        // A layer's input codes; a weight-only layer's input must be bytes.
        let quantize = |input: InputCodes, x: &[f32], codes: &mut Vec<u8>, name: &str| {
            input.codes(self.isa, x, codes, split).map_err(|v| {
                RuntimeError::Input(format!(
                    "layer `{name}` takes the pixel values 0..255 as they are, found {v}"
                ))
            })
        };
        for (i, node) in graph.nodes.iter().enumerate() {
            if self.absorbed[i] {
                continue;
            }
            let start = std::time::Instant::now();
            let inputs = node.inputs(i);
            // The last node this one's work covers (itself, or the end of a fused group).
            let last = i + self.fusion[i].absorbs;
            // Laid out now, when the call has no layouts (one image, weights packed).
            let lazy = if prepared.is_empty() {
                self.prepare_into(i, node, std::mem::take(&mut spare))
            } else {
                None
            };
            let layout = if prepared.is_empty() {
                &lazy
            } else {
                &prepared[i]
            };
            let out = match (node, layout) {
                (Node::Conv(conv), Some(Prepared::Conv(weights, epilogue))) => {
                    let active = self.active[i]
                        .as_ref()
                        .expect("set_bits prepared every layer");
                    let input_codes = match made_codes[inputs[0]].take() {
                        Some(made) => made,
                        None => {
                            let x = values[inputs[0]].as_ref().expect(produced);
                            quantize(active.input, x, &mut codes, &conv.name)?;
                            std::mem::take(&mut codes)
                        }
                    };
                    let (Shape::Map([_, ih, iw]), Shape::Map([cout, oh, ow])) =
                        (shapes[inputs[0]], shapes[i + 1])
                    else {
                        unreachable!("a checked graph's convolutions map maps to maps")
                    };
                    let g = geometry(conv, [ih, iw], [oh, ow]);
                    let len = batch * oh * ow * cout;
                    // A fused residual: the output starts as the value it adds.
                    let mut out = match self.fusion[i].residual {
                        Some(r) => take(&mut values, r, i + 1),
                        None => vec![0.0; len],
                    };
                    let mut next = epilogue.codes.map(|_| vec![0u8; len]);
                    let target = conv::Output {
                        values: &mut out,
                        codes: next.as_deref_mut(),
                    };
                    conv::conv(&input_codes, batch, &g, weights, epilogue, target, split);
                    codes = input_codes;
                    made_codes[last + 1] = next;
                    out
                }
                (Node::Linear(linear), Some(Prepared::Linear(m))) => {
                    let active = self.active[i]
                        .as_ref()
                        .expect("set_bits prepared every layer");
                    let x = values[inputs[0]].as_ref().expect(produced);
                    quantize(active.input, x, &mut codes, &linear.name)?;
                    run_linear(linear, active, m, &codes, batch, split)
                }
                (Node::Relu { .. }, _) => {
                    let mut x = take(&mut values, inputs[0], i);
                    x.iter_mut().for_each(|v| *v = v.max(0.0));
                    x
                }
                (Node::Add { .. }, _) => {
                    let mut a = take(&mut values, inputs[0], i);
                    let b = values[inputs[1]].as_ref().expect(produced);
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                }
                (
                    Node::MaxPool {
                        kernel,
                        stride,
                        padding,
                        ..
                    },
                    _,
                ) => {
                    let x = values[inputs[0]].as_ref().expect(produced);
                    let (Shape::Map([c, ih, iw]), Shape::Map([_, oh, ow])) =
                        (shapes[inputs[0]], shapes[i + 1])
                    else {
                        unreachable!("a checked graph pools a map")
                    };
                    max_pool(x, batch, c, [ih, iw], [oh, ow], *kernel, *stride, *padding)
                }
                (Node::GlobalAvgPool { .. }, _) => {
                    let x = values[inputs[0]].as_ref().expect(produced);
                    let Shape::Map([c, ih, iw]) = shapes[inputs[0]] else {
                        unreachable!("a checked graph pools a map")
                    };
                    global_avg_pool(x, batch, c, ih * iw)
                }
                _ => unreachable!("forward prepared every layer"),
            };
            if let Some(layout) = lazy {
                spare = layout.into_buffer();
            }
            // Drop what no later node reads.
            for k in i..=last {
                for v in graph.nodes[k].inputs(k) {
                    if last_use[v] <= last {
                        values[v] = None;
                        made_codes[v] = None;
                    }
                }
            }
            values[last + 1] = Some(out);
            if let Some(times) = times.as_deref_mut() {
                times[i] += start.elapsed().as_secs_f64() * 1e3;
            }
        }
        Ok(values.pop().flatten().unwrap_or_default())
    }
}

/// One node's share of [`IntRuntime::profile`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeTime {
    /// The layer's name, or the operation's.
    pub name: String,
    /// Milliseconds, summed over the images.
    pub ms: f64,
    /// Multiply-accumulates per image (0 for operations without weights).
    pub macs: u64,
}

impl Prepared {
    /// The buffer of a dense convolution's layout, to lay the next layer out in.
    fn into_buffer(self) -> Vec<i8> {
        match self {
            Self::Conv(w, _) => w.into_buffer(),
            Self::Linear(_) => Vec::new(),
        }
    }

    /// Bytes of weights.
    fn bytes(&self) -> usize {
        match self {
            Self::Conv(w, _) => w.bytes(),
            Self::Linear(m) => 4 * m.len(),
        }
    }
}

/// What one forward call prepared: the input channels, every value's shape and every layer's
/// weights in the kernels' layout.
#[derive(Debug)]
struct Call<'a> {
    channels: usize,
    shapes: &'a [Shape],
    /// Every layer's layout, or none: each layer is then laid out when it runs.
    prepared: &'a [Option<Prepared>],
}

/// A layer's weights in the kernels' layout, made for one forward call.
#[derive(Debug)]
enum Prepared {
    /// A convolution's weights and epilogue.
    Conv(ConvWeights, Epilogue),
    /// A linear layer's numerators, `[out][in]`.
    Linear(Vec<i32>),
}

/// Double-sided inputs: the value of code `q` is `(2q − A)·step`, so a convolution's sum is
/// `2·Σ m·q − A·Σ m` over the taps inside the image. A dense convolution without padding
/// folds this into its epilogue (`mult` doubled, `A·mult·Σ m` taken from `add`); a grouped one
/// takes `2q − A` in its loop (the returned offset `A`). A dense one with padding, where `Σ m`
/// would change at the borders, is not implemented.
fn double_sided_terms(
    graph: &crate::Graph,
    conv: &ConvNode,
    part: &QuantPayload<'_>,
    position: usize,
    input: &InputCodes,
    mult: &mut [f32],
    add: &mut [f32],
) -> Result<i32, RuntimeError> {
    let offset = input.offset();
    if offset == 0 {
        return Ok(0);
    }
    if conv.groups != 1 {
        return Ok(offset);
    }
    if conv.padding != [0, 0] {
        return Err(RuntimeError::Unsupported(format!(
            "layer `{}` clips its input double-sided and pads it: the integer kernels implement double-sided inputs for unpadded dense and for grouped convolutions",
            conv.name
        )));
    }
    let w = graph
        .resolved(conv.policy, position)
        .expect("a checked graph's policies cover every bit-width")
        .weight_bits;
    let per = conv.weights() / conv.channels[1];
    let sums = Weights::numerator_sums(part, w, graph.weight_scheme, per)
        .ok_or_else(|| RuntimeError::Unsupported(format!("no codes for {w} bits")))?;
    for ((m, a), &sum) in mult.iter_mut().zip(add.iter_mut()).zip(&sums) {
        *a -= offset as f32 * *m * sum as f32;
        *m *= 2.0;
    }
    Ok(0)
}

/// The shape of convolution `conv` on `input`-sized maps.
fn geometry(conv: &ConvNode, input: [usize; 2], output: [usize; 2]) -> Geometry {
    Geometry {
        cin: conv.channels[0],
        cout: conv.channels[1],
        kernel: conv.kernel,
        stride: conv.stride,
        padding: conv.padding,
        groups: conv.groups,
        input,
        output,
    }
}

/// A quantized layer's weights at the model's bit-width at `position`, its input codes, the
/// factor `step / D` of its sums and its weight scale `s`.
fn quantized(
    graph: &crate::Graph,
    part: &QuantPayload<'_>,
    policy: usize,
    position: usize,
    double_sided: bool,
    arrange: impl FnOnce(Vec<i8>) -> Vec<i8>,
) -> Result<(Weights, InputCodes, f32, f32), RuntimeError> {
    let r = graph
        .resolved(policy, position)
        .expect("a checked graph's policies cover every bit-width");
    let weights = Weights::new(part, r.weight_bits, graph.weight_scheme, arrange)
        .ok_or_else(|| RuntimeError::Unsupported(format!("no codes for {} bits", r.weight_bits)))?;
    let input = if r.act_bits == 32 {
        InputCodes::Integers
    } else {
        InputCodes::Pact {
            alpha: part.alphas[r.alpha].abs(),
            bits: r.act_bits,
            scheme: graph.act_scheme,
            double_sided,
        }
    };
    let s = part.scale(r.weight_bits).unwrap_or(1.0);
    let factor = input.step() * weights.inv_denominator;
    Ok((weights, input, factor, s))
}

/// Runs `f` on a thread of rayon's pool: the parallel loops inside it then hand work to the
/// other threads without a round trip through the caller's thread for each loop (which costs
/// tens of microseconds per layer: a wake-up and a sleep of the caller).
fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::join(f, || ()).0
    }
}

/// What a convolution's epilogue does of the nodes after it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Fusion {
    /// How many nodes after it the epilogue does (an addition, a ReLU, or both): the last
    /// one's value is the group's output, the others' values are never made.
    absorbs: usize,
    /// The value an absorbed addition adds (the residual), added before the ReLU.
    residual: Option<usize>,
    /// Whether a ReLU ends the group.
    relu: bool,
    /// The convolution that alone reads the group's output: the epilogue makes its codes.
    codes_for: Option<usize>,
}

/// Per node: the fusion of a convolution with the nodes after it (an addition its output alone
/// feeds, then a ReLU the sum alone feeds; or a ReLU alone), and whether a node is absorbed.
fn plan_fusion(nodes: &[Node]) -> (Vec<Fusion>, Vec<bool>) {
    let mut readers = vec![0usize; nodes.len() + 1];
    for (i, node) in nodes.iter().enumerate() {
        for v in node.inputs(i) {
            readers[v] += 1;
        }
    }
    let mut fusion = vec![Fusion::default(); nodes.len()];
    let mut absorbed = vec![false; nodes.len()];
    for i in 0..nodes.len() {
        if !matches!(nodes[i], Node::Conv(_)) || absorbed[i] {
            continue;
        }
        let mut f = Fusion::default();
        let mut last = i;
        // Node `last + 1` reads value `last + 1`, the group's output so far.
        let own = last + 1;
        if readers[own] == 1
            && let Some(Node::Add { a, b }) = nodes.get(own)
            && (*a == own) != (*b == own)
        {
            f.residual = Some(if *a == own { *b } else { *a });
            last += 1;
        }
        if readers[last + 1] == 1 && matches!(nodes.get(last + 1), Some(Node::Relu { input: None }))
        {
            f.relu = true;
            last += 1;
        }
        f.absorbs = last - i;
        if readers[last + 1] == 1 {
            f.codes_for = (last + 1..nodes.len())
                .find(|&j| nodes[j].inputs(j).contains(&(last + 1)))
                .filter(|&j| matches!(nodes[j], Node::Conv(_)));
        }
        absorbed[i + 1..=last].iter_mut().for_each(|a| *a = true);
        fusion[i] = f;
    }
    (fusion, absorbed)
}

/// The `pixels` transform, `round(255·x)`, from `[batch][c][hw]` to channels-last.
fn pixels(images: &[f32], batch: usize, c: usize, hw: usize) -> Result<Vec<f32>, RuntimeError> {
    if let Some(bad) = images.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(RuntimeError::Input(format!(
            "pixel values must lie in [0, 1], found {bad}"
        )));
    }
    let mut out = vec![0.0; images.len()];
    for b in 0..batch {
        for ch in 0..c {
            for p in 0..hw {
                out[(b * hw + p) * c + ch] =
                    (images[(b * c + ch) * hw + p] * 255.0).round_ties_even();
            }
        }
    }
    Ok(out)
}

/// A quantized linear layer on `[batch][in]` codes, with its numerators `m` (`[out][in]`).
fn run_linear(
    node: &LinearNode,
    active: &Active,
    m: &[i32],
    codes: &[u8],
    batch: usize,
    split: usize,
) -> Vec<f32> {
    let [fi, fo] = node.features;
    let mut out = vec![0.0; batch * fo];
    out.par_chunks_mut(fo)
        .with_min_len(split)
        .enumerate()
        .for_each(|(b, out)| {
            let q = &codes[b * fi..(b + 1) * fi];
            for (o, slot) in out.iter_mut().enumerate() {
                let sum: i32 = q
                    .iter()
                    .zip(&m[o * fi..(o + 1) * fi])
                    .map(|(&q, &m)| i32::from(q) * m)
                    .sum();
                *slot = sum as f32 * active.mult[o] + active.add[o];
            }
        });
    out
}

/// Max pooling over channels-last maps, the padding never chosen.
#[allow(clippy::too_many_arguments)]
fn max_pool(
    x: &[f32],
    batch: usize,
    c: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let mut out = vec![f32::NEG_INFINITY; batch * oh * ow * c];
    for b in 0..batch {
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let (Some(iy), Some(ix)) = (
                            (oy * stride[0] + ky).checked_sub(padding[0]),
                            (ox * stride[1] + kx).checked_sub(padding[1]),
                        ) else {
                            continue;
                        };
                        if iy >= h || ix >= w {
                            continue;
                        }
                        let src = &x[((b * h + iy) * w + ix) * c..][..c];
                        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = d.max(s));
                    }
                }
            }
        }
    }
    out
}

/// The mean of every channel over its `hw` pixels: `[batch][hw][c]` to `[batch][c]`.
fn global_avg_pool(x: &[f32], batch: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; batch * c];
    for b in 0..batch {
        let dst = &mut out[b * c..(b + 1) * c];
        for p in 0..hw {
            let src = &x[(b * hw + p) * c..][..c];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
        dst.iter_mut().for_each(|d| *d /= hw as f32);
    }
    out
}
