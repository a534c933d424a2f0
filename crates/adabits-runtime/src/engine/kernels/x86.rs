//! The x86-64 kernels (AVX-512 VNNI, AVX2). This is the one module of the crate with `unsafe`:
//! the intrinsics need the CPU features they are compiled for, which `has_avx512_vnni` and
//! `has_avx2` check at run time before any of them is called, and raw pointer reads whose
//! bounds the callers check (`super::gemm`).
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m256i, __m512, __m512i, __mmask16, __mmask64, _CMP_GT_OQ, _mm_cvtepu8_epi16,
    _mm_cvtsi32_si128, _mm_loadu_si128, _mm256_add_epi32, _mm256_broadcastq_epi64,
    _mm256_cvtepi8_epi16, _mm256_madd_epi16, _mm256_setzero_si256, _mm256_storeu_si256,
    _mm512_add_epi8, _mm512_add_epi32, _mm512_add_epi64, _mm512_add_ps, _mm512_and_si512,
    _mm512_castps_si512, _mm512_cmp_ps_mask, _mm512_cvtepi32_ps, _mm512_div_ps,
    _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_mask_cvtepi32_storeu_epi8,
    _mm512_mask_storeu_ps, _mm512_mask_sub_epi32, _mm512_maskz_loadu_epi8,
    _mm512_maskz_loadu_epi32, _mm512_maskz_loadu_ps, _mm512_max_ps, _mm512_min_epi32,
    _mm512_min_ps, _mm512_mul_ps, _mm512_mullo_epi32, _mm512_multishift_epi64_epi8,
    _mm512_permutexvar_epi8, _mm512_popcnt_epi64, _mm512_reduce_add_epi64, _mm512_set1_epi8,
    _mm512_set1_epi32, _mm512_set1_ps, _mm512_setzero_ps, _mm512_setzero_si512,
    _mm512_storeu_si512, _mm512_sub_epi8, _mm512_sub_epi32, _mm512_sub_ps, _mm512_test_epi8_mask,
    _mm512_xor_si512,
};

use super::ROWS;
use crate::engine::epilogue::Block;
use crate::engine::quantize::{Pact, ROUND_MAGIC};

/// Whether this CPU runs the AVX-512 VNNI kernels.
pub(super) fn has_avx512_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Whether this CPU runs the AVX2 kernels.
pub(super) fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// Runs `work` compiled for AVX2 where the CPU has it (see [`wide`]).
#[inline(always)]
pub(crate) fn wide_avx2<W: super::Wide>(work: W) -> W::Output {
    if has_avx2() {
        // SAFETY: the CPU has AVX2 (checked above), the feature the function is compiled for.
        unsafe { wide_avx2_compiled(work) }
    } else {
        work.run()
    }
}

