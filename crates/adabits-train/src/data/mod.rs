//! Datasets: CIFAR-10/100 in their binary formats, ImageNet-style image folders, and the built-in
//! synthetic set; augmentation; a parallel, prefetching batch loader.

mod cifar;
mod folder;
mod loader;
mod split;
mod synthetic;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use cifar::{CifarKind, load_cifar};
pub use folder::{ImageFolder, center_crop, channels_first};
pub use loader::{Batch, Loader};
pub use split::{Subset, hold_out};
pub use synthetic::{SyntheticConfig, synthetic};

use crate::Rng;

/// One image, decoded and transformed: `[3, side, side]` values in `[0, 1]`, and its class.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Channel-major pixel values in `[0, 1]`.
    pub pixels: Vec<f32>,
    /// The class, `0..num_classes`.
    pub label: usize,
}

/// A labelled image dataset.
pub trait Dataset: Send + Sync {
    /// The number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of classes.
    fn num_classes(&self) -> usize;

    /// The side of the (square) images [`sample`](Self::sample) returns.
    fn image_size(&self) -> usize;

    /// Sample `index`, with the training augmentation drawn from `augment` when given, or the
    /// evaluation transform otherwise.
    ///
    /// # Errors
    ///
    /// A [`DataError`] naming the file when the sample cannot be read.
    fn sample(&self, index: usize, augment: Option<&mut Rng>) -> Result<Sample, DataError>;
}

/// Why data could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file or folder does not hold what it should.
    #[error("{path}: expected {expected}, found {found}")]
    Invalid {
        /// The file or folder.
        path: PathBuf,
        /// What was expected.
        expected: String,
        /// What was found.
        found: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn invalid(
        path: impl Into<PathBuf>,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            path: path.into(),
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// A training set and a validation set.
pub type Splits = (Box<dyn Dataset>, Box<dyn Dataset>);

/// Which data a run uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DataSource {
    /// The built-in synthetic set (no download).
    Synthetic(SyntheticConfig),
    /// CIFAR-10 binary version (`data_batch_1.bin` … `test_batch.bin`) in `dir`.
    Cifar10 {
        /// The folder holding the `.bin` files.
        dir: PathBuf,
    },
    /// CIFAR-100 binary version (`train.bin`, `test.bin`) in `dir`, fine labels.
    Cifar100 {
        /// The folder holding the `.bin` files.
        dir: PathBuf,
    },
    /// An ImageNet-style folder: `dir/train/<class>/*` and `dir/val/<class>/*`.
    ImageFolder {
        /// The root with `train` and `val` sub-folders.
        dir: PathBuf,
        /// The training crop side (224 for ImageNet).
        #[serde(default = "default_crop")]
        crop: usize,
    },
}

fn default_crop() -> usize {
    224
}

impl DataSource {
    /// Opens the training and validation sets.
    ///
    /// # Errors
    ///
    /// A [`DataError`] naming the file or folder that is missing, unreadable or malformed.
    pub fn open(&self) -> Result<Splits, DataError> {
        if let Err((field, expected, found)) = self.validate() {
            return Err(DataError::invalid(
                PathBuf::from(format!("data.{field}")),
                expected,
                found,
            ));
        }
        Ok(match self {
            Self::Synthetic(config) => {
                let (train, val) = synthetic(config);
                (Box::new(train), Box::new(val))
            }
            Self::Cifar10 { dir } => {
                let (train, val) = load_cifar(dir, CifarKind::Cifar10)?;
                (Box::new(train), Box::new(val))
            }
            Self::Cifar100 { dir } => {
                let (train, val) = load_cifar(dir, CifarKind::Cifar100)?;
                (Box::new(train), Box::new(val))
            }
            Self::ImageFolder { dir, crop } => {
                let train = ImageFolder::open(&dir.join("train"), *crop, true)?;
                let val = ImageFolder::open(&dir.join("val"), *crop, false)?;
                if val.classes() != train.classes() {
                    return Err(DataError::invalid(
                        dir.join("val"),
                        format!("the class folders of {}", dir.join("train").display()),
                        format!("{} classes, not the same names", val.num_classes()),
                    ));
                }
                (Box::new(train), Box::new(val))
            }
        })
    }

    /// Checks the settings: `Err((field, expected, found))` names the first bad one.
    ///
    /// # Errors
    ///
    /// A synthetic set without samples, with fewer than 2 or more than 65,536 classes, images
    /// smaller than 8×8 or a noise or contrast that is negative or not finite; an image folder
    /// with a crop below 8.
    pub fn validate(&self) -> Result<(), (String, String, String)> {
        let bad = |field: &str, expected: &str, found: String| {
            Err((field.to_string(), expected.to_string(), found))
        };
        match self {
            Self::Synthetic(c) => {
                if c.train == 0 {
                    return bad("train", "at least 1 sample", "0".into());
                }
                if c.val == 0 {
                    return bad("val", "at least 1 sample", "0".into());
                }
                if !(2..=65_536).contains(&c.classes) {
                    return bad("classes", "2 to 65536", c.classes.to_string());
                }
                if c.side < 8 {
                    return bad("side", "at least 8 (pixels)", c.side.to_string());
                }
                for (field, v) in [("noise", c.noise), ("contrast", c.contrast)] {
                    if !(v.is_finite() && v >= 0.0) {
                        return bad(field, "a number of at least 0", v.to_string());
                    }
                }
            }
            Self::ImageFolder { crop, .. } if *crop < 8 => {
                return bad("crop", "at least 8 (pixels)", crop.to_string());
            }
            _ => {}
        }
        Ok(())
    }

    /// A short name for reports.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The data set without its settings.
    pub fn kind(&self) -> DatasetKind {
        match self {
            Self::Synthetic(_) => DatasetKind::Synthetic,
            Self::Cifar10 { .. } => DatasetKind::Cifar10,
            Self::Cifar100 { .. } => DatasetKind::Cifar100,
            Self::ImageFolder { .. } => DatasetKind::ImageFolder,
        }
    }

    /// The folder the data is read from (`None` for the synthetic set).
    pub fn dir_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            Self::Synthetic(_) => None,
            Self::Cifar10 { dir } | Self::Cifar100 { dir } | Self::ImageFolder { dir, .. } => {
                Some(dir)
            }
        }
    }
}

