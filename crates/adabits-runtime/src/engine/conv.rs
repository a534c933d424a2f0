//! Integer convolutions on channels-last (NHWC) codes: im2col rows and the GEMM kernels for
//! dense convolutions, a per-channel loop for depthwise and other grouped ones; each with its
//! epilogue, `y = (a·Σ m·q + c·Σ q)·mult[o] + add[o]`, and the ReLU after it if fused.

use super::Isa;
use super::bit_serial::{BitWeights, bit_serial};
use super::epilogue::{Epilogue, Output, Rows};
use super::kernels::{self, Direct, PackedWeights, ROWS, Wide, gemm};
use super::layer::Numerators;

/// Output rows (pixels) per parallel task.
const TASK_ROWS: usize = 64;

/// The shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Input channels.
    pub(crate) cin: usize,
    /// Output channels.
    pub(crate) cout: usize,
    /// Kernel height and width.
    pub(crate) kernel: [usize; 2],
    /// Stride.
    pub(crate) stride: [usize; 2],
    /// Padding.
    pub(crate) padding: [usize; 2],
    /// Groups.
    pub(crate) groups: usize,
    /// Input height and width.
    pub(crate) input: [usize; 2],
    /// Output height and width.
    pub(crate) output: [usize; 2],
}

impl Geometry {
    /// The input channels as a dense convolution's kernels of `isa` lay them out: in fours
    /// for the direct AVX-512 VNNI kernel (a 3-channel image gets a fourth channel of zeros),
    /// else as they are.
    pub(crate) fn laid_out_channels(&self, isa: Isa) -> usize {
        if isa == Isa::Avx512Vnni && self.groups == 1 {
            self.cin.next_multiple_of(4)
        } else {
            self.cin
        }
    }

    /// The input pixel under tap `(ky, kx)` of output pixel `(oy, ox)`, if not in the padding.
    fn source(&self, oy: usize, ox: usize, ky: usize, kx: usize) -> Option<(usize, usize)> {
        let iy = (oy * self.stride[0] + ky).checked_sub(self.padding[0])?;
        let ix = (ox * self.stride[1] + kx).checked_sub(self.padding[1])?;
        (iy < self.input[0] && ix < self.input[1]).then_some((iy, ix))
    }
}

/// The weights of a convolution as a kernel runs them.
#[derive(Clone, Debug)]
pub(crate) enum ConvWeights {
    /// A dense convolution (one group): the GEMM's packed weights, `k` in (ky, kx, c) order.
    Dense(PackedWeights),
    /// A grouped or depthwise one: the instruction set its loop is compiled for, and the
    /// numerators as `i32`, `[kh·kw][cout][cin/groups]`.
    Grouped(Isa, Vec<i32>),
    /// A dense convolution with 1-bit weights and activations, run bit-serially.
    Bits(BitWeights),
}

impl ConvWeights {
    /// The buffer of a dense convolution's layout (empty for a grouped one).
    pub(crate) fn into_buffer(self) -> Vec<i8> {
        match self {
            Self::Dense(w) => w.into_data(),
            Self::Grouped(..) | Self::Bits(_) => Vec::new(),
        }
    }

