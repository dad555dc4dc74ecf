//! Loading the user's own data as a training [`Dataset`]: a folder of PNG/JPEG images (the
//! images of the folder itself, or, when it holds none but has subfolders, each subfolder's
//! images as one class, labelled by the subfolder's name), or CIFAR-10/100 binary batches
//! ([`cifar`]).

pub mod cifar;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use model::data::{DataError, Dataset};

pub use cifar::DataFormat;

/// Extensions we try to decode; anything else in the folder is skipped with a warning.
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The images of `dir` as CHW RGB in `[-1, 1]`, centre-cropped and resized to `size × size`.
/// A folder whose own files include no PNG/JPEG but which has subfolders is a labelled set:
/// each subfolder (sorted by name, hidden ones left out) is a class and its images (not
/// recursive) have that class's label. Otherwise every PNG/JPEG in `dir` itself (not
/// recursive, sorted by name) is loaded, unlabelled. Unreadable files are skipped with a
/// warning naming the file (also kept in [`Dataset::skipped`]); a folder with no usable image
/// is an error. Transparent pixels are composited onto white.
pub fn load_folder(dir: &Path, size: usize) -> Result<Dataset, DataError> {
    load_folder_on(dir, size, Background::WHITE)
}

/// [`load_folder`] with transparent pixels composited onto `background`.
pub fn load_folder_on(
    dir: &Path,
    size: usize,
    background: Background,
) -> Result<Dataset, DataError> {
    let (files, subdirs) = entries(dir)?;
    let has_images = files.iter().any(|p| image_extension(p).is_some());
    let mut skipped = Vec::new();
    if has_images || subdirs.is_empty() {
        let images = load_images(&files, size, background, &mut skipped);
        return finish(dir, size, images, None, skipped);
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    let mut classes = Vec::new();
    for (files, name) in subdirs
        .iter()
        .map(|sub| entries(sub).map(|(files, _)| (files, sub)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(files, sub)| (files, class_name(sub)))
    {
        let found = load_images(&files, size, background, &mut skipped);
        if found.is_empty() {
            let msg = format!(
                "{}: no readable image in this class folder",
                dir.join(&name).display()
            );
            tracing::warn!("skipping {msg}");
            skipped.push(msg);
            continue;
        }
        let label = u32::try_from(classes.len()).unwrap_or(u32::MAX);
        labels.extend(std::iter::repeat_n(label, found.len()));
        images.extend(found);
        classes.push(name);
    }
    finish(dir, size, images, Some((labels, classes)), skipped)
}

/// What `--data PATH` holds, read as `format` says ([`cifar::find`]): CIFAR batches (only the
/// labels `classes` lists, when it lists any) or a folder of images, at `size × size`.
pub fn load_path(
    path: &Path,
    format: DataFormat,
    classes: &[u32],
    size: usize,
    background: Background,
) -> Result<Dataset, DataError> {
    if let Some(set) = cifar::find(path, format)? {
        return cifar::load(&set, classes, size);
    }
    if !path.is_dir() {
        return Err(DataError::BadFile {
            path: path.display().to_string(),
            reason: "not a directory of images (nor CIFAR batch files)".into(),
        });
    }
    if !classes.is_empty() {
        return Err(DataError::BadFile {
            path: path.display().to_string(),
            reason: "data.classes (--classes) picks CIFAR labels, but this is a folder of \
                     images: keep the classes wanted as its subfolders instead"
                .into(),
        });
    }
    load_folder_on(path, size, background)
}

/// The files and the (non-hidden) subdirectories of `dir`, each sorted by name.
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let io = |source| DataError::Io {
        path: dir.display().to_string(),
        source,
    };
    let (mut files, mut subdirs) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() {
            files.push(path);
        } else if path.is_dir() && !class_name(&path).starts_with('.') {
            subdirs.push(path);
        }
    }
    files.sort();
    subdirs.sort();
    Ok((files, subdirs))
}

fn class_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn image_extension(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .filter(|e| EXTENSIONS.contains(&e.as_str()))
}

