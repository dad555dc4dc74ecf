//! The runs in a bucket, as `--list-runs` and `runs list` show them: the run index (see
//! [`crate::index`]) gives the rows of the runs it has settled, and the others' `metadata.json`
//! are read, many at once.

use std::collections::HashMap;

use format::layout::{parse_run_dir_name, run_dir_name, METADATA_FILE};
use format::RunStatus;
use store::{run_info_from_json, RunListing, StoreError};

use super::bucket::Bucket;
use super::index::{read_index, RunIndex};
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
    let index = match read_index(bucket) {
        Ok(index) => index.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("listing {} without its run index: {e}", bucket.name());
            RunIndex::default()
        }
    };
    // Runs the index has settled come from it; the others from their metadata.
    let unsettled: Vec<u32> = numbers
        .iter()
        .copied()
        .filter(|&n| index.settled(n).is_none())
        .collect();
    let rels: Vec<String> = unsettled
        .iter()
        .map(|&n| format!("{}/{METADATA_FILE}", run_dir_name(n)))
        .collect();
    let mut fetched: HashMap<u32, _> = unsettled
        .into_iter()
        .zip(bucket.get_many(&rels, CONCURRENCY))
        .collect();
    Ok(numbers
        .into_iter()
        .map(|n| {
            let rel = format!("{}/{METADATA_FILE}", run_dir_name(n));
            let got = match index.settled(n) {
                Some(info) => Ok(Some(Ok(info.clone()))),
                None => fetched
                    .remove(&n)
                    .unwrap_or(Ok(None))
                    .map(|got| got.map(Err)),
            };
            let object = bucket.object_name(&rel);
            let bad = |reason: String| StoreError::BadMetadata {
                path: object.clone().into(),
                reason,
            };
            let info = match got {
                Ok(Some(found)) => match found {
                    Ok(settled) => Ok(settled),
                    Err(bytes) => run_info_from_json(&bytes, n, false).map_err(bad),
                }
                .map(|mut info| {
                    info.writer_active = info.recorded_status == RunStatus::Running;
                    info
                }),
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
