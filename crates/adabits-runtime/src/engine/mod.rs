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
//! [`IntRuntime::set_entry`] can switch to any entry without the file.

mod active;
mod bit_serial;
mod conv;
mod epilogue;
mod fusion;
mod kernels;
mod layer;
mod ops;
mod quantize;
mod run;

use rayon::prelude::*;

pub use kernels::{Crossover, Isa, crossover};

use crate::EntryBits;
use crate::format::{Artifact, LayerPayload};
use crate::graph::{InputTransform, LinearEval, Node, Scheme, Shape};
use active::{Active, double_sided_terms, geometry, quantized};
use bit_serial::BitWeights;
use conv::ConvWeights;
use fusion::{Fusion, plan_fusion};
use kernels::use_bit_serial;
use run::{Call, Prepared};

/// Why the integer runtime cannot run an artifact or an input.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The artifact uses something the integer runtime does not implement.
    #[error("the integer runtime cannot run this artifact: {0}")]
    Unsupported(String),
    /// An entry (bit-width or `wWaA` pair) the artifact does not hold.
    #[error("{entry} is not one of the artifact's entries ({list})")]
    UnknownBits {
        /// The entry asked for, as messages name it (`3 bits`, `w2a8`).
        entry: String,
        /// The artifact's entries, as `8,w4a8,4`.
        list: String,
    },
    /// Images of the wrong size, channel count or value range.
    #[error("the input: {0}")]
    Input(String),
    /// A precision plan that does not fit the artifact.
    #[error("the precision plan: {0}")]
    Plan(String),
}

/// Runs an [`Artifact`] in integers at any of its bit-widths.
#[derive(Debug)]
pub struct IntRuntime {
    artifact: Artifact,
    isa: Isa,
    /// The active entry (`None` under a precision plan).
    entry: Option<EntryBits>,
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
    /// Prepares `artifact` at its highest entry ([`Graph::top`](crate::Graph::top)), with the kernels of [`Isa::detect`].
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
        let top = graph
            .top()
            .expect("a checked graph lists at least one entry");
        let mut runtime = Self {
            active: Vec::new(),
            residency: Residency::Packed,
            expanded: None,
            fusion,
            absorbed,
            artifact,
            isa,
            entry: Some(top),
        };
        runtime.set_entry(top)?;
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

    /// The active entry (`None` under a precision plan, [`set_plan`](Self::set_plan)).
    pub fn entry(&self) -> Option<EntryBits> {
        self.entry
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

    /// How many layers run bit-serially at the active bit-width (1-bit weights and activations
    /// with enough products per output, on a CPU with AVX-512 VPOPCNTDQ; docs/performance.md
    /// records where that wins).
    pub fn bit_serial_layers(&self) -> usize {
        self.active
            .iter()
            .flatten()
            .filter(|a| a.bit_serial)
            .count()
    }

    /// Switches to the entry with weights and activations at `bits`: see
    /// [`set_entry`](Self::set_entry).
    ///
    /// # Errors
    ///
    /// [`RuntimeError::UnknownBits`] for a bit-width the artifact does not hold.
    pub fn set_bits(&mut self, bits: u8) -> Result<(), RuntimeError> {
        match EntryBits::uniform(bits) {
            Some(entry) => self.set_entry(entry),
            None => Err(RuntimeError::UnknownBits {
                entry: format!("{bits} bits"),
                list: self.artifact.header.graph.list(),
            }),
        }
    }

    /// Switches to `entry` of the artifact's list (a bit-width, or a `wWaA` pair): decodes
    /// each layer's numerators at the weight bit-width it resolves to from the codes in memory
    /// (a right shift for the `modified` and `centered` schemes) and sets the clipping level,
    /// activation bit-width and epilogue (BatchNorm) the export resolved for that entry.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::UnknownBits`] for an entry the artifact does not hold.
    pub fn set_entry(&mut self, entry: EntryBits) -> Result<(), RuntimeError> {
        let graph = &self.artifact.header.graph;
        let Some(position) = graph.position(entry) else {
            return Err(RuntimeError::UnknownBits {
                entry: entry.describe(),
                list: graph.list(),
            });
        };
        self.activate(&|_| position)?;
        self.entry = Some(entry);
        Ok(())
    }

    /// Switches to a precision plan: quantized layer `i` (convolutions and linear layers, in
    /// the graph's order) runs the model's bit-width at position `positions[i]` of its list,
    /// with that entry's clipping level and BatchNorm, as [`set_bits`](Self::set_bits) runs
    /// every layer at one position. [`entry`](Self::entry) is then `None`.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::Plan`] when `positions` does not hold one position of the list per
    /// quantized layer.
    pub fn set_plan(&mut self, positions: &[usize]) -> Result<(), RuntimeError> {
        let graph = &self.artifact.header.graph;
        let layers = graph
            .nodes
            .iter()
            .filter(|n| matches!(n, Node::Conv(_) | Node::Linear(_)))
            .count();
        if positions.len() != layers {
            return Err(RuntimeError::Plan(format!(
                "expected a position for each of the {layers} quantized layers, found {}",
                positions.len()
            )));
        }
        if let Some(&p) = positions.iter().find(|&&p| p >= graph.bits.len()) {
            return Err(RuntimeError::Plan(format!(
                "position {p} is not one of the entries {}",
                graph.list()
            )));
        }
        self.activate(&|i| positions[i])?;
        self.entry = None;
        Ok(())
    }

    /// Decodes every layer at the position of its list `position_of(i)` gives (`i` counting
    /// the quantized layers in the graph's order).
    fn activate(&mut self, position_of: &dyn Fn(usize) -> usize) -> Result<(), RuntimeError> {
        let graph = &self.artifact.header.graph;
        let mut parts = self.artifact.layers().into_iter();
        let mut active = Vec::with_capacity(graph.nodes.len());
        let mut quantized_layer = 0;
        for node in &graph.nodes {
            let position = if matches!(node, Node::Conv(_) | Node::Linear(_)) {
                quantized_layer += 1;
                position_of(quantized_layer - 1)
            } else {
                0
            };
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
                    let r = graph
                        .resolved(conv.policy, position)
                        .expect("a checked graph's policies cover every bit-width");
                    let k = conv.channels[0] * conv.kernel[0] * conv.kernel[1];
                    let bit_serial = conv.groups == 1
                        && r.act_bits != 32
                        && use_bit_serial(isa, r.act_bits, r.weight_bits, k);
                    let (weights, input, factor, s) = quantized(
                        graph,
                        &part,
                        conv.policy,
                        position,
                        conv.double_sided,
                        bit_serial,
                        |j| match bit_serial {
                            true => BitWeights::arrange(j, &g),
                            false => ConvWeights::arrange(isa, j, &g),
                        },
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
                        bit_serial,
                    })
                }
                Node::Linear(linear) => {
                    let Some(LayerPayload::Quant(part)) = parts.next() else {
                        unreachable!("a checked artifact has a part per layer")
                    };
                    let (weights, input, factor, s) =
                        quantized(graph, &part, linear.policy, position, false, false, |j| j)?;
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
                        bit_serial: false,
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
        let prepared = self.prepare_all();
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
