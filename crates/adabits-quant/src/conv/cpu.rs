//! The convolution's CPU kernels on contiguous `f32` NCHW slices: per image, an im2col copy and
//! one matrix product (the forward and the input gradient), and per fixed group of images one
//! accumulated product (the weight gradient), split over images with rayon.
//!
//! For image `b` with `col_b = im2col(x_b)` (`[C_in·kh·kw, H_out·W_out]`, one row per input
//! channel and kernel tap, zero where the tap falls in the padding):
//!
//! - forward: `y_b = W · col_b` (`W` as `[C_out, C_in·kh·kw]`), written straight into `y`'s
//!   NCHW slice for `b`;
//! - input gradient: `∂x_b = col2im(Wᵀ · ∂y_b)`, the transpose of im2col adding every tap back;
//! - weight gradient: `∂W = Σ_b ∂y_b · col_bᵀ`, summed over fixed groups of [`WGRAD_IMAGES`]
//!   images and then over the groups in order, so the result does not depend on the thread
//!   count.
//!
//! A `1×1` convolution with stride 1 and no padding skips im2col: `col_b` is `x_b` itself.

use rayon::prelude::*;

use super::gemm::{MatMut, MatRef, matmul};

/// Images per partial weight gradient: enough groups for every thread on a small batch, few
/// enough that summing the partials costs nothing next to the products.
const WGRAD_IMAGES: usize = 4;

/// The shapes of one convolution (`groups = 1`, `dilation = 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    /// Padding before the first row and column.
    pub pad: [usize; 2],
    pub h_out: usize,
    pub w_out: usize,
}

impl Geometry {
    /// The geometry of `x: [batch, c_in, h, w]` and `weight: [c_out, c_in, kh, kw]` with
    /// `padding` as (begin, end) per spatial dimension; `None` if no output position fits.
    pub(crate) fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
    ) -> Option<Self> {
        let [batch, c_in, h, w] = x;
        let [c_out, _, kh, kw] = weight;
        let out = |size: usize, (begin, end): (usize, usize), k: usize, s: usize| {
            (size + begin + end).checked_sub(k).map(|span| span / s + 1)
        };
        Some(Self {
            batch,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            pad: [padding[0].0, padding[1].0],
            h_out: out(h, padding[0], kh, stride[0])?,
            w_out: out(w, padding[1], kw, stride[1])?,
        })
    }

    /// Rows of `col_b`: `C_in·kh·kw`.
    fn taps(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// Columns of `col_b`: `H_out·W_out`.
    fn positions(&self) -> usize {
        self.h_out * self.w_out
    }

    fn in_image(&self) -> usize {
        self.c_in * self.h * self.w
    }

    fn out_image(&self) -> usize {
        self.c_out * self.positions()
    }

    /// Whether `col_b` is `x_b` itself.
    fn is_pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.stride == [1, 1]
            && self.pad == [0, 0]
            && (self.h_out, self.w_out) == (self.h, self.w)
    }

    /// For stride 1 and padding smaller than the kernel, the input gradient as a forward
    /// convolution: `∂x = conv2d(∂y, W′)` with `W′[i, o, a, b] = W[o, i, kh−1−a, kw−1−b]` and
    /// padding `k − 1 − p` on each side, which is a dense product per image where
    /// `col2im(Wᵀ·∂y)` is a product with `C_out` for its inner dimension and a scatter. Returns
    /// `W′` and the geometry of that convolution, or `None` where it does not apply.
    fn transposed(&self, weight: &[f32]) -> Option<(Vec<f32>, Geometry)> {
        let [pad_h, pad_w] = self.pad;
        let pad_end = [
            (self.h_out + self.kh - 1).checked_sub(self.h + pad_h)?,
            (self.w_out + self.kw - 1).checked_sub(self.w + pad_w)?,
        ];
        let fits = self.stride == [1, 1]
            && !self.is_pointwise()
            && pad_h < self.kh
            && pad_w < self.kw
            && pad_end[0] < self.kh
            && pad_end[1] < self.kw;
        if !fits {
            return None;
        }
        let (kh, kw) = (self.kh, self.kw);
        let mut flipped = vec![0.0f32; weight.len()];
        for o in 0..self.c_out {
            for i in 0..self.c_in {
                for a in 0..kh {
                    for b in 0..kw {
                        flipped[((i * self.c_out + o) * kh + a) * kw + b] =
                            weight[((o * self.c_in + i) * kh + (kh - 1 - a)) * kw + (kw - 1 - b)];
                    }
                }
            }
        }
        let g = Geometry::new(
            [self.batch, self.c_out, self.h_out, self.w_out],
            [self.c_in, self.c_out, kh, kw],
            [1, 1],
            [
                (kh - 1 - pad_h, kh - 1 - pad_end[0]),
                (kw - 1 - pad_w, kw - 1 - pad_end[1]),
            ],
        )?;
        (g.h_out == self.h && g.w_out == self.w).then_some((flipped, g))
    }

    /// The output columns `[lo, hi)` whose input column `o·s + k − pad` lies inside the image.
    fn valid_cols(&self, k: usize) -> (usize, usize) {
        let (s, pad) = (self.stride[1], self.pad[1]);
        // o·s + k ≥ pad  ⇔  o ≥ ⌈(pad − k)/s⌉
        let lo = pad.saturating_sub(k).div_ceil(s).min(self.w_out);
        // o·s + k − pad ≤ w − 1  ⇔  o ≤ ⌊(w − 1 + pad − k)/s⌋
        let hi = match (self.w + pad).checked_sub(k + 1) {
            Some(span) => (span / s + 1).min(self.w_out),
            None => 0,
        };
        (lo, hi.max(lo))
    }

    /// The input row of output row `o` at kernel row `k`, if inside the image.
    fn input_row(&self, o: usize, k: usize) -> Option<usize> {
        (o * self.stride[0] + k)
            .checked_sub(self.pad[0])
            .filter(|&r| r < self.h)
    }
}

