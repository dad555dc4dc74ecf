//! The run search (`/api/runs?q=…`, the runs view's box): `format::query::Query::parse`, then
//! the match, key check and sort every row of a list goes through; and `annotations.json` as
//! `store::annotations` reads it. Nothing may panic, and a parsed query must match alike
//! twice.

#![no_main]

use diffit_fuzz as _;
use format::annotations::Annotations;
use format::api::RunSummary;
use format::query::{compare_rows, Query};
use libfuzzer_sys::fuzz_target;

fn rows() -> Vec<RunSummary> {
    let json = r#"[
        {"run_number":1,"status":"finished","experiment_name":"trees","created_at":"2026-12-01T10:00:00",
         "updated_at":null,"recorded_status":"finished","checkpoints_count":3,"last_epoch":3,
         "best":{"epoch":2,"monitor":"val_loss","value":0.25},"base_val_loss":0.5,"writer_active":false,
         "tags":["sweep"],"note":"warm","params":{"training.learning_rate":0.001,"lora.target_modules":["qkv"]}},
        {"run_number":2,"status":"broken","error":"metadata.json: bad"}
    ]"#;
    serde_json::from_str(json).unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(annotations) = serde_json::from_slice::<Annotations>(data) {
        let _ = annotations.check();
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(query) = Query::parse(text) else {
        return;
    };
    let rows = rows();
    let _ = query.check_keys(&rows);
    for row in &rows {
        assert_eq!(query.matches(row), query.matches(row));
        for other in &rows {
            let _ = compare_rows(row, other, text, true);
        }
    }
});
