//! The runs in a bucket, as `--list-runs` and `runs list` show them: one `metadata.json` read
//! per run, many at once, so a thousand runs list in about the time of a few dozen requests.

use format::layout::{parse_run_dir_name, run_dir_name, METADATA_FILE};
use format::RunStatus;
use store::{run_info_from_json, RunListing, StoreError};

use super::bucket::Bucket;
use super::Result;

/// Requests in flight while listing.
const CONCURRENCY: usize = 64;

/// Every run under the bucket's prefix, in run-number order; a run whose metadata is missing
/// or unreadable is a row with its error. A bucket has no writer locks: a run is shown as being
/// written when its recorded status says so.
pub fn list_runs(bucket: &Bucket) -> Result<Vec<RunListing>> {
    let mut numbers: Vec<u32> = bucket
        .list_dirs()?
        .iter()
        .filter_map(|name| parse_run_dir_name(name))
        .collect();
    numbers.sort_unstable();
    let rels: Vec<String> = numbers
        .iter()
        .map(|&n| format!("{}/{METADATA_FILE}", run_dir_name(n)))
        .collect();
    let fetched = bucket.get_many(&rels, CONCURRENCY);
    Ok(numbers
        .into_iter()
        .zip(rels)
        .zip(fetched)
        .map(|((n, rel), got)| {
            let object = bucket.object_name(&rel);
            let bad = |reason: String| StoreError::BadMetadata {
                path: object.clone().into(),
                reason,
            };
            let info = match got {
                Ok(Some(bytes)) => run_info_from_json(&bytes, n, false)
                    .map(|mut info| {
                        info.writer_active = info.recorded_status == RunStatus::Running;
                        info
                    })
                    .map_err(bad),
                Ok(None) => Err(bad("missing".into())),
                Err(e) => Err(bad(e.to_string())),
            };
            RunListing {
                run_number: n,
                dir: bucket.object_name(&run_dir_name(n)).into(),
                info,
            }
        })
        .collect())
}
