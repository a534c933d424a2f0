//! A layer's input, from floats to the unsigned codes its kernel multiplies: PACT at the
//! activation bit-width, with the float operations of the fake quantizer in its order, so
//! that both pick the same level for the same input (docs/method.md §4).

use rayon::prelude::*;

use super::kernels::{self, Isa, Wide};
use crate::graph::Scheme;

/// How a layer turns its input into codes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum InputCodes {
    /// PACT at `bits` bits. Single-sided: `q = Q(min(relu(x), α)/α)`, the value `q·step`.
    /// Double-sided: `q = Q((clip(x, −α, α)/α + 1)/2)`, the value `(2q − A)·step` with `A` the
    /// number of steps ([`offset`](Self::offset)): its zero is not a code.
    Pact {
        /// `|α|`.
        alpha: f32,
        /// Activation bits.
        bits: u8,
        /// The activation scheme (`original` or `modified`).
        scheme: Scheme,
        /// Whether the input is clipped to `[−α, α]`.
        double_sided: bool,
    },
    /// The input as it is, which must hold integers 0..=255 (the `pixels` input of a
    /// weight-only first layer); the value is `q`.
    Integers,
}

impl InputCodes {
    /// The value of one code step.
    pub(crate) fn step(self) -> f32 {
        match self {
            Self::Pact {
                alpha,
                bits,
                scheme,
                ..
            } => alpha / levels(bits, scheme),
            Self::Integers => 1.0,
        }
    }

    /// `A` where the value of code `q` is `(2q − A)·step` (double-sided PACT), else 0 (the value
    /// is `q·step`).
    pub(crate) fn offset(self) -> i32 {
        match self {
            Self::Pact {
                bits,
                scheme,
                double_sided: true,
                ..
            } => levels(bits, scheme) as i32,
            _ => 0,
        }
    }

    /// The codes of `x`.
    ///
    /// # Errors
    ///
    /// For [`InputCodes::Integers`], the first value that is not an integer in 0..=255.
    pub(crate) fn codes(
        self,
        isa: Isa,
        x: &[f32],
        out: &mut Vec<u8>,
        split: usize,
    ) -> Result<(), f32> {
        out.clear();
        out.resize(x.len(), 0);
        match self.pact() {
            Some(pact) => {
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK))
                    .with_min_len(split)
                    .for_each(|(out, x)| kernels::pact(isa, &pact, x, out));
                Ok(())
            }
            None => {
                // Whole vectors: every value checked and converted, the first bad one found
                // only if there is one. `v + 2^23 − 2^23 == v` is integer-ness for `0 ≤ v ≤ 255`.
                let mut ok = true;
                for (q, &v) in out.iter_mut().zip(x) {
                    let t = v + ROUND_MAGIC;
                    ok &= (0.0..=255.0).contains(&v) & (t - ROUND_MAGIC == v);
                    *q = t.to_bits() as u8;
                }
                match ok {
                    true => Ok(()),
                    false => Err(*x
                        .iter()
                        .find(|v| !(0.0..=255.0).contains(*v) || v.fract() != 0.0)
                        .expect("a value failed the check")),
                }
            }
        }
    }

    /// PACT's constants, or `None` for [`InputCodes::Integers`].
    pub(crate) fn pact(self) -> Option<Pact> {
        match self {
            Self::Pact {
                alpha,
                bits,
                scheme,
                double_sided,
            } => Some(Pact {
                low: if double_sided { -alpha } else { 0.0 },
                alpha,
                levels: levels(bits, scheme),
                top: (1i32 << bits) - 1,
                original: scheme == Scheme::Original,
                double_sided,
            }),
            Self::Integers => None,
        }
    }
}

/// One chunk of PACT codes, in blocks of [`LANES`].
pub(crate) struct PactLoop<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) out: &'a mut [u8],
    pub(crate) pact: Pact,
}

impl Wide for PactLoop<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { x, out, pact } = self;
        let mut blocks = out.chunks_exact_mut(LANES);
        for (q, x) in (&mut blocks).zip(x.chunks_exact(LANES)) {
            pact.block(x.try_into().unwrap(), q.try_into().unwrap());
        }
        let q = blocks.into_remainder();
        let x = &x[x.len() - q.len()..];
        let mut padded = [0.0; LANES];
        padded[..x.len()].copy_from_slice(x);
        let mut codes = [0; LANES];
        pact.block(&padded, &mut codes);
        q.copy_from_slice(&codes[..q.len()]);
    }
}