/// `work.run()`, compiled with AVX2.
///
/// # Safety
///
/// The CPU must have AVX2.
#[target_feature(enable = "avx2,fma")]
unsafe fn wide_avx2_compiled<W: super::Wide>(work: W) -> W::Output {
    work.run()
}

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` with `w` in panels of 8 channels, `[n / 8][kp / 4][8][4]`,
/// register tiles of 4 rows: each 4-byte group of weights widened to 16 bits and multiplied in
/// pairs with the row's 4 codes (`vpmaddwd`), which is exact for every `u8` and `i8` (a
/// saturating `vpmaddubsw` is not, at 8-bit codes).
///
/// The caller (`super::gemm`) has checked that `a` holds `rows` rounded up to [`ROWS`] rows of
/// `kp` bytes and `out` `rows × n` values; the panels hold `n` rounded up to 8.
pub(super) fn gemm_avx2(a: &[u8], rows: usize, w: &[i8], n: usize, kp: usize, out: &mut [i32]) {
    const R: usize = 4;
    assert!(has_avx2(), "the AVX2 kernel needs AVX2");
    assert!(ROWS.is_multiple_of(R) && kp.is_multiple_of(4));
    let panels = n.div_ceil(8);
    assert!(w.len() >= panels * kp * 8);
    assert!(a.len() >= rows.next_multiple_of(ROWS) * kp && out.len() >= rows * n);
    let mut tile = [[0i32; 8]; R];
    for panel in 0..panels {
        let weights = &w[panel * kp * 8..(panel + 1) * kp * 8];
        let lanes = 8.min(n - panel * 8);
        for r0 in (0..rows).step_by(R) {
            let block = &a[r0 * kp..(r0 + R) * kp];
            // SAFETY: the CPU has AVX2 (asserted above); `block` holds R rows of `kp` bytes and
            // `weights` kp/4 groups of 32 bytes, all the kernel reads; `tile` is R rows of 8.
            unsafe { tile_avx2::<R>(block, weights, kp, &mut tile) };
            for r in 0..R.min(rows - r0) {
                let dst = &mut out[(r0 + r) * n + panel * 8..][..lanes];
                dst.copy_from_slice(&tile[r][..lanes]);
            }
        }
    }
}

/// One AVX2 register tile: `R` rows against one panel of 8 channels.
///
/// # Safety
///
/// The CPU must have AVX2; `block` must hold `R · kp` bytes, `weights` `kp · 8` bytes, and `kp`
/// must be a multiple of 4.
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2<const R: usize>(
    block: &[u8],
    weights: &[i8],
    kp: usize,
    tile: &mut [[i32; 8]; R],
) {
    debug_assert!(block.len() >= R * kp && weights.len() >= kp * 8);
    // acc[r][h]: lanes 2c and 2c + 1 hold channel 4h + c's two halves of its sum.
    let mut acc: [[__m256i; 2]; R] = [[_mm256_setzero_si256(); 2]; R];
    let a = block.as_ptr();
    let b = weights.as_ptr();
    for k4 in 0..kp / 4 {
        // SAFETY: k4 < kp/4, so the 32 bytes at 32·k4 are within `weights` and each 4-byte
        // read within its row of `block`.
        unsafe {
            let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(k4 * 32).cast()));
            let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(k4 * 32 + 16).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let q = a.add(r * kp + k4 * 4).cast::<i32>().read_unaligned();
                // The row's 4 codes as 16-bit values, repeated for the 4 channels of a half.
                let q = _mm256_broadcastq_epi64(_mm_cvtepu8_epi16(_mm_cvtsi32_si128(q)));
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(w0, q));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(w1, q));
            }
        }
    }
    let mut lanes = [0i32; 8];
    for (row, acc) in tile.iter_mut().zip(&acc) {
        for (h, &acc) in acc.iter().enumerate() {
            // SAFETY: `lanes` holds 8 values, one 32-byte store.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), acc) };
            for c in 0..4 {
                row[4 * h + c] = lanes[2 * c] + lanes[2 * c + 1];
            }
        }
    }
}

/// Runs `work` compiled for AVX-512 where the CPU has it: its `run`, inlined here, then uses
/// 16-lane vectors instead of SSE2's four. The results are the same bit for bit: each
/// element's operations are the same, only more lanes run at once.
#[inline(always)]
pub(crate) fn wide<W: super::Wide>(work: W) -> W::Output {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU has AVX-512 F and BW (checked above), the features the function is
        // compiled for.
        unsafe { wide_avx512(work) }
    } else {
        work.run()
    }
}

/// `work.run()`, compiled with AVX-512 F and BW.
///
/// # Safety
///
/// The CPU must have AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi2")]
unsafe fn wide_avx512<W: super::Wide>(work: W) -> W::Output {
    work.run()
}

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` with `w` in panels of `16·V` channels,
/// `[n / 16V][kp / 4][16V][4]`, register tiles of `R` rows.
///
/// The caller (`super::gemm`) has checked that `a` holds `rows` rounded up to [`ROWS`] rows of
/// `kp` bytes (`R` divides [`ROWS`]) and `out` `rows × n` values; the panels hold `n` rounded
/// up to `16·V`.
pub(super) fn gemm_vnni<const R: usize, const V: usize>(
    a: &[u8],
    rows: usize,
    w: &[i8],
    n: usize,
    kp: usize,
    out: &mut [i32],
) {
    assert!(
        has_avx512_vnni(),
        "the AVX-512 VNNI kernel needs AVX-512 VNNI"
    );
    assert!(ROWS.is_multiple_of(R) && kp.is_multiple_of(4));
    let width = 16 * V;
    let panels = n.div_ceil(width);
    assert!(w.len() >= panels * kp * width);
    assert!(a.len() >= rows.next_multiple_of(ROWS) * kp && out.len() >= rows * n);
    let mut tile = [[0i32; 32]; 16];
    for panel in 0..panels {
        let weights = &w[panel * kp * width..(panel + 1) * kp * width];
        let lanes = width.min(n - panel * width);
        for r0 in (0..rows).step_by(R) {
            let block = &a[r0 * kp..(r0 + R) * kp];
            // SAFETY: the CPU has AVX-512 F, BW and VNNI (asserted above); `block` holds R
            // rows of `kp` bytes and `weights` kp/4 groups of 16V×4 bytes, all the kernel
            // reads; each of the R ≤ 16 rows of `tile` holds 32 ≥ 16V values.
            unsafe { tile_vnni::<R, V>(block, weights, kp, &mut tile) };
            for r in 0..R.min(rows - r0) {
                let dst = &mut out[(r0 + r) * n + panel * width..][..lanes];
                dst.copy_from_slice(&tile[r][..lanes]);
            }
        }
    }
}

