//! A plain-`f64` scalar reference of every formula in this crate, written for clarity, not speed.
//!
//! It is independent of Burn: loops over slices, `f64` arithmetic, explicit derivatives. The
//! property tests compare the tensor implementation with it, forward and backward, and the model
//! crate builds its layer tests from it.

use crate::{ActQuantConfig, BitWidth, QuantScheme, RescaleType, WeightQuantConfig};

/// `Q_b(u)` for one value (docs/method.md §2); `round` is half to even.
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn unit_quantize(u: f64, bits: BitWidth, scheme: QuantScheme) -> f64 {
    let levels = f64::from(bits.levels());
    let k = unit_code(u, bits, scheme) as f64;
    match scheme {
        QuantScheme::Original => k / (levels - 1.0),
        QuantScheme::Modified => k / levels,
        QuantScheme::Centered => (k + 0.5) / levels,
    }
}

/// The integer code of `Q_b(u)` for one value (`u` clamped to `[0, 1]`, as the tensor code does).
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn unit_code(u: f64, bits: BitWidth, scheme: QuantScheme) -> u32 {
    let levels = f64::from(bits.levels());
    let u = u.clamp(0.0, 1.0);
    let k = match scheme {
        QuantScheme::Original => ((levels - 1.0) * u).round_ties_even(),
        QuantScheme::Modified | QuantScheme::Centered => (levels * u).floor().min(levels - 1.0),
    };
    k as u32
}

/// The step between two adjacent levels of `Q_b`: `1/(2^b − 1)` (original) or `1/2^b`.
///
/// # Panics
///
/// Panics if `bits` is full precision.
pub fn unit_step(bits: BitWidth, scheme: QuantScheme) -> f64 {
    let levels = f64::from(bits.levels());
    match scheme {
        QuantScheme::Original => 1.0 / (levels - 1.0),
        QuantScheme::Modified | QuantScheme::Centered => 1.0 / levels,
    }
}

/// Every intermediate of the weight quantizer for a flat weight tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightReference {
    /// `tanh(W)`.
    pub tanh: Vec<f64>,
    /// `max|tanh(W)|`.
    pub max_abs: f64,
    /// `u = (t/M + 1)/2` (empty at full precision).
    pub unit: Vec<f64>,
    /// `ŵ`.
    pub w_hat: Vec<f64>,
    /// The SAT scale `s` (1 without rescaling).
    pub scale: f64,
    /// `s·ŵ`.
    pub w_eff: Vec<f64>,
}

/// The weight quantizer of docs/method.md §3 on a flat weight (any layout).
///
/// # Panics
///
/// Panics on an empty weight, and when rescaling fewer than two elements.
pub fn quantize_weight(
    w: &[f64],
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> WeightReference {
    quantize_weight_fans(w, bitw, [fan_out, 0], config)
}

/// [`quantize_weight`] with both fans, `[fan_out, fan_in]`, for [`RescaleType::FanIn`].
///
/// # Panics
///
/// As [`quantize_weight`], and when [`RescaleType::FanIn`] rescales with a fan-in of 0.
pub fn quantize_weight_fans(
    w: &[f64],
    bitw: BitWidth,
    [fan_out, fan_in]: [usize; 2],
    config: &WeightQuantConfig,
) -> WeightReference {
    assert!(!w.is_empty(), "empty weight");
    let tanh: Vec<f64> = w.iter().map(|x| x.tanh()).collect();
    let max_abs = tanh.iter().fold(0.0_f64, |m, t| m.max(t.abs()));
    let (unit, w_hat) = if bitw.is_full_precision() {
        let w_hat = if config.clamp {
            tanh.iter().map(|t| t / max_abs).collect()
        } else {
            w.to_vec()
        };
        (Vec::new(), w_hat)
    } else {
        let unit: Vec<f64> = tanh.iter().map(|t| (t / max_abs + 1.0) / 2.0).collect();
        let w_hat = unit
            .iter()
            .map(|&u| 2.0 * unit_quantize(u, bitw, config.scheme) - 1.0)
            .collect();
        (unit, w_hat)
    };
    let scale = if config.rescale {
        let c = match config.rescale_type {
            RescaleType::Constant => 1.0 / (fan_out as f64).sqrt(),
            RescaleType::Stddev => unbiased_std(w),
            RescaleType::FanIn => {
                assert!(fan_in > 0, "RescaleType::FanIn needs the fan-in");
                1.0 / (fan_in as f64).sqrt()
            }
        };
        c / unbiased_std(&w_hat)
    } else {
        1.0
    };
    let w_eff = w_hat.iter().map(|v| scale * v).collect();
    WeightReference {
        tanh,
        max_abs,
        unit,
        w_hat,
        scale,
        w_eff,
    }
}

/// `∂L/∂W` of the weight quantizer given `∂L/∂W_eff` (the scale `s` is a constant):
///
/// `∂L/∂W_ij = (1 − t_ij²)·[s·G_ij/M − 𝟙(ij ∈ argmax|t|)·sign(t_ij)·Σ_kl s·G_kl·t_kl / (M²·T)]`
///
/// with `T` the number of elements tied at the maximum (the gradient of the max is split evenly,
/// as PyTorch 2.x does; parity default P9). Without `clamp` at full precision it is `s·G`.
///
/// # Panics
///
/// Panics if `w` and `upstream` differ in length.
pub fn weight_gradient(
    w: &[f64],
    upstream: &[f64],
    bitw: BitWidth,
    fan_out: usize,
    config: &WeightQuantConfig,
) -> Vec<f64> {
    assert_eq!(
        w.len(),
        upstream.len(),
        "weight and gradient lengths differ"
    );
    let r = quantize_weight(w, bitw, fan_out, config);
    let s = r.scale;
    if bitw.is_full_precision() && !config.clamp {
        return upstream.iter().map(|g| s * g).collect();
    }
    let m = r.max_abs;
    let ties: Vec<usize> = (0..w.len()).filter(|&i| r.tanh[i].abs() == m).collect();
    let dot: f64 = upstream.iter().zip(&r.tanh).map(|(g, t)| s * g * t).sum();
    (0..w.len())
        .map(|i| {
            let t = r.tanh[i];
            let mut d = s * upstream[i] / m;
            if ties.contains(&i) {
                d -= t.signum() * dot / (m * m * ties.len() as f64);
            }
            (1.0 - t * t) * d
        })
        .collect()
}

/// PACT's output and derivatives for one element.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PactReference {
    /// `y`.
    pub y: f64,
    /// `∂y/∂x`.
    pub dy_dx: f64,
    /// `∂y/∂α_param` (including the `sign(α_param)` of the absolute value).
    pub dy_dalpha_param: f64,
}