/// Values per block of the element-wise loops: one AVX-512 vector of `f32`. A loop over
/// fixed-size blocks compiles to whole vectors, with no remainder loop per row of a layer's
/// output.
pub(crate) const LANES: usize = 16;

/// PACT with one layer's constants ([`InputCodes::pact`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pact {
    /// `−α` (double-sided) or 0.
    pub(crate) low: f32,
    /// `α`.
    pub(crate) alpha: f32,
    /// The steps of the unit interval: `2^b − 1` (original) or `2^b` (modified).
    pub(crate) levels: f32,
    /// The top code, `2^b − 1`.
    pub(crate) top: i32,
    /// Whether the scheme rounds (`original`) rather than floors (`modified`).
    pub(crate) original: bool,
    /// Whether the input is clipped to `[−α, α]`.
    pub(crate) double_sided: bool,
}

impl Pact {
    /// The codes of one block of values.
    ///
    /// The fake quantizer's operations in its order, so that the same input gets the same
    /// level: `v = c/α` with `c = min(relu(x), α)`, or `u = (v + 1)/2` with
    /// `c = clip(x, −α, α)` (double-sided), then times the levels. (Multiplying by `levels/α`
    /// instead gave more flips against the model on a trained ResNet-20: 34 images beyond
    /// 1e-4 of 2000 at 8 bits, against 27.) `max`/`min` rather than `clamp`, whose checks keep
    /// the loop from vectorising; the fake quantizer's ReLU maps NaN to 0, as `max` does.
    #[inline(always)]
    pub(crate) fn block(&self, x: &[f32; LANES], q: &mut [u8; LANES]) {
        let mut u = [0.0f32; LANES];
        for (u, &x) in u.iter_mut().zip(x) {
            *u = x.max(self.low).min(self.alpha) / self.alpha;
        }
        if self.double_sided {
            u.iter_mut()
                .for_each(|u| *u = (*u + 1.0) / 2.0 * self.levels);
        } else {
            u.iter_mut().for_each(|u| *u *= self.levels);
        }
        // The level is read from the bits of `y + 2^23`, whose low mantissa bits are the
        // rounded integer: a float-to-integer cast saturates lane by lane and does not
        // vectorise.
        if self.original {
            // round(u·(2^b − 1))
            for (q, &u) in q.iter_mut().zip(&u) {
                *q = round_level(u);
            }
        } else {
            // min(⌊u·2^b⌋, 2^b − 1)
            for (q, &u) in q.iter_mut().zip(&u) {
                *q = floor_level(u, self.top);
            }
        }
    }
}

/// Values per parallel task of the quantizer.
const CHUNK: usize = 1 << 15;

/// `2^23`: adding and subtracting it rounds an `f32` in `[0, 2^22)` to the nearest integer,
/// ties to even (the default rounding mode), as the fake quantizer's `round` does, without a
/// call into `libm`.
pub(crate) const ROUND_MAGIC: f32 = 8_388_608.0;

/// `round(y)`, half to even, as an `f32`, for `0 ≤ y < 2^22`: `y + 2^23 − 2^23`, without a
/// call into `libm`.
#[inline(always)]
pub(crate) fn round_even(y: f32) -> f32 {
    (y + ROUND_MAGIC) - ROUND_MAGIC
}

/// `round(y)`, half to even, for `0 ≤ y ≤ 255`: the low byte of `y + 2^23`'s bits.
#[inline(always)]
fn round_level(y: f32) -> u8 {
    (y + ROUND_MAGIC).to_bits() as u8
}

/// `min(⌊y⌋, top)` for `0 ≤ y < 2^22`, `top ≤ 255`: the rounded integer from the bits of
/// `y + 2^23`, less one where rounding went up.
#[inline(always)]
fn floor_level(y: f32, top: i32) -> u8 {
    let t = y + ROUND_MAGIC;
    let rounded = (t.to_bits() - ROUND_MAGIC.to_bits()) as i32;
    let floor = rounded - i32::from(t - ROUND_MAGIC > y);
    floor.min(top) as u8
}

