//! The fused quantizers' CubeCL kernels, JIT-compiled for the device they run on (Vulkan,
//! Metal, WebGPU, CUDA, ROCm or the CubeCL CPU runtime).
//!
//! Element by element they compute what the composed tensor ops of [`crate::pact`] and
//! [`crate::quantize_weight`] compute on the same backend, with the same `f32` operations in the
//! same order (the same `tanh`, `round` and `floor` instructions Burn's own kernels use), so
//! the forward values are bit-identical to the composed path on the device. The full-tensor
//! reductions run in a fixed layout: each unit of a fixed number of cubes
//! ([`super::reduction_cubes`], a function of the element count only) accumulates a strided
//! subset of the elements in order, each cube sums its units in a fixed tree in shared memory
//! into one partial, and a one-cube kernel sums the partials the same way. A result therefore
//! depends on the element count and never on the device's scheduling: it is the same from run
//! to run.
//!
//! The weight quantizer's scalars (`M`, the tie count, the means and the scale) stay on the
//! device in a small statistics tensor, so a forward pass never waits on a read-back.

use cubecl::prelude::*;

use crate::fused::{STAT_MAX, STAT_SCALE, STAT_TIED};

/// Units per cube: the Vulkan minimum for `maxComputeWorkGroupInvocations`, so every device
/// takes it.
pub(super) const BLOCK: u32 = 128;

/// [`crate::QuantScheme::Original`] as a comptime kernel parameter.
pub(super) const ORIGINAL: u32 = 0;
/// [`crate::QuantScheme::Modified`] as a comptime kernel parameter.
pub(super) const MODIFIED: u32 = 1;
/// [`crate::QuantScheme::Centered`] as a comptime kernel parameter.
pub(super) const CENTERED: u32 = 2;

/// Scratch slot of the statistics tensor: `Σ ŵ`.
const STAT_SUM_W_HAT: usize = 3;
/// Scratch slot of the statistics tensor: `Σ W`.
const STAT_SUM_W: usize = 4;

/// Which reduction [`cube_reduce`] makes.
const SUM: u32 = 0;
const MAX: u32 = 1;

/// The sum (or maximum) of `value` over the cube's units, in a fixed tree; valid in every unit.
#[cube]
fn cube_reduce<F: Float>(value: F, #[comptime] op: u32) -> F {
    let mut shared = Shared::<[F]>::new_slice(comptime!(BLOCK as usize));
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    // `CUBE_DIM` is `BLOCK`; a runtime start value makes `stride` a mutable variable (a
    // constant one would be folded at expansion and could not be halved).
    let mut stride = CUBE_DIM as usize / 2;
    while stride > 0 {
        if unit < stride {
            let a = shared[unit];
            let b = shared[unit + stride];
            if comptime![op == SUM] {
                shared[unit] = a + b;
            } else {
                shared[unit] = select(b > a, b, a);
            }
        }
        sync_cube();
        stride /= 2;
    }
    shared[0]
}

/// The sum (or maximum) of all of `partials`, in one cube: each unit takes a strided subset in
/// order, then [`cube_reduce`].
#[cube]
fn reduce_partials<F: Float>(partials: &Tensor<F>, #[comptime] op: u32) -> F {
    let mut acc = F::new(0.0);
    let mut i = UNIT_POS as usize;
    while i < partials.len() {
        let v = partials[i];
        if comptime![op == SUM] {
            acc += v;
        } else {
            acc = select(v > acc, v, acc);
        }
        i += BLOCK as usize;
    }
    cube_reduce::<F>(acc, op)
}

/// `min(max(u, 0), 1)`, NaN kept, as Burn's `clamp(0, 1)`.
#[cube]
fn clamp_unit<F: Float>(u: F) -> F {
    let u = select(u < F::new(0.0), F::new(0.0), u);
    select(u > F::new(1.0), F::new(1.0), u)
}

/// The unit quantizer `Q_b(u)` at `levels = 2^b`, with the composed path's operations
/// ([`crate::unit_quantize_value`]).
#[cube]
fn unit_quantize<F: Float>(u: F, levels: F, #[comptime] scheme: u32) -> F {
    let u = clamp_unit::<F>(u);
    let one = F::new(1.0);
    if comptime![scheme == ORIGINAL] {
        let a = levels - one;
        F::round(u * a) / a
    } else {
        let top = levels - one;
        let k = F::floor(u * levels);
        let k = select(k > top, top, k);
        if comptime![scheme == MODIFIED] {
            k / levels
        } else {
            (k + F::new(0.5)) / levels
        }
    }
}

