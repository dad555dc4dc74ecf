//! Safetensors files written straight to disk: the header, then each tensor's bytes, streamed
//! through a hasher into the (temporary) file, so no second in-memory copy of the file exists.
//!
//! Files are byte-for-byte deterministic (tensors sorted by name, header keys sorted), so equal
//! content gives equal checksums, which is what lets a base model be shared across runs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Storage, Tensor};
use serde_json::{json, Map, Value};

use super::atomic::write_atomic;
use super::checksum::{digest_bytes, FileDigest, HashingWriter};
use super::error::{IoContext, Result, StoreError};

/// Tensors by name.
pub type TensorMap = BTreeMap<String, Tensor>;
/// The string map stored under `__metadata__` in the safetensors header.
pub type HeaderMetadata = BTreeMap<String, String>;

/// Header alignment required by the safetensors format.
const HEADER_ALIGN: usize = 8;
/// Floats converted to little-endian bytes per write call.
const CHUNK_FLOATS: usize = 16 * 1024;

/// A tensor file read back from disk.
#[derive(Debug)]
pub struct TensorFile {
    /// Every tensor, on the CPU.
    pub tensors: TensorMap,
    /// The header's `__metadata__`.
    pub metadata: HeaderMetadata,
    /// Checksum and size of the bytes read.
    pub digest: FileDigest,
}

/// A tensor made ready to write: F32, on the CPU, contiguous.
struct Prepared<'a> {
    name: &'a str,
    tensor: Tensor,
}

fn prepare<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
) -> Result<Vec<Prepared<'a>>> {
    let mut prepared: Vec<Prepared<'a>> = Vec::new();
    for (name, tensor) in tensors {
        let tensor = tensor
            .to_device(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .and_then(|t| t.contiguous())
            .map_err(|source| StoreError::Tensor {
                action: "copy tensor to CPU as f32",
                path: path.to_path_buf(),
                source,
            })?;
        prepared.push(Prepared { name, tensor });
    }
    prepared.sort_by(|a, b| a.name.cmp(b.name));
    if let Some(pair) = prepared.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason: format!("tensor name {:?} given twice", pair[0].name),
        });
    }
    Ok(prepared)
}

/// The padded JSON header for `prepared`.
fn header_bytes(
    path: &Path,
    prepared: &[Prepared<'_>],
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
    for p in prepared {
        let bytes = p.tensor.elem_count() * DType::F32.size_in_bytes();
        header.insert(
            p.name.to_string(),
            json!({"dtype": "F32", "shape": p.tensor.dims(), "data_offsets": [offset, offset + bytes]}),
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

/// Streams one prepared tensor's f32 values as little-endian bytes.
fn write_tensor_data(path: &Path, out: &mut impl Write, p: &Prepared<'_>) -> Result<()> {
    let (storage, layout) = p.tensor.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        return Err(StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason: format!("tensor {} is not on the CPU", p.name),
        });
    };
    let all = cpu.as_slice::<f32>().map_err(|source| StoreError::Tensor {
        action: "read tensor data",
        path: path.to_path_buf(),
        source,
    })?;
    let values = layout
        .contiguous_offsets()
        .and_then(|(start, end)| all.get(start..end))
        .ok_or_else(|| StoreError::BadTensorFile {
            path: path.to_path_buf(),
            reason: format!("tensor {} is not contiguous", p.name),
        })?;
    let mut buf = Vec::with_capacity(CHUNK_FLOATS * 4);
    for chunk in values.chunks(CHUNK_FLOATS) {
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
    prepared: &[Prepared<'_>],
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let header = header_bytes(path, prepared, metadata)?;
    let mut out = HashingWriter::new(out);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .ctx("write", path)?;
    out.write_all(&header).ctx("write", path)?;
    for p in prepared {
        write_tensor_data(path, &mut out, p)?;
    }
    out.flush().ctx("write", path)?;
    Ok(out.digest())
}

/// Writes a safetensors file atomically (all tensors as F32) and returns its digest.
pub fn write_tensor_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let prepared = prepare(path, tensors)?;
    write_atomic(path, |w| encode(path, w, &prepared, metadata))
}

/// The digest the file [`write_tensor_file`] would write, computed without touching the disk.
pub fn digest_tensor_file<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: &HeaderMetadata,
) -> Result<FileDigest> {
    let prepared = prepare(path, tensors)?;
    encode(path, io::sink(), &prepared, metadata)
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
        let tensor = view
            .load(&Device::Cpu)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(TensorFile {
        tensors,
        metadata,
        digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TensorMap {
        let dev = Device::Cpu;
        let mut m = TensorMap::new();
        m.insert(
            "b.lora_A.weight".into(),
            Tensor::arange(0f32, 12.0, &dev)
                .unwrap()
                .reshape((3, 4))
                .unwrap(),
        );
        // A transposed (non-contiguous) f64 tensor exercises the conversion path.
        m.insert(
            "a.weight".into(),
            Tensor::arange(0f64, 6.0, &dev)
                .unwrap()
                .reshape((2, 3))
                .unwrap()
                .t()
                .unwrap(),
        );
        m.insert("scalar".into(), Tensor::new(3.5f32, &dev).unwrap());
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
        let a = back.tensors["a.weight"].to_vec2::<f32>().unwrap();
        assert_eq!(a, vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]);
        assert_eq!(back.tensors["scalar"].to_scalar::<f32>().unwrap(), 3.5);
        assert_eq!(back.tensors["b.lora_A.weight"].dims(), &[3, 4]);
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
}