/// One register tile: `R` rows of activations against one panel of `16·V` channels.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW and VNNI; `block` must hold `R · kp` bytes, `weights`
/// `kp · 16V` bytes, `kp` must be a multiple of 4, and `R ≤ 16`, `V ≤ 2`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni<const R: usize, const V: usize>(
    block: &[u8],
    weights: &[i8],
    kp: usize,
    tile: &mut [[i32; 32]; 16],
) {
    debug_assert!(block.len() >= R * kp && weights.len() >= kp * 16 * V && R <= 16 && V <= 2);
    let mut acc: [[__m512i; V]; R] = [[_mm512_setzero_si512(); V]; R];
    let a = block.as_ptr();
    let b = weights.as_ptr();
    for k4 in 0..kp / 4 {
        // SAFETY: k4 < kp/4, so the V 64-byte loads end within `weights` (kp·16V bytes) and
        // each 4-byte read within its row of `block`.
        unsafe {
            let mut w = [_mm512_setzero_si512(); V];
            for (v, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(b.add((k4 * V + v) * 64).cast());
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = a.add(r * kp + k4 * 4).cast::<i32>().read_unaligned();
                let x = _mm512_set1_epi32(x);
                for (acc, &w) in acc.iter_mut().zip(&w) {
                    *acc = _mm512_dpbusd_epi32(*acc, x, w);
                }
            }
        }
    }
    for (row, acc) in tile.iter_mut().zip(&acc) {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: a row of the tile is 32 values; vector v < 2 covers 16v..16v + 16.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().add(16 * v).cast(), acc) };
        }
    }
}

/// [`super::gemm_direct`] for panels of `16·V` channels, register tiles of `R` rows.
///
/// The caller has checked that `rows ≤ ROWS`, that the image holds the tile's reach from
/// `start` ([`super::Direct::reach`]), that `out` holds `rows × n` values and that the weights'
/// `kp` is `taps · channels`.
pub(super) fn direct_vnni<const R: usize, const V: usize>(
    x: &super::Direct<'_>,
    start: usize,
    rows: usize,
    w: &[i8],
    n: usize,
    out: &mut [i32],
) {
    assert!(
        has_avx512_vnni(),
        "the AVX-512 VNNI kernel needs AVX-512 VNNI"
    );
    assert!(x.channels.is_multiple_of(4) && R <= ROWS && V <= 2);
    let width = 16 * V;
    let kp = x.taps.len() * x.channels;
    let panels = n.div_ceil(width);
    assert!(w.len() >= panels * kp * width);
    assert!(start + super::Direct::reach(x.pixel_stride, x.taps, x.channels) <= x.image.len());
    let mut tile = [[0i32; 32]; 16];
    for panel in 0..panels {
        let weights = &w[panel * kp * width..(panel + 1) * kp * width];
        let lanes = width.min(n - panel * width);
        for r0 in (0..rows).step_by(R) {
            // SAFETY: the CPU has AVX-512 F, BW and VNNI (asserted above); every byte the tile
            // reads, start + (r0 + r)·pixel_stride + tap + c with r < R, r0 + R ≤ ROWS,
            // lies within the reach asserted above; `weights` holds kp/4 groups of 16V×4
            // bytes; each of the R ≤ 16 rows of `tile` holds 32 ≥ 16V values.
            unsafe {
                direct_tile::<R, V>(x, start + r0 * x.pixel_stride, weights, &mut tile);
            }
            for r in 0..R.min(rows - r0) {
                let dst = &mut out[(r0 + r) * n + panel * width..][..lanes];
                dst.copy_from_slice(&tile[r][..lanes]);
            }
        }
    }
}

