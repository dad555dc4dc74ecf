//! The base model kept in the browser's Cache Storage under its checksum, so a reload (or
//! another run sharing the same base) does not download it again.

use js_sys::{ArrayBuffer, Promise, Uint8Array};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::api::{fetch_bytes, ApiError};

/// Name of the Cache Storage bucket.
const CACHE_NAME: &str = "diffit-base-models";

/// Where the base model bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseSource {
    /// The browser's cache (no download).
    Cache,
    /// The server.
    Network,
}

impl BaseSource {
    /// Lower-case name for the page (`cache`, `network`).
    pub fn as_str(self) -> &'static str {
        match self {
            BaseSource::Cache => "cache",
            BaseSource::Network => "network",
        }
    }
}

/// Cache key of a base model: a same-origin URL no server route answers, named by checksum.
pub fn cache_key(checksum: &str) -> String {
    format!("/__cache/base-model/{}", checksum.replace(':', "-"))
}

/// The base model bytes: from the cache when `checksum` is known and cached with `size`
/// bytes, else from `url` (then cached). Cache failures only cost a download.
pub async fn load_base(
    url: &str,
    checksum: Option<&str>,
    size: Option<u64>,
) -> Result<(Vec<u8>, BaseSource), ApiError> {
    let Some(checksum) = checksum else {
        return Ok((fetch_bytes(url).await?, BaseSource::Network));
    };
    let key = cache_key(checksum);
    if let Ok(Some(bytes)) = cached(&key).await {
        if size.is_none_or(|s| s == bytes.len() as u64) {
            return Ok((bytes, BaseSource::Cache));
        }
    }
    let bytes = fetch_bytes(url).await?;
    if let Err(e) = store(&key, &bytes).await {
        web_sys::console::warn_2(&"could not cache the base model:".into(), &e);
    }
    Ok((bytes, BaseSource::Network))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_paths_named_by_checksum() {
        assert_eq!(cache_key("blake3:ab12"), "/__cache/base-model/blake3-ab12");
    }
}
