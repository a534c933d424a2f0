//! The x86-64 kernels (AVX-512 VNNI, AVX2, VPOPCNTDQ, VBMI). This is the one module of the
//! crate with `unsafe`: the intrinsics need the CPU features they are compiled for, which the
//! `has_*` functions below check at run time before any of them is called, and raw pointer
//! reads and writes whose bounds each public function asserts (or its caller, `super::gemm`,
//! checks). By concept: the `u8 × i8` products (`gemm`), the bit-serial products and planes
//! (`bits`), the element-wise loops on whole vectors: the epilogue, PACT codes and unpacking
//! (`lanes`).
#![allow(unsafe_code)]

mod bits;
mod gemm;
mod lanes;

pub(crate) use bits::{bit_planes_avx512, gemm_bits_popcnt};
pub(crate) use gemm::{direct_vnni, gemm_avx2, gemm_vnni};
pub(crate) use lanes::{epilogue_avx512, pact_avx512, unpack_vbmi};

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

/// Whether this CPU runs the AVX-512 popcount kernel (VPOPCNTDQ).
pub(super) fn has_avx512_popcnt() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512vpopcntdq")
}

/// Whether this CPU runs [`unpack_vbmi`] (AVX-512 VBMI's byte permutes and bit-field
/// extraction, `vpermb` and `vpmultishiftqb`) and [`bit_planes_avx512`].
pub(crate) fn has_avx512_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
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
