//! The base model kept in the browser's Cache Storage under its checksum, so a reload (or
//! another run sharing the same base) does not download it again.
//!
//! Every copy, cached or downloaded, is checked against the size and blake3 checksum the run's
//! metadata records before it is used: a damaged cached copy is dropped and fetched again from
//! the server, and a fresh download that does not match either is an error naming the file,
//! never a model with bad weights.

use std::fmt;

use format::FileRecord;
use js_sys::{ArrayBuffer, Promise, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::api::{fetch_bytes, fetch_bytes_fresh, ApiError};
use crate::now_ms;

/// Name of the Cache Storage bucket.
const CACHE_NAME: &str = "diffit-base-models";

/// Prefix of the checksums the run's metadata records (the store writes `blake3:<hex>`).
const CHECKSUM_PREFIX: &str = "blake3:";

/// Where the base model bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseSource {
    /// The browser's cache (no download).
    Cache,
    /// The server.
    Network,
    /// The server itself, because a cached copy (Cache Storage or the HTTP cache) failed its
    /// checksum and was dropped.
    Refetched,
}

impl BaseSource {
    /// Lower-case name for the page (`cache`, `network`, `refetched`).
    pub fn as_str(self) -> &'static str {
        match self {
            BaseSource::Cache => "cache",
            BaseSource::Network => "network",
            BaseSource::Refetched => "refetched",
        }
    }

    /// Whether the bytes were downloaded (and so count as downloaded bytes).
    pub fn downloaded(self) -> bool {
        self != BaseSource::Cache
    }
}

/// How a copy of a file differs from what the run's metadata records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The copy has a different length.
    Size {
        /// Bytes in the copy.
        actual: u64,
        /// Bytes the metadata records.
        expected: u64,
    },
    /// Same length, different content.
    Checksum {
        /// `blake3:<hex>` of the copy.
        actual: String,
        /// What the metadata records.
        expected: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Size { actual, expected } => {
                write!(f, "size is {actual} bytes, metadata records {expected}")
            }
            Mismatch::Checksum { actual, expected } => {
                write!(f, "checksum is {actual}, metadata records {expected}")
            }
        }
    }
}

/// Why the base model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BaseError {
    /// The download failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A fresh download does not match the run's metadata either.
    #[error("the base model {path} downloaded from {url} does not match the run's metadata ({mismatch}); not sampling with it")]
    Mismatch {
        /// The file, as the metadata names it (relative to the checkpoints directory).
        path: String,
        /// Where it was downloaded from.
        url: String,
        /// How it differs.
        mismatch: Mismatch,
    },
}

/// The base model's bytes and how they were obtained.
#[derive(Debug)]
pub struct LoadedBase {
    /// The safetensors file.
    pub bytes: Vec<u8>,
    /// Where they came from.
    pub source: BaseSource,
    /// Milliseconds spent checking them against the metadata (the blake3 hash, mostly);
    /// `None` when the metadata records no checksum to check against.
    pub verify_ms: Option<f64>,
}

/// `blake3:<hex>` of `bytes`, the format the run's metadata records.
pub fn checksum_of(bytes: &[u8]) -> String {
    format!("{CHECKSUM_PREFIX}{}", blake3::hash(bytes).to_hex())
}

/// Checks `bytes` against the size and checksum `record` holds. The size comes first: it is
/// free and catches truncated copies without hashing.
pub fn verify(bytes: &[u8], record: &FileRecord) -> Result<(), Mismatch> {
    let size = bytes.len() as u64;
    if size != record.size {
        return Err(Mismatch::Size {
            actual: size,
            expected: record.size,
        });
    }
    let checksum = checksum_of(bytes);
    // Hex digits are case-insensitive; the store writes lower case.
    if !checksum.eq_ignore_ascii_case(record.checksum.trim()) {
        return Err(Mismatch::Checksum {
            actual: checksum,
            expected: record.checksum.clone(),
        });
    }
    Ok(())
}

/// Cache key of a base model: a same-origin URL no server route answers, named by checksum.
pub fn cache_key(checksum: &str) -> String {
    format!("/__cache/base-model/{}", checksum.replace(':', "-"))
}

/// The base model bytes: from the cache when `record` is known and the cached copy matches
/// it, else from `url`, checked against `record`, then cached. A copy that fails the check,
/// in Cache Storage or in the browser's HTTP cache, is dropped and downloaded again from the
/// server itself; if that fails the check too, this is an error naming the file. Cache
/// failures only cost a download. Without a record (runs from before it was kept), the
/// download is used unchecked and not cached. `on_phase` is told what is happening.
pub async fn load_base(
    url: &str,
    record: Option<&FileRecord>,
    on_phase: impl Fn(&str),
) -> Result<LoadedBase, BaseError> {
    let Some(record) = record else {
        on_phase("downloading the base model");
        return Ok(LoadedBase {
            bytes: fetch_bytes(url).await?,
            source: BaseSource::Network,
            verify_ms: None,
        });
    };
    let key = cache_key(&record.checksum);
    let mut source = BaseSource::Network;
    match cached(&key).await {
        Ok(Some(bytes)) => {
            on_phase("checking the cached base model");
            match timed_verify(&bytes, record) {
                (Ok(()), verify_ms) => {
                    return Ok(LoadedBase {
                        bytes,
                        source: BaseSource::Cache,
                        verify_ms,
                    })
                }
                (Err(mismatch), _) => {
                    warn(&format!(
                        "the cached copy of the base model {} is damaged ({mismatch}): dropping it and downloading it again",
                        record.path
                    ));
                    if let Err(e) = remove(&key).await {
                        warn_js("could not drop the damaged cached base model:", &e);
                    }
                    source = BaseSource::Refetched;
                }
            }
        }
        Ok(None) => {}
        Err(e) => warn_js("could not read the base model cache:", &e),
    }
    if source == BaseSource::Network {
        on_phase("downloading the base model");
        let bytes = fetch_bytes(url).await?;
        on_phase("checking the base model");
        match timed_verify(&bytes, record) {
            (Ok(()), verify_ms) => return Ok(keep(&key, bytes, source, verify_ms).await),
            // The base is served as immutable, so the HTTP cache may hold another run's base
            // that once had this URL (a checkpoints directory trained afresh), or a damaged one.
            (Err(mismatch), _) => {
                warn(&format!(
                    "the base model {} from the browser's HTTP cache does not match the run's metadata ({mismatch}): downloading it again",
                    record.path
                ));
                source = BaseSource::Refetched;
            }
        }
    }
    on_phase("a cached base model failed its checksum: downloading it again");
    let bytes = fetch_bytes_fresh(url).await?;
    on_phase("checking the base model");
    let (checked, verify_ms) = timed_verify(&bytes, record);
    checked.map_err(|mismatch| BaseError::Mismatch {
        path: record.path.clone(),
        url: url.to_string(),
        mismatch,
    })?;
    Ok(keep(&key, bytes, source, verify_ms).await)
}

