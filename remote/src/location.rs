//! Where runs live: a local directory, or an object-store URL.

use std::fmt;
use std::path::PathBuf;

use super::{RemoteError, Result};

/// A checkpoints location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine (a plain path or `file://`).
    Local(PathBuf),
    /// A prefix in an object store.
    Objects(url::Url),
}

/// Object-store schemes we accept.
const SCHEMES: &[&str] = &["s3", "s3a", "gs", "az", "abfs", "abfss", "memory"];

impl Location {
    /// Parses `text`: a URL with one of the object-store schemes, `file://…`, or else a path.
    /// URLs holding credentials (`s3://key:secret@…`) are refused: credentials come from the
    /// environment, so they never reach logs, errors or metadata.
    pub fn parse(text: &str) -> Result<Location> {
        let Some((scheme, _)) = text.split_once("://") else {
            return Ok(Location::Local(PathBuf::from(text)));
        };
        let bad = |reason: &str| RemoteError::BadLocation {
            location: redact(text),
            reason: reason.into(),
        };
        let url = url::Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL: set them in the environment \
                 (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile)",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a checkpoints URL has no query or fragment"));
        }
        match url.scheme() {
            "file" => url
                .to_file_path()
                .map(Location::Local)
                .map_err(|()| bad("not a local path")),
            s if SCHEMES.contains(&s) => {
                if s != "memory" && url.host_str().is_none_or(str::is_empty) {
                    return Err(bad("names no bucket"));
                }
                Ok(Location::Objects(url))
            }
            _ => Err(bad(&format!(
                "unknown scheme {scheme:?}: use a path, file://, s3://, gs:// or az://"
            ))),
        }
    }

    /// True for object storage.
    pub fn is_remote(&self) -> bool {
        matches!(self, Location::Objects(_))
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::Objects(url) => f.write_str(url.as_str().trim_end_matches('/')),
        }
    }
}

/// `text` with anything between `://` and `@` removed, for error messages.
fn redact(text: &str) -> String {
    match (text.find("://"), text.find('@')) {
        (Some(start), Some(at)) if at > start => {
            format!("{}://…@{}", &text[..start], &text[at + 1..])
        }
        _ => text.to_string(),
    }
}

/// A directory under the user's cache (`$XDG_CACHE_HOME`, else `~/.cache`) for the local copy
/// of a bucket location's runs: `diffit-lora/<purpose>/<the URL, one path component>`.
pub fn cache_dir(purpose: &str, url: &url::Url) -> std::path::PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache"))
        })
        .unwrap_or_else(std::env::temp_dir);
    let name: String = url
        .as_str()
        .trim_end_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    cache.join("diffit-lora").join(purpose).join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_file_urls_and_buckets() {
        assert_eq!(
            Location::parse("checkpoints").unwrap(),
            Location::Local("checkpoints".into())
        );
        assert_eq!(
            Location::parse("file:///tmp/ck").unwrap(),
            Location::Local("/tmp/ck".into())
        );
        let s3 = Location::parse("s3://bucket/some/prefix").unwrap();
        assert!(s3.is_remote());
        assert_eq!(s3.to_string(), "s3://bucket/some/prefix");
        assert!(Location::parse("gs://b").unwrap().is_remote());
        assert!(Location::parse("az://container/p").unwrap().is_remote());
    }

    #[test]
    fn credentials_in_urls_are_refused_and_never_echoed() {
        let err = Location::parse("s3://AKIAXXX:hunter2@bucket/p")
            .unwrap_err()
            .to_string();
        assert!(err.contains("credentials"), "{err}");
        assert!(
            !err.contains("hunter2") && !err.contains("AKIAXXX"),
            "{err}"
        );
        assert!(Location::parse("s3:///nobucket").is_err());
        assert!(Location::parse("ftp://host/x").is_err());
        assert!(Location::parse("s3://b/p?x=1").is_err());
    }
}
