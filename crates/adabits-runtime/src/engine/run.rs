//! Running the graph: the kernels' layout of each layer for a call, and the nodes in order,
//! each convolution with the nodes its epilogue absorbs.

use rayon::prelude::*;

use super::bit_serial::BitWeights;
use super::conv::{self, ConvWeights};
use super::epilogue::{Epilogue, Output};
use super::ops::{global_avg_pool, max_pool, pixels, run_linear};
use super::quantize::InputCodes;
use super::{IntRuntime, RuntimeError, geometry, in_pool};
use crate::graph::{Node, Shape};

impl IntRuntime {
    /// Every layer in the kernels' layout.
    pub(super) fn prepare_all(&self) -> Vec<Option<Prepared>> {
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

    /// The kernels' form of node `i`'s weights and its epilogue.
    pub(super) fn prepare(&self, i: usize, node: &Node) -> Option<Prepared> {
        self.prepare_into(i, node, &mut Vec::new())
    }

    /// [`prepare`](Self::prepare), laying the weights out in `buffer`, whose allocation a
    /// dense convolution takes ([`Prepared::into_buffer`] gives it back) and the other layers
    /// leave in it.
    fn prepare_into(&self, i: usize, node: &Node, buffer: &mut Vec<i8>) -> Option<Prepared> {
        let active = self.active[i].as_ref()?;
        let numerators = active.weights.numerators;
        let values = buffer;
        if !active.bit_serial {
            active.weights.unpack(self.isa, values);
        }
        Some(match node {
            Node::Conv(conv) => Prepared::Conv(
                match active.bit_serial {
                    // The packed 1-bit weights are the planes.
                    true => {
                        ConvWeights::Bits(BitWeights::from_packed(self.isa, &active.weights.packed))
                    }
                    false => ConvWeights::from_arranged(
                        self.isa,
                        values,
                        numerators,
                        &geometry(conv, [0, 0], [0, 0]),
                    ),
                },
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
                        .and_then(|a| a.input.pact()),
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
    pub(super) fn run(
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
        // With no layouts for the call (one image, weights packed), each layer is laid out
        // while the node before it runs: the layout of the next node with weights.
        let lazy_mode = prepared.is_empty();
        let weighted = |k: usize| !self.absorbed[k] && self.active[k].is_some();
        let mut upcoming: Option<(usize, Option<Prepared>)> = None;
        if lazy_mode && let Some(j) = (0..graph.nodes.len()).find(|&k| weighted(k)) {
            upcoming = Some((j, self.prepare_into(j, &graph.nodes[j], &mut spare)));
        }
        for (i, node) in graph.nodes.iter().enumerate() {
            if self.absorbed[i] {
                continue;
            }
            let start = std::time::Instant::now();
            let inputs = node.inputs(i);
            // The last node this one's work covers (itself, or the end of a fused group).
            let last = i + self.fusion[i].absorbs;
            let lazy = match upcoming.take() {
                Some((j, layout)) if j == i => layout,
                other => {
                    upcoming = other;
                    None
                }
            };
            let layout = if lazy_mode { &lazy } else { &prepared[i] };
            // The next layout to make while this node runs, if none is made yet.
            let following = if lazy_mode && upcoming.is_none() {
                (i + 1..graph.nodes.len()).find(|&k| weighted(k))
            } else {
                None
            };
            let mut execute = || -> Result<Vec<f32>, RuntimeError> {
                Ok(match (node, layout) {
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
                        let target = Output {
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
                })
            };
            let out = match following {
                Some(j) => {
                    let mut buffer = std::mem::take(&mut spare);
                    let (out, layout) = rayon::join(execute, || {
                        self.prepare_into(j, &graph.nodes[j], &mut buffer)
                    });
                    // What a layout that does not keep its buffer left.
                    spare = buffer;
                    upcoming = Some((j, layout));
                    out?
                }
                None => execute()?,
            };
            if let Some(layout) = lazy {
                let buffer = layout.into_buffer();
                if buffer.capacity() > spare.capacity() {
                    spare = buffer;
                }
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

impl Prepared {
    /// The buffer of a dense convolution's layout, to lay the next layer out in.
    fn into_buffer(self) -> Vec<i8> {
        match self {
            Self::Conv(w, _) => w.into_buffer(),
            Self::Linear(_) => Vec::new(),
        }
    }

    /// Bytes of weights.
    pub(super) fn bytes(&self) -> usize {
        match self {
            Self::Conv(w, _) => w.bytes(),
            Self::Linear(m) => 4 * m.len(),
        }
    }
}

/// What one forward call prepared: the input channels, every value's shape and every layer's
/// weights in the kernels' layout.
#[derive(Debug)]
pub(super) struct Call<'a> {
    pub(super) channels: usize,
    pub(super) shapes: &'a [Shape],
    /// Every layer's layout, or none: each layer is then laid out when it runs.
    pub(super) prepared: &'a [Option<Prepared>],
}

/// A layer's weights in the kernels' layout, made for one forward call.
#[derive(Debug)]
pub(super) enum Prepared {
    /// A convolution's weights and epilogue.
    Conv(ConvWeights, Epilogue),
    /// A linear layer's numerators, `[out][in]`.
    Linear(Vec<i32>),
}
