//! The fused quantizers on contiguous `f32` slices: one pass over memory for each forward and
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

use macerator::{AutoArch, Simd, WithSimd};
use rayon::prelude::*;

use super::{PactSpec, Rescale, WeightSpec};
use crate::QuantScheme;

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

/// PACT's forward loop over one chunk.
struct PactForward<'a, const S: u8, const DOUBLE: bool> {
    x: &'a [f32],
    out: &'a mut [f32],
    alpha: f32,
    unit: Unit<S>,
}

impl<const S: u8, const DOUBLE: bool> Kernel for PactForward<'_, S, DOUBLE> {
    type Output = ();

    #[inline(always)]
    fn call(self) {
        for (y, &x) in self.out.iter_mut().zip(self.x) {
            let (c, _) = pact_clip::<DOUBLE>(x, self.alpha);
            let (z, _) = pact_level::<S, DOUBLE>(c, self.alpha, self.unit);
            *y = self.alpha * z;
        }
    }
}

/// PACT's backward loop over one chunk: writes `∂L/∂x` and returns the chunk's `Σ g·∂y/∂α`.
struct PactBackward<'a, const S: u8, const DOUBLE: bool> {
    x: &'a [f32],
    grad: &'a [f32],
    grad_x: &'a mut [f32],
    alpha: f32,
    unit: Unit<S>,
}

impl<const S: u8, const DOUBLE: bool> Kernel for PactBackward<'_, S, DOUBLE> {
    type Output = f64;

    #[inline(always)]
    fn call(self) -> f64 {
        let (alpha, unit) = (self.alpha, self.unit);
        // Eight lanes, each summed in f64 in element order: the loop vectorises (the lanes are
        // independent), and the sum is the same at every vector width.
        let mut acc = [0.0f64; 8];
        let (gx8, gx_tail) = self.grad_x.as_chunks_mut::<8>();
        let (x8, x_tail) = self.x.as_chunks::<8>();
        let (g8, g_tail) = self.grad.as_chunks::<8>();
        for ((gx, x), g) in gx8.iter_mut().zip(x8).zip(g8) {
            for i in 0..8 {
                let (term, grad) = pact_grad::<S, DOUBLE>(x[i], g[i], alpha, unit);
                gx[i] = grad;
                acc[i] += f64::from(term);
            }
        }
        for (i, ((gx, &x), &g)) in gx_tail.iter_mut().zip(x_tail).zip(g_tail).enumerate() {
            let (term, grad) = pact_grad::<S, DOUBLE>(x, g, alpha, unit);
            *gx = grad;
            acc[i] += f64::from(term);
        }
        acc.iter().sum()
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

/// The clipped input `c` of PACT and whether `x` lies inside the clipping range (where the
/// gradient passes), as the composed `mask_fill`/`mask_where` chain decides it.
#[inline(always)]
fn pact_clip<const DOUBLE: bool>(x: f32, alpha: f32) -> (f32, bool) {
    let (lower, above_low) = if DOUBLE {
        // where(x > −α, x, −α)
        let above = x > -alpha;
        (if above { x } else { -alpha }, above)
    } else {
        // relu with a zero gradient at zero: x ≤ 0 → 0
        let positive = x > 0.0 || x.is_nan();
        (if positive { x } else { 0.0 }, positive)
    };
    // where(c < α, c, α)
    let below_high = lower < alpha;
    (
        if below_high { lower } else { alpha },
        above_low && below_high,
    )
}

/// PACT's output divided by `α` for the clipped input `c`: `z = Q_b(c/α)` single-sided,
/// `2·Q_b((c/α + 1)/2) − 1` double-sided; also returns `v = c/α`.
#[inline(always)]
fn pact_level<const S: u8, const DOUBLE: bool>(c: f32, alpha: f32, unit: Unit<S>) -> (f32, f32) {
    let v = c / alpha;
    let z = if DOUBLE {
        unit.quantize((v + 1.0) / 2.0) * 2.0 - 1.0
    } else {
        unit.quantize(v)
    };
    (z, v)
}

/// PACT forward: `y = α·z` for every element of `x`, with `α = |alpha_param|`.
pub(crate) fn pact_forward(x: &[f32], alpha_param: f32, spec: PactSpec, isa: Isa) -> Vec<f32> {
    let alpha = alpha_param.abs();
    let mut out = vec![0.0f32; x.len()];
    with_unit!(spec.scheme, spec.bits, |unit| if spec.double_sided {
        pact_forward_with::<_, true>(x, &mut out, alpha, unit, isa)
    } else {
        pact_forward_with::<_, false>(x, &mut out, alpha, unit, isa)
    });
    out
}

fn pact_forward_with<const S: u8, const DOUBLE: bool>(
    x: &[f32],
    out: &mut [f32],
    alpha: f32,
    unit: Unit<S>,
    isa: Isa,
) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(out, x)| {
            run(
                isa,
                PactForward::<S, DOUBLE> {
                    x,
                    out,
                    alpha,
                    unit,
                },
            )
        });
}

