//! Integer convolutions on channels-last (NHWC) codes, each with its epilogue,
//! `y = (a·Σ m·q + c·Σ q)·mult[o] + add[o]`, and the ReLU after it if fused: a layer's shape
//! and weight layouts here; dense ones from a padded image on AVX-512 VNNI (`direct`) or from
//! im2col rows (`im2col`), grouped and depthwise ones in a per-channel loop (`grouped`).

mod direct;
mod grouped;
mod im2col;

pub(crate) use im2col::im2col_tasks;

use super::Isa;
use super::bit_serial::{BitWeights, bit_serial};
use super::epilogue::{Epilogue, Output};
use super::kernels::PackedWeights;
use super::layer::Numerators;
use grouped::grouped;
use im2col::dense;

/// The shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Input channels.
    pub(crate) cin: usize,
    /// Output channels.
    pub(crate) cout: usize,
    /// Kernel height and width.
    pub(crate) kernel: [usize; 2],
    /// Stride.
    pub(crate) stride: [usize; 2],
    /// Padding.
    pub(crate) padding: [usize; 2],
    /// Dilation (the spacing of the kernel's taps).
    pub(crate) dilation: [usize; 2],
    /// Groups.
    pub(crate) groups: usize,
    /// Input height and width.
    pub(crate) input: [usize; 2],
    /// Output height and width.
    pub(crate) output: [usize; 2],
}

impl Geometry {
    /// The input channels as a dense convolution's kernels of `isa` lay them out: in fours
    /// for the direct AVX-512 VNNI kernel (a 3-channel image gets a fourth channel of zeros),
    /// else (and for a dilated convolution, which takes im2col rows) as they are.
    pub(crate) fn laid_out_channels(&self, isa: Isa) -> usize {
        if isa == Isa::Avx512Vnni && self.groups == 1 && self.dilation == [1, 1] {
            self.cin.next_multiple_of(4)
        } else {
            self.cin
        }
    }

    /// The input pixel under tap `(ky, kx)` of output pixel `(oy, ox)`, if not in the padding.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride[0] + ky * self.dilation[0]).checked_sub(self.padding[0])?;
        let ix = (ox * self.stride[1] + kx * self.dilation[1]).checked_sub(self.padding[1])?;
        (iy < self.input[0] && ix < self.input[1]).then_some((iy, ix))
    }
}

/// The weights of a convolution as a kernel runs them.
#[derive(Clone, Debug)]
pub(crate) enum ConvWeights {
    /// A dense convolution (one group): the GEMM's packed weights, `k` in (ky, kx, c) order.
    Dense(PackedWeights),
    /// A grouped or depthwise one: the instruction set its loop is compiled for, and the
    /// numerators as `i32`, `[kh·kw][cout][cin/groups]`.
    Grouped(Isa, Vec<i32>),
    /// A dense convolution with 1-bit weights and activations, run bit-serially.
    Bits(BitWeights),
}

impl ConvWeights {
    /// The buffer of a dense convolution's layout (empty for a grouped one).
    pub(crate) fn into_buffer(self) -> Vec<i8> {
        match self {
            Self::Dense(w) => w.into_data(),
            Self::Grouped(..) | Self::Bits(_) => Vec::new(),
        }
    }

    /// Bytes of weights.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.bytes(),
            Self::Grouped(_, w) => 4 * w.len(),
            Self::Bits(w) => w.bytes(),
        }
    }

    /// Lays out `values` (PyTorch order `[cout][cin/groups][kh][kw]`) in the order the kernels
    /// of `isa` read them: for a dense convolution the im2col rows' (ky, kx, c) order in the
    /// GEMM's layout; for a grouped one `[kh·kw][cout][cin/groups]`, the grouped loop's.
    pub(crate) fn arrange(isa: Isa, values: Vec<i8>, g: &Geometry) -> Vec<i8> {
        let [kh, kw] = g.kernel;
        if g.groups != 1 {
            let taps = kh * kw;
            let cin_g = g.cin / g.groups;
            let mut arranged = vec![0i8; values.len()];
            for o in 0..g.cout {
                for c in 0..cin_g {
                    for t in 0..taps {
                        arranged[(t * g.cout + o) * cin_g + c] = values[(o * cin_g + c) * taps + t];
                    }
                }
            }
            return arranged;
        }
        let cp = g.laid_out_channels(isa);
        let k = kh * kw * cp;
        // Zeros for the channels the direct kernel adds.
        let reordered = im2col_order(&values, g, cp, k);
        PackedWeights::arrange(isa, &reordered, g.cout, k)
    }

    /// The weights from the kernels' values in [`arrange`](Self::arrange)'s order. A dense
    /// convolution takes `values`' buffer; a grouped one reads it and leaves it to the caller.
    pub(crate) fn from_arranged(
        isa: Isa,
        values: &mut Vec<i8>,
        numerators: Numerators,
        g: &Geometry,
    ) -> Self {
        if g.groups == 1 {
            let k = g.kernel[0] * g.kernel[1] * g.laid_out_channels(isa);
            Self::Dense(PackedWeights::from_arranged(
                isa,
                std::mem::take(values),
                g.cout,
                k,
            ))
        } else {
            // The grouped loop takes the whole numerator, 9 bits included.
            let Numerators { scale, plus_inputs } = numerators;
            let w = values
                .iter()
                .map(|&v| scale * i32::from(v) + plus_inputs)
                .collect();
            Self::Grouped(isa, w)
        }
    }

    /// Lays out `values` (PyTorch order) for the kernels of `isa`.
    #[cfg(test)]
    pub(crate) fn new(isa: Isa, values: &[i8], numerators: Numerators, g: &Geometry) -> Self {
        Self::from_arranged(
            isa,
            &mut Self::arrange(isa, values.to_vec(), g),
            numerators,
            g,
        )
    }
}

