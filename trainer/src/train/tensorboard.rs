//! A TensorBoard event-file writer: TFRecord framing around hand-encoded `Event` protobufs
//! (scalars as `simple_value`, images as PNG), enough for TensorBoard and `wandb sync
//! --sync-tensorboard` to read our `logs/`.
//!
//! View: `tensorboard --logdir checkpoints/run_001/logs`. Weights & Biases:
//! `wandb sync --sync-tensorboard checkpoints/run_001/logs`.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use image::ImageEncoder;

/// Errors of the event writer; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TensorBoardError {
    /// Creating, writing or syncing the event file failed.
    #[error("cannot write TensorBoard events {path}: {source}")]
    Io {
        /// The event file (or logs dir).
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Encoding an image summary failed.
    #[error("cannot encode image summary {tag:?}: {message}")]
    Image {
        /// The summary tag.
        tag: String,
        /// What went wrong.
        message: String,
    },
}

/// The first record of every event file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// TFRecord's CRC mask, so CRCs of data that itself holds CRCs stay well distributed.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Minimal protobuf encoding: only the wire types `Event` needs.
mod proto {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire));
    }
    pub fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
        key(out, field, 0);
        varint(out, v);
    }
    pub fn double(out: &mut Vec<u8>, field: u32, v: f64) {
        key(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn float(out: &mut Vec<u8>, field: u32, v: f32) {
        key(out, field, 5);
        out.extend_from_slice(&v.to_le_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, field: u32, v: &[u8]) {
        key(out, field, 2);
        varint(out, v.len() as u64);
        out.extend_from_slice(v);
    }
}

/// `Event` field numbers (tensorflow/core/util/event.proto).
const EVENT_WALL_TIME: u32 = 1;
const EVENT_STEP: u32 = 2;
const EVENT_FILE_VERSION: u32 = 3;
const EVENT_SUMMARY: u32 = 5;
/// `Summary.value` and `Summary.Value` fields (tensorflow/core/framework/summary.proto).
const SUMMARY_VALUE: u32 = 1;
const VALUE_TAG: u32 = 1;
const VALUE_SIMPLE: u32 = 2;
const VALUE_IMAGE: u32 = 4;
const IMAGE_HEIGHT: u32 = 1;
const IMAGE_WIDTH: u32 = 2;
const IMAGE_COLORSPACE: u32 = 3;
const IMAGE_ENCODED: u32 = 4;

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    proto::double(&mut out, EVENT_WALL_TIME, wall_time);
    // int64 on the wire is the two's-complement varint.
    proto::uint(&mut out, EVENT_STEP, step as u64);
    body(&mut out);
    out
}

fn summary_event(wall_time: f64, step: i64, value: &[u8]) -> Vec<u8> {
    let mut summary = Vec::new();
    proto::bytes(&mut summary, SUMMARY_VALUE, value);
    event(wall_time, step, |out| {
        proto::bytes(out, EVENT_SUMMARY, &summary)
    })
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The machine's name for the event file name; `localhost` when it cannot be read.
fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let clean: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .collect();
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean
    }
}