/// PACT's lower clip: `where(x > −α, x, −α)` double-sided, `relu` (0 at `x ≤ 0`) single-sided.
#[cube]
fn pact_lower<F: Float>(x: F, alpha: F, #[comptime] double: bool) -> F {
    if comptime![double] {
        select(x > -alpha, x, -alpha)
    } else {
        select(x <= F::new(0.0), F::new(0.0), x)
    }
}

/// Whether the gradient passes PACT's lower clip at `x` (single-sided: `x > 0` or NaN, the
/// complement of the `x ≤ 0` that the composed `relu` masks, hence the negated comparison).
#[allow(clippy::neg_cmp_op_on_partial_ord)]
#[cube]
fn pact_above_low<F: Float>(x: F, alpha: F, #[comptime] double: bool) -> bool {
    if comptime![double] {
        x > -alpha
    } else {
        !(x <= F::new(0.0))
    }
}

/// `z = y/α` for the clipped input `c`: `Q_b(c/α)`, or `2·Q_b((c/α + 1)/2) − 1` double-sided.
#[cube]
fn pact_level<F: Float>(
    c: F,
    alpha: F,
    levels: F,
    #[comptime] scheme: u32,
    #[comptime] double: bool,
) -> F {
    let v = c / alpha;
    if comptime![double] {
        let u = (v + F::new(1.0)) / F::new(2.0);
        unit_quantize::<F>(u, levels, scheme) * F::new(2.0) - F::new(1.0)
    } else {
        unit_quantize::<F>(v, levels, scheme)
    }
}

/// PACT forward, one element per unit: `y = α·z`, `α = |alpha_param|`.
#[cube(launch)]
pub(super) fn pact_forward<F: Float>(
    x: &Tensor<F>,
    alpha_param: &Tensor<F>,
    y: &mut Tensor<F>,
    levels: f32,
    #[comptime] scheme: u32,
    #[comptime] double: bool,
    #[define(F)] _dtype: ElemType,
) {
    let levels = F::cast_from(levels);
    let i = ABSOLUTE_POS;
    if i < y.len() {
        let alpha = F::abs(alpha_param[0]);
        let lower = pact_lower::<F>(x[i], alpha, double);
        let c = select(lower < alpha, lower, alpha);
        y[i] = alpha * pact_level::<F>(c, alpha, levels, scheme, double);
    }
}

/// PACT backward: `∂L/∂x` for every element, and each cube's `Σ g·∂y/∂α` in `partials`.
#[cube(launch)]
pub(super) fn pact_backward<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    alpha_param: &Tensor<F>,
    grad_x: &mut Tensor<F>,
    partials: &mut Tensor<F>,
    levels: f32,
    #[comptime] scheme: u32,
    #[comptime] double: bool,
    #[define(F)] _dtype: ElemType,
) {
    let levels = F::cast_from(levels);
    let alpha = F::abs(alpha_param[0]);
    let stride = CUBE_COUNT * BLOCK as usize;
    let mut acc = F::new(0.0);
    let mut i = ABSOLUTE_POS;
    while i < x.len() {
        let xi = x[i];
        let g = grad[i];
        let lower = pact_lower::<F>(xi, alpha, double);
        let below_high = lower < alpha;
        let inside = pact_above_low::<F>(xi, alpha, double) && below_high;
        let c = select(below_high, lower, alpha);
        let z = pact_level::<F>(c, alpha, levels, scheme, double);
        let v = c / alpha;
        grad_x[i] = select(inside, (g * alpha) / alpha, F::new(0.0));
        acc += g * select(inside, z - v, z);
        i += stride;
    }
    let total = cube_reduce::<F>(acc, SUM);
    if UNIT_POS == 0 {
        partials[CUBE_POS] = total;
    }
}

/// `∂L/∂alpha_param = sign(alpha_param)·Σ partials`, in one cube.
#[cube(launch)]
pub(super) fn pact_alpha_grad<F: Float>(
    partials: &Tensor<F>,
    alpha_param: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let total = reduce_partials::<F>(partials, SUM);
    if UNIT_POS == 0 {
        let a = alpha_param[0];
        let sign = select(
            a > F::new(0.0),
            F::new(1.0),
            select(a < F::new(0.0), F::new(-1.0), F::new(0.0)),
        );
        out[0] = sign * total;
    }
}

