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
    /// bit first in PyTorch order: `w` bits per weight stay resident.
    pub(crate) packed: Vec<u8>,
    /// The weight bit-width `w`.
    pub(crate) bits: u8,
    /// The number of weights.
    pub(crate) count: usize,
    /// Whether the numerator is `2j + 1` (centered, original) rather than `j` (modified).
    odd: bool,
    /// How the sums of [`values`](Self::values) are formed.
    pub(crate) numerators: Numerators,
    /// `1 / D`.
    pub(crate) inv_denominator: f32,
}

impl Weights {
    /// The weights of `part` at weight bit-width `w`.
    ///
    /// Returns `None` if the layer has no codes for `w` (a checked artifact always has).
    pub(crate) fn new(part: &QuantPayload<'_>, w: u8, scheme: Scheme) -> Option<Self> {
        let codes = part.codes(w)?;
        let half = 1i32 << (w - 1);
        let denominator = match scheme {
            Scheme::Modified => half as f32,
            Scheme::Centered => (1u32 << w) as f32,
            Scheme::Original => ((1u32 << w) - 1) as f32,
        };
        let odd = scheme != Scheme::Modified;
        // `2j + 1` fits a signed byte below 8 bits; at 8 bits the kernels take `j`.
        let numerators = if odd && w == 8 {
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
        let mask = (1u32 << w) - 1;
        let raw: Vec<u8> = codes
            .iter()
            .map(|&k| ((i32::from(k) - half) as u32 & mask) as u8)
            .collect();
        let mut packed = Vec::new();
        pack(&raw, w, &mut packed);
        Some(Self {
            packed,
            bits: w,
            count: codes.len(),
            odd,
            numerators,
            inv_denominator: 1.0 / denominator,
        })
    }

    /// The values the kernels multiply by, as signed bytes in PyTorch order: the numerators
    /// `m`, or `j` where `m` needs 9 bits (then [`numerators`](Self::numerators) says so).
    pub(crate) fn values(&self) -> Vec<i8> {
        let shift = 8 - self.bits;
        let expand = self.odd && self.numerators.scale == 1;
        unpack_shifted(&self.packed, self.count, self.bits, 0)
            .into_iter()
            .map(|v| {
                // Sign-extend a `bits`-bit two's complement value.
                let j = ((v << shift) as i8) >> shift;
                if expand { 2 * j + 1 } else { j }
            })
            .collect()
    }

    /// Resident bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.packed.len()
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
                let codes: Vec<u8> = (0..(1u32 << w)).map(|k| k as u8).collect();
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
                let weights = Weights::new(&part, w, scheme).unwrap();
                let n = weights.numerators;
                for (&k, &v) in codes.iter().zip(&weights.values()) {
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