/// One register tile of the direct kernel: `R` output pixels from byte `start`.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW and VNNI; the image must hold every byte
/// `start + r·pixel_stride + tap + c` for `r < R`; `weights` must hold `taps · channels / 4`
/// groups of `16V × 4` bytes; `R ≤ 16`, `V ≤ 2`, `channels` a multiple of 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn direct_tile<const R: usize, const V: usize>(
    x: &super::Direct<'_>,
    start: usize,
    weights: &[i8],
    tile: &mut [[i32; 32]; 16],
) {
    let mut acc: [[__m512i; V]; R] = [[_mm512_setzero_si512(); V]; R];
    let b = weights.as_ptr();
    let c4 = x.channels / 4;
    let mut k4 = 0;
    for &tap in x.taps {
        // SAFETY: the caller guarantees the reach of every row and tap.
        let a = unsafe { x.image.as_ptr().add(start + tap) };
        for c in 0..c4 {
            // SAFETY: k4 < taps·c4 = kp/4, so the loads end within `weights`; the 4-byte read
            // at a + r·pixel_stride + 4c is within the reach (c < c4).
            unsafe {
                let mut w = [_mm512_setzero_si512(); V];
                for (v, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(b.add((k4 * V + v) * 64).cast());
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let q = a
                        .add(r * x.pixel_stride + 4 * c)
                        .cast::<i32>()
                        .read_unaligned();
                    let q = _mm512_set1_epi32(q);
                    for (acc, &w) in acc.iter_mut().zip(&w) {
                        *acc = _mm512_dpbusd_epi32(*acc, q, w);
                    }
                }
            }
            k4 += 1;
        }
    }
    for (row, acc) in tile.iter_mut().zip(&acc) {
        for (v, &acc) in acc.iter().enumerate() {
            // SAFETY: a row of the tile is 32 values; vector v < 2 covers 16v..16v + 16.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr().add(16 * v).cast(), acc) };
        }
    }
}

/// Whether this CPU runs the AVX-512 popcount kernel (VPOPCNTDQ).
pub(super) fn has_avx512_popcnt() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
}