/// PACT backward: the gradient with respect to `x` and the clipping level's gradient
/// `∂L/∂alpha_param = sign(alpha_param)·Σ g·∂y/∂α` (METHOD.md §4).
///
/// Inside the clipping range `∂y/∂x = 1` and `∂y/∂α = z − v`; outside it `∂y/∂x = 0` and
/// `∂y/∂α = z`. The input gradient is formed as the composed path forms it, `(g·α)/α`.
pub(crate) fn pact_backward(
    x: &[f32],
    grad: &[f32],
    alpha_param: f32,
    spec: PactSpec,
    isa: Isa,
) -> (Vec<f32>, f64) {
    assert_eq!(
        x.len(),
        grad.len(),
        "PACT backward: x and its gradient differ in length"
    );
    let alpha = alpha_param.abs();
    let mut grad_x = vec![0.0f32; x.len()];
    let sum = with_unit!(spec.scheme, spec.bits, |unit| if spec.double_sided {
        pact_backward_with::<_, true>(x, grad, &mut grad_x, alpha, unit, isa)
    } else {
        pact_backward_with::<_, false>(x, grad, &mut grad_x, alpha, unit, isa)
    });
    (grad_x, f64::from(sign(alpha_param)) * sum)
}

fn pact_backward_with<const S: u8, const DOUBLE: bool>(
    x: &[f32],
    grad: &[f32],
    grad_x: &mut [f32],
    alpha: f32,
    unit: Unit<S>,
    isa: Isa,
) -> f64 {
    let partials: Vec<f64> = grad_x
        .par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .map(|(grad_x, (x, grad))| {
            run(
                isa,
                PactBackward::<S, DOUBLE> {
                    x,
                    grad,
                    grad_x,
                    alpha,
                    unit,
                },
            )
        })
        .collect();
    partials.iter().sum()
}

/// One element of PACT's backward pass: `(g·∂y/∂α, ∂L/∂x)`.
#[inline(always)]
fn pact_grad<const S: u8, const DOUBLE: bool>(
    x: f32,
    g: f32,
    alpha: f32,
    unit: Unit<S>,
) -> (f32, f32) {
    let (c, inside) = pact_clip::<DOUBLE>(x, alpha);
    let (z, v) = pact_level::<S, DOUBLE>(c, alpha, unit);
    let grad = if inside { (g * alpha) / alpha } else { 0.0 };
    (g * if inside { z - v } else { z }, grad)
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

/// What the weight quantizer's forward pass keeps for its backward pass, beside `t = tanh(W)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WeightStats {
    /// `M = max|t|`.
    pub(crate) max_abs: f32,
    /// How many elements have `|t| = M`.
    pub(crate) tied: usize,
    /// The SAT scale `s`, if rescaling.
    pub(crate) scale: Option<f32>,
}

/// The weight quantizer's forward pass: `(ŵ, t, stats)` (METHOD.md §3).
///
/// `ŵ = 2·Q_b(u) − 1` with `u = (t/M + 1)/2`, or `t/M` at full precision (`spec.bits` `None`);
/// `s = c/std(ŵ)` with the unbiased standard deviation.
///
/// # Panics
///
/// Panics when rescaling fewer than two elements.
pub(crate) fn weight_forward(w: &[f32], spec: WeightSpec) -> (Vec<f32>, Vec<f32>, WeightStats) {
    let mut t = vec![0.0f32; w.len()];
    let maxima: Vec<f32> = t
        .par_chunks_mut(CHUNK)
        .zip(w.par_chunks(CHUNK))
        .map(|(t, w)| {
            let mut m = 0.0f32;
            for (t, &w) in t.iter_mut().zip(w) {
                *t = w.tanh();
                let a = t.abs();
                m = if a > m { a } else { m };
            }
            m
        })
        .collect();
    let max_abs = maxima
        .iter()
        .fold(0.0f32, |m, &x| if x > m { x } else { m });
    let mut w_hat = vec![0.0f32; w.len()];
    let partials = match spec.bits {
        Some(bits) => with_unit!(spec.scheme, bits, |unit| normalize(
            &t,
            &mut w_hat,
            max_abs,
            |n| { unit.quantize((n + 1.0) / 2.0) * 2.0 - 1.0 }
        )),
        None => normalize(&t, &mut w_hat, max_abs, |n| n),
    };
    let tied = partials.iter().map(|p| p.0).sum();
    let scale = spec.rescale.map(|rescale| {
        assert!(
            w.len() > 1,
            "rescaling needs at least two weight elements for an unbiased std, got {}",
            w.len()
        );
        let sum: f64 = partials.iter().map(|p| p.1).sum();
        let std_w_hat = unbiased_std(&w_hat, sum);
        match rescale {
            Rescale::Constant(c) => (1.0 / std_w_hat) * c as f32,
            Rescale::LatentStd => {
                let sum: f64 = chunked_sum(w);
                unbiased_std(w, sum) / std_w_hat
            }
        }
    });
    let stats = WeightStats {
        max_abs,
        tied,
        scale,
    };
    (w_hat, t, stats)
}

