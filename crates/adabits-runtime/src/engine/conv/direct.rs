//! A dense convolution on AVX-512 VNNI straight from a zero-padded copy of the image (no im2col
//! rows), with the window sums that 8-bit centered weights need.

use super::Geometry;
use super::im2col::SCRATCH;
use crate::engine::epilogue::{Epilogue, Output, Rows};
use crate::engine::kernels::{self, Direct, Isa, PackedWeights, ROWS, Wide};

/// A dense convolution with the AVX-512 VNNI kernel: per image, its codes copied once into a
/// zero-padded buffer (channels in fours, a zero channel added where they are not), then per
/// output row the products straight from it ([`kernels::gemm_direct`]: no im2col rows) and the
/// epilogue.
pub(super) fn direct(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    w: &PackedWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    let [h, wi] = g.input;
    let [ho, wo] = g.output;
    let [kh, kw] = g.kernel;
    let [p0, p1] = g.padding;
    let (hp, wp) = (h + 2 * p0, wi + 2 * p1);
    let (cin, c) = (g.cin, g.laid_out_channels(w.isa()));
    let n = w.n();
    let taps: Vec<usize> = (0..kh)
        .flat_map(|ky| (0..kw).map(move |kx| (ky * wp + kx) * c))
        .collect();
    let pixel_stride = g.stride[1] * c;
    let reach = Direct::reach(pixel_stride, &taps, c);
    let sums_needed = epilogue.numerators.plus_inputs != 0;
    let mut padded = vec![0u8; hp * wp * c + reach];
    let (mut pixel_sums, mut sums) = (Vec::new(), Vec::new());
    let per_image = ho * wo * n;
    let Output {
        values,
        codes: mut next,
    } = out;
    for (b, (image, out)) in codes
        .chunks_exact(h * wi * cin)
        .zip(values.chunks_exact_mut(per_image))
        .take(batch)
        .enumerate()
    {
        let next = next
            .as_deref_mut()
            .map(|c| &mut c[b * per_image..(b + 1) * per_image]);
        for (y, row) in image.chunks_exact(wi * cin).enumerate() {
            let dst = &mut padded[((y + p0) * wp + p1) * c..][..wi * c];
            if cin == c {
                dst.copy_from_slice(row);
            } else {
                // Byte by byte: a copy call per pixel of three bytes costs more than the bytes.
                for (dst, src) in dst.chunks_exact_mut(c).zip(row.chunks_exact(cin)) {
                    dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s);
                }
            }
        }
        if sums_needed {
            window_sums(
                w.isa(),
                &padded[..hp * wp * c],
                c,
                g,
                wp,
                &mut pixel_sums,
                &mut sums,
            );
        }
        let x = Direct {
            image: &padded,
            pixel_stride,
            taps: &taps,
            channels: c,
        };
        let out = Output {
            values: out,
            codes: next,
        };
        out.par_chunks(wo * n, split, |oy, out, mut next| {
            SCRATCH.with_borrow_mut(|scratch| {
                for ox0 in (0..wo).step_by(ROWS) {
                    let rows = ROWS.min(wo - ox0);
                    let start = ((oy * g.stride[0]) * wp + ox0 * g.stride[1]) * c;
                    scratch.acc.resize(ROWS * n, 0);
                    kernels::gemm_direct(&x, start, rows, w, &mut scratch.acc);
                    let sums = if sums_needed {
                        &sums[oy * wo + ox0..][..rows]
                    } else {
                        &[]
                    };
                    kernels::epilogue(
                        w.isa(),
                        Rows {
                            epilogue,
                            acc: &scratch.acc[..rows * n],
                            sums,
                            n,
                            out: &mut out[ox0 * n..(ox0 + rows) * n],
                            codes: next
                                .as_deref_mut()
                                .map(|c| &mut c[ox0 * n..(ox0 + rows) * n]),
                        },
                    );
                }
            });
        });
        // The next image overwrites the interior; the border stays zero.
    }
}

/// The sum of the codes under each output pixel's window, `[ho][wo]`, from the zero-padded
/// image `padded` (`[hp][wp][c]`): each pixel's sum over its channels, then the windows'
/// rows, then their columns (`kh + kw` additions per output rather than `kh · kw`).
fn window_sums(
    isa: Isa,
    padded: &[u8],
    c: usize,
    g: &Geometry,
    wp: usize,
    pixels: &mut Vec<i32>,
    out: &mut Vec<i32>,
) {
    let [ho, wo] = g.output;
    let [kh, kw] = g.kernel;
    let [sy, sx] = g.stride;
    kernels::wide(
        isa,
        PixelSums {
            image: padded,
            c,
            out: pixels,
        },
    );
    let hp = pixels.len() / wp;
    // Along each padded row: the sum of the `kw` pixels from each output column's first.
    let mut across = vec![0i32; hp * wo];
    for (row, sums) in pixels.chunks_exact(wp).zip(across.chunks_exact_mut(wo)) {
        for (ox, sum) in sums.iter_mut().enumerate() {
            *sum = row[ox * sx..][..kw].iter().sum();
        }
    }
    out.clear();
    out.resize(ho * wo, 0);
    for (oy, sums) in out.chunks_exact_mut(wo).enumerate() {
        for ky in 0..kh {
            let row = &across[(oy * sy + ky) * wo..][..wo];
            sums.iter_mut().zip(row).for_each(|(s, &r)| *s += r);
        }
    }
}

/// Each pixel's sum over its `c` codes, through [`kernels::wide`]: a fixed channel count
/// compiles to whole vectors.
struct PixelSums<'a> {
    image: &'a [u8],
    c: usize,
    out: &'a mut Vec<i32>,
}

impl Wide for PixelSums<'_> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self { image, c, out } = self;
        out.clear();
        match c {
            4 => sums_of::<4>(image, out),
            8 => sums_of::<8>(image, out),
            16 => sums_of::<16>(image, out),
            _ if c.is_multiple_of(16) => sums_by::<16>(image, c, out),
            _ if c.is_multiple_of(8) => sums_by::<8>(image, c, out),
            _ => out.extend(
                image
                    .chunks_exact(c)
                    .map(|p| p.iter().map(|&q| i32::from(q)).sum::<i32>()),
            ),
        }
    }
}

/// [`PixelSums`] for `C` channels.
#[inline(always)]
fn sums_of<const C: usize>(image: &[u8], out: &mut Vec<i32>) {
    out.extend(image.chunks_exact(C).map(|p| {
        let p: &[u8; C] = p.try_into().unwrap();
        p.iter().map(|&q| u32::from(q)).sum::<u32>() as i32
    }));
}

/// [`PixelSums`] for `c` channels, a multiple of `L`: `L` lanes of sums per pixel, then their
/// total.
#[inline(always)]
fn sums_by<const L: usize>(image: &[u8], c: usize, out: &mut Vec<i32>) {
    out.extend(image.chunks_exact(c).map(|p| {
        let mut lanes = [0u32; L];
        for part in p.chunks_exact(L) {
            let part: &[u8; L] = part.try_into().unwrap();
            lanes
                .iter_mut()
                .zip(part)
                .for_each(|(s, &q)| *s += u32::from(q));
        }
        lanes.iter().sum::<u32>() as i32
    }));
}