/// The bit-serial product with AVX-512 VPOPCNTDQ: tiles of 4 rows × 4 channels, per pair of
/// planes an AND, a popcount and an add per 512 products.
pub(super) fn gemm_bits_popcnt(
    p: &super::bits::PlanesRef<'_>,
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

/// The epilogue of `rows = out.len() / n` rows of sums `acc` (`[rows][n]`, `n = mult.len()`),
/// 16 channels at a time, the last ones under a mask: the operations of
/// [`Block::run`](crate::engine::epilogue::Block) lane by lane, in the same order, so that the
/// values and codes are the same bit for bit. `sums[r]` is row `r`'s `Σq` (or `sums` is empty:
/// `c·Σq` is 0).
pub(crate) fn epilogue_avx512(
    block: &Block,
    sums: &[i32],
    acc: &[i32],
    (mult, add): (&[f32], &[f32]),
    out: &mut [f32],
    codes: Option<&mut [u8]>,
) {
    let n = mult.len();
    assert!(has_avx512_vnni(), "the AVX-512 epilogue needs AVX-512");
    assert!(n > 0 && add.len() == n && out.len().is_multiple_of(n) && acc.len() >= out.len());
    let rows = out.len() / n;
    assert!(sums.is_empty() || sums.len() >= rows);
    assert!(codes.as_ref().is_none_or(|c| c.len() >= out.len()));
    // SAFETY: the CPU has AVX-512 F and BW (asserted above); the lengths are checked above.
    unsafe { epilogue_compiled(block, sums, acc, (mult, add), out, codes) }
}

/// [`epilogue_avx512`]'s loop.
///
/// # Safety
///
/// The CPU must have AVX-512 F and BW; `add` must hold `n = mult.len()` values, `acc` and
/// `codes` at least `out.len()`, `sums` none or a value per row.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn epilogue_compiled(
    block: &Block,
    sums: &[i32],
    acc: &[i32],
    (mult, add): (&[f32], &[f32]),
    out: &mut [f32],
    mut codes: Option<&mut [u8]>,
) {
    let n = mult.len();
    let rows = out.len() / n;
    let scale = _mm512_set1_epi32(block.scale);
    let zero = _mm512_setzero_ps();
    for j in (0..n).step_by(16) {
        let mask: __mmask16 = if n - j >= 16 {
            0xffff
        } else {
            (1 << (n - j)) - 1
        };
        // SAFETY (every access below): lanes j..j + 16 under `mask` are within row `r` of
        // `n` values, and `rows · n` values are within `out`, `acc` and `codes`.
        unsafe {
            let m = _mm512_maskz_loadu_ps(mask, mult.as_ptr().add(j));
            let b = _mm512_maskz_loadu_ps(mask, add.as_ptr().add(j));
            for r in 0..rows {
                let at = r * n + j;
                let extra =
                    _mm512_set1_epi32(block.plus_inputs * sums.get(r).copied().unwrap_or(0));
                let a = _mm512_maskz_loadu_epi32(mask, acc.as_ptr().add(at));
                let t = _mm512_add_epi32(_mm512_mullo_epi32(scale, a), extra);
                let mut v = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(t), m), b);
                if block.accumulate {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, out.as_ptr().add(at)));
                }
                if block.relu {
                    v = _mm512_max_ps(v, zero);
                }
                _mm512_mask_storeu_ps(out.as_mut_ptr().add(at), mask, v);
                if let (Some(pact), Some(codes)) = (&block.pact, codes.as_deref_mut()) {
                    let q = pact_lanes(pact, v);
                    _mm512_mask_cvtepi32_storeu_epi8(codes.as_mut_ptr().add(at).cast(), mask, q);
                }
            }
        }
    }
}

/// PACT codes of `x` into `out` (as many), 16 at a time: [`Pact::block`]'s operations.
pub(crate) fn pact_avx512(pact: &Pact, x: &[f32], out: &mut [u8]) {
    assert!(has_avx512_vnni(), "the AVX-512 quantizer needs AVX-512");
    assert_eq!(x.len(), out.len());
    // SAFETY: the CPU has AVX-512 F and BW (asserted above); `out` holds as many values as `x`.
    unsafe { pact_compiled(pact, x, out) }
}

/// [`pact_avx512`]'s loop.
///
/// # Safety
///
/// The CPU must have AVX-512 F and BW; `out` must hold `x.len()` values.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn pact_compiled(pact: &Pact, x: &[f32], out: &mut [u8]) {
    for j in (0..x.len()).step_by(16) {
        let left = x.len() - j;
        let mask: __mmask16 = if left >= 16 { 0xffff } else { (1 << left) - 1 };
        // SAFETY: lanes j..j + 16 under `mask` are within `x` and `out`.
        unsafe {
            let q = pact_lanes(pact, _mm512_maskz_loadu_ps(mask, x.as_ptr().add(j)));
            _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(j).cast(), mask, q);
        }
    }
}

/// The PACT codes of 16 values, as `i32` lanes: [`Pact::block`]'s operations in its order.
/// `vmaxps a, b` returns `b` where either is NaN, as `a.max(b)` returns `b` for a NaN `a`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn pact_lanes(pact: &Pact, x: __m512) -> __m512i {
    let alpha = _mm512_set1_ps(pact.alpha);
    let c = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(pact.low)), alpha);
    let mut u = _mm512_div_ps(c, alpha);
    let levels = _mm512_set1_ps(pact.levels);
    u = if pact.double_sided {
        let one = _mm512_set1_ps(1.0);
        let two = _mm512_set1_ps(2.0);
        _mm512_mul_ps(_mm512_div_ps(_mm512_add_ps(u, one), two), levels)
    } else {
        _mm512_mul_ps(u, levels)
    };
    let magic = _mm512_set1_ps(ROUND_MAGIC);
    let t = _mm512_add_ps(u, magic);
    let bits = _mm512_castps_si512(t);
    if pact.original {
        bits
    } else {
        let rounded = _mm512_sub_epi32(bits, _mm512_castps_si512(magic));
        let up = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_sub_ps(t, magic), u);
        let floor = _mm512_mask_sub_epi32(rounded, up, rounded, _mm512_set1_epi32(1));
        _mm512_min_epi32(floor, _mm512_set1_epi32(pact.top))
    }
}

