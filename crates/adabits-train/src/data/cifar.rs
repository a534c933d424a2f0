//! CIFAR-10 and CIFAR-100, binary version (<https://www.cs.toronto.edu/~kriz/cifar.html>).
//!
//! CIFAR-10: `data_batch_1.bin` … `data_batch_5.bin` and `test_batch.bin`, records of one label
//! byte (0–9) and 3072 pixel bytes (1024 red, 1024 green, 1024 blue, row-major 32×32).
//! CIFAR-100: `train.bin` and `test.bin`, records of a coarse label byte, a fine label byte
//! (0–99, the one used) and the same 3072 pixel bytes.

use std::path::Path;

use rayon::prelude::*;

use super::{DataError, InMemoryImages};

const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes, 5 training files.
    Cifar10,
    /// 100 (fine) classes.
    Cifar100,
}

impl CifarKind {
    fn files(self) -> (Vec<&'static str>, &'static str) {
        match self {
            Self::Cifar10 => (
                vec![
                    "data_batch_1.bin",
                    "data_batch_2.bin",
                    "data_batch_3.bin",
                    "data_batch_4.bin",
                    "data_batch_5.bin",
                ],
                "test_batch.bin",
            ),
            Self::Cifar100 => (vec!["train.bin"], "test.bin"),
        }
    }

    /// Label bytes before the pixels, and which of them is the label.
    fn label_bytes(self) -> (usize, usize) {
        match self {
            Self::Cifar10 => (1, 0),
            Self::Cifar100 => (2, 1),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Cifar10 => "CIFAR-10",
            Self::Cifar100 => "CIFAR-100",
        }
    }

    fn classes(self) -> usize {
        match self {
            Self::Cifar10 => 10,
            Self::Cifar100 => 100,
        }
    }
}

/// Loads the training and test sets of CIFAR-`kind` from `dir`; training samples get
/// RandomCrop(32, padding 4) and a horizontal flip.
///
/// # Errors
///
/// A [`DataError`] naming the file that is missing, empty, of a size that is not a whole number
/// of records, or holding a label out of range.
pub fn load_cifar(
    dir: &Path,
    kind: CifarKind,
) -> Result<(InMemoryImages, InMemoryImages), DataError> {
    if !dir.is_dir() {
        return Err(DataError::invalid(
            dir,
            format!("a folder with the {} binary files", kind.name()),
            if dir.exists() {
                "a file".to_string()
            } else {
                "nothing (no such folder)".to_string()
            },
        ));
    }
    let (train_files, test_file) = kind.files();
    let read_all = |files: &[&str]| -> Result<InMemoryImages, DataError> {
        let parts = files
            .par_iter()
            .map(|name| read_file(&dir.join(name), kind))
            .collect::<Result<Vec<_>, _>>()?;
        let mut images = Vec::new();
        let mut labels = Vec::new();
        for (i, l) in parts {
            images.extend(i);
            labels.extend(l);
        }
        Ok(InMemoryImages::new(images, labels, kind.classes(), 32, 4))
    };
    let train = read_all(&train_files)?;
    let mut test = read_all(&[test_file])?;
    test.padding = 0;
    Ok((train, test))
}

fn read_file(path: &Path, kind: CifarKind) -> Result<(Vec<u8>, Vec<u16>), DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let (label_bytes, label_at) = kind.label_bytes();
    let record = label_bytes + PIXELS;
    if bytes.is_empty() || !bytes.len().is_multiple_of(record) {
        return Err(DataError::invalid(
            path,
            format!(
                "a whole number of {record}-byte records ({label_bytes} label byte(s) + {PIXELS} pixel bytes)"
            ),
            format!(
                "{} bytes ({} records and {} bytes over)",
                bytes.len(),
                bytes.len() / record,
                bytes.len() % record
            ),
        ));
    }
    let n = bytes.len() / record;
    let mut images = Vec::with_capacity(n * PIXELS);
    let mut labels = Vec::with_capacity(n);
    for (i, r) in bytes.chunks_exact(record).enumerate() {
        let label = r[label_at];
        if usize::from(label) >= kind.classes() {
            return Err(DataError::invalid(
                path,
                format!("labels 0..={} (record {i})", kind.classes() - 1),
                format!("label {label}"),
            ));
        }
        labels.push(u16::from(label));
        images.extend_from_slice(&r[label_bytes..]);
    }
    Ok((images, labels))
}
