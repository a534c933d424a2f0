//! BatchNorm's CPU kernels on contiguous `f32` NCHW slices, parallel over channels (the
//! statistics and the gradient sums) and over `(image, channel)` planes (the element-wise
//! passes).
//!
//! The element-wise formulas are the ones of Burn's composed `batch_norm_train` and its
//! backward, in the same `f32` operations: `y = (x − μ)/√(σ² + ε)·γ + β` and
//! `∂x = γ/√(σ² + ε)·((∂y − mean ∂y) − x̂·mean(∂y·x̂))`. The per-channel sums (μ, σ², `Σ ∂y`,
//! `Σ ∂y·x̂`) are accumulated in `f64` over fixed lanes in a fixed order, so they do not depend
//! on the thread count.

use rayon::prelude::*;

/// Lanes of the `f64` sums (a vector of them per loop iteration).
const LANES: usize = 8;

/// The shape of an `[N, C, H, W]` tensor as BatchNorm sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub batch: usize,
    pub channels: usize,
    /// `H·W`.
    pub plane: usize,
}

impl Layout {
    /// Values per channel, `N·H·W`.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// The planes of channel `c`, one per image.
    fn planes<'a>(&self, t: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> {
        let (plane, channels) = (self.plane, self.channels);
        (0..self.batch).map(move |b| &t[(b * channels + c) * plane..][..plane])
    }
}

/// `(Σ f(a_i, b_i), Σ g(a_i, b_i))` in `f64` over two equally long slices, in [`LANES`] lanes
/// and then across them, in a fixed order (the chunked loop is what the compiler vectorises).
#[inline(always)]
fn lane_sums(
    a: &[f32],
    b: &[f32],
    f: impl Fn(f32, f32) -> f64,
    g: impl Fn(f32, f32) -> f64,
) -> (f64, f64) {
    let mut acc_f = [0.0f64; LANES];
    let mut acc_g = [0.0f64; LANES];
    let (chunks_a, chunks_b) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (rest_a, rest_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for lane in 0..LANES {
            acc_f[lane] += f(ca[lane], cb[lane]);
            acc_g[lane] += g(ca[lane], cb[lane]);
        }
    }
    for (lane, (x, y)) in rest_a.iter().zip(rest_b).enumerate() {
        acc_f[lane] += f(*x, *y);
        acc_g[lane] += g(*x, *y);
    }
    (acc_f.iter().sum(), acc_g.iter().sum())
}

/// `(y, mean, biased variance)`.
pub(crate) fn forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
    l: Layout,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = l.count() as f64;
    let (mean, variance): (Vec<f32>, Vec<f32>) = (0..l.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = l
                .planes(x, c)
                .map(|p| lane_sums(p, p, |v, _| f64::from(v), |_, _| 0.0).0)
                .sum();
            let mean = (sum / n) as f32;
            let squares: f64 = l
                .planes(x, c)
                .map(|p| {
                    let square = |v: f32, _| f64::from((v - mean) * (v - mean));
                    lane_sums(p, p, square, |_, _| 0.0).0
                })
                .sum();
            (mean, (squares / n) as f32)
        })
        .unzip();
    let mut y = vec![0.0f32; x.len()];
    if l.plane > 0 {
        y.par_chunks_mut(l.plane)
            .zip(x.par_chunks(l.plane))
            .enumerate()
            .for_each(|(i, (y, x))| {
                let c = i % l.channels;
                let (m, std, g, b) = (mean[c], (variance[c] + epsilon).sqrt(), gamma[c], beta[c]);
                for (y, x) in y.iter_mut().zip(x) {
                    *y = (*x - m) / std * g + b;
                }
            });
    }
    (y, mean, variance)
}

/// The per-channel constants of the backward pass.
#[derive(Clone, Debug)]
pub(crate) struct Channels {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    gamma: Vec<f32>,
}

impl Channels {
    /// From the forward's mean and biased variance.
    pub(crate) fn new(mean: &[f32], variance: &[f32], gamma: &[f32], epsilon: f32) -> Self {
        Self {
            mean: mean.to_vec(),
            inv_std: variance
                .iter()
                .map(|v| 1.0 / (v + epsilon).sqrt())
                .collect(),
            gamma: gamma.to_vec(),
        }
    }
}

/// `(∂x, ∂γ, ∂β)` from `∂y`.
pub(crate) fn backward(
    x: &[f32],
    grad: &[f32],
    k: &Channels,
    l: Layout,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (dgamma, dbeta): (Vec<f64>, Vec<f64>) = (0..l.channels)
        .into_par_iter()
        .map(|c| {
            let (m, s) = (k.mean[c], k.inv_std[c]);
            let mut sum_dy = 0.0;
            let mut sum_dy_xhat = 0.0;
            for (x, d) in l.planes(x, c).zip(l.planes(grad, c)) {
                let (dy, dy_xhat) = lane_sums(
                    d,
                    x,
                    |d, _| f64::from(d),
                    |d, x| f64::from(d * ((x - m) * s)),
                );
                sum_dy += dy;
                sum_dy_xhat += dy_xhat;
            }
            (sum_dy_xhat, sum_dy)
        })
        .unzip();
    let n = l.count() as f64;
    let mut dx = vec![0.0f32; x.len()];
    if l.plane > 0 {
        dx.par_chunks_mut(l.plane)
            .zip(x.par_chunks(l.plane).zip(grad.par_chunks(l.plane)))
            .enumerate()
            .for_each(|(i, (dx, (x, d)))| {
                let c = i % l.channels;
                let (m, s) = (k.mean[c], k.inv_std[c]);
                let scale = k.gamma[c] * s;
                let mean_dy = (dbeta[c] / n) as f32;
                let mean_dy_xhat = (dgamma[c] / n) as f32;
                for ((dx, x), d) in dx.iter_mut().zip(x).zip(d) {
                    let xhat = (*x - m) * s;
                    *dx = scale * ((*d - mean_dy) - xhat * mean_dy_xhat);
                }
            });
    }
    let to_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect();
    (dx, to_f32(dgamma), to_f32(dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 1.5
            })
            .collect()
    }

    /// The statistics and gradient sums are the same bits on one thread and on three.
    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let l = Layout {
            batch: 5,
            channels: 3,
            plane: 37,
        };
        let x = data(5 * 3 * 37, 1);
        let d = data(5 * 3 * 37, 2);
        let (g, b) = (vec![1.5, -0.5, 2.0], vec![0.1, 0.2, 0.3]);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (y, m, v) = forward(&x, &g, &b, 1e-5, l);
                let back = backward(&x, &d, &Channels::new(&m, &v, &g, 1e-5), l);
                (y, m, v, back)
            })
        };
        assert_eq!(run(1), run(3));
    }
}