/// Appends events to `events.out.tfevents.<secs>.<host>` in a logs dir.
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates the logs dir if needed and a new event file in it, starting with the
    /// `file_version` record.
    pub fn create(logs_dir: &Path) -> Result<Self, TensorBoardError> {
        std::fs::create_dir_all(logs_dir).map_err(|source| TensorBoardError::Io {
            path: logs_dir.to_path_buf(),
            source,
        })?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let host = host_name();
        // A resumed run started within the same second must not append to the old file.
        let mut path = logs_dir.join(format!("events.out.tfevents.{secs}.{host}"));
        let mut n = 1;
        while path.exists() {
            path = logs_dir.join(format!("events.out.tfevents.{secs}.{host}.{n}"));
            n += 1;
        }
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|source| TensorBoardError::Io {
                path: path.clone(),
                source,
            })?;
        let mut writer = Self {
            path,
            out: BufWriter::new(file),
        };
        let first = event(now_secs(), 0, |out| {
            proto::bytes(out, EVENT_FILE_VERSION, FILE_VERSION.as_bytes())
        });
        writer.write_record(&first)?;
        writer.flush()?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> TensorBoardError {
        TensorBoardError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn write_record(&mut self, data: &[u8]) -> Result<(), TensorBoardError> {
        let len = (data.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(data.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc(&len).to_le_bytes());
        frame.extend_from_slice(data);
        frame.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.out.write_all(&frame).map_err(|e| self.io(e))
    }

    /// Logs one scalar (`train_loss`, `val_loss`, `lr`) at `step`.
    pub fn add_scalar(&mut self, tag: &str, value: f64, step: i64) -> Result<(), TensorBoardError> {
        let mut v = Vec::new();
        proto::bytes(&mut v, VALUE_TAG, tag.as_bytes());
        proto::float(&mut v, VALUE_SIMPLE, value as f32);
        let record = summary_event(now_secs(), step, &v);
        self.write_record(&record)
    }

    /// Logs an RGB8 image (row-major, `width * height * 3` bytes) as a PNG image summary.
    pub fn add_image_rgb8(
        &mut self,
        tag: &str,
        rgb: &[u8],
        width: u32,
        height: u32,
        step: i64,
    ) -> Result<(), TensorBoardError> {
        let img_err = |message: String| TensorBoardError::Image {
            tag: tag.to_string(),
            message,
        };
        if rgb.len() as u64 != u64::from(width) * u64::from(height) * 3 {
            return Err(img_err(format!(
                "{} bytes for {width}x{height} RGB",
                rgb.len()
            )));
        }
        let mut png = Vec::new();
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(rgb, width, height, image::ExtendedColorType::Rgb8)
            .map_err(|e| img_err(e.to_string()))?;
        let mut img = Vec::new();
        proto::uint(&mut img, IMAGE_HEIGHT, u64::from(height));
        proto::uint(&mut img, IMAGE_WIDTH, u64::from(width));
        proto::uint(&mut img, IMAGE_COLORSPACE, 3);
        proto::bytes(&mut img, IMAGE_ENCODED, &png);
        let mut v = Vec::new();
        proto::bytes(&mut v, VALUE_TAG, tag.as_bytes());
        proto::bytes(&mut v, VALUE_IMAGE, &img);
        let record = summary_event(now_secs(), step, &v);
        self.write_record(&record)
    }

    /// Flushes the buffer to the OS.
    pub fn flush(&mut self) -> Result<(), TensorBoardError> {
        self.out.flush().map_err(|e| self.io(e))
    }

    /// Flushes and fsyncs, so a crash after this loses none of the logged events.
    pub fn sync(&mut self) -> Result<(), TensorBoardError> {
        self.flush()?;
        self.out.get_ref().sync_all().map_err(|e| self.io(e))
    }
}

/// Reads the records of an event file back (lengths and CRCs checked); for tests and tools.
pub fn read_records(path: &Path) -> Result<Vec<Vec<u8>>, TensorBoardError> {
    let io = |source| TensorBoardError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let bad = |what: &str| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            what.to_string(),
        ))
    };
    let mut records = Vec::new();
    let mut rest = bytes.as_slice();
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(bad("truncated record header"));
        }
        let (len_bytes, tail) = rest.split_at(8);
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| bad("length"))?) as usize;
        let crc = u32::from_le_bytes(tail[..4].try_into().map_err(|_| bad("length crc"))?);
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let tail = &tail[4..];
        if tail.len() < len + 4 {
            return Err(bad("truncated record"));
        }
        let (data, tail) = tail.split_at(len);
        let crc = u32::from_le_bytes(tail[..4].try_into().map_err(|_| bad("data crc"))?);
        if crc != masked_crc(data) {
            return Err(bad("data CRC mismatch"));
        }
        records.push(data.to_vec());
        rest = &tail[4..];
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_mask_matches_tfrecord_reference() {
        // CRC32C("123456789") = 0xE3069283 (the standard check value).
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        // TFRecord's mask: rotate right by 15, add 0xa282ead8.
        assert_eq!(masked_crc(b"123456789"), 0xc78ab0e5);
    }

    #[test]
    fn varints_encode_like_protobuf() {
        let mut out = Vec::new();
        proto::varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        let mut out = Vec::new();
        proto::uint(&mut out, EVENT_STEP, u64::MAX);
        assert_eq!(
            out.len(),
            11,
            "a negative int64 takes ten bytes plus the key"
        );
    }

    #[test]
    fn writes_framed_records_with_file_version_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(&dir.path().join("logs")).unwrap();
        w.add_scalar("train_loss", 0.5, 1).unwrap();
        w.add_image_rgb8("sample", &[255u8; 2 * 2 * 3], 2, 2, 1)
            .unwrap();
        w.sync().unwrap();
        let name = w.path().file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let records = read_records(w.path()).unwrap();
        assert_eq!(records.len(), 3);
        let version = FILE_VERSION.as_bytes();
        assert!(records[0].windows(version.len()).any(|win| win == version));
        assert!(records[1].windows(10).any(|win| win == b"train_loss"));
        assert!(records[2].windows(4).any(|win| win == b"\x89PNG"));
        assert!(w.add_image_rgb8("bad", &[0u8; 5], 2, 2, 1).is_err());
    }

    #[test]
    fn a_second_writer_in_the_same_second_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = EventWriter::create(dir.path()).unwrap();
        let b = EventWriter::create(dir.path()).unwrap();
        assert_ne!(a.path(), b.path());
    }
}
