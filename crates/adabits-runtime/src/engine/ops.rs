//! The operations between the quantized layers: the input transform, the linear layer's sums,
//! pooling.

use rayon::prelude::*;

use super::RuntimeError;
use super::active::Active;
use super::quantize::round_even;
use crate::graph::LinearNode;

/// The `pixels` transform, `round(255·x)`, from `[batch][c][hw]` to channels-last.
pub(super) fn pixels(
    images: &[f32],
    batch: usize,
    c: usize,
    hw: usize,
) -> Result<Vec<f32>, RuntimeError> {
    if let Some(bad) = images.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        return Err(RuntimeError::Input(format!(
            "pixel values must lie in [0, 1], found {bad}"
        )));
    }
    let mut out = vec![0.0; images.len()];
    for b in 0..batch {
        for ch in 0..c {
            for p in 0..hw {
                // In [0, 255] (checked above), where `round_even` is `round_ties_even`.
                out[(b * hw + p) * c + ch] = round_even(images[(b * c + ch) * hw + p] * 255.0);
            }
        }
    }
    Ok(out)
}

/// A quantized linear layer on `[batch][in]` codes, with its numerators `m` (`[out][in]`).
pub(super) fn run_linear(
    node: &LinearNode,
    active: &Active,
    m: &[i32],
    codes: &[u8],
    batch: usize,
    split: usize,
) -> Vec<f32> {
    let [fi, fo] = node.features;
    let mut out = vec![0.0; batch * fo];
    out.par_chunks_mut(fo)
        .with_min_len(split)
        .enumerate()
        .for_each(|(b, out)| {
            let q = &codes[b * fi..(b + 1) * fi];
            for (o, slot) in out.iter_mut().enumerate() {
                let sum: i32 = q
                    .iter()
                    .zip(&m[o * fi..(o + 1) * fi])
                    .map(|(&q, &m)| i32::from(q) * m)
                    .sum();
                *slot = sum as f32 * active.mult[o] + active.add[o];
            }
        });
    out
}

/// Max pooling over channels-last maps, the padding never chosen.
#[allow(clippy::too_many_arguments)]
pub(super) fn max_pool(
    x: &[f32],
    batch: usize,
    c: usize,
    [h, w]: [usize; 2],
    [oh, ow]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> Vec<f32> {
    let mut out = vec![f32::NEG_INFINITY; batch * oh * ow * c];
    for b in 0..batch {
        for oy in 0..oh {
            for ox in 0..ow {
                let dst = &mut out[((b * oh + oy) * ow + ox) * c..][..c];
                for ky in 0..kernel[0] {
                    for kx in 0..kernel[1] {
                        let (Some(iy), Some(ix)) = (
                            (oy * stride[0] + ky).checked_sub(padding[0]),
                            (ox * stride[1] + kx).checked_sub(padding[1]),
                        ) else {
                            continue;
                        };
                        if iy >= h || ix >= w {
                            continue;
                        }
                        let src = &x[((b * h + iy) * w + ix) * c..][..c];
                        dst.iter_mut().zip(src).for_each(|(d, &s)| *d = d.max(s));
                    }
                }
            }
        }
    }
    out
}

/// The mean of every channel over its `hw` pixels: `[batch][hw][c]` to `[batch][c]`.
pub(super) fn global_avg_pool(x: &[f32], batch: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0; batch * c];
    for b in 0..batch {
        let dst = &mut out[b * c..(b + 1) * c];
        for p in 0..hw {
            let src = &x[(b * hw + p) * c..][..c];
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        }
        dst.iter_mut().for_each(|d| *d /= hw as f32);
    }
    out
}
