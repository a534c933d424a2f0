//! Bit-serial products: `Σ_k a·w` as `Σ_ij ±2^(i+j)·popcount(A_i AND W_j)` over the bit-planes
//! of unsigned activation codes (`A_i`) and two's-complement weights (`W_j`, the top plane
//! negative). By instruction count they beat `vpdpbusd` (64 products per instruction) only
//! when the two bit-widths multiply to at most 2: each pair of planes costs an AND, a popcount
//! and an add per 512 products. [`crossover`] measures it (docs/performance.md records the
//! measurement); the runtime uses them where it says they win: 1-bit weights and activations
//! with at least [`BIT_SERIAL_DEPTH`] products per output ([`use_bit_serial`]).

/// The fewest products per output at which the runtime runs a 1-bit layer bit-serially: below
/// it the planes' padding to whole 512-bit vectors costs more than the popcounts save
/// (`adabits bench --crossover`: at 576 products 176 GMAC/s against 226 for `u8 × i8`, at 1024
/// and more the bit-serial kernel leads).
pub(crate) const BIT_SERIAL_DEPTH: usize = 1024;

/// Whether a dense layer with `a_bits` activation bits, `w_bits` weight bits (of `j`, the
/// numerators' stored form) and `k` products per output runs bit-serially on this CPU: AVX-512
/// VPOPCNTDQ, 1 × 1 bits, `k ≥` [`BIT_SERIAL_DEPTH`], and `ADABITS_BIT_SERIAL` not `off`.
pub(crate) fn use_bit_serial(isa: super::Isa, a_bits: u8, w_bits: u8, k: usize) -> bool {
    isa.runs_bit_serial()
        && a_bits == 1
        && w_bits == 1
        && k >= BIT_SERIAL_DEPTH
        && std::env::var("ADABITS_BIT_SERIAL").as_deref() != Ok("off")
}

/// 64-bit words per bit-plane of `k` values: whole 512-bit vectors.
pub(crate) fn plane_words(k: usize) -> usize {
    k.div_ceil(512) * 8
}

/// The bit-planes of activations and weights a product reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PlanesRef<'a> {
    /// `[rows][a_bits][words]`.
    pub(crate) a: &'a [u64],
    /// `[n][w_bits][words]`.
    pub(crate) w: &'a [u64],
    pub(crate) a_bits: usize,
    pub(crate) w_bits: usize,
    /// 64-bit words per plane (a multiple of 8: whole 512-bit vectors).
    pub(crate) words: usize,
}

impl PlanesRef<'_> {
    /// The weight of the pair of planes `(i, j)`: `2^(i+j)`, negative for the weights' sign
    /// plane.
    pub(crate) fn pair_weight(&self, i: usize, j: usize) -> i64 {
        let w = 1i64 << (i + j);
        if j + 1 == self.w_bits { -w } else { w }
    }
}

/// The bit-planes of `rows` rows of `stride` codes (the first `k` of each counted, codes below
/// `2^bits`) into `out`, `[rows][bits][plane_words(k)]`: with AVX-512 for `Isa::Avx512Vnni`
/// on a CPU with VBMI, else the portable loop.
pub(crate) fn activation_planes(
    isa: super::Isa,
    codes: &[u8],
    rows: usize,
    stride: usize,
    k: usize,
    bits: usize,
    out: &mut Vec<u64>,
) {
    let words = plane_words(k);
    out.clear();
    out.resize(rows * bits * words, 0);
    for (row, planes) in codes
        .chunks(stride)
        .take(rows)
        .zip(out.chunks_exact_mut(bits * words))
    {
        let row = &row[..k];
        #[cfg(target_arch = "x86_64")]
        if isa == super::Isa::Avx512Vnni && super::x86::has_avx512_vbmi() {
            super::x86::bit_planes_avx512(row, bits, words, planes);
            continue;
        }
        for b in 0..bits {
            let plane = &mut planes[b * words..][..words];
            for (word, chunk) in plane.iter_mut().zip(row.chunks(64)) {
                *word = chunk
                    .iter()
                    .enumerate()
                    .fold(0, |w, (i, &q)| w | u64::from(q >> b & 1) << i);
            }
        }
    }
}