/// The weight quantizer's first pass: `t = tanh(W)`, each cube's `max|t|` and `Σ W`.
#[cube(launch)]
pub(super) fn weight_tanh<F: Float>(
    w: &Tensor<F>,
    t: &mut Tensor<F>,
    partial_max: &mut Tensor<F>,
    partial_sum: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let stride = CUBE_COUNT * BLOCK as usize;
    let mut m = F::new(0.0);
    let mut s = F::new(0.0);
    let mut i = ABSOLUTE_POS;
    while i < w.len() {
        let wi = w[i];
        let ti = F::tanh(wi);
        t[i] = ti;
        let a = F::abs(ti);
        m = select(a > m, a, m);
        s += wi;
        i += stride;
    }
    let m = cube_reduce::<F>(m, MAX);
    let s = cube_reduce::<F>(s, SUM);
    if UNIT_POS == 0 {
        partial_max[CUBE_POS] = m;
        partial_sum[CUBE_POS] = s;
    }
}

/// `M` and `Σ W` into the statistics, in one cube.
#[cube(launch)]
pub(super) fn weight_max<F: Float>(
    partial_max: &Tensor<F>,
    partial_sum: &Tensor<F>,
    stats: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let m = reduce_partials::<F>(partial_max, MAX);
    let s = reduce_partials::<F>(partial_sum, SUM);
    if UNIT_POS == 0 {
        stats[STAT_MAX] = m;
        stats[STAT_SUM_W] = s;
    }
}

/// The weight quantizer's second pass: `ŵ = 2·Q_b((t/M + 1)/2) − 1` (or `t/M` with `quantize`
/// off), each cube's count of `|t| = M` and `Σ ŵ`.
#[cube(launch)]
pub(super) fn weight_normalize<F: Float>(
    t: &Tensor<F>,
    stats: &Tensor<F>,
    w_hat: &mut Tensor<F>,
    partial_tied: &mut Tensor<F>,
    partial_sum: &mut Tensor<F>,
    levels: f32,
    #[comptime] quantize: bool,
    #[comptime] scheme: u32,
    #[define(F)] _dtype: ElemType,
) {
    let levels = F::cast_from(levels);
    let m = stats[STAT_MAX];
    let stride = CUBE_COUNT * BLOCK as usize;
    let mut tied = F::new(0.0);
    let mut s = F::new(0.0);
    let mut i = ABSOLUTE_POS;
    while i < t.len() {
        let ti = t[i];
        tied += select(F::abs(ti) == m, F::new(1.0), F::new(0.0));
        let n = ti / m;
        let mut v = n;
        if comptime![quantize] {
            let u = (n + F::new(1.0)) / F::new(2.0);
            v = unit_quantize::<F>(u, levels, scheme) * F::new(2.0) - F::new(1.0);
        }
        w_hat[i] = v;
        s += v;
        i += stride;
    }
    let tied = cube_reduce::<F>(tied, SUM);
    let s = cube_reduce::<F>(s, SUM);
    if UNIT_POS == 0 {
        partial_tied[CUBE_POS] = tied;
        partial_sum[CUBE_POS] = s;
    }
}

/// The tie count and `Σ ŵ` into the statistics, and the scale 1 (overwritten when rescaling),
/// in one cube.
#[cube(launch)]
pub(super) fn weight_ties<F: Float>(
    partial_tied: &Tensor<F>,
    partial_sum: &Tensor<F>,
    stats: &mut Tensor<F>,
    scale: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let tied = reduce_partials::<F>(partial_tied, SUM);
    let s = reduce_partials::<F>(partial_sum, SUM);
    if UNIT_POS == 0 {
        stats[STAT_TIED] = tied;
        stats[STAT_SUM_W_HAT] = s;
        stats[STAT_SCALE] = F::new(1.0);
        scale[0] = F::new(1.0);
    }
}

