//! What `adabits predict` classifies: image files or folders (PNG, JPEG), CIFAR binary files and
//! `.npy` float32 arrays, each turned into `[3, side, side]` pixels in `[0, 1]`.

use std::path::{Path, PathBuf};

use adabits_train::data::{center_crop, channels_first};

/// One image to classify.
#[derive(Debug)]
pub(super) struct Input {
    /// Where it came from: a file, or a file and an index.
    pub(super) name: String,
    /// `[3][side][side]`, values in `[0, 1]`.
    pub(super) pixels: Vec<f32>,
    /// Its label, where the file holds one (CIFAR).
    pub(super) label: Option<usize>,
}

/// Every image of `paths`, at `side`×`side` with `channels` channels.
///
/// # Errors
///
/// A one-line message naming the file and what is wrong with it.
pub(super) fn read(paths: &[PathBuf], side: usize, channels: usize) -> anyhow::Result<Vec<Input>> {
    anyhow::ensure!(
        channels == 3,
        "the artifact's model takes {channels} input channels; predict reads RGB images (3)"
    );
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| is_image(p))
                .collect();
            files.sort();
            anyhow::ensure!(
                !files.is_empty(),
                "{}: no PNG or JPEG files in this folder",
                path.display()
            );
            for file in files {
                out.push(image_file(&file, side)?);
            }
        } else if is_image(path) {
            out.push(image_file(path, side)?);
        } else if has_extension(path, &["npy"]) {
            out.extend(npy(path, side)?);
        } else if has_extension(path, &["bin"]) {
            out.extend(cifar(path, side)?);
        } else if !path.exists() {
            anyhow::bail!("{}: no such file or folder", path.display());
        } else {
            anyhow::bail!(
                "{}: expected a PNG or JPEG image, a folder of them, a CIFAR binary file (.bin) or a .npy array",
                path.display()
            );
        }
    }
    Ok(out)
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn is_image(path: &Path) -> bool {
    path.is_file() && has_extension(path, &["png", "jpg", "jpeg"])
}

/// An image file: as it is at `side`×`side`, else resized so that its short side is
/// `side·256/224` and center-cropped (the ImageNet validation transform).
fn image_file(path: &Path, side: usize) -> anyhow::Result<Input> {
    let image = image::open(path)
        .map_err(|e| anyhow::anyhow!("{}: not a readable image: {e}", path.display()))?
        .to_rgb8();
    let crop = side as u32;
    let image = if image.width() == crop && image.height() == crop {
        image
    } else {
        center_crop(&image, crop)
    };
    let pixels = channels_first(&image);
    Ok(Input {
        name: path.display().to_string(),
        pixels,
        label: None,
    })
}

/// A CIFAR binary file: CIFAR-10 records (a label byte, 3072 pixel bytes) or CIFAR-100 ones (a
/// coarse and a fine label byte, then the pixels), told apart by the file's length.
fn cifar(path: &Path, side: usize) -> anyhow::Result<Vec<Input>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    const PIXELS: usize = 3 * 32 * 32;
    let (record, label_at) = if !bytes.is_empty() && bytes.len() % (PIXELS + 1) == 0 {
        (PIXELS + 1, 0)
    } else if !bytes.is_empty() && bytes.len() % (PIXELS + 2) == 0 {
        (PIXELS + 2, 1)
    } else {
        anyhow::bail!(
            "{}: not a CIFAR binary file: expected records of 3073 (CIFAR-10) or 3074 (CIFAR-100) bytes, found {} bytes",
            path.display(),
            bytes.len()
        );
    };
    anyhow::ensure!(
        side == 32,
        "{}: CIFAR images are 32×32, the artifact's model takes {side}×{side}",
        path.display()
    );
    Ok(bytes
        .chunks_exact(record)
        .enumerate()
        .map(|(i, r)| Input {
            name: format!("{}#{i}", path.display()),
            label: Some(usize::from(r[label_at])),
            pixels: r[record - PIXELS..]
                .iter()
                .map(|&b| f32::from(b) / 255.0)
                .collect(),
        })
        .collect())
}

/// A `.npy` file holding a little-endian `float32` C-order array `[N, 3, side, side]`.
fn npy(path: &Path, side: usize) -> anyhow::Result<Vec<Input>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let bad =
        |what: String| anyhow::anyhow!("{}: not a readable .npy array: {what}", path.display());
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(bad(format!("format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("a truncated header".into()))?;
    let field = |key: &str| {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest.to_string())
    };
    let descr = field("descr").unwrap_or_default();
    if !descr.starts_with("'<f4'") {
        anyhow::bail!(
            "{}: the array's dtype: expected little-endian float32 ('<f4'), found {}",
            path.display(),
            descr.split(',').next().unwrap_or("nothing")
        );
    }
    if field("fortran_order").is_some_and(|f| f.starts_with("True")) {
        anyhow::bail!(
            "{}: the array is in Fortran order; save it in C order",
            path.display()
        );
    }
    let shape_text = field("shape").ok_or_else(|| bad("no shape".into()))?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad(format!("the shape {shape_text}")))?;
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| bad(format!("the shape ({inner})")))?;
    let [n, c, h, w] = shape[..] else {
        anyhow::bail!(
            "{}: the array's shape: expected [N, 3, {side}, {side}], found {shape:?}",
            path.display()
        );
    };
    anyhow::ensure!(
        c == 3 && h == side && w == side,
        "{}: the array's shape: expected [N, 3, {side}, {side}], found [{n}, {c}, {h}, {w}]",
        path.display()
    );
    let data = &bytes[start + header_len..];
    let per = 3 * side * side;
    anyhow::ensure!(
        data.len() == n * per * 4,
        "{}: the array holds {} bytes of data, its shape needs {}",
        path.display(),
        data.len(),
        n * per * 4
    );
    let values: Vec<f32> = data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
        anyhow::bail!(
            "{}: pixel values must lie in [0, 1], found {v}",
            path.display()
        );
    }
    Ok(values
        .chunks_exact(per)
        .enumerate()
        .map(|(i, p)| Input {
            name: format!("{}#{i}", path.display()),
            pixels: p.to_vec(),
            label: None,
        })
        .collect())
}
