//! The x86-64 kernels (AVX-512 VNNI). This is the one module of the crate with `unsafe`: the
//! intrinsics need the CPU features they are compiled for, which `has_avx512_vnni` checks at
//! run time before any of them is called, and raw pointer reads whose bounds the callers
//! check (`super::gemm`).
#![allow(unsafe_code)]

use std::arch::x86_64::{
    __m512i, _mm512_dpbusd_epi32, _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_si512,
    _mm512_storeu_si512,
};

use super::{PANEL, ROWS};

/// Whether this CPU runs the AVX-512 VNNI kernels.
pub(super) fn has_avx512_vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
}

/// Runs `f` compiled for AVX-512 where the CPU has it: the element-wise loops it inlines
/// (quantizers, epilogues) then use 16-lane vectors instead of SSE2's four. The results are
/// the same bit for bit: each element's operations are the same, only more lanes run at once.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    if std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
    {
        // SAFETY: the CPU has AVX-512 F and BW (checked above), the features the function is
        // compiled for.
        unsafe { wide_avx512(f) }
    } else {
        f()
    }
}

/// `f`, compiled with AVX-512 F and BW.
///
/// # Safety
///
/// The CPU must have AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,bmi2")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `out[r][o] = Σ_i a[r][i] · w[o][i]` with `w` in panels `[n / PANEL][kp / 4][PANEL][4]`.
///
/// The caller (`super::gemm`) has checked that `a` holds `rows` rounded up to [`ROWS`] rows of
/// `kp` bytes and `out` `rows × n` values; the panels hold `n` rounded up to [`PANEL`].
pub(super) fn gemm_vnni(a: &[u8], rows: usize, w: &[i8], n: usize, kp: usize, out: &mut [i32]) {
    assert!(
        has_avx512_vnni(),
        "the AVX-512 VNNI kernel needs AVX-512 VNNI"
    );
    let panels = n.div_ceil(PANEL);
    assert!(w.len() >= panels * kp * PANEL);
    assert!(a.len() >= rows.next_multiple_of(ROWS) * kp && out.len() >= rows * n);
    let mut tile = [0i32; ROWS * PANEL];
    for panel in 0..panels {
        let weights = &w[panel * kp * PANEL..(panel + 1) * kp * PANEL];
        let lanes = PANEL.min(n - panel * PANEL);
        for r0 in (0..rows).step_by(ROWS) {
            let block = &a[r0 * kp..(r0 + ROWS) * kp];
            // SAFETY: the CPU has AVX-512 F, BW and VNNI (asserted above); `block` holds
            // ROWS rows of `kp` bytes and `weights` kp/4 groups of PANEL×4 bytes, which is
            // all the kernel reads; `tile` holds ROWS×PANEL values, all it writes.
            unsafe { tile_vnni(block, weights, kp, &mut tile) };
            for r in 0..ROWS.min(rows - r0) {
                let dst = &mut out[(r0 + r) * n + panel * PANEL..][..lanes];
                dst.copy_from_slice(&tile[r * PANEL..r * PANEL + lanes]);
            }
        }
    }
}

/// One register tile: `ROWS` rows of activations against one panel of `PANEL` channels.
///
/// # Safety
///
/// The CPU must have AVX-512 F, BW and VNNI; `block` must hold `ROWS · kp` bytes, `weights`
/// `kp · PANEL` bytes, and `kp` must be a multiple of 4.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn tile_vnni(block: &[u8], weights: &[i8], kp: usize, tile: &mut [i32; ROWS * PANEL]) {
    debug_assert!(block.len() >= ROWS * kp && weights.len() >= kp * PANEL && kp.is_multiple_of(4));
    let mut acc: [[__m512i; 2]; ROWS] = [[_mm512_setzero_si512(); 2]; ROWS];
    let a = block.as_ptr();
    let b = weights.as_ptr();
    for k4 in 0..kp / 4 {
        // SAFETY: k4 < kp/4, so the two 64-byte loads end within `weights` (kp·PANEL bytes)
        // and each 4-byte read within its row of `block`.
        unsafe {
            let w0 = _mm512_loadu_si512(b.add(k4 * PANEL * 4).cast());
            let w1 = _mm512_loadu_si512(b.add(k4 * PANEL * 4 + 64).cast());
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = a.add(r * kp + k4 * 4).cast::<i32>().read_unaligned();
                let x = _mm512_set1_epi32(x);
                acc[0] = _mm512_dpbusd_epi32(acc[0], x, w0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], x, w1);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of the tile is PANEL = 32 values, two 64-byte stores.
        unsafe {
            _mm512_storeu_si512(tile.as_mut_ptr().add(r * PANEL).cast(), acc[0]);
            _mm512_storeu_si512(tile.as_mut_ptr().add(r * PANEL + 16).cast(), acc[1]);
        }
    }
}