/// [`verify`], and the milliseconds it took.
fn timed_verify(bytes: &[u8], record: &FileRecord) -> (Result<(), Mismatch>, Option<f64>) {
    let started = now_ms();
    let checked = verify(bytes, record);
    (checked, Some(now_ms() - started))
}

/// Caches checked bytes under `key` (a failure only costs a download next time).
async fn keep(key: &str, bytes: Vec<u8>, source: BaseSource, verify_ms: Option<f64>) -> LoadedBase {
    if let Err(e) = store(key, &bytes).await {
        warn_js("could not cache the base model:", &e);
    }
    LoadedBase {
        bytes,
        source,
        verify_ms,
    }
}

fn warn(message: &str) {
    web_sys::console::warn_1(&message.into());
}

fn warn_js(message: &str, error: &JsValue) {
    web_sys::console::warn_2(&message.into(), error);
}

async fn open() -> Result<web_sys::Cache, JsValue> {
    let window = web_sys::window().ok_or_else(|| JsValue::from_str("no window"))?;
    // `caches` is missing outside secure contexts (plain http on a non-local host).
    let caches = window.caches()?;
    JsFuture::from(caches.open(CACHE_NAME)).await?.dyn_into()
}

async fn cached(key: &str) -> Result<Option<Vec<u8>>, JsValue> {
    let cache = open().await?;
    let found = JsFuture::from(cache.match_with_str(key)).await?;
    if found.is_undefined() {
        return Ok(None);
    }
    let response: web_sys::Response = found.dyn_into()?;
    let buffer: ArrayBuffer = JsFuture::from(response.array_buffer()?).await?.dyn_into()?;
    Ok(Some(Uint8Array::new(&buffer).to_vec()))
}

async fn store(key: &str, bytes: &[u8]) -> Result<(), JsValue> {
    let cache = open().await?;
    let body = Uint8Array::from(bytes);
    let response = web_sys::Response::new_with_opt_buffer_source(Some(&body))?;
    let put: Promise = cache.put_with_str(key, &response);
    JsFuture::from(put).await?;
    Ok(())
}

async fn remove(key: &str) -> Result<(), JsValue> {
    let cache = open().await?;
    JsFuture::from(cache.delete_with_str(key)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record_of(bytes: &[u8]) -> FileRecord {
        FileRecord {
            path: "base_model.safetensors".to_string(),
            checksum: checksum_of(bytes),
            size: bytes.len() as u64,
            extra: Default::default(),
        }
    }

    #[test]
    fn keys_are_paths_named_by_checksum() {
        assert_eq!(cache_key("blake3:ab12"), "/__cache/base-model/blake3-ab12");
    }

    #[test]
    fn checksums_are_blake3_in_the_metadata_format() {
        // The BLAKE3 test vector for the empty input.
        assert_eq!(
            checksum_of(b""),
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn only_the_recorded_bytes_pass() {
        let good: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let record = record_of(&good);
        assert_eq!(verify(&good, &record), Ok(()));

        let mut upper = record.clone();
        upper.checksum = format!("blake3:{}", record.checksum[7..].to_ascii_uppercase());
        assert_eq!(verify(&good, &upper), Ok(()));

        // Same size, one byte changed: only the checksum can tell.
        let mut flipped = good.clone();
        flipped[5_000] ^= 1;
        let Err(Mismatch::Checksum { actual, expected }) = verify(&flipped, &record) else {
            panic!("a same-size change must fail the checksum");
        };
        assert_eq!(actual, checksum_of(&flipped));
        assert_eq!(expected, record.checksum);

        assert_eq!(
            verify(&good[..9_999], &record),
            Err(Mismatch::Size {
                actual: 9_999,
                expected: 10_000
            })
        );
    }

    #[test]
    fn mismatch_errors_name_the_file() {
        let error = BaseError::Mismatch {
            path: "run_001/base_model.safetensors".to_string(),
            url: "/api/runs/1/checkpoints/base".to_string(),
            mismatch: Mismatch::Size {
                actual: 1,
                expected: 2,
            },
        };
        let message = error.to_string();
        assert!(
            message.contains("run_001/base_model.safetensors"),
            "{message}"
        );
        assert!(
            message.contains("size is 1 bytes, metadata records 2"),
            "{message}"
        );
    }
}
