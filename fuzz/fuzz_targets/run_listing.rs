//! A run's `metadata.json` as the run list reads it: `store::run_info`, which parses only the
//! part a listing row needs (and so must accept every file the full schema accepts).

#![no_main]

use format::metadata::Metadata;
use format::RunLayout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = diffit_fuzz::scratch_dir().join("listing");
    let layout = RunLayout::new(&base, 1);
    diffit_fuzz::write_scratch("listing/run_001/metadata.json", data);
    let row = store::run_info(&layout);
    if let Ok(meta) = serde_json::from_slice::<Metadata>(data) {
        if meta.run_number == 1 {
            if let Err(e) = &row {
                panic!("a run the store can open is listed as broken: {e}");
            }
        }
    }
    if let Ok(row) = &row {
        assert!(row.last_epoch.is_some() || row.checkpoints_count == 0);
    }
});
