//! PACT's fused kernels: one pass forward, one pass backward (docs/method.md §4).

use rayon::prelude::*;

use super::{CENTERED, CHUNK, Isa, Kernel, MODIFIED, ORIGINAL, Unit, run, sign};
use crate::QuantScheme;
use crate::fused::PactSpec;

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
/// `∂L/∂alpha_param = sign(alpha_param)·Σ g·∂y/∂α` (docs/method.md §4).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
