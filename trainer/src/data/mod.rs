//! Training images: procedural trees (fine-tuning), a generic tree-free set (pretraining),
//! and a folder of the user's own images.
