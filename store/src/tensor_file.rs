//! Safetensors files written straight to disk: the header, then each tensor's bytes, streamed
//! through a hasher into the (temporary) file, so no second in-memory copy of the file exists.
//!
//! Files are byte-for-byte deterministic (tensors sorted by name, header keys sorted), so equal
//! content gives equal checksums, which is what lets a base model be shared across runs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{json, Map, Value};

use super::atomic::{write_atomic, StagedFile};
use super::checksum::{digest_bytes, FileDigest, HashingWriter};
use super::error::{IoContext, Result, StoreError};

/// Tensors by name.
pub type TensorMap = BTreeMap<String, StoredTensor>;
/// The string map stored under `__metadata__` in the safetensors header.
pub type HeaderMetadata = BTreeMap<String, String>;

/// The safetensors format caps headers at 100 MB; a file claiming more is not one.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Header alignment required by the safetensors format.
const HEADER_ALIGN: usize = 8;
/// Floats converted to little-endian bytes per write call.
const CHUNK_FLOATS: usize = 16 * 1024;

/// An `f32` tensor as the store keeps it: its shape and its values in row-major order. The
/// store needs no tensor library; the trainer converts to and from its own tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

impl StoredTensor {
    /// A tensor of `shape` holding `values`; `None` unless the element count matches.
    pub fn new(shape: Vec<usize>, values: Vec<f32>) -> Option<Self> {
        (shape.iter().product::<usize>() == values.len()).then_some(Self { shape, values })
    }

    /// The dimensions (empty for a scalar).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The values in row-major order.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
}

/// A tensor file read back from disk.
#[derive(Debug)]
pub struct TensorFile {
    /// Every tensor.
    pub tensors: TensorMap,
    /// The header's `__metadata__`.
    pub metadata: HeaderMetadata,
    /// Checksum and size of the bytes read.
    pub digest: FileDigest,
}

/// Tensors sorted by name, refusing a name given twice.
fn sorted<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a StoredTensor)>,
) -> Result<Vec<(&'a str, &'a StoredTensor)>> {
    let mut sorted: Vec<(&str, &StoredTensor)> = tensors.into_iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    if let Some(pair) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason: format!("tensor name {:?} given twice", pair[0].0),
        });
    }
    Ok(sorted)
}

/// The padded JSON header for `tensors`.
fn header_bytes(
    path: &Path,
    tensors: &[(&str, &StoredTensor)],
    metadata: &HeaderMetadata,
) -> Result<Vec<u8>> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let meta: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        header.insert("__metadata__".to_string(), Value::Object(meta));
    }
    let mut offset = 0usize;
    for (name, tensor) in tensors {
        let bytes = tensor.values.len() * std::mem::size_of::<f32>();
        header.insert(
            name.to_string(),
            json!({"dtype": "F32", "shape": tensor.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut bytes =
        serde_json::to_vec(&Value::Object(header)).map_err(|source| StoreError::Json {
            action: "serialize safetensors header",
            path: path.to_path_buf(),
            source,
        })?;
    let padded = bytes.len().div_ceil(HEADER_ALIGN) * HEADER_ALIGN;
    bytes.resize(padded, b' ');
    Ok(bytes)
}

/// Streams one tensor's values as little-endian bytes.
fn write_tensor_data(path: &Path, out: &mut impl Write, tensor: &StoredTensor) -> Result<()> {
    let mut buf = Vec::with_capacity(CHUNK_FLOATS * 4);
    for chunk in tensor.values.chunks(CHUNK_FLOATS) {
        buf.clear();
        buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
        out.write_all(&buf).ctx("write", path)?;
    }
    Ok(())
}

/// Encodes the whole file into `out`, returning its digest.
fn encode<W: Write>(
    path: &Path,
    out: W,
    tensors: &[(&str, &StoredTensor)],
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let header = header_bytes(path, tensors, metadata)?;
    let mut out = HashingWriter::new(out);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .ctx("write", path)?;
    out.write_all(&header).ctx("write", path)?;
    for (_, tensor) in tensors {
        write_tensor_data(path, &mut out, tensor)?;
    }
    out.flush().ctx("write", path)?;
    Ok(out.digest())
}

/// Writes a safetensors file atomically (all tensors as F32) and returns its digest.
pub fn write_tensor_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a StoredTensor)>,
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let tensors = sorted(path, tensors)?;
    write_atomic(path, |w| encode(path, w, &tensors, metadata))
}

/// As [`write_tensor_file`], stopping before the fsync and the rename: the caller makes the
/// file durable and names it ([`StagedFile::sync`], [`StagedFile::publish`]).
pub fn stage_tensor_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a StoredTensor)>,
    metadata: &HeaderMetadata,
) -> Result<(StagedFile, FileDigest)> {
    let tensors = sorted(path, tensors)?;
    StagedFile::write(path, |w| encode(path, w, &tensors, metadata))
}

