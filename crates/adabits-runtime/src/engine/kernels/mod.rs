//! The integer kernels: `u8 × i8 → i32` matrix products, and the instruction set that runs
//! them, chosen at run time.
//!
//! [`Isa::Scalar`] is the portable reference; every other kernel is tested against it on random
//! shapes (`tests` below and `tests/kernels.rs`). `ADABITS_ISA=scalar` (or `avx512vnni`)
//! forces a kernel, so that CI runs the portable path on a machine that has the fast one.

mod bits;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use bits::{Crossover, crossover};
pub(crate) use bits::{PlanesRef, activation_planes, gemm_bits, plane_words, use_bit_serial};

use super::epilogue::{Block, Rows};
use super::quantize::{Pact, PactLoop};

/// An element-wise loop that [`wide`] compiles for the widest vectors the CPU has: its `run`
/// must be `#[inline(always)]`, so that it is compiled inside the caller with the CPU's
/// features (a closure would not be).
pub(crate) trait Wide {
    /// What the loop returns.
    type Output;
    /// The loop.
    fn run(self) -> Self::Output;
}

/// Runs `work` with the widest vectors this CPU has (AVX-512 where present) unless `isa` is
/// the portable one; the results are the same on every path.
#[inline(always)]
pub(crate) fn wide<W: Wide>(isa: Isa, work: W) -> W::Output {
    match isa {
        Isa::Scalar => work.run(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::wide_avx2(work),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::wide(work),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512Vnni => work.run(),
    }
}

/// Runs the epilogue of `rows` with the fastest code of `isa`: on AVX-512, 16 channels at a
/// time under masks ([`x86::epilogue_avx512`]); elsewhere [`Rows`]'s loop through [`wide`]. The
/// values are the same bit for bit.
pub(crate) fn epilogue(isa: Isa, rows: Rows<'_>) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        let Rows {
            epilogue,
            acc,
            sums,
            n,
            out,
            codes,
        } = rows;
        let block = Block::of(epilogue);
        let sums = if block.plus_inputs != 0 { sums } else { &[] };
        let constants = (&epilogue.mult[..n], &epilogue.add[..n]);
        return x86::epilogue_avx512(&block, sums, acc, constants, out, codes);
    }
    wide(isa, rows)
}

/// The PACT codes of `x` into `out` with the fastest code of `isa` (on AVX-512,
/// [`x86::pact_avx512`]); the codes are the same on every path.
pub(crate) fn pact(isa: Isa, pact: &Pact, x: &[f32], out: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni {
        return x86::pact_avx512(pact, x, out);
    }
    wide(
        isa,
        PactLoop {
            x,
            out,
            pact: *pact,
        },
    )
}

/// Unpacks the first values of `out` from `bits`-bit two's complement codes `packed` with the
/// fastest code of `isa` (`2j + 1` where `odd`), and returns how many (a multiple of 8): on
/// AVX-512 with VBMI, 64 at a time ([`x86::unpack_vbmi`]); 0 elsewhere, where the caller's
/// loop does them all.
pub(crate) fn unpack(isa: Isa, bits: u8, packed: &[u8], odd: bool, out: &mut [i8]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512Vnni && x86::has_avx512_vbmi() {
        return match bits {
            1 => x86::unpack_vbmi::<1>(packed, odd, out),
            2 => x86::unpack_vbmi::<2>(packed, odd, out),
            3 => x86::unpack_vbmi::<3>(packed, odd, out),
            4 => x86::unpack_vbmi::<4>(packed, odd, out),
            5 => x86::unpack_vbmi::<5>(packed, odd, out),
            6 => x86::unpack_vbmi::<6>(packed, odd, out),
            7 => x86::unpack_vbmi::<7>(packed, odd, out),
            _ => 0,
        };
    }
    let _ = (isa, bits, packed, odd, out);
    0
}

/// Rows of activations that buffers are padded to a multiple of: the tallest register tile.
pub(crate) const ROWS: usize = 16;

