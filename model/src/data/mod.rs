//! Training images: procedural trees (fine-tuning), a generic tree-free set (pretraining),
//! and a folder of the user's own images; optionally with class labels (the trees' species,
//! a folder's subfolders).
//!
//! Every image is CHW RGB `f32` in `[-1, 1]`. The procedural sets are pure functions of
//! `(seed, index, size)` and identical on every platform.

mod augment;
mod canvas;
mod generic;
mod scenery;
mod trees;

use candle_core::{Device, Tensor};
use thiserror::Error;

pub use augment::Augmentation;
pub use generic::generic_image;
pub use trees::{labeled_tree_image, tree_image, TREE_SPECIES};

use crate::rng::Rng;

/// Errors building datasets and batches.
#[derive(Debug, Error)]
pub enum DataError {
    /// Reading a file or directory failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A folder held no usable image.
    #[error("no readable PNG/JPEG images in {path}{detail}")]
    EmptyFolder {
        /// The folder.
        path: String,
        /// What was skipped, if anything.
        detail: String,
    },
    /// A batch asked for an image that does not exist.
    #[error("image index {index} out of range (dataset has {len})")]
    IndexOutOfRange {
        /// The requested index.
        index: usize,
        /// The dataset size.
        len: usize,
    },
    /// Image data of the wrong length.
    #[error("image {index} has {found} values, expected {expected}")]
    BadImage {
        /// Position in the dataset.
        index: usize,
        /// Values expected (`C·H·W`).
        expected: usize,
        /// Values found.
        found: usize,
    },
    /// A data file that is not what its format says it is (a truncated CIFAR batch, a label
    /// out of range), or a data source that cannot be used as asked.
    #[error("{path}: {reason}")]
    BadFile {
        /// The file or directory.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Class labels that do not fit the images or the class list.
    #[error("bad labels: {0}")]
    BadLabels(String),
    /// Building a tensor failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `n` square images of `channels × size × size` values in `[-1, 1]`, each with a class
/// label when the set is labelled.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    images: Vec<Vec<f32>>,
    channels: usize,
    size: usize,
    skipped: Vec<String>,
    /// One label per image (an index into `classes`), or `None` for an unlabelled set.
    labels: Option<Vec<u32>>,
    /// The class names, in label order (empty for an unlabelled set).
    classes: Vec<String>,
}

impl Dataset {
    /// A dataset of given CHW images; each must hold `channels · size²` values.
    pub fn new(images: Vec<Vec<f32>>, channels: usize, size: usize) -> Result<Self, DataError> {
        let expected = channels * size * size;
        if let Some((index, img)) = images.iter().enumerate().find(|(_, i)| i.len() != expected) {
            return Err(DataError::BadImage {
                index,
                expected,
                found: img.len(),
            });
        }
        Ok(Self {
            images,
            channels,
            size,
            skipped: Vec::new(),
            labels: None,
            classes: Vec::new(),
        })
    }

