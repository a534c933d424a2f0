//! The fused quantizers' CPU kernels on contiguous `f32` slices: one pass over memory for each forward and
//! each backward, split over threads with rayon.
//!
//! Every function computes, element by element, the value that the composed tensor ops of
//! [`crate::pact`] and [`crate::quantize_weight`] compute, in the same `f32` operations and the
//! same order, so the forward values are bit-identical to the composed path on the CPU. Only the
//! full-tensor sums (the clipping-level gradient, `Σ G·t`, the mean and variance of `ŵ`) are
//! accumulated differently: in `f64`, over fixed chunks, in a fixed order, so they are at least
//! as accurate as the composed `f32` sums and identical from run to run whatever the thread
//! count.
//!
//! The loops are written so that the compiler vectorises them: no calls into `libm` on the hot
//! path (rounding is done with the `2^23` trick, exact for the `|y| < 2^22` that a unit
//! quantizer of at most 16 bits produces), selects instead of branches. PACT's chunk loops are
//! compiled for every instruction set macerator knows (AVX-512, AVX2, SSE4.1, NEON, ...) and the
//! best one this CPU has is picked at run time ([`Isa::Detected`]); [`Isa::Portable`] runs the
//! same loop compiled for the target's baseline. Both give the same bits: the per-element
//! operations are IEEE operations in a fixed order (Rust never contracts them into FMAs), and
//! the sums run in fixed lanes. The weight quantizer's loops stay at the baseline: they are
//! bound by `tanh`, which must be the same `f32::tanh` that Flex's composed `tanh` calls.
//!
//! This module holds what both quantizers share: the chunking, the run-time dispatch, the
//! rounding and the unit quantizer; [`pact`] and [`weight`] hold their kernels.

use macerator::{AutoArch, Simd, WithSimd};

/// Elements per parallel task: large enough to amortise rayon's scheduling, small enough to
/// keep both cores busy on a `[32, 16, 32, 32]` activation.
const CHUNK: usize = 1 << 15;

/// Which instruction set a kernel's loops are compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// The best this CPU has, detected at run time.
    Detected,
    /// The compilation target's baseline (SSE2 on x86-64): the portable fallback, which the
    /// tests hold the detected one against.
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
}

/// A loop over one chunk. Its `call` is `#[inline(always)]`, so that it is compiled into each
/// instruction set's dispatch function (a closure would be called from it, compiled once for
/// the baseline).
trait Kernel {
    type Output;
    fn call(self) -> Self::Output;
}

/// Runs `kernel` compiled for `isa`.
#[inline(always)]
fn run<K: Kernel>(isa: Isa, kernel: K) -> K::Output {
    struct Op<K>(K);
    impl<K: Kernel> WithSimd for Op<K> {
        type Output = K::Output;
        #[inline(always)]
        fn with_simd<S: Simd>(self) -> K::Output {
            self.0.call()
        }
    }
    match isa {
        Isa::Detected => AutoArch::new().dispatch(Op(kernel)),
        Isa::Portable => kernel.call(),
    }
}

/// `2^23`: adding and subtracting it rounds an `f32` in `[0, 2^22)` to the nearest integer,
/// ties to even (the default rounding mode), as `torch.round` and Burn's `round` do.
const ROUND_MAGIC: f32 = 8_388_608.0;

/// Round half to even, for `0 ≤ y < 2^22`.
#[inline(always)]
fn round_even(y: f32) -> f32 {
    (y + ROUND_MAGIC) - ROUND_MAGIC
}

/// `⌊y⌋`, for `0 ≤ y < 2^22`.
#[inline(always)]
fn floor_pos(y: f32) -> f32 {
    let r = round_even(y);
    if r > y { r - 1.0 } else { r }
}

/// `min(max(u, 0), 1)` as Burn's `clamp(0, 1)`, NaN aside.
#[inline(always)]
fn clamp_unit(u: f32) -> f32 {
    let u = if u < 0.0 { 0.0 } else { u };
    if u > 1.0 { 1.0 } else { u }
}

/// The unit quantizer `Q_b` at `levels = 2^b`, with the composed path's operations; `S` is the
/// scheme ([`ORIGINAL`], [`MODIFIED`], [`CENTERED`]), a constant so that the loops that call it
/// have no branch on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unit<const S: u8> {
    levels: f32,
}

