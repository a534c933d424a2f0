//! The portable kernels: the reference every other kernel is tested against.

/// `out[r][o] = Σ_i a[r][i] · w[o][i]`, `w` row-major `[n][kp]`.
pub(super) fn gemm(a: &[u8], rows: usize, w: &[i8], n: usize, kp: usize, out: &mut [i32]) {
    for (r, out_row) in out.chunks_exact_mut(n).take(rows).enumerate() {
        let x = &a[r * kp..(r + 1) * kp];
        for (o, slot) in out_row.iter_mut().enumerate() {
            let row = &w[o * kp..(o + 1) * kp];
            *slot = x
                .iter()
                .zip(row)
                .map(|(&x, &w)| i32::from(x) * i32::from(w))
                .sum();
        }
    }
}
