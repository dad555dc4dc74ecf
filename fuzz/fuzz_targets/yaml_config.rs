//! The YAML config file of `diffit train --config`: `TrainingConfig::from_yaml_str`, then
//! `validate`.
//!
//! Checked, beyond "no panic": a config that validates can be stored as a run stores it and
//! read back as `--resume` reads it, unchanged.

#![no_main]

use std::path::Path;

// Linked for its allocation cap (a `#[global_allocator]`), though nothing else is used here.
use diffit_fuzz as _;
use libfuzzer_sys::fuzz_target;
use trainer::train::config::TrainingConfig;

fuzz_target!(|data: &[u8]| {
    // from_yaml_file reads the file as UTF-8 text first, refusing anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = TrainingConfig::from_yaml_str(text, Path::new("fuzz.yaml")) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    let stored = cfg.to_stored();
    let back = TrainingConfig::from_stored(stored.clone()).unwrap_or_else(|e| {
        panic!("a valid YAML config does not read back once stored: {e}\n{stored}")
    });
    assert_eq!(
        back.to_stored(),
        stored,
        "the stored form changes on a second round"
    );
});
