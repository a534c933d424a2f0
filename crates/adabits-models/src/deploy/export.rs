//! Export: a model's graph, codes, scales, biases, clipping levels and folded BatchNorms into an
//! [`Artifact`], through the format's single definition in `adabits-runtime`.

use std::collections::HashMap;

use adabits_quant::{
    At, BitPolicy, BitWidth, ClippingLevels, LinearEval, Precision, QuantScheme, conv_fan_out,
    linear_fan_out, quantize_weight, weight_codes,
};
use adabits_runtime::graph::{
    self, ConvNode, Graph, LinearNode, Node, NormTable, Resolved, Scheme,
};
use adabits_runtime::{Artifact, ArtifactError, BitRow, EntryBits, WeightPlan, pack};
use burn::module::Param;
use burn::tensor::Tensor;

use super::Tracer;
use super::trace::Traced;
use crate::layout::{LayerMut, OfficialLayout};
use crate::profile::{Accounting, cost};
use crate::zoo::{Model, ModelConfig};

/// Exports `model` (built from `config`, on any device) as an artifact: its graph, its codes at
/// each layer's highest weight bit-width, its scales, biases, clipping levels and folded
/// BatchNorms, with a table of the cost of every entry of the model's list (bit-widths and
/// `wWaA` pairs) for `input`×`input` images and the accuracies in `top1` (by entry) where
/// known.
///
/// Each layer's table holds, per entry, what [`Model::forward_at`] runs there: the bits its
/// policy resolves the entry to, and the clipping level and BatchNorm it selects.
///
/// # Errors
///
/// [`ArtifactError::Layout`] when an entry of the model's list has 32 bits on either side (a
/// full-precision model is not a low-bit artifact) or more than 8 (the runtime's codes are
/// bytes).
pub fn export_artifact(
    model: &Model,
    config: &ModelConfig,
    input: usize,
    top1: &HashMap<Precision, f64>,
    source: Option<String>,
) -> Result<Artifact, ArtifactError> {
    let list: Vec<At> = config.bits.entries().collect();
    let sides = |p: Precision| [p.weight, p.activation];
    if list
        .iter()
        .any(|at| sides(at.precision).iter().any(|b| b.is_full_precision()))
    {
        return Err(ArtifactError::Layout(format!(
            "the model's bit-widths {} include 32: an artifact holds low-bit codes only; train without 32 or keep the checkpoint",
            config.bits
        )));
    }
    let labels = list
        .iter()
        .map(|at| file_entry(at.precision))
        .collect::<Option<Vec<EntryBits>>>()
        .ok_or_else(|| {
            ArtifactError::Layout(format!(
                "the model's bit-widths {} include one above 8: an artifact holds codes of at most 8 bits",
                config.bits
            ))
        })?;
    let mut out = Exported {
        config,
        list: &list,
        scheme: scheme(config.quant.weight_scheme),
        layers: Vec::new(),
        policies: Vec::new(),
        norm: None,
        alphas: None,
        stray: None,
        codes: Vec::new(),
        scalars: Vec::new(),
    };
    let mut model = model.clone();
    model.visit_official(&mut |name, layer| out.layer(name, layer));
    let mut tracer = Tracer::default();
    model.trace(&mut tracer);
    if let Some(name) = out.stray {
        return Err(ArtifactError::Layout(format!(
            "BatchNorm `{name}` follows no convolution: the artifact's graph folds each BatchNorm into the convolution before it"
        )));
    }
    let nodes = assemble(tracer.into_nodes(), std::mem::take(&mut out.layers))?;
    let graph = Graph {
        bits: labels,
        weight_scheme: out.scheme,
        act_scheme: scheme(config.quant.act_scheme),
        linear_eval: match config.quant.linear_eval {
            LinearEval::Official => graph::LinearEval::Official,
            LinearEval::TrainForm => graph::LinearEval::TrainForm,
        },
        in_channels: 3,
        input_size: [input, input],
        input: config.input.clone(),
        policies: out.policies,
        alphas: out.alphas.unwrap_or(1),
        norm: out.norm.unwrap_or(NormTable {
            entries: 1,
            resolved: vec![0; config.bits.len()],
        }),
        nodes,
    };
    let shapes = model.layer_shapes([input, input]);
    let table = list
        .iter()
        .zip(&graph.bits)
        .map(|(at, &label)| {
            let c = cost(&shapes, at.precision, Accounting::Official);
            BitRow {
                bits: label,
                top1: top1.get(&at.precision).copied(),
                gbitops: c.gbitops,
                model_bytes: c.size_bytes as f64,
            }
        })
        .collect();
    let model_json = serde_json::to_value(config)
        .map_err(|e| ArtifactError::Layout(format!("the model configuration: {e}")))?;
    Artifact::new(model_json, graph, table, source, out.codes, out.scalars)
}