/// A fast kernel's panel width for `n` output channels. AVX-512 VNNI: 32 (two vectors of 16
/// lanes, eight rows per register tile) where `n` is a multiple of 32, else 16 (one vector,
/// sixteen rows), so that a 16- or 48-channel layer wastes no lanes. AVX2: 8.
pub(crate) fn panel_width(isa: Isa, n: usize) -> usize {
    match isa {
        Isa::Avx2 => 8,
        _ if n.is_multiple_of(32) => 32,
        _ => 16,
    }
}

/// An instruction set the kernels can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust: the reference.
    Scalar,
    /// AVX2 (for CPUs without VNNI): the bytes widened to 16 bits and multiplied in pairs
    /// (`vpmaddwd`), exact for every code.
    Avx2,
    /// AVX-512 with VNNI (`vpdpbusd`: four `u8 × i8` products summed into each `i32` lane).
    Avx512Vnni,
}

impl Isa {
    /// The best instruction set this CPU has, unless `ADABITS_ISA` names one (`scalar`,
    /// `avx2`, `avx512vnni`); a named one the CPU lacks falls back to the scalar kernels.
    pub fn detect() -> Self {
        let available = Self::available();
        match std::env::var("ADABITS_ISA").ok().as_deref() {
            Some(name) => available
                .into_iter()
                .find(|isa| isa.name() == name)
                .unwrap_or(Self::Scalar),
            None => Self::best(),
        }
    }

    /// Whether the runtime runs deep 1-bit layers bit-serially with this instruction set on
    /// this CPU: AVX-512 VNNI with VPOPCNTDQ (`ADABITS_BIT_SERIAL=off` turns it off).
    pub fn runs_bit_serial(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return self == Self::Avx512Vnni && x86::has_avx512_popcnt();
        #[cfg(not(target_arch = "x86_64"))]
        return false;
    }

    /// The best instruction set this CPU has.
    pub fn best() -> Self {
        Self::available().pop().unwrap_or(Self::Scalar)
    }

    /// Every instruction set this CPU can run, the scalar one first, the best last.
    pub fn available() -> Vec<Self> {
        let mut all = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if x86::has_avx2() {
                all.push(Self::Avx2);
            }
            if x86::has_avx512_vnni() {
                all.push(Self::Avx512Vnni);
            }
        }
        all
    }

    /// The GEMM kernel's rate on one thread, in billions of `u8 × i8` multiply-accumulates per
    /// second, on a problem that stays in the core's cache (64 rows, 64 channels, 1152 inputs:
    /// a 3×3 convolution of 128 channels): the ceiling a layer can reach, to compare each
    /// layer's rate with.
    pub fn kernel_gmacs(self) -> f64 {
        let (rows, n, k) = (64, 64, 1152);
        let a: Vec<u8> = (0..rows * k).map(|i| (i * 7 % 251) as u8).collect();
        let w: Vec<i8> = (0..n * k).map(|i| (i * 13 % 255) as i8).collect();
        let packed =
            PackedWeights::from_arranged(self, PackedWeights::arrange(self, &w, n, k), n, k);
        let mut out = vec![0; rows * n];
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for _ in 0..20 {
                gemm(&a, rows, &packed, &mut out);
                std::hint::black_box(&mut out);
            }
            best = best.min(start.elapsed().as_secs_f64() / 20.0);
        }
        (rows * n * k) as f64 / best / 1e9
    }

    /// Its name, as `ADABITS_ISA` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512vnni",
        }
    }
}

/// A weight matrix `[n][k]` (`n` output channels, `k` inputs) laid out for one instruction
/// set's kernel, `k` padded with zeros to a multiple of 4.
#[derive(Clone, Debug)]
pub(crate) struct PackedWeights {
    isa: Isa,
    /// The layout of `isa`: row-major `[n][kp]` (scalar), or panels of `panel` channels,
    /// `[n / panel][kp / 4][panel][4]` with `n` padded to a whole panel (fast kernels).
    data: Vec<i8>,
    /// Channels per panel ([`panel_width`]).
    panel: usize,
    n: usize,
    kp: usize,
}

