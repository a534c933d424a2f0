//! Data: CIFAR binaries, image folders, the loader, and the errors bad data gets.

use std::path::Path;
use std::sync::Arc;

use adabits_train::Rng;
use adabits_train::data::{
    CifarKind, DataError, DataSource, Dataset, ImageFolder, Loader, SyntheticConfig, load_cifar,
    synthetic,
};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("adabits-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `n` CIFAR records with labels `label(i)` and pixel bytes `(i + j) % 256`.
fn records(n: usize, label_bytes: &[u8], label: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend_from_slice(&label_bytes[..label_bytes.len() - 1]);
        bytes.push(label(i));
        bytes.extend((0..3072).map(|j| ((i + j) % 256) as u8));
    }
    bytes
}

fn write_cifar10(dir: &Path) {
    for k in 1..=5 {
        let bytes = records(3, &[0], |i| ((k + i) % 10) as u8);
        std::fs::write(dir.join(format!("data_batch_{k}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), records(2, &[0], |i| i as u8)).unwrap();
}

#[test]
fn cifar10_reads_every_record_with_its_label_and_pixels() {
    let dir = temp_dir("cifar10");
    write_cifar10(&dir);
    let (train, test) = load_cifar(&dir, CifarKind::Cifar10).unwrap();
    assert_eq!((train.len(), test.len(), train.num_classes()), (15, 2, 10));
    assert_eq!(train.labels()[..4], [1, 2, 3, 2]);
    let sample = test.sample(1, None).unwrap();
    assert_eq!(sample.label, 1);
    assert_eq!(sample.pixels.len(), 3072);
    assert_eq!(sample.pixels[5], 6.0 / 255.0);
    // Augmented samples are the same image moved by at most 4 pixels, maybe flipped.
    let mut rng = Rng::new(3);
    let augmented = train.sample(0, Some(&mut rng)).unwrap();
    assert_eq!(augmented.label, 1);
    assert_ne!(augmented.pixels, train.sample(0, None).unwrap().pixels);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = temp_dir("cifar100");
    std::fs::write(
        dir.join("train.bin"),
        records(4, &[7, 0], |i| (90 + i) as u8),
    )
    .unwrap();
    std::fs::write(dir.join("test.bin"), records(1, &[7, 0], |_| 99)).unwrap();
    let (train, test) = load_cifar(&dir, CifarKind::Cifar100).unwrap();
    assert_eq!(train.labels(), [90, 91, 92, 93]);
    assert_eq!((test.labels(), train.num_classes()), (&[99u16][..], 100));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_cifar_files_are_named_errors() {
    let dir = temp_dir("cifar-bad");
    write_cifar10(&dir);
    // Truncated.
    let path = dir.join("data_batch_3.bin");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let err = load_cifar(&dir, CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin")
            && err.contains("3073-byte records")
            && err.contains("9209 bytes"),
        "{err}"
    );
    // A label out of range.
    std::fs::write(&path, records(2, &[0], |i| if i == 1 { 12 } else { 0 })).unwrap();
    let err = load_cifar(&dir, CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin") && err.contains("found label 12"),
        "{err}"
    );
    // Empty.
    std::fs::write(&path, b"").unwrap();
    let err = load_cifar(&dir, CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data_batch_3.bin") && err.contains("found 0 bytes"),
        "{err}"
    );
    // Missing.
    std::fs::remove_file(&path).unwrap();
    let err = load_cifar(&dir, CifarKind::Cifar10).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }), "{err}");
    assert!(err.to_string().contains("data_batch_3.bin"), "{err}");
    // Not a folder.
    let err = load_cifar(&dir.join("nowhere"), CifarKind::Cifar10)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nowhere") && err.contains("no such folder"),
        "{err}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn write_png(path: &Path, width: u32, height: u32, shade: u8) {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 5) as u8, (y * 7) as u8])
    });
    image.save(path).unwrap();
}

#[test]
fn an_image_folder_lists_classes_and_crops_to_the_requested_size() {
    let dir = temp_dir("folder");
    for split in ["train", "val"] {
        for (class, shade) in [("cat", 10), ("dog", 200)] {
            let d = dir.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            write_png(&d.join("a.png"), 40, 30, shade);
            write_png(&d.join("b.PNG"), 30, 50, shade);
        }
    }
    std::fs::write(dir.join("train/cat/notes.txt"), "not an image").unwrap();
    let source = DataSource::ImageFolder {
        dir: dir.clone(),
        crop: 16,
    };
    let (train, val) = source.open().unwrap();
    assert_eq!((train.len(), val.len(), train.num_classes()), (4, 4, 2));
    let eval = val.sample(3, None).unwrap();
    assert_eq!((eval.label, eval.pixels.len()), (1, 3 * 16 * 16));
    // The red channel is the class's shade everywhere.
    assert!(
        eval.pixels[..256]
            .iter()
            .all(|&v| (v - 200.0 / 255.0).abs() < 1e-6)
    );
    let mut rng = Rng::new(1);
    let augmented = train.sample(0, Some(&mut rng)).unwrap();
    assert_eq!((augmented.label, augmented.pixels.len()), (0, 3 * 16 * 16));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_image_folders_are_named_errors() {
    let dir = temp_dir("folder-bad");
    let err = ImageFolder::open(&dir, 16, true).unwrap_err().to_string();
    assert!(
        err.contains("one sub-folder per class") && err.contains("no sub-folder"),
        "{err}"
    );
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let err = ImageFolder::open(&dir, 16, true).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains("at least one .jpg"),
        "{err}"
    );
    std::fs::write(dir.join("empty/broken.jpg"), b"not a jpeg").unwrap();
    let folder = ImageFolder::open(&dir, 16, true).unwrap();
    let err = folder.sample(0, None).unwrap_err().to_string();
    assert!(
        err.contains("broken.jpg") && err.contains("a readable JPEG or PNG image"),
        "{err}"
    );
    let err = ImageFolder::open(&dir.join("absent"), 16, true).unwrap_err();
    assert!(matches!(err, DataError::Io { .. }) && err.to_string().contains("absent"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_loader_is_deterministic_per_epoch_and_drops_the_last_training_batch() {
    let config = SyntheticConfig {
        train: 50,
        val: 30,
        side: 8,
        ..SyntheticConfig::default()
    };
    let (train, val) = synthetic(&config);
    let device = crate::device();
    let loader = Loader::new(Arc::new(train), 16, true, 7);
    assert_eq!(loader.batches_per_epoch(), 3);
    let read = |epoch, start| -> Vec<(Vec<f32>, Vec<usize>)> {
        loader
            .epoch(epoch, start, &device)
            .map(|b| {
                let b = b.unwrap();
                assert_eq!(b.images.dims(), [16, 3, 8, 8]);
                (b.images.into_data().iter::<f32>().collect(), b.targets)
            })
            .collect()
    };
    let first = read(0, 0);
    assert_eq!(first.len(), 3);
    assert_eq!(first, read(0, 0));
    assert_eq!(first[1..], read(0, 1)[..]);
    assert_ne!(first[0].1, read(1, 0)[0].1);
    let eval = Loader::new(Arc::new(val), 16, false, 7);
    let sizes: Vec<usize> = eval
        .epoch(0, 0, &device)
        .map(|b| b.unwrap().targets.len())
        .collect();
    assert_eq!(sizes, [16, 14]);
}
