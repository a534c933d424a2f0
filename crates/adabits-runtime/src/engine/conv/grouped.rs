//! Grouped and depthwise convolutions: a per-channel loop over the taps.

use super::Geometry;
use super::im2col::SCRATCH;
use crate::engine::epilogue::{Epilogue, Output, Rows};
use crate::engine::kernels::{self, Isa, Wide};
use crate::engine::layer::Numerators;

/// A grouped convolution (depthwise included): per output row, each channel's sum over its
/// group's inputs and the kernel taps, weights `[tap][out][in/groups]`, then the epilogue.
pub(super) fn grouped(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    (isa, w): (Isa, &[i32]),
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    let [ho, wo] = g.output;
    let [h, wi] = g.input;
    let n = g.cout;
    // The numerators already hold the `c·Σq` term.
    let whole = Epilogue {
        numerators: Numerators {
            scale: 1,
            plus_inputs: 0,
        },
        ..epilogue.clone()
    };
    debug_assert_eq!(out.values.len(), batch * ho * wo * n);
    out.par_chunks(wo * n, split, |row, out, next| {
        let (image, oy) = (row / ho, row % ho);
        let image = &codes[image * h * wi * g.cin..(image + 1) * h * wi * g.cin];
        SCRATCH.with_borrow_mut(|scratch| {
            scratch.acc.clear();
            scratch.acc.resize(wo * n, 0);
            kernels::wide(
                isa,
                GroupedRow {
                    image,
                    g,
                    w,
                    oy,
                    offset: epilogue.offset,
                    acc: &mut scratch.acc,
                },
            );
            kernels::epilogue(
                isa,
                Rows {
                    epilogue: &whole,
                    acc: &scratch.acc,
                    sums: &[],
                    n,
                    out,
                    codes: next,
                },
            );
        });
    });
}

/// One output row of a grouped convolution: its integer sums, `[wo][out]`.
struct GroupedRow<'a> {
    image: &'a [u8],
    g: &'a Geometry,
    w: &'a [i32],
    oy: usize,
    /// `A` for double-sided inputs (the code's value is `2q − A`), else 0.
    offset: i32,
    acc: &'a mut [i32],
}

impl Wide for GroupedRow<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            image,
            g,
            w,
            oy,
            offset,
            acc,
        } = self;
        let [_, wi] = g.input;
        let [kh, kw] = g.kernel;
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let n = g.cout;
        let depthwise = cin_g == 1 && cout_g == 1;
        for (ox, acc) in acc.chunks_exact_mut(n).enumerate() {
            for ky in 0..kh {
                for kx in 0..kw {
                    let Some((iy, ix)) = g.source(oy, ox, ky, kx) else {
                        continue;
                    };
                    let x = &image[(iy * wi + ix) * g.cin..][..g.cin];
                    let tap = &w[(ky * kw + kx) * n * cin_g..][..n * cin_g];
                    if depthwise && offset == 0 {
                        for ((acc, &q), &m) in acc.iter_mut().zip(x).zip(tap) {
                            *acc += i32::from(q) * m;
                        }
                    } else if depthwise {
                        for ((acc, &q), &m) in acc.iter_mut().zip(x).zip(tap) {
                            *acc += (2 * i32::from(q) - offset) * m;
                        }
                    } else {
                        for (o, acc) in acc.iter_mut().enumerate() {
                            let group = o / cout_g;
                            let x = &x[group * cin_g..][..cin_g];
                            let m = &tap[o * cin_g..][..cin_g];
                            for (&q, &m) in x.iter().zip(m) {
                                let q = i32::from(q);
                                let q = if offset != 0 { 2 * q - offset } else { q };
                                *acc += q * m;
                            }
                        }
                    }
                }
            }
        }
    }
}