impl PackedWeights {
    /// Lays out `values` (`[n][k]`, row-major) for `isa`: the order of
    /// [`from_arranged`](Self::from_arranged), zeros in the padding slots.
    pub(crate) fn arrange(isa: Isa, values: &[i8], n: usize, k: usize) -> Vec<i8> {
        assert_eq!(values.len(), n * k, "weights of {n}×{k}");
        let kp = k.next_multiple_of(4);
        match isa {
            Isa::Scalar => {
                let mut data = vec![0i8; n * kp];
                for (row, src) in data.chunks_exact_mut(kp).zip(values.chunks_exact(k)) {
                    row[..k].copy_from_slice(src);
                }
                data
            }
            Isa::Avx2 | Isa::Avx512Vnni => {
                let width = panel_width(isa, n);
                let panels = n.div_ceil(width);
                let mut data = vec![0i8; panels * kp * width];
                for o in 0..n {
                    let (panel, lane) = (o / width, o % width);
                    for (i, &v) in values[o * k..(o + 1) * k].iter().enumerate() {
                        let (k4, byte) = (i / 4, i % 4);
                        data[((panel * (kp / 4) + k4) * width + lane) * 4 + byte] = v;
                    }
                }
                data
            }
        }
    }

    /// Weights already in `isa`'s order ([`arrange`](Self::arrange)d), whatever the values
    /// in the padding slots (the kernels discard the outputs and zero the inputs they meet).
    pub(crate) fn from_arranged(isa: Isa, data: Vec<i8>, n: usize, k: usize) -> Self {
        let kp = k.next_multiple_of(4);
        let expected = match isa {
            Isa::Scalar => n * kp,
            Isa::Avx2 | Isa::Avx512Vnni => {
                n.div_ceil(panel_width(isa, n)) * panel_width(isa, n) * kp
            }
        };
        assert_eq!(data.len(), expected, "arranged weights of {n}×{k}");
        Self {
            isa,
            data,
            panel: panel_width(isa, n),
            n,
            kp,
        }
    }

    /// Lays out `values` (`[n][k]`, row-major) for `isa`.
    #[cfg(test)]
    pub(crate) fn new(isa: Isa, values: &[i8], n: usize, k: usize) -> Self {
        Self::from_arranged(isa, Self::arrange(isa, values, n, k), n, k)
    }

    /// The layout's buffer.
    pub(crate) fn into_data(self) -> Vec<i8> {
        self.data
    }

    /// Bytes of weights, padding included.
    pub(crate) fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The instruction set the layout is for.
    pub(crate) fn isa(&self) -> Isa {
        self.isa
    }