    /// Bytes of weights.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Dense(w) => w.bytes(),
            Self::Grouped(_, w) => 4 * w.len(),
            Self::Bits(w) => w.bytes(),
        }
    }

    /// Lays out `values` (PyTorch order `[cout][cin/groups][kh][kw]`) in the order the kernels
    /// of `isa` read them: for a dense convolution the im2col rows' (ky, kx, c) order in the
    /// GEMM's layout; for a grouped one `[kh·kw][cout][cin/groups]`, the grouped loop's.
    pub(crate) fn arrange(isa: Isa, values: Vec<i8>, g: &Geometry) -> Vec<i8> {
        let [kh, kw] = g.kernel;
        if g.groups != 1 {
            let taps = kh * kw;
            let cin_g = g.cin / g.groups;
            let mut arranged = vec![0i8; values.len()];
            for o in 0..g.cout {
                for c in 0..cin_g {
                    for t in 0..taps {
                        arranged[(t * g.cout + o) * cin_g + c] = values[(o * cin_g + c) * taps + t];
                    }
                }
            }
            return arranged;
        }
        let cp = g.laid_out_channels(isa);
        let k = kh * kw * cp;
        // Zeros for the channels the direct kernel adds.
        let reordered = im2col_order(&values, g, cp, k);
        PackedWeights::arrange(isa, &reordered, g.cout, k)
    }

    /// The weights from the kernels' values in [`arrange`](Self::arrange)'s order. A dense
    /// convolution takes `values`' buffer; a grouped one reads it and leaves it to the caller.
    pub(crate) fn from_arranged(
        isa: Isa,
        values: &mut Vec<i8>,
        numerators: Numerators,
        g: &Geometry,
    ) -> Self {
        if g.groups == 1 {
            let k = g.kernel[0] * g.kernel[1] * g.laid_out_channels(isa);
            Self::Dense(PackedWeights::from_arranged(
                isa,
                std::mem::take(values),
                g.cout,
                k,
            ))
        } else {
            // The grouped loop takes the whole numerator, 9 bits included.
            let Numerators { scale, plus_inputs } = numerators;
            let w = values
                .iter()
                .map(|&v| scale * i32::from(v) + plus_inputs)
                .collect();
            Self::Grouped(isa, w)
        }
    }

    /// Lays out `values` (PyTorch order) for the kernels of `isa`.
    #[cfg(test)]
    pub(crate) fn new(isa: Isa, values: &[i8], numerators: Numerators, g: &Geometry) -> Self {
        Self::from_arranged(
            isa,
            &mut Self::arrange(isa, values.to_vec(), g),
            numerators,
            g,
        )
    }
}

/// A dense convolution's weights from PyTorch's `[cout][cin][kh][kw]` to the im2col rows'
/// (ky, kx, c) order, `row` values per output channel with `channels ≥ cin` per tap: zeros in
/// the slots past `cin` and past the taps.
pub(crate) fn im2col_order(values: &[i8], g: &Geometry, channels: usize, row: usize) -> Vec<i8> {
    let [kh, kw] = g.kernel;
    let mut reordered = vec![0i8; g.cout * row];
    for o in 0..g.cout {
        for c in 0..g.cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    reordered[o * row + (ky * kw + kx) * channels + c] =
                        values[((o * g.cin + c) * kh + ky) * kw + kx];
                }
            }
        }
    }
    reordered
}

/// Runs one convolution on `codes` (`[n][h][w][cin]`) into `out` (`[n][ho][wo][cout]`).
///
/// `split` is the fewest items a parallel task takes: 1 spreads the layer over the pool,
/// `usize::MAX` keeps it on the calling thread (when the pool is busy with other images).
pub(crate) fn conv(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    weights: &ConvWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    match weights {
        ConvWeights::Dense(w) => dense(codes, batch, g, w, epilogue, out, split),
        ConvWeights::Grouped(isa, w) => grouped(codes, batch, g, (*isa, w), epilogue, out, split),
        ConvWeights::Bits(w) => bit_serial(codes, batch, g, w, epilogue, out, split),
    }
}