/// The artifact's label of `precision`, or `None` when a side is above 8 bits.
pub fn file_entry(precision: Precision) -> Option<EntryBits> {
    EntryBits::new(precision.weight.get(), precision.activation.get())
}

/// The precision an artifact's entry `label` stands for.
pub fn entry_precision(label: EntryBits) -> Precision {
    let bits = |b: u8| BitWidth::new(b).expect("an artifact's bit-widths are 1 to 8");
    Precision::new(bits(label.weight()), bits(label.activation()))
}

/// What a layer with `policy` and clipping levels `alpha` runs at entry `at`, as
/// [`Model::forward_at`] runs it: a uniform entry through the layer's `forward` (the clipping
/// level of the activation bit-width its policy resolves to), a `wWaA` entry at the clipping
/// level of its entry.
fn resolve(at: At, policy: BitPolicy, alpha: &ClippingLevels) -> Resolved {
    let (r, index) = match at.precision.as_uniform() {
        Some(b) => {
            let r = policy.resolve(b);
            (r, alpha.index(r.bita))
        }
        None => (at.precision.resolve(&policy), alpha.entry_index(at.entry)),
    };
    Resolved {
        weight_bits: r.bitw.get(),
        act_bits: r.bita.get(),
        alpha: index,
    }
}

/// The runtime's name of a scheme.
fn scheme(s: QuantScheme) -> Scheme {
    match s {
        QuantScheme::Original => Scheme::Original,
        QuantScheme::Modified => Scheme::Modified,
        QuantScheme::Centered => Scheme::Centered,
    }
}

pub(super) fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// The graph's nodes: the traced operations, each traced layer replaced by its description.
/// The layers must come in the order the payload was written (the official order).
fn assemble(traced: Vec<Traced>, layers: Vec<Node>) -> Result<Vec<Node>, ArtifactError> {
    let mismatch = |what: String| {
        ArtifactError::Layout(format!(
            "the model's trace and its official layout disagree: {what}"
        ))
    };
    let mut layers = layers.into_iter();
    let mut nodes = Vec::with_capacity(traced.len());
    for t in traced {
        let node = match t {
            Traced::Op(node) => node,
            Traced::Layer { name, norm, input } => {
                let mut node = layers
                    .next()
                    .ok_or_else(|| mismatch(format!("`{name}` is not a stored layer")))?;
                match &mut node {
                    Node::Conv(ConvNode {
                        name: n,
                        norm: bn,
                        input: i,
                        ..
                    }) if *n == name && *bn == norm => *i = input,
                    Node::Linear(LinearNode {
                        name: n, input: i, ..
                    }) if *n == name && norm.is_none() => *i = input,
                    other => {
                        return Err(mismatch(format!(
                            "`{name}` is traced where `{}` is stored",
                            other.name().unwrap_or_default()
                        )));
                    }
                }
                node
            }
        };
        nodes.push(node);
    }
    if let Some(rest) = layers.next() {
        return Err(mismatch(format!(
            "`{}` is stored but never traced",
            rest.name().unwrap_or_default()
        )));
    }
    Ok(nodes)
}

/// What [`export_artifact`] collects, layer by layer in the official order.
struct Exported<'a> {
    config: &'a ModelConfig,
    /// The model's list.
    list: &'a [At],
    scheme: Scheme,
    /// The layers' descriptions, their inputs still unset.
    layers: Vec<Node>,
    policies: Vec<Vec<Resolved>>,
    norm: Option<NormTable>,
    alphas: Option<usize>,
    /// A BatchNorm that follows no convolution (the graph cannot hold it).
    stray: Option<String>,
    codes: Vec<u8>,
    scalars: Vec<f32>,
}