/// A [`DataSource`] without its settings: what a command line names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum DatasetKind {
    /// The built-in synthetic set (no download).
    Synthetic,
    /// CIFAR-10, binary version, in a folder.
    Cifar10,
    /// CIFAR-100, binary version, in a folder.
    Cifar100,
    /// An ImageNet-style folder with train/ and val/ class sub-folders.
    #[cfg_attr(feature = "clap", value(name = "imagefolder"))]
    ImageFolder,
}

impl DatasetKind {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Synthetic => "synthetic",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::ImageFolder => "imagefolder",
        }
    }

    /// The data set with its default settings, read from `dir`; `None` when a folder is
    /// needed and not given, or given to the synthetic set, which has none.
    pub fn source(self, dir: Option<PathBuf>) -> Option<DataSource> {
        match (self, dir) {
            (Self::Synthetic, None) => Some(DataSource::Synthetic(SyntheticConfig::default())),
            (Self::Synthetic, Some(_)) | (_, None) => None,
            (Self::Cifar10, Some(dir)) => Some(DataSource::Cifar10 { dir }),
            (Self::Cifar100, Some(dir)) => Some(DataSource::Cifar100 { dir }),
            (Self::ImageFolder, Some(dir)) => Some(DataSource::ImageFolder {
                dir,
                crop: default_crop(),
            }),
        }
    }
}

/// Images held in memory as bytes, `[n, 3, side, side]` channel-major, with the CIFAR training
/// augmentation (random crop with zero padding, horizontal flip) when asked for.
#[derive(Clone, Debug)]
pub struct InMemoryImages {
    images: Vec<u8>,
    labels: Vec<u16>,
    num_classes: usize,
    side: usize,
    padding: usize,
}

impl InMemoryImages {
    /// Wraps `images` (`labels.len()` images of `3·side·side` bytes each) and their labels;
    /// training samples are cropped back to `side` from the image padded with `padding` zeros
    /// on each side, and flipped with probability ½.
    ///
    /// # Panics
    ///
    /// Panics if the sizes disagree or a label is out of range.
    pub fn new(
        images: Vec<u8>,
        labels: Vec<u16>,
        num_classes: usize,
        side: usize,
        padding: usize,
    ) -> Self {
        assert_eq!(images.len(), labels.len() * 3 * side * side, "image bytes");
        assert!(
            labels.iter().all(|&l| usize::from(l) < num_classes),
            "labels"
        );
        Self {
            images,
            labels,
            num_classes,
            side,
            padding,
        }
    }

    /// The labels.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// The bytes of image `index`, `[3, side, side]`.
    pub fn image(&self, index: usize) -> &[u8] {
        let n = 3 * self.side * self.side;
        &self.images[index * n..(index + 1) * n]
    }
}

impl Dataset for InMemoryImages {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn image_size(&self) -> usize {
        self.side
    }

    fn sample(&self, index: usize, augment: Option<&mut Rng>) -> Result<Sample, DataError> {
        let s = self.side;
        let image = self.image(index);
        let (dy, dx, flip) = match augment {
            Some(rng) => {
                let range = 2 * self.padding + 1;
                let dy = rng.below(range) as isize - self.padding as isize;
                let dx = rng.below(range) as isize - self.padding as isize;
                (dy, dx, rng.coin())
            }
            None => (0, 0, false),
        };
        let mut pixels = vec![0.0f32; 3 * s * s];
        for c in 0..3 {
            for y in 0..s {
                let sy = y as isize + dy;
                if sy < 0 || sy >= s as isize {
                    continue;
                }
                for x in 0..s {
                    let xx = if flip { s - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    if sx < 0 || sx >= s as isize {
                        continue;
                    }
                    let v = image[(c * s + sy as usize) * s + sx as usize];
                    pixels[(c * s + y) * s + x] = f32::from(v) / 255.0;
                }
            }
        }
        Ok(Sample {
            pixels,
            label: usize::from(self.labels[index]),
        })
    }
}
