//! A quantized layer at one bit-width: its weights, its input codes and the constants of its
//! epilogue, as `IntRuntime::set_bits` builds them from the artifact.

use super::RuntimeError;
use super::conv::Geometry;
use super::layer::Weights;
use super::quantize::InputCodes;
use crate::format::QuantPayload;
use crate::graph::ConvNode;

/// A quantized layer at the active bit-width.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) weights: Weights,
    pub(super) input: InputCodes,
    /// Per output: step × weight scale × 1/D (× the BatchNorm's scale for a convolution).
    pub(super) mult: Vec<f32>,
    /// Per output: the bias terms.
    pub(super) add: Vec<f32>,
    /// `A` for a grouped convolution with double-sided inputs ([`Epilogue::offset`](super::epilogue::Epilogue::offset)), else 0.
    pub(super) offset: i32,
    /// Whether the layer runs bit-serially (its packed weights are its planes).
    pub(super) bit_serial: bool,
}

/// Double-sided inputs: the value of code `q` is `(2q − A)·step`, so a convolution's sum is
/// `2·Σ m·q − A·Σ m` over the taps inside the image. A dense convolution without padding
/// folds this into its epilogue (`mult` doubled, `A·mult·Σ m` taken from `add`); a grouped one
/// takes `2q − A` in its loop (the returned offset `A`). A dense one with padding, where `Σ m`
/// would change at the borders, is not implemented.
pub(super) fn double_sided_terms(
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
pub(super) fn geometry(conv: &ConvNode, input: [usize; 2], output: [usize; 2]) -> Geometry {
    Geometry {
        cin: conv.channels[0],
        cout: conv.channels[1],
        kernel: conv.kernel,
        stride: conv.stride,
        padding: conv.padding,
        dilation: conv.dilation,
        groups: conv.groups,
        input,
        output,
    }
}

/// A quantized layer's weights at the model's bit-width at `position`, its input codes, the
/// factor `step / D` of its sums and its weight scale `s`.
pub(super) fn quantized(
    graph: &crate::Graph,
    part: &QuantPayload<'_>,
    policy: usize,
    position: usize,
    double_sided: bool,
    bit_serial: bool,
    arrange: impl FnOnce(Vec<i8>) -> Vec<i8>,
) -> Result<(Weights, InputCodes, f32, f32), RuntimeError> {
    let r = graph
        .resolved(policy, position)
        .expect("a checked graph's policies cover every bit-width");
    let weights = Weights::new(
        part,
        r.weight_bits,
        graph.weight_scheme,
        bit_serial,
        arrange,
    )
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