impl Exported<'_> {
    /// What a quantized layer with `policy` and `alpha` uses at each entry of the model's list,
    /// and the index of that table among the graph's policies.
    fn policy(&mut self, policy: BitPolicy, alpha: &ClippingLevels) -> (Vec<Resolved>, usize) {
        let resolved: Vec<Resolved> = self
            .list
            .iter()
            .map(|&at| resolve(at, policy, alpha))
            .collect();
        let index = match self.policies.iter().position(|p| *p == resolved) {
            Some(i) => i,
            None => {
                self.policies.push(resolved.clone());
                self.policies.len() - 1
            }
        };
        (resolved, index)
    }

    /// Appends one layer: its description, and its part of the payload.
    fn layer(&mut self, name: &str, layer: LayerMut<'_>) {
        let node = match layer {
            LayerMut::Conv(c) => {
                let w = c.weight.val();
                let [out, in_per_group, kh, kw] = w.dims();
                let (resolved, policy) = self.policy(c.policy(), &c.alpha);
                let fan_out = conv_fan_out(w.dims());
                let quant = c.weight_quant().clone();
                self.payload(&resolved, w, fan_out, &quant, c.bias.as_ref(), &c.alpha);
                Node::Conv(ConvNode {
                    name: name.into(),
                    input: None,
                    channels: [in_per_group * c.groups(), out],
                    kernel: [kh, kw],
                    stride: c.stride(),
                    padding: c.padding(),
                    dilation: c.dilation(),
                    groups: c.groups(),
                    bias: c.bias.is_some(),
                    double_sided: c.quant().act.double_sided,
                    policy,
                    norm: None,
                })
            }
            LayerMut::Linear(l) => {
                let w = l.weight.val();
                let [out, inputs] = w.dims();
                let (resolved, policy) = self.policy(l.policy(), &l.alpha);
                let fan_out = linear_fan_out(w.dims());
                let quant = l.weight_quant().clone();
                self.payload(&resolved, w, fan_out, &quant, l.bias.as_ref(), &l.alpha);
                Node::Linear(LinearNode {
                    name: name.into(),
                    input: None,
                    features: [inputs, out],
                    bias: l.bias.is_some(),
                    policy,
                })
            }
            LayerMut::Norm(n) => {
                for i in 0..n.entry_count() {
                    let (scale, bias) = n.folded_entry(i);
                    self.scalars.extend(floats(scale));
                    self.scalars.extend(floats(bias));
                }
                // Every BatchNorm of a model follows the model-wide sharing setting.
                self.norm.get_or_insert_with(|| NormTable {
                    entries: n.entry_count(),
                    resolved: self.list.iter().map(|at| n.entry_index(at.entry)).collect(),
                });
                match self.layers.last_mut() {
                    Some(Node::Conv(conv)) if conv.norm.is_none() => conv.norm = Some(name.into()),
                    _ => {
                        self.stray.get_or_insert_with(|| name.into());
                    }
                }
                return;
            }
        };
        self.layers.push(node);
    }

    /// Appends a quantized layer's payload: its codes, the scale of each of its weight
    /// bit-widths, its bias and its clipping levels (the order of `split_payload`).
    fn payload<const D: usize>(
        &mut self,
        resolved: &[Resolved],
        w: Tensor<D>,
        fan_out: usize,
        quant: &adabits_quant::WeightQuantConfig,
        bias: Option<&Param<Tensor<1>>>,
        alpha: &ClippingLevels,
    ) {
        let plan = WeightPlan::new(resolved, self.scheme, w.dims().iter().product());
        let bits = |b: u8| BitWidth::new(b).expect("a resolved weight bit-width is valid");
        for &b in plan.code_sets() {
            let k: Vec<u8> = weight_codes(w.clone(), bits(b), self.config.quant.weight_scheme)
                .into_data()
                .iter::<i64>()
                .map(|k| k as u8)
                .collect();
            pack(&k, b, &mut self.codes);
        }
        for &b in &plan.stored {
            let q = quantize_weight(w.clone(), bits(b), fan_out, quant);
            self.scalars.push(q.scale.map_or(1.0, |s| floats(s)[0]));
        }
        if let Some(b) = bias {
            self.scalars.extend(floats(b.val()));
        }
        // Every quantized layer of a model has the model-wide number of clipping levels.
        self.alphas.get_or_insert(alpha.alpha.dims()[0]);
        self.scalars.extend(floats(alpha.alpha.val()));
    }
}
