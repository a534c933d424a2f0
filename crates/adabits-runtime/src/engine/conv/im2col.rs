//! Dense convolutions from im2col rows: the portable and AVX2 GEMM path, the task loop the
//! bit-serial layers share, and each worker thread's buffers.

use super::Geometry;
use super::direct::direct;
use crate::engine::epilogue::{Epilogue, Output, Rows};
use crate::engine::kernels::{self, Isa, PackedWeights, ROWS, gemm};

/// Output rows (pixels) per parallel task.
const TASK_ROWS: usize = 64;

/// A dense convolution: per task of [`TASK_ROWS`] output pixels, their im2col rows, one GEMM
/// and the epilogue.
pub(super) fn dense(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    w: &PackedWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    // The direct kernel reads adjacent taps; a dilated kernel takes the im2col rows.
    if w.isa() == Isa::Avx512Vnni && g.dilation == [1, 1] {
        return direct(codes, batch, g, w, epilogue, out, split);
    }
    im2col_tasks(
        codes,
        batch,
        g,
        (w.kp(), w.n()),
        (w.isa(), epilogue),
        out,
        split,
        |scratch, rows| gemm(&scratch.a, rows, w, &mut scratch.acc),
    );
}

/// A dense convolution from im2col rows: per task of [`TASK_ROWS`] output pixels, their rows
/// (`kp` bytes each) and the rows' sums where the epilogue needs them, then `product`, which
/// fills `scratch.acc` with the `rows × n` integer sums, then the epilogue on `isa`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn im2col_tasks(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    (kp, n): (usize, usize),
    (isa, epilogue): (Isa, &Epilogue),
    out: Output<'_>,
    split: usize,
    product: impl Fn(&mut Scratch, usize) + Sync,
) {
    let [ho, wo] = g.output;
    debug_assert_eq!(out.values.len(), batch * ho * wo * n);
    out.par_chunks(TASK_ROWS * n, split, |task, out, next| {
        SCRATCH.with_borrow_mut(|scratch| {
            let rows = out.len() / n;
            scratch.im2col(codes, g, kp, task * TASK_ROWS, rows);
            if epilogue.numerators.plus_inputs != 0 {
                scratch.row_sums(kp, rows);
            }
            scratch.acc.resize(rows * n, 0);
            product(scratch, rows);
            kernels::epilogue(
                isa,
                Rows {
                    epilogue,
                    acc: &scratch.acc,
                    sums: &scratch.sums,
                    n,
                    out,
                    codes: next,
                },
            );
        });
    });
}

thread_local! {
    /// Each worker thread's buffers for its tasks, kept between tasks and layers.
    pub(super) static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// One task's buffers: im2col rows, their sums, the integer outputs.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub(crate) a: Vec<u8>,
    pub(crate) sums: Vec<i32>,
    pub(crate) acc: Vec<i32>,
    /// The bit-planes of the rows of `a` (bit-serial layers).
    pub(crate) planes: Vec<u64>,
}

impl Scratch {
    /// The im2col rows (`kp` bytes each, taps in (ky, kx, c) order) of output pixels
    /// `first..first + rows`, padded with zero rows to a multiple of [`ROWS`].
    fn im2col(&mut self, codes: &[u8], g: &Geometry, kp: usize, first: usize, rows: usize) {
        let [ho, wo] = g.output;
        let [h, wi] = g.input;
        let [kh, kw] = g.kernel;
        let pixels = ho * wo;
        let c = g.cin;
        self.a.clear();
        self.a.resize(rows.next_multiple_of(ROWS) * kp, 0);
        for r in 0..rows {
            let p = first + r;
            let (image, pixel) = (p / pixels, p % pixels);
            let (oy, ox) = (pixel / wo, pixel % wo);
            let image = &codes[image * h * wi * c..(image + 1) * h * wi * c];
            let row = &mut self.a[r * kp..(r + 1) * kp];
            if g.dilation != [1, 1] {
                // Dilated taps are apart: one copy of `c` bytes per tap inside the image.
                for ky in 0..kh {
                    for kx in 0..kw {
                        if let Some((iy, ix)) = g.source(oy, ox, ky, kx) {
                            row[(ky * kw + kx) * c..][..c]
                                .copy_from_slice(&image[(iy * wi + ix) * c..][..c]);
                        }
                    }
                }
                continue;
            }
            // The taps of one kernel row that fall inside the image are adjacent pixels:
            // one copy each.
            let x0 = (ox * g.stride[1]) as isize - g.padding[1] as isize;
            let kx_first = (-x0).max(0) as usize;
            let kx_end = kw.min((wi as isize - x0).max(0) as usize);
            if kx_first >= kx_end {
                continue;
            }
            for ky in 0..kh {
                let Some(iy) = (oy * g.stride[0] + ky).checked_sub(g.padding[0]) else {
                    continue;
                };
                if iy >= h {
                    continue;
                }
                let ix = (x0 + kx_first as isize) as usize;
                let len = (kx_end - kx_first) * c;
                let src = &image[(iy * wi + ix) * c..][..len];
                row[(ky * kw + kx_first) * c..][..len].copy_from_slice(src);
            }
        }
    }

    /// The sum of each of the first `rows` rows of `a`.
    fn row_sums(&mut self, kp: usize, rows: usize) {
        self.sums.clear();
        self.sums.extend(
            self.a
                .chunks_exact(kp)
                .take(rows)
                .map(|row| row.iter().map(|&q| i32::from(q)).sum::<i32>()),
        );
    }
}
