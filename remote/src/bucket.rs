//! [`Bucket`]: a blocking handle on one prefix of an object store.

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
