//! A quantized layer at one bit-width, in the integer runtime's form: its weight codes as
//! signed numerators (packed at the weight bit-width while resident), and the float constants
//! of its epilogue.
//!
//! With `j = k − 2^(w−1)` (a signed `w`-bit value), every scheme's weight is a numerator over
//! a denominator `D` (docs/method.md §2):
//!
//! | scheme | `ŵ` | numerator `m` | `D` |
//! |---|---|---|---|
//! | modified | `2k/2^w − 1` | `j` | `2^(w−1)` |
//! | centered | `(2k+1)/2^w − 1` | `2j + 1` | `2^w` |
//! | original | `2k/(2^w−1) − 1` | `2j + 1` | `2^w − 1` |
//!
//! `m` fits a signed byte except `2j + 1` at 8 bits (9 bits, odd values ±255): there the
//! kernels multiply by `j` and the epilogue adds the sum of the inputs,
//! `Σ m·q = 2·Σ j·q + Σ q`.

use super::kernels::{self, Isa, Wide};
use crate::format::{QuantPayload, pack, unpack_shifted};
use crate::graph::Scheme;

/// How a layer's integer sums become its numerator sums: `a·Σ(stored·q) + c·Σq`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Numerators {
    /// `a`: 1 when the stored values are the numerators, 2 when they are `j` of `2j + 1`.
    pub(crate) scale: i32,
    /// `c`: 1 when the sum of the inputs must be added (`2j + 1` at 8 bits), else 0.
    pub(crate) plus_inputs: i32,
}

/// A layer's weights at one weight bit-width.
#[derive(Clone, Debug)]
pub(crate) struct Weights {
    /// `j = k − 2^(w−1)` of every weight, `w`-bit two's complement, packed least-significant
    /// bit first in the order the layer's kernel reads them (with its padding slots): `w` bits
    /// per weight stay resident.
    pub(crate) packed: Vec<u8>,
    /// The weight bit-width `w`.
    pub(crate) bits: u8,
    /// The number of values packed (the weights and the layout's padding slots).
    pub(crate) count: usize,
    /// Whether the numerator is `2j + 1` (centered, original) rather than `j` (modified).
    odd: bool,
    /// How the sums of [`unpack`](Self::unpack)'s values are formed.
    pub(crate) numerators: Numerators,
    /// `1 / D`.
    pub(crate) inv_denominator: f32,
}

impl Weights {
    /// The weights of `part` at weight bit-width `w`, laid out by `arrange` (from PyTorch order
    /// to the kernel's, padding slots included). `j_only`: the kernel takes `j` even where `2j
    /// + 1` would fit a byte (a bit-serial layer, whose planes are `j`'s bits).
    ///
    /// Returns `None` if the layer has no codes for `w` (a checked artifact always has).
    pub(crate) fn new(
        part: &QuantPayload<'_>,
        w: u8,
        scheme: Scheme,
        j_only: bool,
        arrange: impl FnOnce(Vec<i8>) -> Vec<i8>,
    ) -> Option<Self> {
        let codes = part.codes(w)?;
        let half = 1i32 << (w - 1);
        let denominator = match scheme {
            Scheme::Modified => half as f32,
            Scheme::Centered => (1u32 << w) as f32,
            Scheme::Original => ((1u32 << w) - 1) as f32,
        };
        let odd = scheme != Scheme::Modified;
        // `2j + 1` fits a signed byte below 8 bits; at 8 bits the kernels take `j`.
        let numerators = if odd && (w == 8 || j_only) {
            Numerators {
                scale: 2,
                plus_inputs: 1,
            }
        } else {
            Numerators {
                scale: 1,
                plus_inputs: 0,
            }
        };
        let j: Vec<i8> = codes.iter().map(|&k| (i32::from(k) - half) as i8).collect();
        let arranged = arrange(j);
        let mask = ((1u32 << w) - 1) as u8;
        let raw: Vec<u8> = arranged.iter().map(|&j| j as u8 & mask).collect();
        let mut packed = Vec::new();
        pack(&raw, w, &mut packed);
        Some(Self {
            packed,
            bits: w,
            count: arranged.len(),
            odd,
            numerators,
            inv_denominator: 1.0 / denominator,
        })
    }

    /// The values the kernels multiply by, as signed bytes in the kernel's order: the
    /// numerators `m`, or `j` where `m` needs 9 bits (then [`numerators`](Self::numerators) says
    /// so). With AVX-512 VBMI 64 values at a time ([`kernels::unpack`]), else eight at a time
    /// from `w` bytes in a loop compiled for the widest vectors of `isa` ([`kernels::wide`]).
    pub(crate) fn unpack(&self, isa: Isa, out: &mut Vec<i8>) {
        // Every value is written below: a reused buffer's bytes need no clearing.
        out.resize(self.count, 0);
        let expand = self.odd && self.numerators.scale == 1;
        let done = kernels::unpack(isa, self.bits, &self.packed, expand, out);
        kernels::wide(
            isa,
            Unpack {
                weights: self,
                from: done,
                out: &mut out[done..],
            },
        );
    }

