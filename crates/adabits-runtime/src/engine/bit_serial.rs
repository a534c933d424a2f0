//! A dense convolution with 1-bit weights and 1-bit activations, run bit-serially: the
//! weights' bit-planes stay as the artifact packs them, each task's im2col rows become
//! bit-planes, and `Σ q·j` is an AND and a popcount per 512 products
//! (`kernels::bits`; the runtime takes this path only where `use_bit_serial` says it wins).

use super::conv::{Geometry, im2col_order, im2col_tasks};
use super::epilogue::{Epilogue, Output};
use super::kernels::{Isa, PlanesRef, activation_planes, gemm_bits, plane_words};

/// A layer's 1-bit weights `j` (two's complement: a set bit is `j = −1`) as bit-planes,
/// `[cout][plane_words(k)]`, `k` in the im2col rows' (ky, kx, c) order and padded with zeros.
#[derive(Clone, Debug)]
pub(crate) struct BitWeights {
    planes: Vec<u64>,
    /// The instruction set of the epilogue.
    isa: Isa,
}

impl BitWeights {
    /// Lays out `values` (PyTorch order `[cout][cin][kh][kw]`, `j` in {−1, 0}) in the order
    /// [`from_packed`](Self::from_packed) reads once they are packed at 1 bit: per output
    /// channel, the (ky, kx, c) order padded with zeros to whole planes.
    pub(crate) fn arrange(values: Vec<i8>, g: &Geometry) -> Vec<i8> {
        let k = g.cin * g.kernel[0] * g.kernel[1];
        im2col_order(&values, g, g.cin, plane_words(k) * 64)
    }

    /// The planes from [`arrange`](Self::arrange)'s values packed at 1 bit, least-significant
    /// bit first (`crate::format::pack`): those bytes are the planes.
    pub(crate) fn from_packed(isa: Isa, packed: &[u8]) -> Self {
        Self {
            planes: packed
                .chunks(8)
                .map(|b| {
                    let mut word = [0u8; 8];
                    word[..b.len()].copy_from_slice(b);
                    u64::from_le_bytes(word)
                })
                .collect(),
            isa,
        }
    }

    /// Bytes of weights.
    pub(crate) fn bytes(&self) -> usize {
        8 * self.planes.len()
    }
}

/// Runs a bit-serial convolution on `codes` (`[n][h][w][cin]`, codes 0 and 1) into `out`, per
/// task of output pixels (`conv::im2col_tasks`): the im2col rows, their planes, the popcount
/// product, the epilogue.
pub(super) fn bit_serial(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    w: &BitWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    let [kh, kw] = g.kernel;
    let k = g.cin * kh * kw;
    let kp = k.next_multiple_of(4);
    let words = plane_words(k);
    let n = g.cout;
    debug_assert_eq!(w.planes.len(), n * words);
    im2col_tasks(
        codes,
        batch,
        g,
        (kp, n),
        (w.isa, epilogue),
        out,
        split,
        |scratch, rows| {
            activation_planes(w.isa, &scratch.a, rows, kp, k, 1, &mut scratch.planes);
            let planes = PlanesRef {
                a: &scratch.planes,
                w: &w.planes,
                a_bits: 1,
                w_bits: 1,
                words,
            };
            gemm_bits(&planes, rows, n, &mut scratch.acc);
        },
    );
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::engine::layer::Numerators;
    use crate::format::pack;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// The bit-serial convolution equals the definition on random shapes: 1-bit codes,
        /// `j` in {−1, 0} as `j` (modified) or `2j + 1` (the odd schemes, `2·Σ j·q + Σ q`).
        #[test]
        fn bit_serial_convolutions_equal_the_definition(
            batch in 1usize..3,
            cin in 1usize..40,
            cout in 1usize..20,
            kernel in 1usize..4,
            stride in 1usize..3,
            padding in 0usize..2,
            size in 3usize..8,
            odd in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let padding = padding.min(kernel - 1);
            let out_size = (size + 2 * padding - kernel) / stride + 1;
            let g = Geometry {
                cin, cout, kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2],
                dilation: [1, 1], groups: 1, input: [size; 2], output: [out_size; 2],
            };
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let codes: Vec<u8> = (0..batch * size * size * cin).map(|_| (next() & 1) as u8).collect();
            let j: Vec<i8> = (0..cout * cin * kernel * kernel).map(|_| -((next() & 1) as i8)).collect();
            let numerators = if odd {
                Numerators { scale: 2, plus_inputs: 1 }
            } else {
                Numerators { scale: 1, plus_inputs: 0 }
            };
            // The definition, NHWC codes and PyTorch-order weights.
            let mut expected = Vec::new();
            for b in 0..batch {
                for oy in 0..out_size {
                    for ox in 0..out_size {
                        for o in 0..cout {
                            let mut sum = 0i32;
                            for c in 0..cin {
                                for ky in 0..kernel {
                                    for kx in 0..kernel {
                                        let (iy, ix) = (oy * stride + ky, ox * stride + kx);
                                        if iy < padding || ix < padding || iy - padding >= size || ix - padding >= size {
                                            continue;
                                        }
                                        let q = i32::from(codes[((b * size + iy - padding) * size + ix - padding) * cin + c]);
                                        let m = numerators.scale * i32::from(j[((o * cin + c) * kernel + ky) * kernel + kx]) + numerators.plus_inputs;
                                        sum += q * m;
                                    }
                                }
                            }
                            expected.push(sum as f32);
                        }
                    }
                }
            }
            let raw: Vec<u8> = BitWeights::arrange(j, &g).iter().map(|&v| v as u8 & 1).collect();
            let mut packed = Vec::new();
            pack(&raw, 1, &mut packed);
            let epilogue = Epilogue { numerators, mult: vec![1.0; cout], add: vec![0.0; cout], relu: false, offset: 0, accumulate: false, codes: None };
            for isa in Isa::available() {
                let weights = BitWeights::from_packed(isa, &packed);
                let mut out = vec![f32::NAN; expected.len()];
                bit_serial(&codes, batch, &g, &weights, &epilogue, Output { values: &mut out, codes: None }, 1);
                prop_assert_eq!(&out, &expected, "{:?} {:?}", isa, g);
            }
        }
    }
}
