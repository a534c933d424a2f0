//! A validation split held out from a training set, so that the best checkpoint is not chosen
//! on the test set.

use std::sync::Arc;

use super::{DataError, Dataset, Sample};
use crate::Rng;

/// The seed of the split's permutation: fixed, so that every run on the same training set
/// (any seed, any strategy) holds out the same images and their selections compare.
const SPLIT_SEED: u64 = 0x7661_6c5f_7370_6c74;

/// Some samples of another dataset, in a given order.
#[derive(Clone)]
pub struct Subset {
    inner: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl std::fmt::Debug for Subset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subset")
            .field("len", &self.indices.len())
            .field("of", &self.inner.len())
            .finish()
    }
}

impl Subset {
    /// The samples `indices` of `inner`.
    ///
    /// # Panics
    ///
    /// Panics if an index is out of range.
    pub fn new(inner: Arc<dyn Dataset>, indices: Vec<usize>) -> Self {
        assert!(indices.iter().all(|&i| i < inner.len()), "subset index");
        Self { inner, indices }
    }

    /// The indices into the whole set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }

    fn num_classes(&self) -> usize {
        self.inner.num_classes()
    }

    fn image_size(&self) -> usize {
        self.inner.image_size()
    }

    fn sample(&self, index: usize, augment: Option<&mut Rng>) -> Result<Sample, DataError> {
        self.inner.sample(self.indices[index], augment)
    }
}

/// Splits `train` into what a run trains on and `held_out` samples it validates on: a fixed
/// random choice (the same for every run on a set of this size), each part in the set's
/// order. The held-out samples are read with the evaluation transform, as a validation set
/// is.
///
/// # Panics
///
/// Panics if `held_out` is not below the set's size.
pub fn hold_out(train: Arc<dyn Dataset>, held_out: usize) -> (Subset, Subset) {
    let n = train.len();
    assert!(held_out < n, "hold out {held_out} of {n}");
    let mut order: Vec<usize> = (0..n).collect();
    Rng::stream(SPLIT_SEED, &[n as u64]).shuffle(&mut order);
    let mut held = order[..held_out].to_vec();
    let mut rest = order[held_out..].to_vec();
    held.sort_unstable();
    rest.sort_unstable();
    (Subset::new(train.clone(), rest), Subset::new(train, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticConfig, synthetic};

    #[test]
    fn the_held_out_part_is_disjoint_fixed_and_reads_the_same_samples() {
        let config = SyntheticConfig {
            train: 300,
            val: 10,
            ..SyntheticConfig::default()
        };
        let set: Arc<dyn Dataset> = Arc::new(synthetic(&config).0);
        let (rest, held) = hold_out(set.clone(), 50);
        assert_eq!((rest.len(), held.len()), (250, 50));
        let mut all: Vec<usize> = rest
            .indices()
            .iter()
            .chain(held.indices())
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..300).collect::<Vec<_>>());
        // Not simply the first or last images.
        assert_ne!(held.indices(), &(0..50).collect::<Vec<_>>()[..]);
        assert_ne!(held.indices(), &(250..300).collect::<Vec<_>>()[..]);
        // The same split every time.
        assert_eq!(hold_out(set.clone(), 50).1.indices(), held.indices());
        let i = held.indices()[7];
        assert_eq!(held.sample(7, None).unwrap(), set.sample(i, None).unwrap());
        assert_eq!(held.num_classes(), set.num_classes());
    }
}