/// The number of steps between 0 and the top level: `2^b − 1` (original), `2^b` (modified).
fn levels(bits: u8, scheme: Scheme) -> f32 {
    match scheme {
        Scheme::Original => ((1u32 << bits) - 1) as f32,
        Scheme::Modified | Scheme::Centered => (1u32 << bits) as f32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pact_codes_follow_the_specification_at_its_boundaries() {
        for isa in Isa::available() {
            boundaries(isa);
        }
    }

    #[test]
    fn every_instruction_set_gives_the_same_codes() {
        let x: Vec<f32> = (0..100_000)
            .map(|i| (i as f32 * 0.618_034).sin() * 9.0)
            .collect();
        for scheme in [Scheme::Original, Scheme::Modified] {
            for bits in 1..=8 {
                let pact = InputCodes::Pact {
                    alpha: 7.3,
                    bits,
                    scheme,
                    double_sided: false,
                };
                let mut expected = Vec::new();
                pact.codes(Isa::Scalar, &x, &mut expected, 1).unwrap();
                for isa in Isa::available() {
                    let mut found = Vec::new();
                    pact.codes(isa, &x, &mut found, 1).unwrap();
                    assert_eq!(found, expected, "{isa:?} {scheme:?} {bits}");
                }
            }
        }
    }

    fn boundaries(isa: Isa) {
        let original = InputCodes::Pact {
            alpha: 2.0,
            bits: 2,
            scheme: Scheme::Original,
            double_sided: false,
        };
        let mut out = Vec::new();
        // Levels 0, 2/3, 4/3, 2: 1/3 is the first boundary (round half to even: 0.5 → 0).
        original
            .codes(
                isa,
                &[-1.0, 0.0, 1.0 / 3.0, 0.34, 1.0, 1.9, 2.0, 7.0],
                &mut out,
                1,
            )
            .unwrap();
        assert_eq!(out, [0, 0, 0, 1, 2, 3, 3, 3]);
        assert!((original.step() - 2.0 / 3.0).abs() < 1e-7);
        let modified = InputCodes::Pact {
            alpha: 1.0,
            bits: 2,
            scheme: Scheme::Modified,
            double_sided: false,
        };
        modified
            .codes(isa, &[0.0, 0.24, 0.25, 0.99, 1.0, 3.0], &mut out, 1)
            .unwrap();
        assert_eq!(out, [0, 0, 1, 3, 3, 3]);
        assert_eq!(modified.step(), 0.25);
    }

    #[test]
    fn double_sided_codes_have_their_zero_between_two_levels() {
        for isa in Isa::available() {
            let pact = InputCodes::Pact {
                alpha: 2.0,
                bits: 2,
                scheme: Scheme::Original,
                double_sided: true,
            };
            let mut out = Vec::new();
            // u = (clip(x, −2, 2)/2 + 1)/2, q = round(3u): 0 is u = 1/2, q = round(1.5) = 2.
            pact.codes(isa, &[-5.0, -2.0, -0.7, 0.0, 0.7, 2.0, 9.0], &mut out, 1)
                .unwrap();
            assert_eq!(out, [0, 0, 1, 2, 2, 3, 3], "{isa:?}");
            assert_eq!(pact.offset(), 3);
            // The value of q = 2 is (2·2 − 3)·(2/3) = 2/3 = α·(2·Q(u) − 1).
            assert!(((2 * 2 - pact.offset()) as f32 * pact.step() - 2.0 / 3.0).abs() < 1e-6);
        }
    }

    #[test]
    fn the_rounding_is_half_to_even_as_the_standard_library_s() {
        for i in 0..200_000u32 {
            let y = i as f32 * 0.001_275;
            assert_eq!(round_even(y), y.round_ties_even(), "{y}");
            assert_eq!(round_level(y), y.round_ties_even() as u8, "{y}");
            assert_eq!(floor_level(y, 255), y.floor() as u8, "{y}");
            assert_eq!(floor_level(y, 7), y.floor().min(7.0) as u8, "{y}");
        }
        for y in [0.0f32, 0.5, 1.5, 2.5, 254.5, 255.0] {
            assert_eq!(round_even(y), y.round_ties_even(), "{y}");
            assert_eq!(round_level(y), y.round_ties_even() as u8, "{y}");
            assert_eq!(floor_level(y, 255), y.floor() as u8, "{y}");
        }
    }

    #[test]
    fn the_integer_input_refuses_anything_but_bytes() {
        let mut out = Vec::new();
        InputCodes::Integers
            .codes(Isa::Scalar, &[0.0, 17.0, 255.0], &mut out, 1)
            .unwrap();
        assert_eq!(out, [0, 17, 255]);
        for bad in [-1.0, 0.5, 256.0, f32::NAN] {
            assert!(
                InputCodes::Integers
                    .codes(Isa::Scalar, &[bad], &mut out, 1)
                    .is_err()
            );
        }
    }
}
