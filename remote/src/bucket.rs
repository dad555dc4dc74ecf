//! [`Bucket`]: a blocking handle on one prefix of an object store.

use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    ObjectStore, ObjectStoreExt as _, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
    WriteMultipart,
};

use store::atomic::{sync_dir, temp_path_for};
use store::checksum::{digest_bytes, FileDigest, HashingWriter};

use super::profile::active_profile;
use super::{RemoteError, Result};

/// Objects larger than this are uploaded in parts of this size.
pub const MULTIPART_PART: usize = 8 << 20;

/// Which version of an object was read, for a later conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    /// The object's ETag.
    pub e_tag: Option<String>,
    /// The object's version id, where the store keeps versions.
    pub version: Option<String>,
}

/// A prefix of an object store, used from synchronous code.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// `s3://bucket/prefix`, for messages.
    name: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("name", &self.name).finish()
    }
}

/// rustls needs one process-wide crypto provider; ours is ring.
fn install_tls_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Another part of the process may have installed one already; either serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// An S3 store for `url`: the environment first, the AWS profile for what it leaves unset,
/// conditional writes by ETag.
fn s3(url: &url::Url) -> Result<AmazonS3Builder, String> {
    let mut builder = AmazonS3Builder::from_env()
        .with_url(url.as_str())
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    let profile = active_profile();
    let env_unset = |name: &str| std::env::var_os(name).is_none();
    for (file_key, env, key) in [
        (
            "aws_access_key_id",
            "AWS_ACCESS_KEY_ID",
            AmazonS3ConfigKey::AccessKeyId,
        ),
        (
            "aws_secret_access_key",
            "AWS_SECRET_ACCESS_KEY",
            AmazonS3ConfigKey::SecretAccessKey,
        ),
        (
            "aws_session_token",
            "AWS_SESSION_TOKEN",
            AmazonS3ConfigKey::Token,
        ),
        ("region", "AWS_REGION", AmazonS3ConfigKey::Region),
        (
            "endpoint_url",
            "AWS_ENDPOINT_URL",
            AmazonS3ConfigKey::Endpoint,
        ),
    ] {
        if let Some(value) = profile.get(file_key).filter(|_| env_unset(env)) {
            builder = builder.with_config(key, value.clone());
        }
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .or_else(|| profile.get("endpoint_url").cloned());
    if endpoint.is_some_and(|e| e.starts_with("http://")) && env_unset("AWS_ALLOW_HTTP") {
        builder = builder.with_allow_http(true);
    }
    Ok(builder)
}

/// The object store client's retries: 10 (`DIFFIT_REMOTE_MAX_RETRIES`) within 180 s
/// (`DIFFIT_REMOTE_RETRY_TIMEOUT_SECS`) per request, with exponential backoff; connection
/// failures, timeouts, 429 and 5xx (503 SlowDown among them) are retried.
fn retry_config() -> Result<RetryConfig, String> {
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match std::env::var(name) {
            Ok(text) => text
                .trim()
                .parse()
                .map_err(|_| format!("{name}={text:?} is not a whole number")),
            Err(_) => Ok(default),
        }
    };
    Ok(RetryConfig {
        max_retries: usize::try_from(number("DIFFIT_REMOTE_MAX_RETRIES", 10)?)
            .map_err(|e| format!("DIFFIT_REMOTE_MAX_RETRIES: {e}"))?,
        retry_timeout: Duration::from_secs(number("DIFFIT_REMOTE_RETRY_TIMEOUT_SECS", 180)?),
        ..RetryConfig::default()
    })
}

/// Why bytes read do not match what their run records: the reason of a [`RemoteError::Damaged`].
pub(crate) fn mismatch_reason(got: &FileDigest, checksum: &str, size: u64) -> String {
    format!(
        "{} bytes with checksum {}, metadata records {size} bytes with {checksum}",
        got.size, got.checksum
    )
}