    /// `n` procedural tree images (set `seed`), labelled with the species of their main tree
    /// ([`TREE_SPECIES`]).
    pub fn trees(n: usize, size: usize, seed: u64) -> Self {
        let (images, labels) = (0..n as u64)
            .map(|i| trees::labeled_tree_image(seed, i, size))
            .unzip();
        Self {
            images,
            channels: 3,
            size,
            skipped: Vec::new(),
            labels: Some(labels),
            classes: TREE_SPECIES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// This set labelled: `labels[i]` is image `i`'s class, an index into `classes`.
    pub fn with_labels(
        mut self,
        labels: Vec<u32>,
        classes: Vec<String>,
    ) -> Result<Self, DataError> {
        if labels.len() != self.images.len() {
            return Err(DataError::BadLabels(format!(
                "{} labels for {} images",
                labels.len(),
                self.images.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes.len())
        {
            return Err(DataError::BadLabels(format!(
                "image {i} has label {l}, but there are {} classes",
                classes.len()
            )));
        }
        self.labels = Some(labels);
        self.classes = classes;
        Ok(self)
    }

    /// This set without its labels (for a model that has no label embedder).
    pub fn without_labels(mut self) -> Self {
        self.labels = None;
        self.classes.clear();
        self
    }

    /// One class label per image, if the set is labelled.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// The class names in label order (empty for an unlabelled set).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The labels of the images at `indices`, if the set is labelled.
    pub fn batch_labels(&self, indices: &[usize]) -> Result<Option<Vec<u32>>, DataError> {
        let Some(labels) = &self.labels else {
            return Ok(None);
        };
        indices
            .iter()
            .map(|&i| {
                labels.get(i).copied().ok_or(DataError::IndexOutOfRange {
                    index: i,
                    len: labels.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// `n` generic, tree-free images (set `seed`).
    pub fn generic(n: usize, size: usize, seed: u64) -> Self {
        let images = (0..n as u64)
            .map(|i| generic_image(seed, i, size))
            .collect();
        Self {
            images,
            channels: 3,
            size,
            skipped: Vec::new(),
            labels: None,
            classes: Vec::new(),
        }
    }

    /// The images already skipped while loading (one warning each), kept with the dataset.
    pub fn with_skipped(mut self, skipped: Vec<String>) -> Self {
        self.skipped = skipped;
        self
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Image side in pixels.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Channels per image.
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Image `i` as CHW values.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        self.images.get(i).map(Vec::as_slice)
    }

    /// Warnings for files skipped while loading a folder (`path: reason`).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Splits into `(train, validation)`: a seeded shuffle, then the first
    /// `round(len · val_fraction)` images (at least one when the fraction is positive and
    /// at least two images exist; never all of them) go to validation. Each part keeps the
    /// original order.
    pub fn split(&self, val_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        let n = self.len();
        let mut order: Vec<usize> = (0..n).collect();
        Rng::new(seed).shuffle(&mut order);
        let mut n_val = (n as f64 * val_fraction.clamp(0.0, 1.0)).round() as usize;
        if val_fraction > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        }
        let n_val = n_val.min(n);
        let mut val_idx = order[..n_val].to_vec();
        let mut train_idx = order[n_val..].to_vec();
        val_idx.sort_unstable();
        train_idx.sort_unstable();
        let pick = |idx: &[usize]| Dataset {
            images: idx.iter().map(|&i| self.images[i].clone()).collect(),
            channels: self.channels,
            size: self.size,
            skipped: Vec::new(),
            labels: self
                .labels
                .as_ref()
                .map(|labels| idx.iter().map(|&i| labels[i]).collect()),
            classes: self.classes.clone(),
        };
        (pick(&train_idx), pick(&val_idx))
    }

    /// The images at `indices` stacked into a `[B, C, H, W]` tensor.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<Tensor, DataError> {
        self.augmented_batch(indices, device, &Augmentation::NONE, 0, 0)
    }

    /// [`batch`](Self::batch) with each image varied as `augmentation` varies image `i` of
    /// `epoch` in a run seeded `seed` (a function of those three only).
    pub fn augmented_batch(
        &self,
        indices: &[usize],
        device: &Device,
        augmentation: &Augmentation,
        seed: u64,
        epoch: u32,
    ) -> Result<Tensor, DataError> {
        let mut data = Vec::with_capacity(indices.len() * self.channels * self.size * self.size);
        for &i in indices {
            let img = self.images.get(i).ok_or(DataError::IndexOutOfRange {
                index: i,
                len: self.len(),
            })?;
            if augmentation.is_off() {
                data.extend_from_slice(img);
            } else {
                data.extend(augmentation.apply(img, self.channels, self.size, seed, epoch, i));
            }
        }
        Ok(Tensor::from_vec(
            data,
            (indices.len(), self.channels, self.size, self.size),
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_disjoint_and_complete() {
        let ds = Dataset::generic(20, 8, 1);
        let (tr, va) = ds.split(0.2, 5);
        assert_eq!((tr.len(), va.len()), (16, 4));
        assert_eq!(ds.split(0.2, 5), (tr.clone(), va.clone()));
        let mut all: Vec<&[f32]> = (0..tr.len()).map(|i| tr.image(i).unwrap()).collect();
        all.extend((0..va.len()).map(|i| va.image(i).unwrap()));
        for i in 0..ds.len() {
            assert!(all.contains(&ds.image(i).unwrap()));
        }
        assert_ne!(ds.split(0.2, 6).1, va);
        assert_eq!(Dataset::generic(3, 8, 1).split(0.01, 0).1.len(), 1);
        assert_eq!(Dataset::generic(3, 8, 1).split(0.0, 0).1.len(), 0);
    }

    #[test]
    fn batch_stacks_and_checks_indices() {
        let ds = Dataset::trees(3, 8, 2);
        let b = ds.batch(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(b.dims(), &[2, 3, 8, 8]);
        let first: Vec<f32> = b.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(first.as_slice(), ds.image(2).unwrap());
        assert!(matches!(
            ds.batch(&[3], &Device::Cpu),
            Err(DataError::IndexOutOfRange { index: 3, .. })
        ));
    }

    #[test]
    fn trees_are_labelled_by_species_and_labels_follow_the_split() {
        let ds = Dataset::trees(40, 8, 3);
        assert_eq!(ds.classes().len(), TREE_SPECIES.len());
        let labels = ds.labels().unwrap().to_vec();
        assert_eq!(labels.len(), 40);
        assert!(labels.iter().all(|&l| (l as usize) < TREE_SPECIES.len()));
        // Several species occur, and the image is the one `tree_image` draws.
        let mut seen = labels.clone();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 3, "{seen:?}");
        assert_eq!(ds.image(5).unwrap(), tree_image(3, 5, 8).as_slice());
        let (tr, va) = ds.split(0.25, 1);
        for part in [&tr, &va] {
            for i in 0..part.len() {
                let j = (0..ds.len())
                    .find(|&j| ds.image(j) == part.image(i))
                    .unwrap();
                assert_eq!(part.labels().unwrap()[i], labels[j]);
            }
        }
        assert_eq!(tr.batch_labels(&[1, 0]).unwrap().unwrap().len(), 2);
        assert_eq!(Dataset::generic(3, 8, 1).batch_labels(&[0]).unwrap(), None);
        assert!(Dataset::generic(2, 8, 1)
            .with_labels(vec![0, 2], vec!["a".into(), "b".into()])
            .is_err());
        assert!(Dataset::generic(2, 8, 1)
            .with_labels(vec![0], vec!["a".into()])
            .is_err());
    }

    #[test]
    fn new_rejects_wrong_lengths() {
        assert!(matches!(
            Dataset::new(vec![vec![0.0; 5]], 3, 2),
            Err(DataError::BadImage { index: 0, .. })
        ));
    }
}