/// [`QuantScheme::Original`] as [`Unit`]'s parameter.
pub(crate) const ORIGINAL: u8 = 0;
/// [`QuantScheme::Modified`] as [`Unit`]'s parameter.
pub(crate) const MODIFIED: u8 = 1;
/// [`QuantScheme::Centered`] as [`Unit`]'s parameter.
pub(crate) const CENTERED: u8 = 2;

impl<const S: u8> Unit<S> {
    /// `Q_b` for `bits` (1..=16).
    pub(crate) fn new(bits: u8) -> Self {
        debug_assert!((1..=16).contains(&bits));
        Self {
            levels: (1u32 << bits) as f32,
        }
    }

    /// `Q_b(u)`, `u` clamped to `[0, 1]` first ([`crate::unit_quantize_value`]).
    #[inline(always)]
    pub(crate) fn quantize(self, u: f32) -> f32 {
        let u = clamp_unit(u);
        if S == ORIGINAL {
            let a = self.levels - 1.0;
            return round_even(u * a) / a;
        }
        let k = floor_pos(u * self.levels);
        let top = self.levels - 1.0;
        let k = if k > top { top } else { k };
        if S == MODIFIED {
            k / self.levels
        } else {
            (k + 0.5) / self.levels
        }
    }
}

/// Calls `$body` with `$unit` bound to the [`Unit`] of `$scheme` at `$bits`, monomorphised per
/// scheme.
macro_rules! with_unit {
    ($scheme:expr, $bits:expr, |$unit:ident| $body:expr) => {
        match $scheme {
            QuantScheme::Original => {
                let $unit = Unit::<ORIGINAL>::new($bits);
                $body
            }
            QuantScheme::Modified => {
                let $unit = Unit::<MODIFIED>::new($bits);
                $body
            }
            QuantScheme::Centered => {
                let $unit = Unit::<CENTERED>::new($bits);
                $body
            }
        }
    };
}

/// `sign(x)` as the backward of `abs`: 0 at 0.
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// `Σ terms` in `f64`: eight lanes taken in turn, then the lanes in order. Every kernel sums a
/// chunk this way (or, for PACT's vectorised backward, with the same lane order), so a result
/// does not depend on the thread count.
#[inline(always)]
fn lane_sum(terms: impl Iterator<Item = f64>) -> f64 {
    let mut acc = [0.0f64; 8];
    for (i, term) in terms.enumerate() {
        acc[i % 8] += term;
    }
    acc.iter().sum()
}

mod pact;
mod weight;

pub(crate) use pact::{pact_backward, pact_forward};
pub(crate) use weight::{WeightStats, weight_backward, weight_forward};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QuantScheme;

    #[test]
    fn rounding_by_the_magic_constant_is_half_to_even_and_exact_on_integers() {
        for (y, r) in [
            (0.5, 0.0),
            (1.5, 2.0),
            (2.5, 2.0),
            (2.4999998, 2.0),
            (254.5, 254.0),
        ] {
            assert_eq!(round_even(y), r, "round({y})");
        }
        for k in 0..=65_536u32 {
            let y = k as f32;
            assert_eq!(round_even(y), y);
            assert_eq!(floor_pos(y), y);
            assert_eq!(floor_pos(y + 0.75), y);
            assert_eq!(floor_pos(y + 0.25), y);
        }
        assert_eq!(floor_pos(0.999_999_94), 0.0);
    }

    #[test]
    fn the_unit_quantizer_matches_the_first_test_vector() {
        // TV1: u = [0, 0.2, 0.5, 0.9, 1.0] at 2 bits.
        let u = [0.0, 0.2, 0.5, 0.9, 1.0];
        let q = |scheme| with_unit!(scheme, 2, |unit| u.map(|u| unit.quantize(u)));
        assert_eq!(
            q(QuantScheme::Original),
            [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]
        );
        assert_eq!(q(QuantScheme::Modified), [0.0, 0.0, 0.5, 0.75, 0.75]);
        assert_eq!(
            q(QuantScheme::Centered),
            [0.125, 0.125, 0.625, 0.875, 0.875]
        );
        // Ties go to even: Q_1(0.5) = 0, and 3·(1/6) = 0.5 rounds to 0 at 2 bits.
        assert_eq!(
            with_unit!(QuantScheme::Original, 1, |unit| unit.quantize(0.5)),
            0.0
        );
        assert_eq!(
            with_unit!(QuantScheme::Original, 2, |unit| unit.quantize(1.0 / 6.0)),
            0.0
        );
    }
}
