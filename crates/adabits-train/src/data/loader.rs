//! The batch loader: shuffles per epoch, decodes and augments in parallel (rayon), and prepares
//! the next batches on a background thread while the device works on the current one.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use super::{DataError, Dataset};
use crate::Rng;

/// Batches prepared ahead of the one in use.
const PREFETCH: usize = 2;

/// One batch on the device.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, 3, side, side]` values in `[0, 1]`.
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
    /// The class indices, on the host.
    pub targets: Vec<usize>,
}

/// A batch on the host.
struct HostBatch {
    pixels: Vec<f32>,
    targets: Vec<usize>,
    side: usize,
}

/// Iterates a dataset in batches.
///
/// For training (`train = true`) the order is a permutation drawn from `(seed, epoch)`, each
/// sample's augmentation from `(seed, epoch, position)`, and the last incomplete batch is
/// dropped; evaluation goes in order, without augmentation, keeping every sample. The batches
/// of an epoch therefore depend only on the seed and the epoch, whatever the number of threads.
#[derive(Clone)]
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    train: bool,
    seed: u64,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("samples", &self.dataset.len())
            .field("batch_size", &self.batch_size)
            .field("train", &self.train)
            .finish()
    }
}

impl Loader {
    /// A loader of `dataset`.
    ///
    /// # Panics
    ///
    /// Panics if `batch_size` is zero.
    pub fn new(dataset: Arc<dyn Dataset>, batch_size: usize, train: bool, seed: u64) -> Self {
        assert!(batch_size > 0, "batch size must be positive");
        Self {
            dataset,
            batch_size,
            train,
            seed,
        }
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.len();
        if self.train {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    /// The sample indices of `epoch`, in order.
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if self.train {
            Rng::stream(self.seed, &[0x5eed, epoch as u64]).shuffle(&mut order);
        }
        order
    }

    /// The batches of `epoch` from batch `start` on, as tensors on `device`.
    pub fn epoch(
        &self,
        epoch: usize,
        start: usize,
        device: &Device,
    ) -> impl Iterator<Item = Result<Batch, DataError>> + use<> {
        let receiver = self.spawn(epoch, start);
        let device = device.clone();
        receiver.into_iter().map(move |host| {
            let host = host?;
            let n = host.targets.len();
            let s = host.side;
            let images =
                Tensor::<4>::from_data(TensorData::new(host.pixels, [n, 3, s, s]), &device);
            let labels: Vec<i64> = host.targets.iter().map(|&t| t as i64).collect();
            let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &device);
            Ok(Batch {
                images,
                labels,
                targets: host.targets,
            })
        })
    }

    fn spawn(&self, epoch: usize, start: usize) -> Receiver<Result<HostBatch, DataError>> {
        let (sender, receiver) = sync_channel(PREFETCH);
        let loader = self.clone();
        std::thread::spawn(move || {
            let order = loader.order(epoch);
            for b in start..loader.batches_per_epoch() {
                let lo = b * loader.batch_size;
                let hi = (lo + loader.batch_size).min(order.len());
                let batch = loader.host_batch(epoch, lo, &order[lo..hi]);
                let failed = batch.is_err();
                if sender.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        receiver
    }

    fn host_batch(
        &self,
        epoch: usize,
        first: usize,
        indices: &[usize],
    ) -> Result<HostBatch, DataError> {
        let samples = indices
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                if self.train {
                    let mut rng = Rng::stream(self.seed, &[epoch as u64, (first + k) as u64]);
                    self.dataset.sample(i, Some(&mut rng))
                } else {
                    self.dataset.sample(i, None)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let side = self.dataset.image_size();
        let mut pixels = Vec::with_capacity(samples.len() * 3 * side * side);
        let mut targets = Vec::with_capacity(samples.len());
        for s in samples {
            pixels.extend_from_slice(&s.pixels);
            targets.push(s.label);
        }
        Ok(HostBatch {
            pixels,
            targets,
            side,
        })
    }
}
