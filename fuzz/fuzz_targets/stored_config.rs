//! A run's `config.json` as `diffit train --resume` reads it: any JSON, its `training` section
//! (or the whole value, as older runs wrote it) through `TrainingConfig::from_stored`, then
//! `validate`.
//!
//! Checked, beyond "no panic": a config that validates is stored and read back unchanged (a
//! resumed run stores its config again and may be resumed once more).

#![no_main]

// Linked for its allocation cap (a `#[global_allocator]`), though nothing else is used here.
use diffit_fuzz as _;
use libfuzzer_sys::fuzz_target;
use trainer::train::config::TrainingConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(saved) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let section = saved.get("training").cloned().unwrap_or(saved);
    let Ok(cfg) = TrainingConfig::from_stored(section) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    let stored = cfg.to_stored();
    let back = TrainingConfig::from_stored(stored.clone()).unwrap_or_else(|e| {
        panic!("a valid config does not read back from its stored form: {e}\n{stored}")
    });
    assert_eq!(
        back.to_stored(),
        stored,
        "the stored form changes on a second round"
    );
    if let Err(e) = back.validate() {
        panic!("a valid config is invalid once stored and read back: {e}\n{stored}");
    }
});
