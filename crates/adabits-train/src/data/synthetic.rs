//! The built-in synthetic dataset: procedural, seeded, CIFAR-sized, no download.
//!
//! Each class is a sinusoidal grating of its own orientation and frequency (with 10 classes:
//! 5 orientations 36° apart × 2 frequencies), drawn at a low, random contrast inside a Gaussian
//! window at a random place, with a random phase, colour and jitter of its orientation and
//! frequency. Every image also holds a distractor grating of random orientation and frequency,
//! a random background colour and pixel noise. Telling the classes apart takes small contrast
//! differences, which coarse activation quantization blurs: at 2–3 bits a model loses accuracy
//! that it keeps at 8.

use std::f64::consts::PI;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::InMemoryImages;
use crate::Rng;

/// The synthetic dataset's parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Training images.
    pub train: usize,
    /// Validation images.
    pub val: usize,
    /// Classes (2 or more).
    pub classes: usize,
    /// Image side.
    pub side: usize,
    /// Seed of the data (independent of the training seed).
    pub seed: u64,
    /// Standard deviation of the pixel noise, in `[0, 1]` units.
    pub noise: f64,
    /// Largest contrast of the class grating (the smallest is a third of it).
    pub contrast: f64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            train: 5000,
            val: 1000,
            classes: 10,
            side: 32,
            seed: 0,
            noise: 0.06,
            contrast: 0.4,
        }
    }
}

/// One class's grating: orientation (radians) and frequency (cycles per pixel).
fn class_gratings(config: &SyntheticConfig) -> Vec<(f64, f64)> {
    let mut rng = Rng::stream(config.seed, &[0xc1a55]);
    (0..config.classes)
        .map(|c| {
            if config.classes <= 10 {
                let orientation = PI * (c % 5) as f64 / 5.0;
                let frequency = [0.11, 0.22][(c / 5) % 2];
                (orientation, frequency)
            } else {
                (rng.range(0.0, PI), rng.range(0.08, 0.3))
            }
        })
        .collect()
}

/// Generates the training and validation sets; the training set gets the CIFAR augmentation.
///
/// # Panics
///
/// Panics with fewer than 2 classes, more than 65,536, or a side below 8.
pub fn synthetic(config: &SyntheticConfig) -> (InMemoryImages, InMemoryImages) {
    assert!(
        (2..=65_536).contains(&config.classes),
        "synthetic data needs 2 to 65536 classes, got {}",
        config.classes
    );
    assert!(
        config.side >= 8,
        "synthetic images need a side of at least 8"
    );
    let gratings = class_gratings(config);
    let make = |split: u64, n: usize, padding: usize| {
        let s = config.side;
        let parts: Vec<(Vec<u8>, u16)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let mut rng = Rng::stream(config.seed, &[split, i as u64]);
                let label = i % config.classes;
                (draw(config, gratings[label], &mut rng), label as u16)
            })
            .collect();
        let mut images = Vec::with_capacity(n * 3 * s * s);
        let mut labels = Vec::with_capacity(n);
        for (image, label) in parts {
            images.extend(image);
            labels.push(label);
        }
        InMemoryImages::new(images, labels, config.classes, s, padding)
    };
    let padding = config.side / 8;
    (make(1, config.train, padding), make(2, config.val, 0))
}

/// Draws one image of the class with grating `(orientation, frequency)`.
fn draw(config: &SyntheticConfig, (orientation, frequency): (f64, f64), rng: &mut Rng) -> Vec<u8> {
    let s = config.side;
    let sf = s as f64;
    let background: [f64; 3] = std::array::from_fn(|_| rng.range(0.3, 0.7));
    // The class grating, jittered, in a Gaussian window.
    let theta = orientation + 0.06 * rng.normal();
    let freq = frequency * (1.0 + 0.05 * rng.normal());
    let phase = rng.range(0.0, 2.0 * PI);
    let contrast = rng.range(config.contrast / 3.0, config.contrast);
    let colour: [f64; 3] = std::array::from_fn(|_| rng.range(0.5, 1.0));
    let (cx, cy) = (rng.range(0.3, 0.7) * sf, rng.range(0.3, 0.7) * sf);
    let sigma = rng.range(0.2, 0.3) * sf;
    // The distractor: any orientation and frequency, everywhere.
    let d_theta = rng.range(0.0, PI);
    let d_freq = rng.range(0.06, 0.3);
    let d_phase = rng.range(0.0, 2.0 * PI);
    let d_contrast = rng.range(0.0, 0.8 * config.contrast);
    let d_colour: [f64; 3] = std::array::from_fn(|_| rng.range(0.0, 1.0));
    let (ct, st) = (theta.cos(), theta.sin());
    let (dct, dst) = (d_theta.cos(), d_theta.sin());
    let mut image = vec![0u8; 3 * s * s];
    for y in 0..s {
        for x in 0..s {
            let (xf, yf) = (x as f64, y as f64);
            let window = (-((xf - cx).powi(2) + (yf - cy).powi(2)) / (2.0 * sigma * sigma)).exp();
            let wave = (2.0 * PI * freq * (xf * ct + yf * st) + phase).sin() * window * contrast;
            let distractor =
                (2.0 * PI * d_freq * (xf * dct + yf * dst) + d_phase).sin() * d_contrast;
            for c in 0..3 {
                let v = background[c]
                    + wave * colour[c]
                    + distractor * d_colour[c]
                    + config.noise * rng.normal();
                image[(c * s + y) * s + x] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;

    #[test]
    fn the_same_seed_gives_the_same_images_and_another_seed_other_images() {
        let config = SyntheticConfig {
            train: 20,
            val: 10,
            ..SyntheticConfig::default()
        };
        let (a, va) = synthetic(&config);
        let (b, _) = synthetic(&config);
        assert_eq!(a.image(7), b.image(7));
        assert_eq!(a.len(), 20);
        assert_eq!(va.len(), 10);
        assert_eq!(a.labels()[..12], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]);
        let (c, _) = synthetic(&SyntheticConfig { seed: 1, ..config });
        assert_ne!(a.image(7), c.image(7));
        assert_ne!(a.image(7), va.image(7));
    }
}
