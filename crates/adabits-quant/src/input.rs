//! The network input convention of the official code (parity default P7, docs/method.md §7).

use burn::tensor::Tensor;

/// Turns `[0, 1]` image values into integer-valued pixels: `round(255·x)`, half to even.
///
/// The official code feeds the network these 0..255 values with no mean or standard-deviation
/// normalisation; the first BatchNorm absorbs the scale (TV6).
///
/// # Shapes
///
/// Any shape; the output has the shape of `x`.
pub fn input_pixels<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    x.mul_scalar(255.0).round()
}