/// Each cube's `Σ (ŵ − mean ŵ)²` and `Σ (W − mean W)²`, the means from the statistics.
#[cube(launch)]
pub(super) fn weight_deviations<F: Float>(
    w_hat: &Tensor<F>,
    w: &Tensor<F>,
    stats: &Tensor<F>,
    partial_w_hat: &mut Tensor<F>,
    partial_w: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let n = F::cast_from(w.len() as u32);
    let mean_w_hat = stats[STAT_SUM_W_HAT] / n;
    let mean_w = stats[STAT_SUM_W] / n;
    let stride = CUBE_COUNT * BLOCK as usize;
    let mut a = F::new(0.0);
    let mut b = F::new(0.0);
    let mut i = ABSOLUTE_POS;
    while i < w.len() {
        let d = w_hat[i] - mean_w_hat;
        a += d * d;
        let e = w[i] - mean_w;
        b += e * e;
        i += stride;
    }
    let a = cube_reduce::<F>(a, SUM);
    let b = cube_reduce::<F>(b, SUM);
    if UNIT_POS == 0 {
        partial_w_hat[CUBE_POS] = a;
        partial_w[CUBE_POS] = b;
    }
}

/// The SAT scale from the unbiased standard deviations: `s = (1/std ŵ)·c`, or
/// `std W / std ŵ` with `latent`; into the statistics and `scale`, in one cube.
#[cube(launch)]
pub(super) fn weight_scale<F: Float>(
    partial_w_hat: &Tensor<F>,
    partial_w: &Tensor<F>,
    stats: &mut Tensor<F>,
    scale: &mut Tensor<F>,
    count: u32,
    constant: f32,
    #[comptime] latent: bool,
    #[define(F)] _dtype: ElemType,
) {
    let a = reduce_partials::<F>(partial_w_hat, SUM);
    let b = reduce_partials::<F>(partial_w, SUM);
    if UNIT_POS == 0 {
        let dof = F::cast_from(count - 1);
        let std_w_hat = F::sqrt(a / dof);
        let mut s = (F::new(1.0) / std_w_hat) * F::cast_from(constant);
        if comptime![latent] {
            s = F::sqrt(b / dof) / std_w_hat;
        }
        stats[STAT_SCALE] = s;
        scale[0] = s;
    }
}

/// The weight backward's first pass: each cube's `Σ G·t`.
#[cube(launch)]
pub(super) fn weight_grad_sum<F: Float>(
    t: &Tensor<F>,
    grad: &Tensor<F>,
    partials: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let stride = CUBE_COUNT * BLOCK as usize;
    let mut acc = F::new(0.0);
    let mut i = ABSOLUTE_POS;
    while i < t.len() {
        acc += grad[i] * t[i];
        i += stride;
    }
    let total = cube_reduce::<F>(acc, SUM);
    if UNIT_POS == 0 {
        partials[CUBE_POS] = total;
    }
}

/// `∂L/∂M` shared by each tied element, `−(Σ G·t)/(M²·#tied)`, in one cube.
#[cube(launch)]
pub(super) fn weight_grad_max<F: Float>(
    partials: &Tensor<F>,
    stats: &Tensor<F>,
    per_tied: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let total = reduce_partials::<F>(partials, SUM);
    if UNIT_POS == 0 {
        let m = stats[STAT_MAX];
        let tied = stats[STAT_TIED];
        let tied = select(tied < F::new(1.0), F::new(1.0), tied);
        per_tied[0] = (-total / (m * m)) / tied;
    }
}

/// The weight backward's second pass, one element per unit:
/// `∂L/∂W = (G/M + 𝟙(|t| = M)·sign(t)·per_tied)·(1 − t²)`.
#[cube(launch)]
pub(super) fn weight_grad<F: Float>(
    t: &Tensor<F>,
    grad: &Tensor<F>,
    stats: &Tensor<F>,
    per_tied: &Tensor<F>,
    out: &mut Tensor<F>,
    #[define(F)] _dtype: ElemType,
) {
    let i = ABSOLUTE_POS;
    if i < out.len() {
        let m = stats[STAT_MAX];
        let ti = t[i];
        let sign = select(
            ti > F::new(0.0),
            F::new(1.0),
            select(ti < F::new(0.0), F::new(-1.0), F::new(0.0)),
        );
        let through_max = select(F::abs(ti) == m, sign * per_tied[0], F::new(0.0));
        out[i] = (grad[i] / m + through_max) * (F::new(1.0) - ti * ti);
    }
}