/// Decodes each of `paths`, noting (and logging) every file it skips.
fn load_images(
    paths: &[PathBuf],
    size: usize,
    background: Background,
    skipped: &mut Vec<String>,
) -> Vec<Vec<f32>> {
    let mut images = Vec::new();
    for path in paths {
        let result = match image_extension(path) {
            Some(_) => load_image(path, size, background),
            None => Err("not a .png/.jpg/.jpeg file".to_string()),
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
    images
}

/// The dataset of what was loaded from `dir`, or the error of a folder without any image.
fn finish(
    dir: &Path,
    size: usize,
    images: Vec<Vec<f32>>,
    labels: Option<(Vec<u32>, Vec<String>)>,
    skipped: Vec<String>,
) -> Result<Dataset, DataError> {
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
    let data = Dataset::new(images, 3, size)?;
    let data = match labels {
        Some((labels, classes)) => data.with_labels(labels, classes)?,
        None => data,
    };
    Ok(data.with_skipped(skipped))
}

/// Most bytes an image may decode to: a 24-megapixel 16-bit RGBA photo (192 MiB) fits, a file
/// whose header claims a picture far beyond that is refused before any pixel is allocated (a
/// few hundred KB of PNG can claim gigabytes).
pub const MAX_DECODED_BYTES: u64 = 256 * 1024 * 1024;

/// Reads and decodes one file; the error string says why it is unusable.
fn load_image(path: &Path, size: usize, background: Background) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    decode_image_on(&bytes, size, background)
}

/// Decodes a PNG or JPEG file's bytes (format taken from the content, not a name) into CHW RGB
/// in `[-1, 1]`, centre-cropped and resized to `size × size`, as [`load_folder`] does for each
/// file. The error string says why the bytes are unusable; decoding never allocates more than
/// [`MAX_DECODED_BYTES`] for the picture. Transparent pixels are composited onto white.
pub fn decode_image(bytes: &[u8], size: usize) -> Result<Vec<f32>, String> {
    decode_image_on(bytes, size, Background::WHITE)
}

/// [`decode_image`] with transparent pixels composited onto `background` (before resizing, so
/// whatever RGB a fully transparent pixel holds never shows).
pub fn decode_image_on(
    bytes: &[u8],
    size: usize,
    background: Background,
) -> Result<Vec<f32>, String> {
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
    let decoded = reader.decode().map_err(|e| format!("cannot decode: {e}"))?;
    // `into_rgb8` converts in place of the decoded picture rather than beside a kept copy.
    let img = if decoded.color().has_alpha() {
        composite(&decoded.into_rgba8(), background)
    } else {
        decoded.into_rgb8()
    };
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

/// `rgba` over an opaque `background`: each channel `c·α + bg·(1 − α)`, rounded.
fn composite(rgba: &image::RgbaImage, background: Background) -> image::RgbImage {
    let (w, h) = rgba.dimensions();
    image::RgbImage::from_fn(w, h, |x, y| {
        let px = rgba.get_pixel(x, y);
        let alpha = u32::from(px[3]);
        image::Rgb(std::array::from_fn(|c| {
            let mixed = u32::from(px[c]) * alpha + u32::from(background.0[c]) * (255 - alpha);
            // At most 255·255, so the rounded quotient fits a byte.
            u8::try_from((mixed + 127) / 255).unwrap_or(u8::MAX)
        }))
    })
}

/// The colour transparent pixels are composited onto (`--background`, `data.background`):
/// white unless chosen. Written `#rrggbb`, `r,g,b` (0–255 each), `white` or `black`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Background(pub [u8; 3]);

impl Background {
    /// White, the default: what an icon's transparent surroundings look like on a page.
    pub const WHITE: Background = Background([255, 255, 255]);

    /// True for the default (white), which stored configs leave out.
    pub fn is_white(&self) -> bool {
        *self == Self::WHITE
    }
}

impl Default for Background {
    fn default() -> Self {
        Self::WHITE
    }
}

impl FromStr for Background {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad =
            || format!("background {text:?}: expected #rrggbb, r,g,b (each 0-255), white or black");
        match text.to_ascii_lowercase().as_str() {
            "white" => return Ok(Self::WHITE),
            "black" => return Ok(Background([0, 0, 0])),
            _ => {}
        }
        if let Some(hex) = text.strip_prefix('#') {
            if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
            return Ok(Background([channel(0)?, channel(2)?, channel(4)?]));
        }
        match text
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [r, g, b] => {
                let channel = |t: &str| t.parse::<u8>().map_err(|_| bad());
                Ok(Background([channel(r)?, channel(g)?, channel(b)?]))
            }
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for Background {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<Background> for String {
    fn from(bg: Background) -> String {
        bg.to_string()
    }
}

impl fmt::Display for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}