/// Whether this CPU runs [`unpack_vbmi`] (AVX-512 VBMI's byte permutes and bit-field
/// extraction, `vpermb` and `vpmultishiftqb`) and [`bit_planes_avx512`].
pub(crate) fn has_avx512_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// The first `out.len() / 64 · 64` of `B`-bit two's complement values packed least-significant
/// bit first in `packed`, sign-extended into `out`, as `2j + 1` where `odd`; returns how many
/// it wrote (the caller unpacks the rest). 64 values a time: the `8·B` bytes of eight groups of
/// eight values, each group's `B` bytes moved into a 64-bit lane (`vpermb`), the eight
/// `B`-bit fields of each lane pulled into its bytes (`vpmultishiftqb`), then sign-extended.
pub(crate) fn unpack_vbmi<const B: usize>(packed: &[u8], odd: bool, out: &mut [i8]) -> usize {
    assert!(has_avx512_vbmi(), "the VBMI unpack needs AVX-512 VBMI");
    assert!((1..8).contains(&B));
    let blocks = (out.len() / 64).min(packed.len() / (8 * B));
    // SAFETY: the CPU has AVX-512 F, BW and VBMI (asserted above); `blocks` blocks of `8·B`
    // bytes are within `packed` and of 64 values within `out`.
    unsafe { unpack_compiled::<B>(packed, odd, out, blocks) };
    blocks * 64
}

/// [`unpack_vbmi`]'s loop over `blocks` blocks.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW and VBMI; `packed` must hold `blocks · 8·B` bytes and
/// `out` `blocks · 64` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
unsafe fn unpack_compiled<const B: usize>(packed: &[u8], odd: bool, out: &mut [i8], blocks: usize) {
    // Byte i of lane L: byte L·B + i of the block (bytes past the group's B hold the next
    // group's, whose bits the mask below drops).
    let mut index = [0u8; 64];
    let mut fields = [0u8; 64];
    for (i, (index, field)) in index.iter_mut().zip(&mut fields).enumerate() {
        let (lane, byte) = (i / 8, i % 8);
        *index = (lane * B + byte).min(63) as u8;
        *field = (byte * B) as u8;
    }
    let load_mask: __mmask64 = (1u64 << (8 * B)) - 1;
    // SAFETY: `index` and `fields` hold 64 bytes each.
    let (index, fields) = unsafe {
        (
            _mm512_loadu_si512(index.as_ptr().cast()),
            _mm512_loadu_si512(fields.as_ptr().cast()),
        )
    };
    let low = _mm512_set1_epi8(((1u32 << B) - 1) as i8);
    let sign = _mm512_set1_epi8((1u32 << (B - 1)) as i8);
    let one = _mm512_set1_epi8(1);
    for block in 0..blocks {
        // SAFETY: block < blocks, so the 8·B bytes read (under `load_mask`) are within
        // `packed` and the 64 written within `out`.
        unsafe {
            let bytes =
                _mm512_maskz_loadu_epi8(load_mask, packed.as_ptr().add(block * 8 * B).cast());
            let lanes = _mm512_permutexvar_epi8(index, bytes);
            let v = _mm512_and_si512(_mm512_multishift_epi64_epi8(fields, lanes), low);
            let mut j = _mm512_sub_epi8(_mm512_xor_si512(v, sign), sign);
            if odd {
                j = _mm512_add_epi8(_mm512_add_epi8(j, j), one);
            }
            _mm512_storeu_si512(out.as_mut_ptr().add(block * 64).cast(), j);
        }
    }
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
