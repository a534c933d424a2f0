//! Unit quantization `Q_b(u)` on `[0, 1]`, its straight-through gradient, and integer codes.

use burn::tensor::{Int, Tensor};

use crate::{BitWidth, QuantError, QuantScheme};

/// `Q_b(u)`: the forward value of the unit quantizer, without any gradient path.
///
/// `u` should lie in `[0, 1]`, as the callers build it. It is clamped to `[0, 1]` first: exact
/// arithmetic never leaves that range, but GPU division is allowed an error of a few ulp (WGSL
/// allows 2.5), so `c/α` or `t/M` can come out as `−1 − ε` or `1 + ε`, and `⌊2^b·u⌋` would then
/// give a code of −1 (seen on an H200). See [`QuantScheme`] for the formulas. Rounding is
/// half-to-even, so `Q_1(0.5) = 0` and `Q_2(0.5) = 2/3` for the original scheme (TV1).
///
/// # Shapes
///
/// Any shape; the output has the shape of `u`.
///
/// # Panics
///
/// Panics if `bits` is full precision: a unit quantizer needs a finite number of levels.
pub fn unit_quantize_value<const D: usize>(
    u: Tensor<D>,
    bits: BitWidth,
    scheme: QuantScheme,
) -> Tensor<D> {
    let levels = bits.levels() as f64;
    let u = u.clamp(0.0, 1.0);
    match scheme {
        QuantScheme::Original => {
            let a = levels - 1.0;
            u.mul_scalar(a).round().div_scalar(a)
        }
        // Multiplying and dividing by a power of two is exact, so the code is exact too.
        QuantScheme::Modified => u
            .mul_scalar(levels)
            .floor()
            .clamp_max(levels - 1.0)
            .div_scalar(levels),
        QuantScheme::Centered => u
            .mul_scalar(levels)
            .floor()
            .clamp_max(levels - 1.0)
            .add_scalar(0.5)
            .div_scalar(levels),
    }
}

/// `Q_b(u)` with the straight-through estimator: forward `Q_b(u)`, gradient 1 for every element
/// (docs/method.md §2, also at the upper clamp and for every scheme).
///
/// Built as `Q_b(u).detach() + (u − u.detach())`: the forward value is exactly `Q_b(u)` (the
/// second term is exactly zero), and the only gradient path is the identity through `u`. This
/// matches the official `q_k.backward`, including the clipping-level gradient of PACT (CG-PACT,
/// docs/method.md §4), with no custom autodiff op.
///
/// # Shapes
///
/// Any shape; the output has the shape of `u`.
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn unit_quantize<const D: usize>(
    u: Tensor<D>,
    bits: BitWidth,
    scheme: QuantScheme,
) -> Tensor<D> {
    let q = unit_quantize_value(u.clone().detach(), bits, scheme);
    let zero_with_identity_grad = u.clone() - u.detach();
    q + zero_with_identity_grad
}

/// The integer code `k` of `Q_b(u)`, so that `Q_b(u)` is `k/(2^b−1)` (original), `k/2^b`
/// (modified) or `(k+½)/2^b` (centered).
///
/// Original: `k = round((2^b − 1)·u)`; modified and centered: `k = min(⌊2^b·u⌋, 2^b − 1)`.
/// Codes lie in `0..2^b`; `u` is clamped to `[0, 1]` first, as in [`unit_quantize_value`].
///
/// # Shapes
///
/// Any shape; the output has the shape of `u`.
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn unit_codes<const D: usize>(
    u: Tensor<D>,
    bits: BitWidth,
    scheme: QuantScheme,
) -> Tensor<D, Int> {
    let levels = bits.levels() as f64;
    let u = u.clamp(0.0, 1.0);
    let k = match scheme {
        QuantScheme::Original => u.mul_scalar(levels - 1.0).round(),
        QuantScheme::Modified | QuantScheme::Centered => {
            u.mul_scalar(levels).floor().clamp_max(levels - 1.0)
        }
    };
    k.int()
}

/// The unit value `Q_b(u)` of an integer code: the inverse of [`unit_codes`] on its levels.
///
/// # Shapes
///
/// Any shape; the output has the shape of `codes`.
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn codes_to_unit<const D: usize>(
    codes: Tensor<D, Int>,
    bits: BitWidth,
    scheme: QuantScheme,
) -> Tensor<D> {
    let levels = bits.levels() as f64;
    let k = codes.float();
    match scheme {
        QuantScheme::Original => k.div_scalar(levels - 1.0),
        QuantScheme::Modified => k.div_scalar(levels),
        QuantScheme::Centered => k.add_scalar(0.5).div_scalar(levels),
    }
}

/// Derives `to`-bit codes from `from`-bit codes by a right shift of `from − to` bits.
///
/// Exact for the modified and centered schemes: `k_to(u) = k_from(u) >> (from − to)` for every
/// `u` (the bit-shift property, docs/method.md §2, TV7). This is what lets one stored set of
/// highest-bit codes serve every lower bit-width.
///
/// # Shapes
///
/// Any shape; the output has the shape of `codes`.
///
/// # Errors
///
/// [`QuantError::NoShiftProperty`] for the original scheme, where the shift is not exact, and
/// [`QuantError::InvalidShift`] unless `to < from` and both are quantized bit-widths.
pub fn shift_codes<const D: usize>(
    codes: Tensor<D, Int>,
    scheme: QuantScheme,
    from: BitWidth,
    to: BitWidth,
) -> Result<Tensor<D, Int>, QuantError> {
    if !scheme.has_shift_property() {
        return Err(QuantError::NoShiftProperty {
            scheme,
            from: from.get(),
            to: to.get(),
        });
    }
    if from.is_full_precision() || to >= from {
        return Err(QuantError::InvalidShift {
            from: from.get(),
            to: to.get(),
        });
    }
    Ok(codes.bitwise_right_shift_scalar(i64::from(from.get() - to.get())))
}
