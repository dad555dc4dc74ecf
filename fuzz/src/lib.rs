//! What the fuzz targets share: the allocation cap, and a scratch directory for the readers that
//! take a path or an open file, so the bytes under test reach them through the same calls the
//! programs make.
//!
//! The cap: every target runs under [`CappedAllocator`], which aborts the process (a crash
//! libFuzzer records, with the input) on any single allocation larger than
//! `DIFFIT_FUZZ_MALLOC_LIMIT_MB` (default 512). libFuzzer's own `-malloc_limit_mb` needs a
//! sanitizer's allocator hooks, which `cargo fuzz build -s none` builds have not; its
//! `-rss_limit_mb` works either way and bounds the total.
//!
//! The directory is made once per fuzzing process under the system temp dir (`TMPDIR`, which
//! scripts/fuzz.sh points at a folder it removes afterwards). Failures here are failures of the
//! harness, not findings, so they abort with a message naming the file.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// The cap when `DIFFIT_FUZZ_MALLOC_LIMIT_MB` is not set, in MiB.
pub const DEFAULT_MALLOC_LIMIT_MB: usize = 512;

#[global_allocator]
static ALLOCATOR: CappedAllocator = CappedAllocator;

/// The system allocator, refusing (by aborting) single allocations over the cap.
pub struct CappedAllocator;

/// 0: the cap is not read yet; 1: being read (allocations pass); 2: `LIMIT` holds it.
static LIMIT_STATE: AtomicU8 = AtomicU8::new(0);
static LIMIT: AtomicUsize = AtomicUsize::new(usize::MAX);

fn limit() -> usize {
    match LIMIT_STATE.load(Ordering::Acquire) {
        2 => LIMIT.load(Ordering::Relaxed),
        0 if LIMIT_STATE
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok() =>
        {
            // Reading the environment allocates: those allocations see state 1 and pass.
            let mb = std::env::var("DIFFIT_FUZZ_MALLOC_LIMIT_MB")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(DEFAULT_MALLOC_LIMIT_MB);
            LIMIT.store(mb.saturating_mul(1 << 20), Ordering::Relaxed);
            LIMIT_STATE.store(2, Ordering::Release);
            LIMIT.load(Ordering::Relaxed)
        }
        _ => usize::MAX,
    }
}

/// Reports an allocation over the cap without allocating, then aborts.
fn over_limit(size: usize) -> ! {
    use std::io::Write;
    let mut buf = [0u8; 128];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = writeln!(
        cursor,
        "==diffit-fuzz== allocation of {size} bytes exceeds the cap of {} MiB",
        LIMIT.load(Ordering::Relaxed) >> 20
    );
    let len = cursor.position() as usize;
    let _ = std::io::stderr().write_all(&buf[..len]);
    std::process::abort()
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the contract; the cap
// only adds an abort before it.
unsafe impl GlobalAlloc for CappedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            over_limit(layout.size());
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            over_limit(layout.size());
        }
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            over_limit(new_size);
        }
        // SAFETY: as for `dealloc`, and `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The process's scratch directory.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(
        || match tempfile::Builder::new().prefix("diffit-fuzz-").tempdir() {
            Ok(dir) => dir.keep(),
            Err(e) => harness_failure("create a scratch directory", Path::new("$TMPDIR"), &e),
        },
    )
}

/// Writes `bytes` to `relative` under the scratch directory (creating parents), returning its
/// path. Each call replaces the previous content.
pub fn write_scratch(relative: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(relative);
    if let Some(parent) = path.parent() {
        if let Err(e) = fs::create_dir_all(parent) {
            harness_failure("create", parent, &e);
        }
    }
    if let Err(e) = fs::write(&path, bytes) {
        harness_failure("write", &path, &e);
    }
    path
}

/// Opens a scratch file for reading.
pub fn open_scratch(path: &Path) -> File {
    File::open(path).unwrap_or_else(|e| harness_failure("open", path, &e))
}

/// Stops the run: the harness itself could not do its part.
pub fn harness_failure(action: &str, path: &Path, error: &dyn std::fmt::Display) -> ! {
    eprintln!("fuzz harness: cannot {action} {}: {error}", path.display());
    std::process::abort()
}