    /// Output channels.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Inputs per row of activations (`k` padded to a multiple of 4).
    pub(crate) fn kp(&self) -> usize {
        self.kp
    }
}

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` for the first `rows` rows of `a` (`[rows][kp]`, padded to
/// a multiple of [`ROWS`] rows), `out` is `[rows][n]`.
///
/// # Panics
///
/// Panics if a buffer is shorter than the shapes say.
pub(crate) fn gemm(a: &[u8], rows: usize, w: &PackedWeights, out: &mut [i32]) {
    let padded = rows.next_multiple_of(ROWS);
    assert!(a.len() >= padded * w.kp, "activations of {padded}×{}", w.kp);
    assert!(out.len() >= rows * w.n, "output of {rows}×{}", w.n);
    match w.isa {
        Isa::Scalar => scalar::gemm(a, rows, &w.data, w.n, w.kp, out),
        #[cfg(target_arch = "x86_64")]
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => x86::gemm_avx2(a, rows, &w.data, w.n, w.kp, out),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if w.panel == 32 => {
            x86::gemm_vnni::<8, 2>(a, rows, &w.data, w.n, w.kp, out);
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::gemm_vnni::<16, 1>(a, rows, &w.data, w.n, w.kp, out),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 | Isa::Avx512Vnni => unreachable!("AVX is only detected on x86-64"),
    }
}

/// A dense convolution's input for [`gemm_direct`]: a zero-padded channels-last image
/// (`[h + 2p][w + 2p][c]` plus slack for the last tile's discarded rows), and where each tap
/// reads relative to an output pixel's first input byte.
#[derive(Debug)]
pub(crate) struct Direct<'a> {
    /// The padded image.
    pub(crate) image: &'a [u8],
    /// Bytes between the first input bytes of horizontally adjacent output pixels
    /// (`stride · c`).
    pub(crate) pixel_stride: usize,
    /// Per tap, in (ky, kx) order: its offset in bytes.
    pub(crate) taps: &'a [usize],
    /// Channels (a multiple of 4).
    pub(crate) channels: usize,
}

impl Direct<'_> {
    /// The bytes past an output row's first input byte that a tile of [`ROWS`] pixels can read:
    /// what the padded image must hold after the last row's start.
    pub(crate) fn reach(pixel_stride: usize, taps: &[usize], channels: usize) -> usize {
        ROWS * pixel_stride + taps.iter().max().copied().unwrap_or(0) + channels
    }
}

/// `out[r][o] = Σ_tap Σ_c image[start + r·pixel_stride + taps[tap] + c] · w[o][tap·c + c]` for
/// `rows` output pixels from byte `start`: a convolution's products straight from the padded
/// image, without im2col rows. `w` must be laid out for a fast kernel, with `kp = taps · c`.
///
/// # Panics
///
/// Panics if `w` is laid out for the scalar kernel or a buffer is shorter than the shapes say.
pub(crate) fn gemm_direct(
    x: &Direct<'_>,
    start: usize,
    rows: usize,
    w: &PackedWeights,
    out: &mut [i32],
) {
    assert!(rows <= ROWS && out.len() >= rows * w.n);
    assert_eq!(
        w.kp,
        x.taps.len() * x.channels,
        "weights of the direct kernel"
    );
    assert!(
        start + Direct::reach(x.pixel_stride, x.taps, x.channels) <= x.image.len(),
        "the padded image ends before the tile's reach"
    );
    match w.isa {
        Isa::Scalar | Isa::Avx2 => panic!("the direct kernel needs AVX-512 VNNI"),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni if w.panel == 32 => {
            x86::direct_vnni::<8, 2>(x, start, rows, &w.data, w.n, out)
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => x86::direct_vnni::<16, 1>(x, start, rows, &w.data, w.n, out),
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx512Vnni => unreachable!("AVX-512 is only detected on x86-64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, with no layout at all.
    fn naive(a: &[u8], rows: usize, k: usize, w: &[i8], n: usize) -> Vec<i32> {
        let mut out = vec![0; rows * n];
        for r in 0..rows {
            for o in 0..n {
                out[r * n + o] = (0..k)
                    .map(|i| i32::from(a[r * k + i]) * i32::from(w[o * k + i]))
                    .sum();
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_kernel_equals_the_definition_on_random_shapes(
            rows in 1usize..40,
            // Both panel widths, with and without a partial panel.
            n in prop_oneof![1usize..80, prop::sample::select(vec![16usize, 32, 48, 64, 96])],
            k in 1usize..300,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let a: Vec<u8> = (0..rows * k).map(|_| next() as u8).collect();
            // The extremes of both ranges appear often: they are where a kernel saturates.
            let w: Vec<i8> = (0..n * k)
                .map(|_| match next() % 4 {
                    0 => -128,
                    1 => 127,
                    _ => next() as i8,
                })
                .collect();
            let expected = naive(&a, rows, k, &w, n);
            for isa in Isa::available() {
                let packed = PackedWeights::new(isa, &w, n, k);
                let kp = packed.kp();
                let mut padded = vec![0u8; rows.next_multiple_of(ROWS) * kp];
                for r in 0..rows {
                    padded[r * kp..r * kp + k].copy_from_slice(&a[r * k..(r + 1) * k]);
                }
                let mut out = vec![0; rows * n];
                gemm(&padded, rows, &packed, &mut out);
                prop_assert_eq!(&out, &expected, "{:?}", isa);
            }
        }
    }
}
