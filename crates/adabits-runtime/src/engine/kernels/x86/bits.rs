//! Bit-serial products with AVX-512 VPOPCNTDQ, and the bit-planes of rows of codes.

use std::arch::x86_64::*;

use super::{has_avx512_popcnt, has_avx512_vbmi};

/// The bit-serial product with AVX-512 VPOPCNTDQ: tiles of 4 rows × 4 channels, per pair of
/// planes an AND, a popcount and an add per 512 products.
pub(crate) fn gemm_bits_popcnt(
    p: &crate::engine::kernels::PlanesRef<'_>,
    rows: usize,
    n: usize,
    out: &mut [i32],
) {
    assert!(
        has_avx512_popcnt(),
        "the popcount kernel needs AVX-512 VPOPCNTDQ"
    );
    let (ab, wb, words) = (p.a_bits, p.w_bits, p.words);
    assert!(words.is_multiple_of(8) && p.a.len() >= rows * ab * words);
    assert!(p.w.len() >= n * wb * words && out.len() >= rows * n);
    for r0 in (0..rows).step_by(4) {
        for o0 in (0..n).step_by(4) {
            let (tr, tc) = (4.min(rows - r0), 4.min(n - o0));
            let mut sums = [[0i64; 4]; 4];
            for i in 0..ab {
                for j in 0..wb {
                    // Rows and channels past the tile repeat its last; their sums are dropped.
                    let a: [&[u64]; 4] = std::array::from_fn(|r| {
                        let row = r0 + r.min(tr - 1);
                        &p.a[(row * ab + i) * words..][..words]
                    });
                    let w: [&[u64]; 4] = std::array::from_fn(|c| {
                        let col = o0 + c.min(tc - 1);
                        &p.w[(col * wb + j) * words..][..words]
                    });
                    // SAFETY: the CPU has AVX-512 F and VPOPCNTDQ (asserted above); every plane
                    // slice holds `words` words, a multiple of 8, all the tile reads.
                    let counts = unsafe { tile_popcnt(&a, &w, words) };
                    let weight = p.pair_weight(i, j);
                    for (sums, counts) in sums.iter_mut().zip(&counts) {
                        for (sum, &count) in sums.iter_mut().zip(counts) {
                            *sum += weight * count;
                        }
                    }
                }
            }
            for r in 0..tr {
                for c in 0..tc {
                    out[(r0 + r) * n + o0 + c] = sums[r][c] as i32;
                }
            }
        }
    }
}

/// `popcount(a[r] AND w[c])` over `words` words for a 4 × 4 tile.
///
/// # Safety
///
/// The CPU must have AVX-512 F and VPOPCNTDQ; every slice must hold `words` words, a multiple
/// of 8.
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn tile_popcnt(a: &[&[u64]; 4], w: &[&[u64]; 4], words: usize) -> [[i64; 4]; 4] {
    let mut acc = [[_mm512_setzero_si512(); 4]; 4];
    for chunk in (0..words).step_by(8) {
        // SAFETY: chunk + 8 ≤ words, the length of every slice.
        unsafe {
            let mut wv = [_mm512_setzero_si512(); 4];
            for (v, w) in wv.iter_mut().zip(w) {
                *v = _mm512_loadu_si512(w.as_ptr().add(chunk).cast());
            }
            for (acc, a) in acc.iter_mut().zip(a) {
                let av = _mm512_loadu_si512(a.as_ptr().add(chunk).cast());
                for (acc, &wv) in acc.iter_mut().zip(&wv) {
                    *acc = _mm512_add_epi64(*acc, _mm512_popcnt_epi64(_mm512_and_si512(av, wv)));
                }
            }
        }
    }
    let mut out = [[0i64; 4]; 4];
    for (out, acc) in out.iter_mut().zip(&acc) {
        for (out, &acc) in out.iter_mut().zip(acc) {
            *out = _mm512_reduce_add_epi64(acc);
        }
    }
    out
}

/// The `bits` bit-planes of one row of codes (`words` words each, zeros past the row) into
/// `planes`: 64 codes per step, one `vptestmb` per plane.
pub(crate) fn bit_planes_avx512(row: &[u8], bits: usize, words: usize, planes: &mut [u64]) {
    assert!(has_avx512_vbmi(), "the plane kernel needs AVX-512 BW");
    assert!(planes.len() >= bits * words && row.len() <= words * 64 && bits <= 8);
    // SAFETY: the CPU has AVX-512 F and BW (asserted above); the lengths are checked above.
    unsafe { bit_planes_compiled(row, bits, words, planes) }
}

/// [`bit_planes_avx512`]'s loop.
///
/// # Safety
///
/// The CPU must have AVX-512 F and BW; `planes` must hold `bits · words` words and `row` at
/// most `64 · words` codes.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn bit_planes_compiled(row: &[u8], bits: usize, words: usize, planes: &mut [u64]) {
    for (word, start) in (0..row.len()).step_by(64).enumerate() {
        let left = row.len() - start;
        let mask: __mmask64 = if left >= 64 { !0 } else { (1u64 << left) - 1 };
        // SAFETY: the 64 bytes from `start` under `mask` are within `row`.
        let codes = unsafe { _mm512_maskz_loadu_epi8(mask, row.as_ptr().add(start).cast()) };
        for (b, plane) in planes.chunks_exact_mut(words).take(bits).enumerate() {
            plane[word] = _mm512_test_epi8_mask(codes, _mm512_set1_epi8((1u8 << b) as i8));
        }
    }
    let used = row.len().div_ceil(64);
    for plane in planes.chunks_exact_mut(words).take(bits) {
        plane[used..].fill(0);
    }
}