impl Bucket {
    /// Opens the object store `url` names (`s3://`, `gs://`, `az://`, `memory://`).
    pub fn open(url: &url::Url) -> Result<Bucket> {
        install_tls_provider();
        let name = url.as_str().trim_end_matches('/').to_string();
        let bad = |reason: String| RemoteError::BadLocation {
            location: name.clone(),
            reason,
        };
        let retry = retry_config().map_err(bad)?;
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => Arc::new(
                s3(url)
                    .map_err(bad)?
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "gs" => Arc::new(
                GoogleCloudStorageBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "az" | "abfs" | "abfss" => Arc::new(
                MicrosoftAzureBuilder::from_env()
                    .with_url(url.as_str())
                    .with_retry(retry)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            "memory" => Arc::new(InMemory::new()),
            other => return Err(bad(format!("not an object-store scheme: {other}"))),
        };
        let prefix = ObjectPath::parse(url.path().trim_matches('/'))
            .map_err(|e| bad(format!("bad prefix: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Io {
                action: "start the I/O runtime for",
                path: name.clone().into(),
                source: e,
            })?;
        Ok(Bucket {
            store,
            prefix,
            name,
            runtime,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object for `rel` (`run_001/metadata.json`) under the prefix.
    fn key(&self, rel: &str) -> ObjectPath {
        rel.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |path, part| path.clone().join(part))
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn object_name(&self, rel: &str) -> String {
        format!("{}/{rel}", self.name)
    }

    fn failed(&self, action: &'static str, rel: &str, e: object_store::Error) -> RemoteError {
        match e {
            object_store::Error::Precondition { .. }
            | object_store::Error::AlreadyExists { .. } => RemoteError::Conflict {
                object: self.object_name(rel),
            },
            other => RemoteError::Store {
                action,
                object: self.object_name(rel),
                message: other.to_string(),
            },
        }
    }

    /// The object's bytes and version; `None` when there is no such object.
    pub fn get(&self, rel: &str) -> Result<Option<(Bytes, ObjectVersion)>> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            match self.store.get(&key).await {
                Ok(got) => {
                    let version = ObjectVersion {
                        e_tag: got.meta.e_tag.clone(),
                        version: got.meta.version.clone(),
                    };
                    let bytes = got.bytes().await.map_err(|e| self.failed("read", rel, e))?;
                    Ok(Some((bytes, version)))
                }
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.failed("read", rel, e)),
            }
        })
    }

    /// Many objects at once (up to `concurrency` requests in flight), in the order asked;
    /// `None` for an object that does not exist.
    pub fn get_many(&self, rels: &[String], concurrency: usize) -> Vec<Result<Option<Bytes>>> {
        use futures_util::StreamExt as _;
        self.runtime.block_on(async {
            futures_util::stream::iter(rels.iter().map(|rel| async move {
                match self.store.get(&self.key(rel)).await {
                    Ok(got) => got
                        .bytes()
                        .await
                        .map(Some)
                        .map_err(|e| self.failed("read", rel, e)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(self.failed("read", rel, e)),
                }
            }))
            .buffered(concurrency.max(1))
            .collect()
            .await
        })
    }

    /// The object's size; `None` when there is no such object.
    pub fn size(&self, rel: &str) -> Result<Option<u64>> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            match self.store.head(&key).await {
                Ok(meta) => Ok(Some(meta.size)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.failed("look up", rel, e)),
            }
        })
    }