/// A dense convolution with the AVX-512 VNNI kernel: per image, its codes copied once into a
/// zero-padded buffer (channels in fours, a zero channel added where they are not), then per
/// output row the products straight from it ([`kernels::gemm_direct`]: no im2col rows) and the
/// epilogue.
fn direct(
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

/// A dense convolution: per task of [`TASK_ROWS`] output pixels, their im2col rows, one GEMM
/// and the epilogue.
fn dense(
    codes: &[u8],
    batch: usize,
    g: &Geometry,
    w: &PackedWeights,
    epilogue: &Epilogue,
    out: Output<'_>,
    split: usize,
) {
    if w.isa() == Isa::Avx512Vnni {
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
pub(super) fn im2col_tasks(
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
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// One task's buffers: im2col rows, their sums, the integer outputs.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) a: Vec<u8>,
    pub(super) sums: Vec<i32>,
    pub(super) acc: Vec<i32>,
    /// The bit-planes of the rows of `a` (bit-serial layers).
    pub(super) planes: Vec<u64>,
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

/// A grouped convolution (depthwise included): per output row, each channel's sum over its
/// group's inputs and the kernel taps, weights `[tap][out][in/groups]`, then the epilogue.
fn grouped(
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The convolution by its definition, NCHW-free: every output value as a sum over taps.
    fn naive(codes: &[u8], batch: usize, g: &Geometry, m: &[i32], offset: i64) -> Vec<i64> {
        let [ho, wo] = g.output;
        let (cin_g, cout_g) = (g.cin / g.groups, g.cout / g.groups);
        let [kh, kw] = g.kernel;
        let mut out = vec![0i64; batch * ho * wo * g.cout];
        for b in 0..batch {
            for oy in 0..ho {
                for ox in 0..wo {
                    for o in 0..g.cout {
                        let mut sum = 0i64;
                        for c in 0..cin_g {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * g.stride[0] + ky) as i64 - g.padding[0] as i64;
                                    let ix = (ox * g.stride[1] + kx) as i64 - g.padding[1] as i64;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= g.input[0] as i64
                                        || ix >= g.input[1] as i64
                                    {
                                        continue;
                                    }
                                    let ci = (o / cout_g) * cin_g + c;
                                    let q = codes[((b * g.input[0] + iy as usize) * g.input[1]
                                        + ix as usize)
                                        * g.cin
                                        + ci];
                                    let q = if offset != 0 {
                                        2 * i64::from(q) - offset
                                    } else {
                                        i64::from(q)
                                    };
                                    sum += q * i64::from(m[((o * cin_g + c) * kh + ky) * kw + kx]);
                                }
                            }
                        }
                        out[((b * ho + oy) * wo + ox) * g.cout + o] = sum;
                    }
                }
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn convolutions_equal_the_definition_on_random_shapes(
            batch in 1usize..3,
            cin_g in prop_oneof![1usize..6, prop::sample::select(vec![4usize, 8, 12, 16, 24, 48])],
            cout_g in 1usize..6,
            groups in prop::sample::select(vec![1usize, 1, 2, 3]),
            depthwise in any::<bool>(),
            kernel in 1usize..4,
            stride in 1usize..3,
            padding in 0usize..2,
            size in 3usize..9,
            odd in any::<bool>(),
            double in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let (groups, cin_g, cout_g) = if depthwise { (cin_g * 2, 1, 1) } else { (groups, cin_g, cout_g) };
            let (cin, cout) = (cin_g * groups, cout_g * groups);
            let padding = padding.min(kernel - 1);
            let out_size = (size + 2 * padding - kernel) / stride + 1;
            let g = Geometry {
                cin, cout, kernel: [kernel; 2], stride: [stride; 2], padding: [padding; 2],
                groups, input: [size; 2], output: [out_size; 2],
            };
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let codes: Vec<u8> = (0..batch * size * size * cin).map(|_| next() as u8).collect();
            let values: Vec<i8> = (0..cout * cin_g * kernel * kernel).map(|_| next() as i8).collect();
            // `odd`: the 8-bit `2j + 1` form, `2·Σ j·q + Σ q`.
            let numerators = if odd {
                Numerators { scale: 2, plus_inputs: 1 }
            } else {
                Numerators { scale: 1, plus_inputs: 0 }
            };
            let m: Vec<i32> = values.iter().map(|&v| numerators.scale * i32::from(v) + numerators.plus_inputs).collect();
            // Double-sided inputs (`2q − A`) reach the kernels only in grouped convolutions.
            let offset = if double && groups > 1 { 255 } else { 0 };
            let expected = naive(&codes, batch, &g, &m, i64::from(offset));
            // An epilogue that shows the sums exactly: mult 1, add 0.
            let epilogue = Epilogue { numerators, mult: vec![1.0; cout], add: vec![0.0; cout], relu: false, offset, accumulate: false, codes: None };
            for isa in Isa::available() {
                let weights = ConvWeights::new(isa, &values, numerators, &g);
                let mut out = vec![f32::NAN; expected.len()];
                conv(&codes, batch, &g, &weights, &epilogue, Output { values: &mut out, codes: None }, 1);
                let found: Vec<i64> = out.iter().map(|&v| v as i64).collect();
                prop_assert_eq!(&found, &expected, "{:?} {:?}", isa, g);
            }
        }
    }
}
