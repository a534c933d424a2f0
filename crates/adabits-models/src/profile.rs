//! The cost profiler: parameters, MACs, BitOPs and model size per bit-width, with the official
//! counting rules (docs/method.md §10.3, parity default P8).

use adabits_quant::{BitPolicy, BitWidth, Precision};
use serde::Serialize;

/// What kind of operation a cost row describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// A (quantized) convolution.
    Conv,
    /// A (quantized) linear layer.
    Linear,
    /// Adaptive average pooling, counted at 32×32 bits.
    AvgPool,
}

/// How the first layer is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accounting {
    /// The official profiler: the first conv at its resolved bits (8 or max(bits) × 32).
    #[default]
    Official,
    /// The paper's apparent accounting: the first conv at 32×32 bits (reproduces its 14.25×).
    PaperFirstLayerFullPrecision,
}

impl std::fmt::Display for Accounting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Official => "official",
            Self::PaperFirstLayerFullPrecision => "the paper's (first layer at 32×32 bits)",
        })
    }
}

/// One layer's static description, from which its cost at any bit-width follows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerShape {
    /// A readable name, e.g. `stage2.block0.conv1`.
    pub name: String,
    /// The operation.
    pub kind: OpKind,
    /// Multiply-accumulates for one input image.
    pub macs: u64,
    /// Weight elements (0 for pooling).
    pub weights: u64,
    /// Bias elements.
    pub bias: u64,
    /// Clipping-level entries (`len(bits)` with S-CL, 1 shared, 0 for pooling).
    pub alpha_entries: u64,
    /// The layer's precision policy.
    #[serde(skip)]
    pub policy: BitPolicy,
    /// Whether this is the network's first layer.
    pub first: bool,
}

/// A layer's cost at one bit-width.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerCost {
    /// The layer.
    pub name: String,
    /// The operation.
    pub kind: OpKind,
    /// Multiply-accumulates per image.
    pub macs: u64,
    /// Parameters counted by the profiler (weights and bias; BN and α excluded).
    pub params: u64,
    /// Weight bits used.
    pub bitw: u8,
    /// Activation bits used.
    pub bita: u8,
    /// `MACs·bitw·bita`.
    pub bitops: u64,
    /// Storage bits: `weights·bitw + 32·bias + 32·α entries`.
    pub bits: u64,
    /// Bytes: `weights·bitw/8 + 4·bias + 4·α entries` (`bits / 8`, a multiple of 1/8).
    pub bytes: f64,
}

/// A model's cost at one bit-width: per-layer rows and totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostReport {
    /// The active bit-width, when every layer runs the same uniform precision; else 0.
    pub bits: u8,
    /// Per-layer rows.
    pub layers: Vec<LayerCost>,
    /// Total MACs per image (pooling included, BatchNorm excluded).
    pub macs: u64,
    /// Total profiler parameters.
    pub params: u64,
    /// Total BitOPs, in units of 10^9.
    pub gbitops: f64,
    /// Model size in MB (10^6 bytes): the layers' bytes summed.
    pub size_mb: f64,
    /// Model size in whole bytes: the layers' bits summed, rounded up to bytes.
    pub size_bytes: u64,
}

/// Costs `layers` at `precision` (a bit-width, or a `wWaA` entry), every layer resolving it
/// through its policy. The report's `bits` is 0 for a `wWaA` precision.
pub fn cost(
    layers: &[LayerShape],
    precision: impl Into<Precision>,
    accounting: Accounting,
) -> CostReport {
    let plan = vec![precision.into(); layers.len()];
    cost_plan(layers, &plan, accounting)
}

/// Costs `layers` with each quantized layer at its own precision: `precisions` has one per
/// convolution and linear layer, in order (pooling rows take none), each resolved through the
/// layer's policy; BitOPs are `MACs·b_w·b_a` per layer. The report's `bits` is 0 unless every
/// layer runs the same uniform precision.
///
/// # Panics
///
/// Panics if `precisions` has fewer entries than `layers` has convolutions and linear layers.
pub fn cost_plan(
    layers: &[LayerShape],
    precisions: &[Precision],
    accounting: Accounting,
) -> CostReport {
    let mut next = precisions.iter();
    let rows: Vec<LayerCost> = layers
        .iter()
        .map(|l| {
            let (bitw, bita) = match l.kind {
                OpKind::AvgPool => (32, 32),
                _ => {
                    let p = next.next().expect("a precision per quantized layer");
                    if l.first && accounting == Accounting::PaperFirstLayerFullPrecision {
                        (32, 32)
                    } else {
                        let r = p.resolve(&l.policy);
                        (r.bitw.get(), r.bita.get())
                    }
                }
            };
            let storage = l.weights * u64::from(bitw) + 32 * (l.bias + l.alpha_entries);
            LayerCost {
                name: l.name.clone(),
                kind: l.kind,
                macs: l.macs,
                params: l.weights + l.bias,
                bitw,
                bita,
                bitops: l.macs * u64::from(bitw) * u64::from(bita),
                bits: storage,
                bytes: storage as f64 / 8.0,
            }
        })
        .collect();
    let first = precisions.first().copied();
    let uniform = first
        .filter(|f| precisions.iter().all(|p| p == f))
        .and_then(Precision::as_uniform);
    CostReport {
        bits: uniform.map_or(0, BitWidth::get),
        macs: rows.iter().map(|r| r.macs).sum(),
        params: rows.iter().map(|r| r.params).sum(),
        gbitops: rows.iter().map(|r| r.bitops as f64).sum::<f64>() * 1e-9,
        size_mb: rows.iter().map(|r| r.bits).sum::<u64>() as f64 / 8e6,
        size_bytes: rows.iter().map(|r| r.bits).sum::<u64>().div_ceil(8),
        layers: rows,
    }
}

/// The average-pooling row: `MACs = C·h·w`, counted at 32×32 bits.
pub fn avg_pool_shape(channels: usize, [h, w]: [usize; 2]) -> LayerShape {
    LayerShape {
        name: "avgpool".into(),
        kind: OpKind::AvgPool,
        macs: (channels * h * w) as u64,
        weights: 0,
        bias: 0,
        alpha_entries: 0,
        policy: BitPolicy::BODY,
        first: false,
    }
}
