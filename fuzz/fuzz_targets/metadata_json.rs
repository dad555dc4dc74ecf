//! A run's `metadata.json`: the schema (`format::metadata::Metadata`, which the server parses
//! too) and the store's reader (`store::read_metadata`, which opens runs for training, resuming
//! and verifying).
//!
//! Checked, beyond "no panic": what parses can be written back and read again (the store
//! rewrites metadata.json on every commit), and both readers agree.

#![no_main]

use format::metadata::Metadata;
use format::RunLayout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parsed = serde_json::from_slice::<Metadata>(data);
    if let Ok(meta) = &parsed {
        let _ = meta.live_checkpoints().count();
        let _ = meta.last_epoch();
        let _ = meta.metric_series();
        let written = serde_json::to_vec_pretty(meta)
            .unwrap_or_else(|e| panic!("parsed metadata cannot be written back: {e}"));
        if let Err(e) = serde_json::from_slice::<Metadata>(&written) {
            panic!(
                "metadata written back cannot be read again: {e}\n{}",
                String::from_utf8_lossy(&written)
            );
        }
    }

    let base = diffit_fuzz::scratch_dir().join("metadata");
    let layout = RunLayout::new(&base, 1);
    let path = layout.metadata();
    diffit_fuzz::write_scratch("metadata/run_001/metadata.json", data);
    let stored = store::read_metadata(&layout);
    match (&parsed, &stored) {
        (Ok(meta), Err(e)) if meta.run_number == 1 => {
            panic!(
                "{}: the schema accepts it, the store refuses it: {e}",
                path.display()
            )
        }
        (Err(e), Ok(_)) => panic!("the store accepts metadata the schema refuses: {e}"),
        _ => {}
    }
});
