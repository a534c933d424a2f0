//! The `u8 × i8 → i32` products: AVX2 (`vpmaddwd`) and AVX-512 VNNI (`vpdpbusd`) register
//! tiles, from im2col rows or straight from a padded image.

use std::arch::x86_64::*;

use super::{has_avx2, has_avx512_vnni};
use crate::engine::kernels::ROWS;

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` with `w` in panels of 8 channels, `[n / 8][kp / 4][8][4]`,
/// register tiles of 4 rows: each 4-byte group of weights widened to 16 bits and multiplied in
/// pairs with the row's 4 codes (`vpmaddwd`), which is exact for every `u8` and `i8` (a
/// saturating `vpmaddubsw` is not, at 8-bit codes).
///
/// The caller (`kernels::gemm`) has checked that `a` holds `rows` rounded up to [`ROWS`] rows of
/// `kp` bytes and `out` `rows × n` values; the panels hold `n` rounded up to 8.
pub(crate) fn gemm_avx2(a: &[u8], rows: usize, w: &[i8], n: usize, kp: usize, out: &mut [i32]) {
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

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` with `w` in panels of `16·V` channels,
/// `[n / 16V][kp / 4][16V][4]`, register tiles of `R` rows.
///
/// The caller (`kernels::gemm`) has checked that `a` holds `rows` rounded up to [`ROWS`] rows of
/// `kp` bytes (`R` divides [`ROWS`]) and `out` `rows × n` values; the panels hold `n` rounded
/// up to `16·V`.
pub(crate) fn gemm_vnni<const R: usize, const V: usize>(
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

/// [`gemm_direct`](crate::engine::kernels::gemm_direct) for panels of `16·V` channels, register tiles of `R` rows.
///
/// The caller has checked that `rows ≤ ROWS`, that the image holds the tile's reach from
/// `start` ([`crate::engine::kernels::Direct::reach`]), that `out` holds `rows × n` values and that the weights'
/// `kp` is `taps · channels`.
pub(crate) fn direct_vnni<const R: usize, const V: usize>(
    x: &crate::engine::kernels::Direct<'_>,
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
    assert!(
        start + crate::engine::kernels::Direct::reach(x.pixel_stride, x.taps, x.channels)
            <= x.image.len()
    );
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
    x: &crate::engine::kernels::Direct<'_>,
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
