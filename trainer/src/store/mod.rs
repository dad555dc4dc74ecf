//! The run store: `CheckpointManager`, crash-safe writes, retention, listing.
