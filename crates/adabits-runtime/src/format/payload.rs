//! The payload's layout: which bytes of `codes` and which `scalars` belong to each layer of the
//! graph (docs/artifact.md, "Payload layout"). Export appends in this order and every reader
//! splits through [`split_payload`], so the layout has one definition.

use super::pack::{packed_len, unpack_shifted};
use crate::graph::{Graph, Node, Resolved, Scheme};

/// How one quantized layer's weights are stored: the distinct weight bit-widths it resolves
/// to, highest first, and which of them have their own codes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightPlan {
    /// The distinct weight bit-widths, highest first (one SAT scale each).
    pub stored: Vec<u8>,
    /// Whether lower bit-widths are the highest one's codes shifted right (the `modified` and
    /// `centered` schemes), so that only `stored[0]` has codes in the file.
    pub shift: bool,
    /// The number of weights.
    pub count: usize,
}

impl WeightPlan {
    /// The plan of a layer with `count` weights and the per-bit-width table `resolved`.
    pub fn new(resolved: &[Resolved], scheme: Scheme, count: usize) -> Self {
        let mut stored: Vec<u8> = resolved.iter().map(|r| r.weight_bits).collect();
        stored.sort_unstable_by(|a, b| b.cmp(a));
        stored.dedup();
        Self {
            stored,
            shift: scheme != Scheme::Original,
            count,
        }
    }

    /// The bit-widths whose codes are in the file, in file order.
    pub fn code_sets(&self) -> &[u8] {
        if self.shift {
            &self.stored[..self.stored.len().min(1)]
        } else {
            &self.stored
        }
    }
}

/// A quantized layer's part of the payload.
#[derive(Clone, Debug)]
pub struct QuantPayload<'a> {
    /// How its weights are stored.
    pub plan: WeightPlan,
    /// The packed code sets, one per entry of `plan.code_sets()`.
    pub code_sets: Vec<&'a [u8]>,
    /// The SAT scale of each entry of `plan.stored` (1 where the layer is not rescaled).
    pub scales: &'a [f32],
    /// The bias, if the layer has one.
    pub bias: Option<&'a [f32]>,
    /// The raw clipping levels (their absolute values are used).
    pub alphas: &'a [f32],
}

impl QuantPayload<'_> {
    /// The layer's codes at weight bit-width `bits` (each below `2^bits`, PyTorch weight order),
    /// or `None` if the layer does not resolve to `bits`.
    pub fn codes(&self, bits: u8) -> Option<Vec<u8>> {
        let sets = self.plan.code_sets();
        if self.plan.shift {
            let top = *sets.first()?;
            (self.plan.stored.contains(&bits) && bits <= top)
                .then(|| unpack_shifted(self.code_sets[0], self.plan.count, top, top - bits))
        } else {
            let i = sets.iter().position(|&b| b == bits)?;
            Some(unpack_shifted(self.code_sets[i], self.plan.count, bits, 0))
        }
    }

    /// The packed code set from which `bits` is taken: its bytes, its bit-width.
    pub fn packed(&self, bits: u8) -> Option<(&[u8], u8)> {
        let sets = self.plan.code_sets();
        let i = if self.plan.shift {
            0
        } else {
            sets.iter().position(|&b| b == bits)?
        };
        Some((self.code_sets.get(i)?, sets[i]))
    }

    /// The SAT scale at weight bit-width `bits`.
    pub fn scale(&self, bits: u8) -> Option<f32> {
        let i = self.plan.stored.iter().position(|&b| b == bits)?;
        self.scales.get(i).copied()
    }
}

/// A BatchNorm's part of the payload: per entry, `scale[C]` then `bias[C]`.
#[derive(Clone, Copy, Debug)]
pub struct NormPayload<'a> {
    /// Channels.
    pub channels: usize,
    /// The entries' values.
    pub values: &'a [f32],
}

impl<'a> NormPayload<'a> {
    /// Entry `i`'s folded scale and bias.
    ///
    /// # Panics
    ///
    /// Panics if there is no entry `i` (a checked graph's indices are in range).
    pub fn entry(&self, i: usize) -> (&'a [f32], &'a [f32]) {
        let c = self.channels;
        let entry = &self.values[2 * c * i..2 * c * (i + 1)];
        entry.split_at(c)
    }
}

/// A layer's part of the payload.
#[derive(Clone, Debug)]
pub enum LayerPayload<'a> {
    /// A quantized convolution or linear layer.
    Quant(QuantPayload<'a>),
    /// A BatchNorm.
    Norm(NormPayload<'a>),
}

/// Splits the payload into one part per stored layer of `graph`, in the order of
/// [`Graph::layer_names`].
///
/// # Errors
///
/// A sentence naming the layer where the payload ends early, or how much is left over.
pub fn split_payload<'a>(
    graph: &Graph,
    mut codes: &'a [u8],
    mut scalars: &'a [f32],
) -> Result<Vec<LayerPayload<'a>>, String> {
    let short = |name: &str, what: &str| {
        format!(
            "layer `{name}`: the artifact's {what} end before the model's layers do: the payload was exported from another model than its header describes"
        )
    };
    let mut parts = Vec::new();
    for node in graph.layers() {
        let name = node.name().unwrap_or_default();
        let mut take = |n: usize| -> Result<&'a [f32], String> {
            if scalars.len() < n {
                return Err(short(name, "scalars"));
            }
            let (head, rest) = scalars.split_at(n);
            scalars = rest;
            Ok(head)
        };
        let (policy, count, out, bias, norm) = match node {
            Node::Conv(c) => (
                c.policy,
                c.weights(),
                c.channels[1],
                c.bias,
                c.norm.is_some(),
            ),
            Node::Linear(l) => (
                l.policy,
                l.features[0] * l.features[1],
                l.features[1],
                l.bias,
                false,
            ),
            _ => continue,
        };
        let resolved = graph
            .policies
            .get(policy)
            .ok_or_else(|| format!("layer `{name}`: no policy {policy}"))?;
        let plan = WeightPlan::new(resolved, graph.weight_scheme, count);
        let mut code_sets = Vec::new();
        for &bits in plan.code_sets() {
            let len = packed_len(count, bits);
            if codes.len() < len {
                return Err(short(name, "codes"));
            }
            let (head, rest) = codes.split_at(len);
            codes = rest;
            code_sets.push(head);
        }
        let scales = take(plan.stored.len())?;
        let bias = if bias { Some(take(out)?) } else { None };
        let alphas = take(graph.alphas)?;
        parts.push(LayerPayload::Quant(QuantPayload {
            plan,
            code_sets,
            scales,
            bias,
            alphas,
        }));
        if norm {
            let values = take(graph.norm.entries * 2 * out)?;
            parts.push(LayerPayload::Norm(NormPayload {
                channels: out,
                values,
            }));
        }
    }
    if !codes.is_empty() || !scalars.is_empty() {
        return Err(format!(
            "{} bytes of codes and {} scalars are left over after the model's last layer: the payload was exported from another model than its header describes",
            codes.len(),
            scalars.len()
        ));
    }
    Ok(parts)
}
