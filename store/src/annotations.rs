//! A run's tags and note (`annotations.json`, [`format::annotations`]): read by listings, and
//! changed by `diffit runs tag` / `note` as a read-modify-write under a lock on the run
//! directory, with the new file written atomically. Only this module writes the file; the
//! run's writer never touches it, so a run can be annotated while it trains.

use std::fs::{self, File};
use std::io;

use format::annotations::{AnnotationError, Annotations};
use format::RunLayout;

use super::atomic::write_bytes_atomic;
use super::error::{IoContext, Result, StoreError};

/// The run's annotations; none when it has no `annotations.json`. A file that does not parse
/// or breaks the rules is an error naming it.
pub fn read_annotations(layout: &RunLayout) -> Result<Annotations> {
    let path = layout.annotations();
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Annotations::default()),
        Err(e) => return Err(StoreError::io("read", path, e)),
    };
    let annotations: Annotations =
        serde_json::from_slice(&bytes).map_err(|source| StoreError::Json {
            action: "parse",
            path: path.clone(),
            source,
        })?;
    annotations.check().map_err(|e| StoreError::BadMetadata {
        path,
        reason: e.to_string(),
    })?;
    Ok(annotations)
}

/// Why an annotation could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum AnnotateError {
    /// The change itself is refused (a bad tag, a note too long); nothing was written.
    #[error(transparent)]
    Refused(#[from] AnnotationError),
    /// The run could not be read or the file not written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies `change` to run `layout`'s annotations and writes them atomically; returns them. Two
/// changes at once (two commands) are serialised by an exclusive lock on the run directory,
/// so neither is lost. A refused change writes nothing.
pub fn update_annotations(
    layout: &RunLayout,
    change: impl FnOnce(&mut Annotations) -> std::result::Result<(), AnnotationError>,
) -> std::result::Result<Annotations, AnnotateError> {
    let dir = layout.root();
    if !layout.metadata().is_file() {
        return Err(StoreError::RunNotFound {
            run_number: layout.run_number(),
            dir,
        }
        .into());
    }
    let lock = File::open(&dir).ctx("open run directory", &dir)?;
    lock.lock().ctx("lock run directory", &dir)?;
    let mut annotations = read_annotations(layout)?;
    change(&mut annotations)?;
    let path = layout.annotations();
    let bytes = serde_json::to_vec_pretty(&annotations).map_err(|source| StoreError::Json {
        action: "serialize",
        path: path.clone(),
        source,
    })?;
    write_bytes_atomic(&path, &bytes)?;
    drop(lock);
    Ok(annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &std::path::Path) -> RunLayout {
        let layout = RunLayout::new(dir, 1);
        fs::create_dir_all(layout.root()).unwrap();
        fs::write(layout.metadata(), b"{}").unwrap();
        layout
    }

    #[test]
    fn changes_are_kept_and_a_refused_one_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = run(tmp.path());
        assert_eq!(read_annotations(&layout).unwrap(), Annotations::default());
        update_annotations(&layout, |a| a.retag(&["sweep".into()], &[])).unwrap();
        let after = update_annotations(&layout, |a| a.set_note(Some("warm restart"))).unwrap();
        assert_eq!(after.tags, ["sweep"]);
        assert_eq!(read_annotations(&layout).unwrap(), after);
        let before = fs::read(layout.annotations()).unwrap();
        let err = update_annotations(&layout, |a| a.retag(&["no spaces".into()], &[]));
        assert!(matches!(err, Err(AnnotateError::Refused(_))));
        assert_eq!(fs::read(layout.annotations()).unwrap(), before);
    }

    #[test]
    fn concurrent_changes_are_all_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = run(tmp.path());
        std::thread::scope(|s| {
            for i in 0..8 {
                let layout = layout.clone();
                s.spawn(move || {
                    update_annotations(&layout, |a| a.retag(&[format!("t{i}")], &[])).unwrap();
                });
            }
        });
        assert_eq!(read_annotations(&layout).unwrap().tags.len(), 8);
    }

    #[test]
    fn a_missing_run_and_a_bad_file_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = RunLayout::new(tmp.path(), 9);
        let err = update_annotations(&missing, |_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("run 9 not found"), "{err}");
        let layout = run(tmp.path());
        fs::write(layout.annotations(), br#"{"tags": ["a b"]}"#).unwrap();
        let err = read_annotations(&layout).unwrap_err();
        assert!(err.to_string().contains("annotations.json"), "{err}");
    }
}