/// PACT (docs/method.md §4) for one element `x` with the raw parameter `alpha_param`.
pub fn pact(x: f64, alpha_param: f64, bita: BitWidth, config: &ActQuantConfig) -> PactReference {
    if bita.is_full_precision() && !config.pact_fp {
        return PactReference {
            y: x,
            dy_dx: 1.0,
            dy_dalpha_param: 0.0,
        };
    }
    let alpha = alpha_param.abs();
    let sign = if alpha_param > 0.0 {
        1.0
    } else if alpha_param < 0.0 {
        -1.0
    } else {
        0.0
    };
    // c and its derivatives with respect to x and α.
    let (c, dc_dx, dc_dalpha) = if config.double_sided {
        if x <= -alpha {
            (-alpha, 0.0, -1.0)
        } else if x < alpha {
            (x, 1.0, 0.0)
        } else {
            (alpha, 0.0, 1.0)
        }
    } else if x <= 0.0 {
        (0.0, 0.0, 0.0)
    } else if x < alpha {
        (x, 1.0, 0.0)
    } else {
        (alpha, 0.0, 1.0)
    };
    if bita.is_full_precision() {
        return PactReference {
            y: c,
            dy_dx: dc_dx,
            dy_dalpha_param: sign * dc_dalpha,
        };
    }
    let v = c / alpha;
    // dv/dα = (dc/dα·α − c)/α², and Q has the identity (straight-through) derivative.
    let dv_dalpha = (dc_dalpha * alpha - c) / (alpha * alpha);
    let (z, dz_dv) = if config.double_sided {
        let u = (v + 1.0) / 2.0;
        (2.0 * unit_quantize(u, bita, config.scheme) - 1.0, 1.0)
    } else {
        (unit_quantize(v, bita, config.scheme), 1.0)
    };
    PactReference {
        y: alpha * z,
        dy_dx: alpha * dz_dv * dc_dx / alpha,
        dy_dalpha_param: sign * (z + alpha * dz_dv * dv_dalpha),
    }
}

/// The unbiased standard deviation of a slice.
///
/// # Panics
///
/// Panics with fewer than two elements.
pub fn unbiased_std(x: &[f64]) -> f64 {
    assert!(x.len() > 1, "an unbiased std needs at least two elements");
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    (x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bw(b: u8) -> BitWidth {
        BitWidth::new(b).unwrap()
    }

    #[test]
    fn ties_round_to_even() {
        assert_eq!(unit_quantize(0.5, bw(1), QuantScheme::Original), 0.0);
        assert_eq!(unit_quantize(0.5, bw(2), QuantScheme::Original), 2.0 / 3.0);
    }

    #[test]
    fn reference_pact_matches_tv3() {
        let config = ActQuantConfig::new();
        let xs = [-1.0, 0.3, 1.0, 1.9, 2.5];
        let r: Vec<PactReference> = xs.iter().map(|&x| pact(x, 2.0, bw(2), &config)).collect();
        let y: Vec<f64> = r.iter().map(|p| p.y).collect();
        assert_eq!(y, [0.0, 0.0, 4.0 / 3.0, 2.0, 2.0]);
        let da: f64 = r.iter().map(|p| p.dy_dalpha_param).sum();
        assert!((da - 16.0 / 15.0).abs() < 1e-12, "{da}");
    }

    #[test]
    fn reference_weight_gradient_matches_tv2b() {
        let config = WeightQuantConfig::new();
        let g = weight_gradient(&[0.5, -1.0, 0.1, 2.0], &[1.0; 4], bw(2), 2, &config);
        let expected = [0.9168731, 0.4896233, 1.1542600, 0.0170719];
        for (a, e) in g.iter().zip(expected) {
            assert!((a - e).abs() < 1e-6, "{g:?}");
        }
    }
}