/// Activations `a` (`[rows][k]`, codes below `2^a_bits`) and weights `w` (`[n][k]`, values in
/// `[−2^(w_bits−1), 2^(w_bits−1))`) as bit-planes of 64-bit words, `k` padded with zeros.
#[derive(Clone, Debug)]
pub(crate) struct Planes {
    /// `[rows][a_bits][words]`.
    pub(crate) a: Vec<u64>,
    /// `[n][w_bits][words]`.
    pub(crate) w: Vec<u64>,
    pub(crate) a_bits: usize,
    pub(crate) w_bits: usize,
    /// 64-bit words per plane (a multiple of 8: whole 512-bit vectors).
    pub(crate) words: usize,
}

impl Planes {
    /// The planes of `a` and `w`.
    pub(crate) fn new(
        a: &[u8],
        rows: usize,
        w: &[i8],
        n: usize,
        k: usize,
        a_bits: usize,
        w_bits: usize,
    ) -> Self {
        let words = plane_words(k);
        let plane = |values: &mut dyn Iterator<Item = u8>, bits: usize, out: &mut [u64]| {
            for (i, v) in values.enumerate() {
                for b in 0..bits {
                    if v >> b & 1 == 1 {
                        out[b * words + i / 64] |= 1 << (i % 64);
                    }
                }
            }
        };
        let mut pa = vec![0u64; rows * a_bits * words];
        for (r, out) in pa.chunks_exact_mut(a_bits * words).enumerate() {
            plane(&mut a[r * k..(r + 1) * k].iter().copied(), a_bits, out);
        }
        let mut pw = vec![0u64; n * w_bits * words];
        for (o, out) in pw.chunks_exact_mut(w_bits * words).enumerate() {
            plane(
                &mut w[o * k..(o + 1) * k].iter().map(|&v| v as u8),
                w_bits,
                out,
            );
        }
        Self {
            a: pa,
            w: pw,
            a_bits,
            w_bits,
            words,
        }
    }

    /// The planes, borrowed.
    pub(crate) fn view(&self) -> PlanesRef<'_> {
        PlanesRef {
            a: &self.a,
            w: &self.w,
            a_bits: self.a_bits,
            w_bits: self.w_bits,
            words: self.words,
        }
    }
}

/// The portable bit-serial product, `out` `[rows][n]`.
pub(crate) fn gemm_scalar(p: &PlanesRef<'_>, rows: usize, n: usize, out: &mut [i32]) {
    let (ab, wb, words) = (p.a_bits, p.w_bits, p.words);
    for r in 0..rows {
        for o in 0..n {
            let mut sum = 0i64;
            for i in 0..ab {
                let a = &p.a[(r * ab + i) * words..][..words];
                for j in 0..wb {
                    let w = &p.w[(o * wb + j) * words..][..words];
                    let count: u32 = a.iter().zip(w).map(|(a, w)| (a & w).count_ones()).sum();
                    sum += p.pair_weight(i, j) * i64::from(count);
                }
            }
            out[r * n + o] = sum as i32;
        }
    }
}

/// One measured pair of bit-widths: the bit-serial kernel's rate and the `u8 × i8` kernel's on
/// the same products, in billions of multiply-accumulates per second on one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Crossover {
    /// Products per output (a layer's inputs per output value, `cin · kh · kw`).
    pub k: usize,
    /// Activation bits.
    pub a_bits: usize,
    /// Weight bits.
    pub w_bits: usize,
    /// The bit-serial kernel (AVX-512 VPOPCNTDQ where the CPU has it, else portable).
    pub bit_serial_gmacs: f64,
    /// The runtime's best `u8 × i8` kernel.
    pub bytes_gmacs: f64,
}

