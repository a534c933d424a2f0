//! Element-wise loops on whole AVX-512 vectors: a layer's epilogue, PACT codes, and packed
//! weights unpacked with VBMI.

use std::arch::x86_64::*;

use super::{has_avx512_vbmi, has_avx512_vnni};
use crate::engine::epilogue::Block;
use crate::engine::quantize::{Pact, ROUND_MAGIC};

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