/// A dense convolution's weights from PyTorch's `[cout][cin][kh][kw]` to the im2col rows'
/// (ky, kx, c) order, `row` values per output channel with `channels ≥ cin` per tap: zeros in
/// the slots past `cin` and past the taps.
pub(crate) fn im2col_order(values: &[i8], g: &Geometry, channels: usize, row: usize) -> Vec<i8> {
    let [kh, kw] = g.kernel;
    let mut reordered = vec![0i8; g.cout * row];
    for o in 0..g.cout {
        for c in 0..g.cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    reordered[o * row + (ky * kw + kx) * channels + c] =
                        values[((o * g.cin + c) * kh + ky) * kw + kx];
                }
            }
        }
    }
    reordered
}

/// Runs one convolution on `codes` (`[n][h][w][cin]`) into `out` (`[n][ho][wo][cout]`).
///
/// `split` is the fewest items a parallel task takes: 1 spreads the layer over the pool,
/// `usize::MAX` keeps it on the calling thread (when the pool is busy with other images).
pub(crate) fn conv(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    weights: &ConvWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    match weights {
        ConvWeights::Dense(w) => dense(codes, batch, g, w, epilogue, out, split),
        ConvWeights::Grouped(isa, w) => grouped(codes, batch, g, (*isa, w), epilogue, out, split),
        ConvWeights::Bits(w) => bit_serial(codes, batch, g, w, epilogue, out, split),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The convolution by its definition, NCHW-free: every output value as a sum over taps.
    fn naive(codes: &[u8], batch: usize, g: &Geometry, m: &[i32], offset: i64) -> Vec<i64> {
        let [ho, wo] = g.output;
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let [kh, kw] = g.kernel;
        let mut out = vec![0i64; batch * ho * wo * g.cout];
        for b in 0..batch {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..g.cout {
                        let mut sum = 0i64;
                        for c in 0..cin_g {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as i64
                                        - g.padding[0] as i64;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as i64
                                        - g.padding[1] as i64;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.input[0] as i64
                                        || ix >= g.input[1] as i64
                                    {
                                        continue;
                                    }
                                    let ci = (o / cout_g) * cin_g + c;
                                    let q = codes[((b * g.input[0] + iy as usize) * g.input[1]
                                        + ix as usize)
                                        * g.cin
                                        + ci];
                                    let q = if offset != 0 {
                                        2 * i64::from(q) - offset
                                    } else {
                                        i64::from(q)
                                    };
                                    sum += q * i64::from(m[((o * cin_g + c) * kh + ky) * kw + kx]);
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * g.cout + o] = sum;
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn convolutions_equal_the_definition_on_random_shapes(
            batch in 1usize..3,
            cin_g in prop_oneof![1usize..6, prop::sample::select(vec![4usize, 8, 12, 16, 24, 48])],
            cout_g in 1usize..6,
            groups in prop::sample::select(vec![1usize, 1, 2, 3]),
            depthwise in any::<bool>(),
            kernel in 1usize..4,
            stride in 1usize..3,
            padding in 0usize..2,
            size in 3usize..9,
            odd in any::<bool>(),
            double in any::<bool>(),
            dilation in prop::sample::select(vec![1usize, 1, 2, 3]),
            seed in any::<u64>(),
        ) {
            let (groups, cin_g, cout_g) = if depthwise { (cin_g * 2, 1, 1) } else { (groups, cin_g, cout_g) };
            let (cin, cout) = (cin_g * groups, cout_g * groups);
            let padding = padding.min(kernel - 1);
            let span = dilation * (kernel - 1) + 1;
            prop_assume!(size + 2 * padding >= span);
            let out_size = (size + 2 * padding - span) / stride + 1;
            let g = Geometry {
                cin, cout, kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2],
                dilation: [dilation; 2], groups, input: [size; 2], output: [out_size; 2],
            };
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let codes: Vec<u8> = (0..batch * size * size * cin).map(|_| next() as u8).collect();
            let values: Vec<i8> = (0..cout * cin_g * kernel * kernel).map(|_| next() as i8).collect();
            // `odd`: the 8-bit `2j + 1` form, `2·Σ j·q + Σ q`.
            let numerators = if odd {
                Numerators { scale: 2, plus_inputs: 1 }
            } else {
                Numerators { scale: 1, plus_inputs: 0 }
            };
            let m: Vec<i32> = values.iter().map(|&v| numerators.scale * i32::from(v) + numerators.plus_inputs).collect();
            // Double-sided inputs (`2q − A`) reach the kernels only in grouped convolutions.
            let offset = if double && groups > 1 { 255 } else { 0 };
            let expected = naive(&codes, batch, &g, &m, i64::from(offset));
            // An epilogue that shows the sums exactly: mult 1, add 0.
            let epilogue = Epilogue { numerators, mult: vec![1.0; cout], add: vec![0.0; cout], relu: false, offset, accumulate: false, codes: None };
            for isa in Isa::available() {
                let weights = ConvWeights::new(isa, &values, numerators, &g);
                let mut out = vec![f32::NAN; expected.len()];
                conv(&codes, batch, &g, &weights, &epilogue, Output { values: &mut out, codes: None }, 1);
                let found: Vec<i64> = out.iter().map(|&v| v as i64).collect();
                prop_assert_eq!(&found, &expected, "{:?} {:?}", isa, g);
            }
        }
    }
}