    /// Writes the object whole (in parts above [`MULTIPART_PART`]): readers see the old
    /// object or the new one, never a part.
    pub fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            if bytes.len() <= MULTIPART_PART {
                self.store
                    .put(&key, PutPayload::from(bytes))
                    .await
                    .map_err(|e| self.failed("write", rel, e))?;
                return Ok(());
            }
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.failed("start the upload of", rel, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            writer.put(bytes);
            // An unfinished multipart upload leaves no object (the store drops its parts).
            writer
                .finish()
                .await
                .map_err(|e| self.failed("write", rel, e))?;
            Ok(())
        })
    }

    /// Streams the object into the file `path`, written atomically (a temporary file in its
    /// directory, fsync'd and renamed), hashing it on the way: `path` is replaced only when the
    /// bytes match `expected` (the checksum and size the run records); otherwise nothing is left
    /// behind and the error names the object. The object is never held in memory whole.
    /// Returns the bytes written.
    pub fn download(&self, rel: &str, path: &Path, expected: &FileDigest) -> Result<u64> {
        use futures_util::StreamExt as _;
        let key = self.key(rel);
        let io = |action, source| RemoteError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let temp = temp_path_for(path);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|e| io("create a temporary file for", e))?;
        let mut out = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
        let streamed = self.runtime.block_on(async {
            let got = match self.store.get(&key).await {
                Ok(got) => got,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(RemoteError::Damaged {
                        object: self.object_name(rel),
                        reason: "metadata names it but it is missing".into(),
                    })
                }
                Err(e) => return Err(self.failed("read", rel, e)),
            };
            let mut chunks = got.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| self.failed("read", rel, e))?;
                out.write_all(&chunk).map_err(|e| io("write", e))?;
            }
            Ok(())
        });
        let finished = streamed.and_then(|()| {
            let got = out.digest();
            if got != *expected {
                return Err(RemoteError::Damaged {
                    object: self.object_name(rel),
                    reason: mismatch_reason(&got, &expected.checksum, expected.size),
                });
            }
            let file = out
                .into_inner()
                .into_inner()
                .map_err(|e| io("write", e.into_error()))?;
            file.sync_all().map_err(|e| io("fsync", e))?;
            drop(file);
            std::fs::rename(&temp, path).map_err(|e| io("rename into place", e))?;
            sync_dir(path.parent().unwrap_or(Path::new(".")))?;
            Ok(got.size)
        });
        if finished.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        finished
    }

    /// Uploads the file `path` as the object, streaming it in parts above [`MULTIPART_PART`]
    /// and hashing it on the way: the object appears only when the bytes read match `expected`
    /// (a file changed under the upload aborts it, and an unfinished multipart upload leaves no
    /// object). Returns the bytes uploaded.
    pub fn upload_file(&self, rel: &str, path: &Path, expected: &FileDigest) -> Result<u64> {
        use std::io::Read as _;
        let io = |action, source| RemoteError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        let mismatch = |got: &FileDigest| RemoteError::Damaged {
            object: path.display().to_string(),
            reason: mismatch_reason(got, &expected.checksum, expected.size),
        };
        let mut file = std::fs::File::open(path).map_err(|e| io("open", e))?;
        if expected.size <= MULTIPART_PART as u64 {
            let mut bytes = Vec::with_capacity(expected.size as usize);
            file.read_to_end(&mut bytes).map_err(|e| io("read", e))?;
            let got = digest_bytes(&bytes);
            if got != *expected {
                return Err(mismatch(&got));
            }
            self.put(rel, Bytes::from(bytes))?;
            return Ok(got.size);
        }
        let key = self.key(rel);
        self.runtime.block_on(async {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.failed("start the upload of", rel, e))?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
            let mut hasher = HashingWriter::new(std::io::sink());
            let mut part = vec![0u8; MULTIPART_PART];
            let read_all = loop {
                let n = match file.read(&mut part) {
                    Ok(0) => break Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(io("read", e)),
                };
                if let Err(e) = hasher.write_all(&part[..n]) {
                    break Err(io("read", e));
                }
                // At most a few parts are in flight at once.
                if let Err(e) = writer.wait_for_capacity(4).await {
                    break Err(self.failed("write", rel, e));
                }
                writer.write(&part[..n]);
            };
            let got = hasher.digest();
            let outcome = read_all.and_then(|()| {
                if got == *expected {
                    Ok(())
                } else {
                    Err(mismatch(&got))
                }
            });
            match outcome {
                Ok(()) => {
                    writer
                        .finish()
                        .await
                        .map_err(|e| self.failed("write", rel, e))?;
                    Ok(got.size)
                }
                Err(e) => {
                    let _ = writer.abort().await;
                    Err(e)
                }
            }
        })
    }

    /// Writes `rel` only if it is still at `expected` (or, with `None`, only if it does not
    /// exist): the commit of a run's `metadata.json`. Another writer's change in between is a
    /// [`RemoteError::Conflict`].
    /// Returns the version written, for the next conditional write.
    pub fn put_if(
        &self,
        rel: &str,
        bytes: Bytes,
        expected: Option<&ObjectVersion>,
    ) -> Result<ObjectVersion> {
        let key = self.key(rel);
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(UpdateVersion {
                e_tag: v.e_tag.clone(),
                version: v.version.clone(),
            }),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.runtime.block_on(async {
            let put = self
                .store
                .put_opts(&key, PutPayload::from(bytes), opts)
                .await
                .map_err(|e| self.failed("commit", rel, e))?;
            Ok(ObjectVersion {
                e_tag: put.e_tag,
                version: put.version,
            })
        })
    }

    /// The object's current version; `None` when there is no such object.
    pub fn version(&self, rel: &str) -> Result<Option<ObjectVersion>> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            match self.store.head(&key).await {
                Ok(meta) => Ok(Some(ObjectVersion {
                    e_tag: meta.e_tag,
                    version: meta.version,
                })),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(self.failed("look up", rel, e)),
            }
        })
    }

    /// Deletes the object (nothing when it is already gone).
    pub fn delete(&self, rel: &str) -> Result<()> {
        let key = self.key(rel);
        self.runtime.block_on(async {
            match self.store.delete(&key).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(self.failed("delete", rel, e)),
            }
        })
    }

    /// Copies `from` to `to` inside the store (no download).
    pub fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (self.key(from), self.key(to));
        self.runtime.block_on(async {
            self.store
                .copy(&src, &dst)
                .await
                .map_err(|e| self.failed("copy into", to, e))
        })
    }

    /// Every object under `rel` (recursively), as paths relative to the prefix with sizes.
    pub fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_versions(rel)?
            .into_iter()
            .map(|(rel, size, _)| (rel, size))
            .collect())
    }

    /// Every object under `rel` (recursively) with its size and ETag, as
    /// [`Bucket::list`] gives them.
    pub fn list_versions(&self, rel: &str) -> Result<Vec<(String, u64, Option<String>)>> {
        let key = self.key(rel);
        let strip = self.prefix.as_ref().len();
        self.runtime.block_on(async {
            let metas: Vec<_> = self
                .store
                .list(Some(&key))
                .try_collect()
                .await
                .map_err(|e| self.failed("list", rel, e))?;
            Ok(metas
                .into_iter()
                .map(|m| {
                    let full = m.location.as_ref();
                    let rel = full.get(strip..).unwrap_or(full).trim_start_matches('/');
                    (rel.to_string(), m.size, m.e_tag)
                })
                .collect())
        })
    }

    /// The names directly under the prefix that look like directories (`run_001`, …).
    pub fn list_dirs(&self) -> Result<Vec<String>> {
        self.runtime.block_on(async {
            let listed = self
                .store
                .list_with_delimiter(Some(&self.prefix))
                .await
                .map_err(|e| self.failed("list", "", e))?;
            Ok(listed
                .common_prefixes
                .iter()
                .filter_map(|p| p.filename().map(str::to_string))
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn bucket() -> Bucket {
        Bucket::open(&url::Url::parse("memory:///runs").unwrap()).unwrap()
    }

    /// Bytes that differ everywhere, so a misplaced part changes the checksum.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn files_stream_both_ways_checked_in_one_part_and_in_many() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = bucket();
        for (name, len) in [("small", 1000), ("large", 2 * MULTIPART_PART + 12_345)] {
            let bytes = pattern(len);
            let expected = digest_bytes(&bytes);
            let src = dir.path().join(name);
            std::fs::write(&src, &bytes).unwrap();
            let rel = format!("run_001/{name}");
            assert_eq!(
                bucket.upload_file(&rel, &src, &expected).unwrap(),
                len as u64
            );
            assert_eq!(bucket.get(&rel).unwrap().unwrap().0, bytes);

            let back = dir.path().join(format!("{name}.back"));
            assert_eq!(bucket.download(&rel, &back, &expected).unwrap(), len as u64);
            assert_eq!(std::fs::read(&back).unwrap(), bytes);
        }
    }

    #[test]
    fn bytes_that_do_not_match_their_checksum_are_neither_uploaded_nor_downloaded() {
        let dir = tempfile::tempdir().unwrap();
        let bucket = bucket();
        for len in [1000, MULTIPART_PART + 1] {
            let bytes = pattern(len);
            let src = dir.path().join("file");
            std::fs::write(&src, &bytes).unwrap();
            let mut wrong = digest_bytes(&bytes);
            wrong.checksum = digest_bytes(b"something else").checksum;

            let rel = format!("run_001/epoch_{len}");
            let err = bucket.upload_file(&rel, &src, &wrong).unwrap_err();
            assert!(matches!(err, RemoteError::Damaged { .. }), "{err}");
            assert!(
                bucket.get(&rel).unwrap().is_none(),
                "a mismatched upload left an object"
            );

            bucket.put(&rel, Bytes::from(bytes.clone())).unwrap();
            let dst = dir.path().join(format!("copy_{len}"));
            std::fs::write(&dst, b"what was there").unwrap();
            let err = bucket.download(&rel, &dst, &wrong).unwrap_err();
            assert!(err.to_string().contains(&rel), "{err}");
            assert_eq!(std::fs::read(&dst).unwrap(), b"what was there");
        }
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["copy_1000", "copy_8388609", "file"],
            "temporary files left"
        );

        let missing = bucket.download("run_001/nothing", &dir.path().join("x"), &wrong_digest());
        assert!(matches!(missing, Err(RemoteError::Damaged { .. })));
        assert!(!dir.path().join("x").exists());
    }

    fn wrong_digest() -> FileDigest {
        digest_bytes(b"")
    }
}
