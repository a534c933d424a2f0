//! ImageNet-style image folders: one sub-folder per class, JPEG and PNG files.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, RgbImage};

use super::{DataError, Dataset, Sample};
use crate::Rng;

/// A folder of class sub-folders of images. Training samples get RandomResizedCrop(`crop`,
/// scale 0.08–1, ratio 3/4–4/3) and a horizontal flip; evaluation samples are resized so the
/// shorter side is `crop·256/224` and centre-cropped to `crop` (Resize(256), CenterCrop(224)).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    files: Vec<(PathBuf, usize)>,
    classes: Vec<String>,
    crop: usize,
}

impl ImageFolder {
    /// Lists `dir`: its sub-folders, sorted by name, are the classes; their `.jpg`, `.jpeg` and
    /// `.png` files (any case) the samples. `train` only documents which split this is.
    ///
    /// # Errors
    ///
    /// A [`DataError`] naming the folder when it cannot be read, has no class folder, or a class
    /// folder without images.
    pub fn open(dir: &Path, crop: usize, train: bool) -> Result<Self, DataError> {
        let _ = train;
        let read_dir = |d: &Path| -> Result<Vec<PathBuf>, DataError> {
            let mut entries = std::fs::read_dir(d)
                .map_err(|e| DataError::io(d, e))?
                .map(|e| e.map(|e| e.path()).map_err(|err| DataError::io(d, err)))
                .collect::<Result<Vec<_>, _>>()?;
            entries.sort();
            Ok(entries)
        };
        let class_dirs: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
        if class_dirs.is_empty() {
            return Err(DataError::invalid(
                dir,
                "one sub-folder per class",
                "no sub-folder",
            ));
        }
        let mut files = Vec::new();
        let mut classes = Vec::new();
        for (label, class_dir) in class_dirs.iter().enumerate() {
            let images: Vec<PathBuf> = read_dir(class_dir)?
                .into_iter()
                .filter(|p| {
                    p.is_file()
                        && p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                            matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png")
                        })
                })
                .collect();
            if images.is_empty() {
                return Err(DataError::invalid(
                    class_dir,
                    "at least one .jpg, .jpeg or .png image",
                    "none",
                ));
            }
            files.extend(images.into_iter().map(|p| (p, label)));
            classes.push(
                class_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            );
        }
        Ok(Self {
            files,
            classes,
            crop,
        })
    }

    /// The class names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    fn decode(&self, path: &Path) -> Result<RgbImage, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let image = image::load_from_memory(&bytes).map_err(|e| {
            DataError::invalid(path, "a readable JPEG or PNG image", format!("{e}"))
        })?;
        Ok(DynamicImage::to_rgb8(&image))
    }
}

/// torchvision's RandomResizedCrop box `(x, y, w, h)` for an image of `width`×`height`.
fn random_resized_box(width: u32, height: u32, rng: &mut Rng) -> (u32, u32, u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.range(0.08, 1.0);
        let ratio = rng.range(log_lo, log_hi).exp();
        let w = (target * ratio).sqrt().round() as u32;
        let h = (target / ratio).sqrt().round() as u32;
        if (1..=width).contains(&w) && (1..=height).contains(&h) {
            let x = rng.below((width - w + 1) as usize) as u32;
            let y = rng.below((height - h + 1) as usize) as u32;
            return (x, y, w, h);
        }
    }
    // Fallback: the centre crop of the whole image, its ratio clamped.
    let ratio = f64::from(width) / f64::from(height);
    let (w, h) = if ratio < 3.0 / 4.0 {
        (width, (f64::from(width) / (3.0 / 4.0)).round() as u32)
    } else if ratio > 4.0 / 3.0 {
        ((f64::from(height) * 4.0 / 3.0).round() as u32, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn num_classes(&self) -> usize {
        self.classes.len()
    }

    fn image_size(&self) -> usize {
        self.crop
    }

    fn sample(&self, index: usize, augment: Option<&mut Rng>) -> Result<Sample, DataError> {
        let (path, label) = &self.files[index];
        let image = self.decode(path)?;
        let crop = self.crop as u32;
        let out = match augment {
            Some(rng) => {
                let (x, y, w, h) = random_resized_box(image.width(), image.height(), rng);
                let cut = image::imageops::crop_imm(&image, x, y, w, h).to_image();
                let mut out = image::imageops::resize(&cut, crop, crop, FilterType::Triangle);
                if rng.coin() {
                    image::imageops::flip_horizontal_in_place(&mut out);
                }
                out
            }
            None => center_crop(&image, crop),
        };
        Ok(Sample {
            pixels: channels_first(&out),
            label: *label,
        })
    }
}

/// The validation transform: `image` resized so that its short side is `crop·256/224`, then
/// its center `crop`×`crop` (torchvision's Resize(256) and CenterCrop(224), scaled).
pub fn center_crop(image: &RgbImage, crop: u32) -> RgbImage {
    let short = (f64::from(crop) * 256.0 / 224.0).round() as u32;
    let (w, h) = (image.width(), image.height());
    let scale = f64::from(short) / f64::from(w.min(h));
    let (nw, nh) = (
        ((f64::from(w) * scale).round() as u32).max(crop),
        ((f64::from(h) * scale).round() as u32).max(crop),
    );
    let resized = image::imageops::resize(image, nw, nh, FilterType::Triangle);
    image::imageops::crop_imm(&resized, (nw - crop) / 2, (nh - crop) / 2, crop, crop).to_image()
}

/// An image's pixels as `[3][h][w]` values in `[0, 1]`.
pub fn channels_first(image: &RgbImage) -> Vec<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut pixels = vec![0.0f32; 3 * h * w];
    for (x, y, p) in image.enumerate_pixels() {
        for c in 0..3 {
            pixels[(c * h + y as usize) * w + x as usize] = f32::from(p[c]) / 255.0;
        }
    }
    pixels
}
