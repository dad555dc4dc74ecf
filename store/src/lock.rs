//! The run's writer lock: an OS file lock held for a writer's whole life and dropped by the OS
//! when the process dies, however it dies.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::time::Duration;

use format::RunLayout;

use super::error::{IoContext, Result, StoreError};

/// How long a writer keeps retrying a lock that a reader may hold for an instant.
const LOCK_RETRIES: u32 = 25;
const LOCK_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Takes the run's writer lock, retrying briefly because a lister may hold it shared for an instant.
pub(crate) fn acquire_writer_lock(layout: &RunLayout) -> Result<File> {
    let path = layout.lock();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx("open lock file", &path)?;
    for attempt in 0..LOCK_RETRIES {
        match file.try_lock() {
            Ok(()) => {
                // The pid is only for people reading the file; the lock itself is the truth.
                file.set_len(0)
                    .and_then(|_| writeln!(file, "{}", std::process::id()))
                    .ctx("write lock file", &path)?;
                return Ok(file);
            }
            Err(TryLockError::WouldBlock) if attempt + 1 < LOCK_RETRIES => {
                std::thread::sleep(LOCK_RETRY_PAUSE)
            }
            Err(TryLockError::WouldBlock) => break,
            Err(TryLockError::Error(e)) => return Err(StoreError::io("lock", path, e)),
        }
    }
    Err(StoreError::Locked {
        run_dir: layout.root(),
        lock: path,
    })
}

/// True when some process holds the run's writer lock right now.
pub fn writer_active(layout: &RunLayout) -> bool {
    let Ok(file) = File::open(layout.lock()) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}