/// `ŵ = level(t/M)` for every element, with each chunk's count of ties at `M` and its sum of `ŵ`.
fn normalize(
    t: &[f32],
    w_hat: &mut [f32],
    max_abs: f32,
    level: impl Fn(f32) -> f32 + Sync,
) -> Vec<(usize, f64)> {
    w_hat
        .par_chunks_mut(CHUNK)
        .zip(t.par_chunks(CHUNK))
        .map(|(w_hat, t)| {
            let mut tied = 0usize;
            let mut sum = [0.0f64; 8];
            for (i, (w_hat, &t)) in w_hat.iter_mut().zip(t).enumerate() {
                tied += usize::from(t.abs() == max_abs);
                *w_hat = level(t / max_abs);
                sum[i % 8] += f64::from(*w_hat);
            }
            (tied, sum.iter().sum())
        })
        .collect()
}

/// `Σ x` in `f64`, over fixed chunks in a fixed order.
fn chunked_sum(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|x| {
            let mut acc = [0.0f64; 8];
            for (i, &x) in x.iter().enumerate() {
                acc[i % 8] += f64::from(x);
            }
            acc.iter().sum()
        })
        .collect();
    partials.iter().sum()
}

/// The unbiased standard deviation of `x`, whose sum is `sum`, rounded to `f32` as the composed
/// path's `var(0).sqrt()`.
fn unbiased_std(x: &[f32], sum: f64) -> f32 {
    let mean = sum / x.len() as f64;
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|x| {
            let mut acc = [0.0f64; 8];
            for (i, &x) in x.iter().enumerate() {
                let d = f64::from(x) - mean;
                acc[i % 8] += d * d;
            }
            acc.iter().sum()
        })
        .collect();
    let var = partials.iter().sum::<f64>() / (x.len() - 1) as f64;
    (var as f32).sqrt()
}

/// The weight quantizer's backward pass, from `t = tanh(W)`, the forward statistics and
/// `G = ∂L/∂ŵ` (METHOD.md §3, TV2b):
///
/// ```text
/// ∂L/∂W = (1 − t²)·[G/M − 𝟙(|t| = M)·sign(t)·(Σ G·t)/(M²·#tied)]
/// ```
///
/// The maximum's gradient is split evenly among the tied elements, as in PyTorch 2.x (P9).
pub(crate) fn weight_backward(t: &[f32], grad: &[f32], stats: WeightStats) -> Vec<f32> {
    assert_eq!(
        t.len(),
        grad.len(),
        "weight backward: t and its gradient differ in length"
    );
    let m = stats.max_abs;
    let partials: Vec<f64> = t
        .par_chunks(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .map(|(t, g)| {
            let mut acc = [0.0f64; 8];
            for (i, (&t, &g)) in t.iter().zip(g).enumerate() {
                acc[i % 8] += f64::from(g) * f64::from(t);
            }
            acc.iter().sum()
        })
        .collect();
    let sum_gt: f64 = partials.iter().sum();
    // ∂L/∂M, shared evenly by the tied elements.
    let grad_max = (-sum_gt / (f64::from(m) * f64::from(m))) as f32;
    let per_tied = grad_max / stats.tied.max(1) as f32;
    let mut out = vec![0.0f32; t.len()];
    out.par_chunks_mut(CHUNK)
        .zip(t.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(out, (t, g))| {
            for ((o, &t), &g) in out.iter_mut().zip(t).zip(g) {
                let tied = t.abs() == m;
                let through_max = if tied { sign(t) * per_tied } else { 0.0 };
                *o = (g / m + through_max) * (1.0 - t * t);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_detected_instruction_set_and_the_portable_fallback_give_the_same_bits() {
        // Inputs over every PACT region, with exact boundaries (x/α a multiple of 1/8).
        let alpha = 3.7f32;
        let x: Vec<f32> = (0..100_003)
            .map(|i| {
                let k = (i * 7919 % 10_007) as f32 / 10_007.0;
                if i % 5 == 0 {
                    alpha * ((i % 17) as f32 / 8.0 - 1.0)
                } else {
                    (k - 0.4) * 3.0 * alpha
                }
            })
            .collect();
        let g: Vec<f32> = (0..x.len())
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 48.0)
            .collect();
        for scheme in QuantScheme::ALL {
            for bits in [1, 2, 4, 8, 16] {
                for double_sided in [false, true] {
                    let spec = PactSpec {
                        bits,
                        scheme,
                        double_sided,
                    };
                    let fast = pact_forward(&x, -alpha, spec, Isa::Detected);
                    let portable = pact_forward(&x, -alpha, spec, Isa::Portable);
                    assert!(
                        fast.iter()
                            .zip(&portable)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                    let (gx_fast, ga_fast) = pact_backward(&x, &g, -alpha, spec, Isa::Detected);
                    let (gx_port, ga_port) = pact_backward(&x, &g, -alpha, spec, Isa::Portable);
                    assert!(
                        gx_fast
                            .iter()
                            .zip(&gx_port)
                            .all(|(a, b)| a.to_bits() == b.to_bits())
                    );
                    assert_eq!(ga_fast.to_bits(), ga_port.to_bits(), "{spec:?}");
                }
            }
        }
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
