//! Loading a folder of the user's own PNG/JPEG images as a training [`Dataset`].

use std::path::Path;

use image::imageops::FilterType;

use model::data::{DataError, Dataset};

/// Extensions we try to decode; anything else in the folder is skipped with a warning.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Every PNG/JPEG in `dir` (not recursive, sorted by name) as CHW RGB in `[-1, 1]`,
/// centre-cropped and resized to `size × size`. Unreadable files are skipped with a warning
/// naming the file (also kept in [`Dataset::skipped`]); a folder with no usable image is an error.
pub fn load_folder(dir: &Path, size: usize) -> Result<Dataset, DataError> {
    let io = |source| DataError::Io {
        path: dir.display().to_string(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut images = Vec::new();
    let mut skipped = Vec::new();
    for path in paths {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let result = match ext {
            Some(e) if EXTENSIONS.contains(&e.as_str()) => load_image(&path, size),
            _ => Err("not a .png/.jpg/.jpeg file".to_string()),
        };
        match result {
            Ok(img) => images.push(img),
            Err(reason) => {
                let msg = format!("{}: {reason}", path.display());
                tracing::warn!("skipping {msg}");
                skipped.push(msg);
            }
        }
    }
    if images.is_empty() {
        let detail = if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped: {})", skipped.join("; "))
        };
        return Err(DataError::EmptyFolder {
            path: dir.display().to_string(),
            detail,
        });
    }
    Ok(Dataset::new(images, 3, size)?.with_skipped(skipped))
}

/// Most bytes an image may decode to: a 24-megapixel 16-bit RGBA photo (192 MiB) fits, a file
/// whose header claims a picture far beyond that is refused before any pixel is allocated (a
/// few hundred KB of PNG can claim gigabytes).
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

/// Reads and decodes one file; the error string says why it is unusable.
fn load_image(path: &Path, size: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode_image(&bytes, size)
}

/// Decodes a PNG or JPEG file's bytes (format taken from the content, not a name) into CHW RGB
/// in `[-1, 1]`, centre-cropped and resized to `size × size`, as [`load_folder`] does for each
/// file. The error string says why the bytes are unusable; decoding never allocates more than
/// [`MAX_DECODED_BYTES`] for the picture.
pub fn decode_image(bytes: &[u8], size: usize) -> Result<Vec<f32>, String> {
    let side_out = u32::try_from(size)
        .ok()
        .filter(|&s| s > 0)
        .ok_or_else(|| format!("cannot resize to {size}x{size}"))?;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    // `into_rgb8` converts in place of the decoded picture rather than beside a kept copy.
    let img = reader
        .decode()
        .map_err(|e| format!("cannot decode: {e}"))?
        .into_rgb8();
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err("image is empty".into());
    }
    let side = w.min(h);
    // A view, not a copy: resize reads the square straight from the decoded picture.
    let cropped = image::imageops::crop_imm(&img, (w - side) / 2, (h - side) / 2, side, side);
    // Triangle widens with the scale factor, so large photos are properly low-pass filtered.
    let resized = image::imageops::resize(&*cropped, side_out, side_out, FilterType::Triangle);
    let n = size * size;
    let mut out = vec![0f32; 3 * n];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = px[c] as f32 / 127.5 - 1.0;
        }
    }
    Ok(out)
}
