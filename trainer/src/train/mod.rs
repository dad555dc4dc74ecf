//! Training: the `Trainer` loop with callbacks, AdamW, LR scheduler, TensorBoard logs.
