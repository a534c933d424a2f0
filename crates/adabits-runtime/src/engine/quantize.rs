//! A layer's input, from floats to the unsigned codes its kernel multiplies: PACT at the
//! activation bit-width, with the float operations of the fake quantizer in its order, so
//! that both pick the same level for the same input (docs/method.md §4).

use crate::graph::Scheme;

/// How a layer turns its input into codes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum InputCodes {
    /// PACT, single-sided: `q = Q(min(relu(x), α)/α)` at `bits` bits; the value is `q·step`.
    Pact {
        /// `|α|`.
        alpha: f32,
        /// Activation bits.
        bits: u8,
        /// The activation scheme (`original` or `modified`).
        scheme: Scheme,
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
            } => alpha / levels(bits, scheme),
            Self::Integers => 1.0,
        }
    }

    /// The codes of `x`.
    ///
    /// # Errors
    ///
    /// For [`InputCodes::Integers`], the first value that is not an integer in 0..=255.
    pub(crate) fn codes(self, x: &[f32], out: &mut Vec<u8>) -> Result<(), f32> {
        out.clear();
        out.reserve(x.len());
        match self {
            Self::Pact {
                alpha,
                bits,
                scheme,
            } => {
                let top = ((1u32 << bits) - 1) as f32;
                match scheme {
                    // The fake quantizer: v = c/α, clamped to [0, 1], then round(v·(2^b − 1)).
                    Scheme::Original => out.extend(x.iter().map(|&x| {
                        let v = (clip(x, alpha) / alpha).clamp(0.0, 1.0);
                        (v * top).round_ties_even() as u8
                    })),
                    // min(⌊v·2^b⌋, 2^b − 1).
                    Scheme::Modified | Scheme::Centered => {
                        let scale = (1u32 << bits) as f32;
                        out.extend(x.iter().map(|&x| {
                            let v = (clip(x, alpha) / alpha).clamp(0.0, 1.0);
                            (v * scale).floor().min(top) as u8
                        }));
                    }
                }
                Ok(())
            }
            Self::Integers => {
                for &v in x {
                    if !(0.0..=255.0).contains(&v) || v.fract() != 0.0 {
                        return Err(v);
                    }
                    out.push(v as u8);
                }
                Ok(())
            }
        }
    }
}

/// `min(relu(x), α)` as the fake quantizer computes it: `x ≤ 0` gives 0, `c < α` keeps `c`.
fn clip(x: f32, alpha: f32) -> f32 {
    let c = if x <= 0.0 { 0.0 } else { x };
    if c < alpha { c } else { alpha }
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
        let original = InputCodes::Pact {
            alpha: 2.0,
            bits: 2,
            scheme: Scheme::Original,
        };
        let mut out = Vec::new();
        // Levels 0, 2/3, 4/3, 2: 1/3 is the first boundary (round half to even: 0.5 → 0).
        original
            .codes(&[-1.0, 0.0, 1.0 / 3.0, 0.34, 1.0, 1.9, 2.0, 7.0], &mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 0, 1, 2, 3, 3, 3]);
        assert!((original.step() - 2.0 / 3.0).abs() < 1e-7);
        let modified = InputCodes::Pact {
            alpha: 1.0,
            bits: 2,
            scheme: Scheme::Modified,
        };
        modified
            .codes(&[0.0, 0.24, 0.25, 0.99, 1.0, 3.0], &mut out)
            .unwrap();
        assert_eq!(out, [0, 0, 1, 3, 3, 3]);
        assert_eq!(modified.step(), 0.25);
    }

    #[test]
    fn the_integer_input_refuses_anything_but_bytes() {
        let mut out = Vec::new();
        InputCodes::Integers
            .codes(&[0.0, 17.0, 255.0], &mut out)
            .unwrap();
        assert_eq!(out, [0, 17, 255]);
        for bad in [-1.0, 0.5, 256.0, f32::NAN] {
            assert!(InputCodes::Integers.codes(&[bad], &mut out).is_err());
        }
    }
}
