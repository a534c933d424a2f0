//! The one matrix product the convolution kernels need, as a safe function over slices.
//!
//! It calls the `gemm` crate (the GEMM of Burn's Flex backend, with its AVX-512 kernels turned
//! on by feature `x86-v4` and chosen at run time), whose entry point takes raw pointers and
//! strides. This is the only `unsafe` in the workspace: [`matmul`] checks, before the call,
//! that every element the product reads or writes lies inside the slices it was given, and the
//! borrow rules keep the destination apart from the operands.
#![allow(unsafe_code)]

/// A read-only `rows × cols` matrix view: element `(i, j)` is `data[i·row_stride + j·col_stride]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

/// A writable `rows × cols` row-major matrix: element `(i, j)` is `data[i·cols + j]`.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major `cols × rows` matrix, as a `rows × cols` view.
    pub(crate) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: 1,
            col_stride: rows,
        }
    }

    /// Whether every element of the view lies inside `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` with `accumulate`, on one thread (the kernels
/// parallelise over images). The sum order depends only on the shapes and the instruction set.
///
/// # Panics
///
/// If the shapes do not agree or a view reaches outside its slice (a bug in the caller).
pub(crate) fn matmul(dst: MatMut<'_>, accumulate: bool, lhs: MatRef<'_>, rhs: MatRef<'_>) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(
        lhs.rows == m && rhs.rows == k && rhs.cols == n,
        "matmul: [{m}×{n}] = [{}×{}]·[{}×{}]",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    assert!(dst.data.len() >= m * n, "matmul: destination too short");
    assert!(
        lhs.in_bounds() && rhs.in_bounds(),
        "matmul: operand view out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.data[..m * n].fill(0.0);
        }
        return;
    }
    // Strides as `isize`: every one is at most a slice length, which fits.
    let s = |v: usize| v as isize;
    // SAFETY: `dst` is an exclusive borrow of at least `m·n` elements, written at
    // `i·n + j < m·n`; `lhs` and `rhs` are shared borrows whose largest index was checked above,
    // so no access leaves its slice and the destination aliases neither operand. `gemm` only
    // reads `dst` when `read_dst` (`accumulate`) is set, and then every element of it is
    // initialised (it is a `&mut [f32]`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.data.as_mut_ptr(),
            1,
            s(n),
            accumulate,
            lhs.data.as_ptr(),
            s(lhs.col_stride),
            s(lhs.row_stride),
            rhs.data.as_ptr(),
            s(rhs.col_stride),
            s(rhs.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, n: usize, k: usize, a: &MatRef<'_>, b: &MatRef<'_>) -> Vec<f64> {
        let mut out = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| {
                        f64::from(a.data[i * a.row_stride + p * a.col_stride])
                            * f64::from(b.data[p * b.row_stride + j * b.col_stride])
                    })
                    .sum();
            }
        }
        out
    }

    #[test]
    fn products_and_transposed_views_match_a_naive_product() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (16, 33, 9),
            (17, 64, 40),
            (5, 0, 3),
            (4, 3, 0),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7 % 13) as f32 - 6.0) / 4.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 8.0)
                .collect();
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let lhs = if ta {
                    MatRef::transposed(&a, m, k)
                } else {
                    MatRef::row_major(&a, m, k)
                };
                let rhs = if tb {
                    MatRef::transposed(&b, k, n)
                } else {
                    MatRef::row_major(&b, k, n)
                };
                let want = naive(m, n, k, &lhs, &rhs);
                let mut dst = vec![1.0f32; m * n];
                matmul(
                    MatMut {
                        data: &mut dst,
                        rows: m,
                        cols: n,
                    },
                    true,
                    lhs,
                    rhs,
                );
                for (d, w) in dst.iter().zip(&want) {
                    assert!(
                        (f64::from(*d) - (w + 1.0)).abs() < 1e-5,
                        "{m}×{n}×{k} {ta} {tb}"
                    );
                }
                matmul(
                    MatMut {
                        data: &mut dst,
                        rows: m,
                        cols: n,
                    },
                    false,
                    lhs,
                    rhs,
                );
                for (d, w) in dst.iter().zip(&want) {
                    assert!((f64::from(*d) - w).abs() < 1e-5, "{m}×{n}×{k} {ta} {tb}");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn a_view_past_its_slice_is_refused() {
        let a = vec![0.0f32; 5];
        let b = vec![0.0f32; 9];
        let mut dst = vec![0.0f32; 6];
        matmul(
            MatMut {
                data: &mut dst,
                rows: 2,
                cols: 3,
            },
            false,
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&b, 3, 3),
        );
    }
}