/// Fills `col` (`[C_in·kh·kw, H_out·W_out]`) with the taps of one image `x_b`.
fn im2col(x_b: &[f32], col: &mut [f32], g: &Geometry) {
    if g.stride == [1, 1] && g.w_out == g.w {
        im2col_shifted(x_b, col, g);
        return;
    }
    let n = g.positions();
    let plane = g.h * g.w;
    let mut rows = col.chunks_exact_mut(n);
    for c in 0..g.c_in {
        let x_c = &x_b[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = rows.next().expect("col has C_in·kh·kw rows");
                let (lo, hi) = g.valid_cols(kj);
                for (oi, out) in row.chunks_exact_mut(g.w_out).enumerate() {
                    let Some(r) = g.input_row(oi, ki) else {
                        out.fill(0.0);
                        continue;
                    };
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if lo == hi {
                        continue;
                    }
                    let x_r = &x_c[r * g.w..(r + 1) * g.w];
                    let first = lo * g.stride[1] + kj - g.pad[1];
                    if g.stride[1] == 1 {
                        out[lo..hi].copy_from_slice(&x_r[first..first + (hi - lo)]);
                    } else {
                        for (o, v) in out[lo..hi]
                            .iter_mut()
                            .zip(x_r[first..].iter().step_by(g.stride[1]))
                        {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// [`im2col`] for stride 1 and an output as wide as the input (a "same" padding), where each
/// row of `col` is the input plane shifted by one flat offset: one copy per tap, then zeros
/// where the shift wrapped a column around a row edge or left the image (strided stores of a
/// column or two, not a `memset` or `memcpy` call per image row).
fn im2col_shifted(x_b: &[f32], col: &mut [f32], g: &Geometry) {
    let (h, w) = (g.h, g.w);
    let plane = h * w;
    let n = g.positions();
    let mut rows = col.chunks_exact_mut(n);
    for c in 0..g.c_in {
        let x_c = &x_b[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            // Output rows whose input row `o + ki − pad` is inside the image.
            let row_lo = g.pad[0].saturating_sub(ki).min(g.h_out);
            let row_hi = (h + g.pad[0]).saturating_sub(ki).clamp(row_lo, g.h_out);
            for kj in 0..g.kw {
                let out = rows.next().expect("col has C_in·kh·kw rows");
                // Flat offset from an output position to its input position.
                let d = (ki * w + kj) as isize - (g.pad[0] * w + g.pad[1]) as isize;
                let start = ((row_lo * w) as isize).max(-d).min((row_hi * w) as isize) as usize;
                let end = ((row_hi * w) as isize)
                    .min(plane as isize - d)
                    .max(start as isize) as usize;
                out[..start].fill(0.0);
                out[end..].fill(0.0);
                if start == end {
                    continue;
                }
                let from = (start as isize + d) as usize;
                out[start..end].copy_from_slice(&x_c[from..from + (end - start)]);
                let (lo, hi) = g.valid_cols(kj);
                for j in (0..lo).chain(hi..w) {
                    for v in out[start..end]
                        .iter_mut()
                        .skip((j + w - start % w) % w)
                        .step_by(w)
                    {
                        *v = 0.0;
                    }
                }
            }
        }
    }
}

/// Adds every tap of `col` (`[C_in·kh·kw, H_out·W_out]`) back into its input position of
/// `dx_b`: the transpose of [`im2col`].
fn col2im(col: &[f32], dx_b: &mut [f32], g: &Geometry) {
    let n = g.positions();
    let plane = g.h * g.w;
    let mut rows = col.chunks_exact(n);
    for c in 0..g.c_in {
        let dx_c = &mut dx_b[c * plane..(c + 1) * plane];
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let row = rows.next().expect("col has C_in·kh·kw rows");
                let (lo, hi) = g.valid_cols(kj);
                for (oi, taps) in row.chunks_exact(g.w_out).enumerate() {
                    let Some(r) = g.input_row(oi, ki).filter(|_| lo < hi) else {
                        continue;
                    };
                    let dx_r = &mut dx_c[r * g.w..(r + 1) * g.w];
                    let first = lo * g.stride[1] + kj - g.pad[1];
                    if g.stride[1] == 1 {
                        for (d, t) in dx_r[first..first + (hi - lo)].iter_mut().zip(&taps[lo..hi]) {
                            *d += *t;
                        }
                    } else {
                        for (d, t) in dx_r[first..]
                            .iter_mut()
                            .step_by(g.stride[1])
                            .zip(&taps[lo..hi])
                        {
                            *d += *t;
                        }
                    }
                }
            }
        }
    }
}

/// `col_b` for image `x_b`: `x_b` itself for a pointwise convolution, else `buffer` filled by
/// [`im2col`].
fn columns<'a>(x_b: &'a [f32], buffer: &'a mut Vec<f32>, g: &Geometry) -> &'a [f32] {
    if g.is_pointwise() {
        return x_b;
    }
    buffer.resize(g.taps() * g.positions(), 0.0);
    im2col(x_b, buffer, g);
    buffer
}

/// `y = conv2d(x, weight)`, `[batch, C_out, H_out, W_out]`.
pub(crate) fn forward(x: &[f32], weight: &[f32], g: &Geometry) -> Vec<f32> {
    let mut y = vec![0.0f32; g.batch * g.out_image()];
    if g.out_image() == 0 {
        return y;
    }
    let w = MatRef::row_major(weight, g.c_out, g.taps());
    y.par_chunks_mut(g.out_image())
        .zip(x.par_chunks(g.in_image().max(1)))
        .for_each_init(Vec::new, |buffer, (y_b, x_b)| {
            let col = columns(x_b, buffer, g);
            let dst = MatMut {
                data: y_b,
                rows: g.c_out,
                cols: g.positions(),
            };
            matmul(
                dst,
                false,
                w,
                MatRef::row_major(col, g.taps(), g.positions()),
            );
        });
    y
}

/// `∂L/∂x` from `∂L/∂y`.
pub(crate) fn backward_x(weight: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    if let Some((flipped, g_t)) = g.transposed(weight) {
        return forward(grad, &flipped, &g_t);
    }
    let mut dx = vec![0.0f32; g.batch * g.in_image()];
    if g.in_image() == 0 || g.out_image() == 0 {
        return dx;
    }
    let w_t = MatRef::transposed(weight, g.taps(), g.c_out);
    dx.par_chunks_mut(g.in_image())
        .zip(grad.par_chunks(g.out_image()))
        .for_each_init(Vec::new, |buffer: &mut Vec<f32>, (dx_b, grad_b)| {
            let grad_b = MatRef::row_major(grad_b, g.c_out, g.positions());
            if g.is_pointwise() {
                let dst = MatMut {
                    data: dx_b,
                    rows: g.taps(),
                    cols: g.positions(),
                };
                matmul(dst, false, w_t, grad_b);
                return;
            }
            buffer.resize(g.taps() * g.positions(), 0.0);
            let dst = MatMut {
                data: buffer,
                rows: g.taps(),
                cols: g.positions(),
            };
            matmul(dst, false, w_t, grad_b);
            col2im(buffer, dx_b, g);
        });
    dx
}

/// `∂L/∂W` from `∂L/∂y`, `[C_out, C_in, kh, kw]`.
pub(crate) fn backward_weight(x: &[f32], grad: &[f32], g: &Geometry) -> Vec<f32> {
    let size = g.c_out * g.taps();
    if g.in_image() == 0 || g.out_image() == 0 {
        return vec![0.0; size];
    }
    let images = WGRAD_IMAGES;
    let partials: Vec<Vec<f32>> = x
        .par_chunks(images * g.in_image())
        .zip(grad.par_chunks(images * g.out_image()))
        .map(|(x_group, grad_group)| {
            let mut dw = vec![0.0f32; size];
            let mut buffer = Vec::new();
            for (i, (x_b, grad_b)) in x_group
                .chunks_exact(g.in_image())
                .zip(grad_group.chunks_exact(g.out_image()))
                .enumerate()
            {
                let col = columns(x_b, &mut buffer, g);
                let dst = MatMut {
                    data: &mut dw,
                    rows: g.c_out,
                    cols: g.taps(),
                };
                matmul(
                    dst,
                    i > 0,
                    MatRef::row_major(grad_b, g.c_out, g.positions()),
                    MatRef::transposed(col, g.positions(), g.taps()),
                );
            }
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0.0; size]);
    for partial in partials {
        for (d, p) in dw.iter_mut().zip(&partial) {
            *d += *p;
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct definition, in `f64`.
    fn naive(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f64> {
        let mut y = vec![0.0; g.batch * g.out_image()];
        for b in 0..g.batch {
            for co in 0..g.c_out {
                for oi in 0..g.h_out {
                    for oj in 0..g.w_out {
                        let mut acc = 0.0;
                        for ci in 0..g.c_in {
                            for ki in 0..g.kh {
                                for kj in 0..g.kw {
                                    let r = (oi * g.stride[0] + ki) as isize - g.pad[0] as isize;
                                    let c = (oj * g.stride[1] + kj) as isize - g.pad[1] as isize;
                                    if r < 0 || c < 0 || r >= g.h as isize || c >= g.w as isize {
                                        continue;
                                    }
                                    let xi =
                                        ((b * g.c_in + ci) * g.h + r as usize) * g.w + c as usize;
                                    let wi = ((co * g.c_in + ci) * g.kh + ki) * g.kw + kj;
                                    acc += f64::from(x[xi]) * f64::from(w[wi]);
                                }
                            }
                        }
                        y[((b * g.c_out + co) * g.h_out + oi) * g.w_out + oj] = acc;
                    }
                }
            }
        }
        y
    }

    fn data(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 2_654_435_761 + seed * 97) >> 7) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn the_forward_matches_the_definition_with_padding_and_strides() {
        for &(x, w, stride, padding) in &[
            ([2, 3, 7, 6], [4, 3, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([1, 2, 8, 9], [3, 2, 3, 2], [2, 3], [(2, 0), (0, 1)]),
            ([3, 4, 5, 5], [2, 4, 1, 1], [1, 1], [(0, 0), (0, 0)]),
            ([2, 2, 6, 6], [3, 2, 1, 1], [2, 2], [(0, 0), (0, 0)]),
            ([1, 1, 2, 2], [1, 1, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([2, 3, 5, 7], [2, 3, 2, 2], [1, 1], [(0, 1), (1, 0)]),
            ([1, 2, 9, 9], [3, 2, 3, 3], [1, 1], [(2, 0), (1, 1)]),
            // Planes smaller than the kernel: the shifted copy starts past the plane's end.
            ([2, 2, 1, 1], [3, 2, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([1, 1, 1, 3], [2, 1, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([1, 1, 2, 1], [2, 1, 3, 3], [1, 1], [(1, 1), (1, 1)]),
            ([1, 1, 2, 2], [1, 1, 5, 5], [1, 1], [(2, 2), (2, 2)]),
            ([1, 1, 1, 1], [2, 1, 3, 3], [2, 2], [(1, 1), (1, 1)]),
        ] {
            let g = Geometry::new(x, w, stride, padding).unwrap();
            let xs = data(x.iter().product(), 1);
            let ws = data(w.iter().product(), 2);
            let y = forward(&xs, &ws, &g);
            for (a, b) in y.iter().zip(naive(&xs, &ws, &g)) {
                assert!((f64::from(*a) - b).abs() < 1e-5, "{x:?} {w:?}: {a} vs {b}");
            }
        }
    }

    /// `⟨col2im(c), x⟩ = ⟨c, im2col(x)⟩`: col2im is im2col's transpose.
    #[test]
    fn col2im_is_the_transpose_of_im2col() {
        let g = Geometry::new([1, 2, 7, 8], [1, 2, 3, 2], [2, 3], [(1, 2), (1, 0)]).unwrap();
        let x = data(g.in_image(), 3);
        let c = data(g.taps() * g.positions(), 4);
        let mut col = vec![0.0; c.len()];
        im2col(&x, &mut col, &g);
        let mut back = vec![0.0; x.len()];
        col2im(&c, &mut back, &g);
        let lhs: f64 = back
            .iter()
            .zip(&x)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        let rhs: f64 = c
            .iter()
            .zip(&col)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        assert!((lhs - rhs).abs() < 1e-4, "{lhs} vs {rhs}");
    }

    /// The weight gradient is the same bits on one thread and on three.
    #[test]
    fn the_weight_gradient_does_not_depend_on_the_thread_count() {
        let g = Geometry::new([11, 3, 6, 5], [4, 3, 3, 3], [1, 1], [(1, 1), (1, 1)]).unwrap();
        let x = data(11 * g.in_image(), 5);
        let d = data(11 * g.out_image(), 6);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| backward_weight(&x, &d, &g))
        };
        assert_eq!(run(1), run(3));
    }

    #[test]
    fn a_kernel_larger_than_the_padded_input_has_no_output() {
        assert_eq!(
            Geometry::new([1, 1, 2, 2], [1, 1, 5, 5], [1, 1], [(1, 1), (1, 1)]),
            None
        );
    }
}