    /// The sum of the numerators of each run of `per` weights of `part` at weight bit-width
    /// `w` (PyTorch order: per output channel, with `per` weights each).
    pub(crate) fn numerator_sums(
        part: &QuantPayload<'_>,
        w: u8,
        scheme: Scheme,
        per: usize,
    ) -> Option<Vec<i64>> {
        let half = 1i64 << (w - 1);
        let odd = scheme != Scheme::Modified;
        let codes = part.codes(w)?;
        Some(
            codes
                .chunks(per.max(1))
                .map(|run| {
                    run.iter()
                        .map(|&k| {
                            let j = i64::from(k) - half;
                            if odd { 2 * j + 1 } else { j }
                        })
                        .sum()
                })
                .collect(),
        )
    }

    /// Resident bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.packed.len()
    }
}

/// [`Weights::unpack`]'s loop: the values from number `from` (a multiple of 8) on.
struct Unpack<'a> {
    weights: &'a Weights,
    from: usize,
    out: &'a mut [i8],
}

impl Wide for Unpack<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            weights: w,
            from,
            out,
        } = self;
        let expand = w.odd && w.numerators.scale == 1;
        let packed = &w.packed[from / 8 * usize::from(w.bits)..];
        match w.bits {
            1 => unpack_signed::<1>(packed, expand, out),
            2 => unpack_signed::<2>(packed, expand, out),
            3 => unpack_signed::<3>(packed, expand, out),
            4 => unpack_signed::<4>(packed, expand, out),
            5 => unpack_signed::<5>(packed, expand, out),
            6 => unpack_signed::<6>(packed, expand, out),
            7 => unpack_signed::<7>(packed, expand, out),
            // Eight bits: the stored bytes are `j` itself.
            _ => out.iter_mut().zip(packed).for_each(|(j, &b)| *j = b as i8),
        }
    }
}

/// `out.len()` values of `B` bits (two's complement) from `packed`, sign-extended, as `2j + 1`
/// where `odd`.
#[inline(always)]
fn unpack_signed<const B: usize>(packed: &[u8], odd: bool, out: &mut [i8]) {
    let shift = 8 - B as u32;
    let extend = |v: u64| {
        let j = ((v as u8) << shift) as i8 >> shift;
        if odd { 2 * j + 1 } else { j }
    };
    // Eight values fill B whole bytes.
    let groups = out.len() / 8;
    for (dst, src) in out.chunks_exact_mut(8).zip(packed.chunks_exact(B)) {
        let mut bytes = [0u8; 8];
        bytes[..B].copy_from_slice(src);
        let word = u64::from_le_bytes(bytes);
        for (i, dst) in dst.iter_mut().enumerate() {
            *dst = extend(word >> (i * B));
        }
    }
    let rest = out.len() - groups * 8;
    if rest > 0 {
        let tail = unpack_shifted(&packed[groups * B..], rest, B as u8, 0);
        for (dst, v) in out[groups * 8..].iter_mut().zip(tail) {
            *dst = extend(u64::from(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::WeightPlan;
    use crate::graph::Resolved;

    /// `ŵ` from the definition (docs/method.md §2), in `f64`.
    fn w_hat(k: u8, w: u8, scheme: Scheme) -> f64 {
        let levels = f64::from(1u32 << w);
        let k = f64::from(k);
        match scheme {
            Scheme::Original => 2.0 * k / (levels - 1.0) - 1.0,
            Scheme::Modified => 2.0 * k / levels - 1.0,
            Scheme::Centered => 2.0 * (k + 0.5) / levels - 1.0,
        }
    }

    #[test]
    fn numerators_over_the_denominator_are_the_weights_at_every_width_and_scheme() {
        for scheme in [Scheme::Original, Scheme::Modified, Scheme::Centered] {
            for w in 1..=8u8 {
                // Every code, several times over, and a tail shorter than eight values.
                let levels = 1u32 << w;
                // Several blocks of the 64-value unpack and a tail, for every width.
                let codes: Vec<u8> = (0..3 * levels + 389)
                    .map(|k| (k * 7 % levels) as u8)
                    .collect();
                let mut packed = Vec::new();
                pack(&codes, w, &mut packed);
                let resolved = [Resolved {
                    weight_bits: w,
                    act_bits: 8,
                    alpha: 0,
                }];
                let part = QuantPayload {
                    plan: WeightPlan::new(&resolved, scheme, codes.len()),
                    code_sets: vec![&packed],
                    scales: &[1.0],
                    bias: None,
                    alphas: &[1.0],
                };
                let weights = Weights::new(&part, w, scheme, false, |j| j).unwrap();
                let n = weights.numerators;
                let mut values = Vec::new();
                weights.unpack(Isa::Scalar, &mut values);
                assert_eq!(values.len(), codes.len());
                for isa in Isa::available() {
                    let mut wide = Vec::new();
                    weights.unpack(isa, &mut wide);
                    assert_eq!(wide, values, "{isa:?}");
                }
                for (&k, &v) in codes.iter().zip(&values) {
                    // The numerator of a single input q = 1: a·v + c.
                    let m = n.scale * i32::from(v) + n.plus_inputs;
                    let found = f64::from(m) * f64::from(weights.inv_denominator);
                    let expected = w_hat(k, w, scheme);
                    assert!(
                        (found - expected).abs() < 1e-6,
                        "{scheme:?} {w} bits, k = {k}: {found} against {expected}"
                    );
                }
                // `w` bits per weight stay resident.
                assert_eq!(weights.bytes(), (codes.len() * usize::from(w)).div_ceil(8));
            }
        }
    }
}
