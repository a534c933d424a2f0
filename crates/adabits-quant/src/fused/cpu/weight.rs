//! The weight quantizer's fused kernels: tanh, max-abs with the even tie split, quantize and
//! SAT rescale forward; `Σ G·t` then the gradient backward (docs/method.md §3).

use rayon::prelude::*;

use super::{CENTERED, CHUNK, MODIFIED, ORIGINAL, Unit, lane_sum, sign};
use crate::QuantScheme;
use crate::fused::{Rescale, WeightSpec};

/// What the weight quantizer's forward pass keeps for its backward pass, beside `t = tanh(W)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct WeightStats {
    /// `M = max|t|`.
    pub(crate) max_abs: f32,
    /// How many elements have `|t| = M`, as the `f32` the backward divides by (exact up to
    /// 2^24 ties).
    pub(crate) tied: f32,
    /// The SAT scale `s`, if rescaling.
    pub(crate) scale: Option<f32>,
}

/// The weight quantizer's forward pass: `(ŵ, t, stats)` (docs/method.md §3).
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
    let tied = partials.iter().map(|p| p.0).sum::<usize>() as f32;
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
            for (w_hat, &t) in w_hat.iter_mut().zip(t) {
                tied += usize::from(t.abs() == max_abs);
                *w_hat = level(t / max_abs);
            }
            (tied, lane_sum(w_hat.iter().map(|&w| f64::from(w))))
        })
        .collect()
}

/// `Σ x` in `f64`, over fixed chunks in a fixed order.
fn chunked_sum(x: &[f32]) -> f64 {
    let partials: Vec<f64> = x
        .par_chunks(CHUNK)
        .map(|x| lane_sum(x.iter().map(|&x| f64::from(x))))
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
            lane_sum(x.iter().map(|&x| {
                let d = f64::from(x) - mean;
                d * d
            }))
        })
        .collect();
    let var = partials.iter().sum::<f64>() / (x.len() - 1) as f64;
    (var as f32).sqrt()
}

/// The weight quantizer's backward pass, from `t = tanh(W)`, the forward statistics and
/// `G = ∂L/∂ŵ` (docs/method.md §3, TV2b):
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
        .map(|(t, g)| lane_sum(t.iter().zip(g).map(|(&t, &g)| f64::from(g) * f64::from(t))))
        .collect();
    let sum_gt: f64 = partials.iter().sum();
    // ∂L/∂M, shared evenly by the tied elements.
    let grad_max = (-sum_gt / (f64::from(m) * f64::from(m))) as f32;
    let per_tied = grad_max / stats.tied.max(1.0);
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