/// The digest the file [`write_tensor_file`] would write, computed without touching the disk.
pub fn digest_tensor_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a StoredTensor)>,
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let tensors = sorted(path, tensors)?;
    encode(path, io::sink(), &tensors, metadata)
}

/// Reads a safetensors file onto the CPU. With `expected`, the size is checked before reading
/// and the checksum after, so a damaged file is reported as such, naming it.
pub fn read_tensor_file(path: &Path, expected: Option<&FileDigest>) -> Result<TensorFile> {
    if let Some(expected) = expected {
        let size = fs::metadata(path).ctx("read", path)?.len();
        if size != expected.size {
            expected.check(
                path,
                &FileDigest {
                    checksum: String::new(),
                    size,
                },
            )?;
        }
    }
    let bytes = fs::read(path).ctx("read", path)?;
    let digest = digest_bytes(&bytes);
    if let Some(expected) = expected {
        expected.check(path, &digest)?;
    }
    parse_tensor_bytes(path, &bytes, digest)
}

fn parse_tensor_bytes(path: &Path, bytes: &[u8], digest: FileDigest) -> Result<TensorFile> {
    let bad = |reason: String| StoreError::BadTensorFile {
        path: path.to_path_buf(),
        reason,
    };
    let parsed = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file: {e}")))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("invalid header: {e}")))?;
    let metadata: HeaderMetadata = header
        .metadata()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let mut tensors = TensorMap::new();
    for (name, view) in parsed.tensors() {
        let tensor = stored_tensor(&view).map_err(|e| bad(format!("tensor {name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(TensorFile {
        tensors,
        metadata,
        digest,
    })
}

/// One safetensors view as `f32` values (F32 as is, F64 narrowed; other dtypes refused).
fn stored_tensor(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<StoredTensor, String> {
    use safetensors::Dtype;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        other => {
            return Err(format!(
                "dtype {other:?} is not supported (F32 or F64 expected)"
            ))
        }
    };
    StoredTensor::new(view.shape().to_vec(), values)
        .ok_or_else(|| "its data does not match its shape".to_string())
}

/// A safetensors file's header, read on its own: no tensor data is read.
#[derive(Debug)]
pub struct TensorFileHeader {
    /// `8 + header length`: where tensor data starts.
    pub data_start: u64,
    /// The tensors' names, dtypes, shapes and offsets, and `__metadata__`.
    pub header: safetensors::tensor::Metadata,
}

impl TensorFileHeader {
    /// The value of `key` in the header's `__metadata__`.
    pub fn metadata_value(&self, key: &str) -> Option<&str> {
        self.header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(key))
            .map(String::as_str)
    }
}

/// Why a file's header cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Reading failed.
    #[error("reading: {0}")]
    Io(#[from] io::Error),
    /// Shorter than its header says.
    #[error("truncated: {0}")]
    Truncated(String),
    /// Not a safetensors file.
    #[error("not a valid safetensors file: {0}")]
    Invalid(String),
}

/// Reads the header of a safetensors file of `size` bytes from `reader` (positioned at its
/// start) and checks that the tensor data it describes fills the rest of the file exactly.
/// This is the one header reader: the server serves files with it and the trainer reads a base
/// model's config with it.
pub fn read_header(
    mut reader: impl io::Read,
    size: u64,
) -> std::result::Result<TensorFileHeader, HeaderError> {
    let cut_short = |e: io::Error, what: &str| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            HeaderError::Truncated(format!("file ended inside its {what}"))
        }
        _ => HeaderError::Io(e),
    };
    if size < 8 {
        return Err(HeaderError::Truncated(format!(
            "{size} bytes, shorter than a safetensors header"
        )));
    }
    let mut len_bytes = [0u8; 8];
    reader
        .read_exact(&mut len_bytes)
        .map_err(|e| cut_short(e, "header length"))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(HeaderError::Invalid(format!(
            "header length {header_len} exceeds {MAX_HEADER_BYTES} bytes"
        )));
    }
    let data_start = 8 + header_len;
    if data_start > size {
        return Err(HeaderError::Truncated(format!(
            "header claims {header_len} bytes, file has {size}"
        )));
    }
    let mut header_bytes = vec![0u8; header_len as usize];
    reader
        .read_exact(&mut header_bytes)
        .map_err(|e| cut_short(e, "header"))?;
    let header: safetensors::tensor::Metadata = serde_json::from_slice(&header_bytes)
        .map_err(|e| HeaderError::Invalid(format!("header: {e}")))?;
    let data_len = header.data_len() as u64;
    let actual = size - data_start;
    if data_len > actual {
        return Err(HeaderError::Truncated(format!(
            "header describes {data_len} bytes of tensor data, file holds {actual}"
        )));
    }
    if data_len < actual {
        return Err(HeaderError::Invalid(format!(
            "{} bytes after the last tensor",
            actual - data_len
        )));
    }
    Ok(TensorFileHeader { data_start, header })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorMap {
        let mut m = TensorMap::new();
        let t = |shape: Vec<usize>, values: Vec<f32>| StoredTensor::new(shape, values).unwrap();
        m.insert(
            "b.lora_A.weight".into(),
            t(vec![3, 4], (0..12).map(|i| i as f32).collect()),
        );
        m.insert(
            "a.weight".into(),
            t(vec![3, 2], vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]),
        );
        m.insert("scalar".into(), t(vec![], vec![3.5]));
        m
    }

    #[test]
    fn round_trip_with_metadata_and_deterministic_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let tensors = sample();
        let meta: HeaderMetadata = [("epoch".to_string(), "3".to_string())].into();
        let iter = || tensors.iter().map(|(k, v)| (k.as_str(), v));
        let written = write_tensor_file(&path, iter(), &meta).unwrap();
        assert_eq!(written, digest_tensor_file(&path, iter(), &meta).unwrap());
        assert_eq!(written.size, fs::metadata(&path).unwrap().len());
        let back = read_tensor_file(&path, Some(&written)).unwrap();
        assert_eq!(back.metadata, meta);
        assert_eq!(back.tensors.len(), 3);
        assert_eq!(back.tensors, tensors);
        assert_eq!(back.tensors["scalar"].shape(), &[] as &[usize]);
        let bytes = fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
    }

    #[test]
    fn damage_is_reported_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let tensors = sample();
        let digest = write_tensor_file(
            &path,
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            &HeaderMetadata::new(),
        )
        .unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let err = read_tensor_file(&path, Some(&digest)).unwrap_err();
        assert!(matches!(err, StoreError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("x.safetensors"), "{err}");
        fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_tensor_file(&path, Some(&digest)).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let err = read_tensor_file(&path, None).unwrap_err();
        assert!(matches!(err, StoreError::BadTensorFile { .. }), "{err}");
    }

    #[test]
    fn header_alone_is_read_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let meta: HeaderMetadata = [("model_config".to_string(), "{}".to_string())].into();
        let tensors = sample();
        write_tensor_file(&path, tensors.iter().map(|(k, v)| (k.as_str(), v)), &meta).unwrap();
        let bytes = fs::read(&path).unwrap();
        let size = bytes.len() as u64;
        let header = read_header(&bytes[..], size).unwrap();
        assert_eq!(header.metadata_value("model_config"), Some("{}"));
        assert_eq!(header.header.offset_keys().len(), 3);
        let err = read_header(&bytes[..20], 20).unwrap_err();
        assert!(matches!(err, HeaderError::Truncated(_)), "{err}");
        let err = read_header(&bytes[..bytes.len() - 4], size - 4).unwrap_err();
        assert!(err.to_string().contains("tensor data"), "{err}");
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"junk");
        let err = read_header(&longer[..], size + 4).unwrap_err();
        assert!(err.to_string().contains("after the last tensor"), "{err}");
        let huge = u64::MAX.to_le_bytes();
        let err = read_header(&huge[..], 1 << 40).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }
}