/// Times the bit-serial kernel against the best `u8 × i8` kernel at each pair of bit-widths
/// of `pairs` and each depth of `depths` (products per output), on 64 rows × 64 channels (in
/// cache).
pub fn crossover(pairs: &[(usize, usize)], depths: &[usize]) -> Vec<Crossover> {
    use super::{Isa, PackedWeights, gemm};
    let (rows, n) = (64, 64);
    let time = |f: &mut dyn FnMut(), k: usize| {
        // Enough repetitions for about 100 million products per timing.
        let reps = (100_000_000 / (rows * n * k)).max(1);
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for _ in 0..reps {
                f();
            }
            best = best.min(start.elapsed().as_secs_f64() / reps as f64);
        }
        (rows * n * k) as f64 / best / 1e9
    };
    let isa = Isa::best();
    depths
        .iter()
        .flat_map(|&k| pairs.iter().map(move |&pair| (k, pair)))
        .map(|(k, (a_bits, w_bits))| {
            let a: Vec<u8> = (0..rows * k)
                .map(|i| (i * 7 % 251) as u8 >> (8 - a_bits))
                .collect();
            let w: Vec<i8> = (0..n * k)
                .map(|i| ((i * 13 % 251) as u8 as i8) >> (8 - w_bits))
                .collect();
            let planes = Planes::new(&a, rows, &w, n, k, a_bits, w_bits);
            let mut out = vec![0; rows * n];
            let bit_serial_gmacs = time(
                &mut || {
                    gemm_bits(&planes.view(), rows, n, &mut out);
                    std::hint::black_box(&mut out);
                },
                k,
            );
            let packed =
                PackedWeights::from_arranged(isa, PackedWeights::arrange(isa, &w, n, k), n, k);
            let mut padded = vec![0u8; rows.next_multiple_of(super::ROWS) * k];
            padded[..rows * k].copy_from_slice(&a);
            let bytes_gmacs = time(
                &mut || {
                    gemm(&padded, rows, &packed, &mut out);
                    std::hint::black_box(&mut out);
                },
                k,
            );
            Crossover {
                k,
                a_bits,
                w_bits,
                bit_serial_gmacs,
                bytes_gmacs,
            }
        })
        .collect()
}

/// The bit-serial product with the best kernel this CPU has.
pub(crate) fn gemm_bits(p: &PlanesRef<'_>, rows: usize, n: usize, out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if super::x86::has_avx512_popcnt() {
        return super::x86::gemm_bits_popcnt(p, rows, n, out);
    }
    gemm_scalar(p, rows, n, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn bit_serial_products_equal_the_definition(
            rows in 1usize..9,
            n in 1usize..9,
            k in 1usize..1200,
            a_bits in 1usize..5,
            w_bits in 1usize..5,
            seed in any::<u64>(),
        ) {
            let mut state = seed | 1;
            let mut next = || { state ^= state << 13; state ^= state >> 7; state ^= state << 17; state };
            let a: Vec<u8> = (0..rows * k).map(|_| (next() as u8) >> (8 - a_bits)).collect();
            let w: Vec<i8> = (0..n * k).map(|_| (next() as u8 as i8) >> (8 - w_bits)).collect();
            let expected: Vec<i32> = (0..rows * n)
                .map(|i| {
                    let (r, o) = (i / n, i % n);
                    (0..k).map(|x| i32::from(a[r * k + x]) * i32::from(w[o * k + x])).sum()
                })
                .collect();
            let planes = Planes::new(&a, rows, &w, n, k, a_bits, w_bits);
            let mut out = vec![0; rows * n];
            gemm_scalar(&planes.view(), rows, n, &mut out);
            prop_assert_eq!(&out, &expected);
            let mut fast = vec![0; rows * n];
            gemm_bits(&planes.view(), rows, n, &mut fast);
            prop_assert_eq!(&fast, &expected);
        }
    }
}
