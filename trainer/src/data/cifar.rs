//! CIFAR-10 and CIFAR-100 in their published binary format (`cifar-10-batches-bin/`,
//! `cifar-100-binary/`): fixed-size records of label byte(s) then 32×32 RGB planes.
//!
//! - CIFAR-10: `<label><1024 R><1024 G><1024 B>` (3,073 bytes); training files
//!   `data_batch_1.bin` … `data_batch_5.bin`, test `test_batch.bin`, class names in
//!   `batches.meta.txt`.
//! - CIFAR-100: `<coarse label><fine label><3072 pixels>` (3,074 bytes); `train.bin`,
//!   `test.bin`, names in `fine_label_names.txt`. Labels are the fine ones (the 100 classes).
//!
//! A class filter keeps the images of the listed labels only, relabelled 0, 1, … in the
//! filter's order (the seed system fine-tunes on CIFAR-100's trees: 47, 52, 56, 59, 96).

use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use model::data::{DataError, Dataset};

/// Side of a CIFAR image.
pub const CIFAR_SIDE: usize = 32;
const PIXELS: usize = 3 * CIFAR_SIDE * CIFAR_SIDE;

/// How `--data PATH` (`data.dir`) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// From what the path holds: CIFAR batch files (by name, else by record size), else a
    /// folder of images.
    #[default]
    Auto,
    /// A folder of PNG/JPEG images (class subfolders optional).
    Images,
    /// CIFAR-10 binary batches.
    Cifar10,
    /// CIFAR-100 binary batches (fine labels).
    Cifar100,
}

impl DataFormat {
    /// True for the default (`auto`), which stored configs leave out.
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_possible_value() {
            Some(value) => f.write_str(value.get_name()),
            None => Ok(()),
        }
    }
}

/// Which CIFAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes, one label byte.
    Ten,
    /// 100 fine classes (and 20 coarse), two label bytes.
    Hundred,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Ten => 1,
            CifarKind::Hundred => 2,
        }
    }

    fn record(self) -> usize {
        self.label_bytes() + PIXELS
    }

    fn classes(self) -> u32 {
        match self {
            CifarKind::Ten => 10,
            CifarKind::Hundred => 100,
        }
    }

    fn names_file(self) -> &'static str {
        match self {
            CifarKind::Ten => "batches.meta.txt",
            CifarKind::Hundred => "fine_label_names.txt",
        }
    }

    fn name(self) -> &'static str {
        match self {
            CifarKind::Ten => "CIFAR-10",
            CifarKind::Hundred => "CIFAR-100",
        }
    }
}

/// The batch files a CIFAR source names, and which CIFAR they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CifarFiles {
    /// CIFAR-10 or CIFAR-100.
    pub kind: CifarKind,
    /// The files, read in this order.
    pub files: Vec<PathBuf>,
}

fn bad(path: &Path, reason: impl Into<String>) -> DataError {
    DataError::BadFile {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// The CIFAR batch files `path` names as `format` reads it, or `None` when it is a folder of
/// images. A file is one batch; a directory (or its `cifar-10-batches-bin/` or
/// `cifar-100-binary/` subfolder) holding `data_batch_*.bin` is CIFAR-10's training set, one
/// holding `train.bin` CIFAR-100's. Test files are never picked from a directory.
pub fn find(path: &Path, format: DataFormat) -> Result<Option<CifarFiles>, DataError> {
    let wanted = match format {
        DataFormat::Images => return Ok(None),
        DataFormat::Cifar10 => Some(CifarKind::Ten),
        DataFormat::Cifar100 => Some(CifarKind::Hundred),
        DataFormat::Auto => None,
    };
    if path.is_file() {
        let kind = match wanted {
            Some(kind) => kind,
            None => kind_of_file(path)?,
        };
        return Ok(Some(CifarFiles {
            kind,
            files: vec![path.to_path_buf()],
        }));
    }
    for dir in [
        path.to_path_buf(),
        path.join("cifar-10-batches-bin"),
        path.join("cifar-100-binary"),
    ] {
        if !dir.is_dir() {
            continue;
        }
        let mut batches: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|source| DataError::Io {
                path: dir.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("data_batch_") && n.ends_with(".bin"))
            })
            .collect();
        batches.sort();
        let train = dir.join("train.bin");
        let found = match wanted {
            Some(CifarKind::Hundred) | None if train.is_file() => {
                Some((CifarKind::Hundred, vec![train]))
            }
            Some(CifarKind::Ten) | None if !batches.is_empty() => Some((CifarKind::Ten, batches)),
            _ => None,
        };
        if let Some((kind, files)) = found {
            return Ok(Some(CifarFiles { kind, files }));
        }
    }
    match wanted {
        None => Ok(None),
        Some(kind) => Err(bad(
            path,
            format!(
                "no {} training batches here (expected {})",
                kind.name(),
                match kind {
                    CifarKind::Ten => "data_batch_*.bin",
                    CifarKind::Hundred => "train.bin",
                }
            ),
        )),
    }
}

/// Which CIFAR a batch file is, by its published name, else by its record size.
fn kind_of_file(path: &Path) -> Result<CifarKind, DataError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if (name.starts_with("data_batch_") && name.ends_with(".bin")) || name == "test_batch.bin" {
        return Ok(CifarKind::Ten);
    }
    if name == "train.bin" || name == "test.bin" {
        return Ok(CifarKind::Hundred);
    }
    let len = std::fs::metadata(path)
        .map_err(|source| DataError::Io {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let fits = |kind: CifarKind| len > 0 && len % kind.record() as u64 == 0;
    match (fits(CifarKind::Ten), fits(CifarKind::Hundred)) {
        (true, false) => Ok(CifarKind::Ten),
        (false, true) => Ok(CifarKind::Hundred),
        _ => {
            Err(bad(
                path,
                format!(
                "not a CIFAR batch by name, and its {len} bytes are {} whole 3073-byte (CIFAR-10) \
                 or 3074-byte (CIFAR-100) records: say which with --data-format (data.format) \
                 cifar10 or cifar100, or give a folder of images",
                if fits(CifarKind::Ten) { "both" } else { "neither" }
            ),
            ))
        }
    }
}

/// The class names of `kind` from its names file beside `first`, else the label numbers.
fn class_names(kind: CifarKind, first: &Path) -> Vec<String> {
    let numbers = || (0..kind.classes()).map(|l| l.to_string()).collect();
    let Some(file) = first.parent().map(|d| d.join(kind.names_file())) else {
        return numbers();
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return numbers();
    };
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.len() == kind.classes() as usize {
        names
    } else {
        tracing::warn!(
            "{}: {} names for {} classes; using label numbers",
            file.display(),
            names.len(),
            kind.classes()
        );
        numbers()
    }
}

/// The images of `set` (only those whose label `classes` lists, when it lists any) as CHW RGB
/// in `[-1, 1]` resized to `size × size`, labelled: with a filter by position in it, without
/// by their own label. Every record is checked: a file that is not whole records, or a label
/// past the classes, is an error naming the file (and the record).
pub fn load(set: &CifarFiles, classes: &[u32], size: usize) -> Result<Dataset, DataError> {
    let Some(first) = set.files.first() else {
        return Err(DataError::EmptyFolder {
            path: "(no CIFAR file)".into(),
            detail: String::new(),
        });
    };
    let kind = set.kind;
    for (i, &c) in classes.iter().enumerate() {
        if c >= kind.classes() {
            return Err(bad(
                first,
                format!(
                    "data.classes holds {c}, but {} labels are 0-{}",
                    kind.name(),
                    kind.classes() - 1
                ),
            ));
        }
        if classes[..i].contains(&c) {
            return Err(bad(first, format!("data.classes lists {c} twice")));
        }
    }
    let names = class_names(kind, first);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for file in &set.files {
        read_file(file, kind, classes, size, &mut images, &mut labels)?;
    }
    if images.is_empty() {
        return Err(bad(
            first,
            format!(
                "no image of the classes {classes:?} in {} file(s)",
                set.files.len()
            ),
        ));
    }
    let class_list = if classes.is_empty() {
        names
    } else {
        classes
            .iter()
            .map(|&c| {
                names
                    .get(c as usize)
                    .cloned()
                    .unwrap_or_else(|| c.to_string())
            })
            .collect()
    };
    Dataset::new(images, 3, size)?.with_labels(labels, class_list)
}

/// Appends the images (and labels) of one batch file that pass the filter.
fn read_file(
    file: &Path,
    kind: CifarKind,
    classes: &[u32],
    size: usize,
    images: &mut Vec<Vec<f32>>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let io = |source| DataError::Io {
        path: file.display().to_string(),
        source,
    };
    let handle = std::fs::File::open(file).map_err(io)?;
    let len = handle.metadata().map_err(io)?.len();
    let record = kind.record();
    if len == 0 || len % record as u64 != 0 {
        return Err(bad(
            file,
            format!(
                "{len} bytes is not a whole number of {record}-byte {} records (truncated, or \
                 another format)",
                kind.name()
            ),
        ));
    }
    let mut reader = BufReader::with_capacity(1 << 20, handle);
    let mut buf = vec![0u8; record];
    for index in 0..len / record as u64 {
        reader.read_exact(&mut buf).map_err(io)?;
        let label = u32::from(buf[kind.label_bytes() - 1]);
        if label >= kind.classes() {
            return Err(bad(
                file,
                format!(
                    "record {index} has label {label}, but {} labels are 0-{}",
                    kind.name(),
                    kind.classes() - 1
                ),
            ));
        }
        let label = if classes.is_empty() {
            label
        } else {
            match classes.iter().position(|&c| c == label) {
                Some(at) => u32::try_from(at).unwrap_or(u32::MAX),
                None => continue,
            }
        };
        images.push(to_image(&buf[kind.label_bytes()..], size));
        labels.push(label);
    }
    Ok(())
}

/// One record's planar 32×32 RGB bytes as CHW `f32` in `[-1, 1]` at `size × size`.
fn to_image(planes: &[u8], size: usize) -> Vec<f32> {
    let n = CIFAR_SIDE * CIFAR_SIDE;
    if size == CIFAR_SIDE {
        return planes.iter().map(|&v| f32::from(v) / 127.5 - 1.0).collect();
    }
    let side = CIFAR_SIDE as u32;
    let rgb = image::RgbImage::from_fn(side, side, |x, y| {
        let i = (y * side + x) as usize;
        image::Rgb([planes[i], planes[n + i], planes[2 * n + i]])
    });
    let out_side = u32::try_from(size).unwrap_or(side);
    let resized = image::imageops::resize(&rgb, out_side, out_side, FilterType::Triangle);
    let m = size * size;
    let mut out = vec![0f32; 3 * m];
    for (i, px) in resized.pixels().enumerate() {
        for c in 0..3 {
            out[c * m + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A CIFAR-100 file of `labels.len()` records: fine label `labels[i]`, every pixel of
    /// record i equal to `i`.
    fn write_cifar100(path: &Path, labels: &[u8]) {
        let mut bytes = Vec::new();
        for (i, &fine) in labels.iter().enumerate() {
            bytes.extend([fine / 5, fine]);
            bytes.extend(std::iter::repeat_n(i as u8, PIXELS));
        }
        std::fs::write(path, bytes).unwrap();
    }

    #[test]
    fn a_class_filter_keeps_and_relabels_in_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.bin");
        write_cifar100(&file, &[47, 3, 96, 52, 47, 10]);
        let mut names: Vec<String> = (0..100).map(|i| format!("c{i}")).collect();
        names[47] = "maple_tree".into();
        names[96] = "willow_tree".into();
        std::fs::write(
            dir.path().join("fine_label_names.txt"),
            names.join("\n") + "\n\n",
        )
        .unwrap();
        let set = find(dir.path(), DataFormat::Auto).unwrap().unwrap();
        assert_eq!(set.kind, CifarKind::Hundred);
        let ds = load(&set, &[96, 47, 52], 32).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.labels().unwrap(), [1, 0, 2, 1]);
        assert_eq!(ds.classes(), ["willow_tree", "maple_tree", "c52"]);
        // Record 2 (pixels all 2) is the second kept image.
        assert!(ds.image(1).unwrap().iter().all(|&v| v == 2.0 / 127.5 - 1.0));
        let all = load(&set, &[], 16).unwrap();
        assert_eq!((all.len(), all.size(), all.classes().len()), (6, 16, 100));
    }

    #[test]
    fn broken_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("train.bin");
        write_cifar100(&file, &[1, 2]);
        let bytes = std::fs::read(&file).unwrap();
        std::fs::write(&file, &bytes[..bytes.len() - 10]).unwrap();
        let set = find(&file, DataFormat::Auto).unwrap().unwrap();
        let err = load(&set, &[], 32).unwrap_err().to_string();
        assert!(
            err.contains("train.bin") && err.contains("not a whole number"),
            "{err}"
        );

        write_cifar100(&file, &[1, 120]);
        let err = load(&set, &[], 32).unwrap_err().to_string();
        assert!(err.contains("record 1 has label 120"), "{err}");
        write_cifar100(&file, &[1, 2]);
        let err = load(&set, &[100], 32).unwrap_err().to_string();
        assert!(err.contains("data.classes holds 100"), "{err}");
        let err = load(&set, &[5], 32).unwrap_err().to_string();
        assert!(err.contains("no image of the classes [5]"), "{err}");

        let odd = dir.path().join("odd.bin");
        std::fs::write(&odd, vec![0u8; 100]).unwrap();
        let err = find(&odd, DataFormat::Auto).unwrap_err().to_string();
        assert!(
            err.contains("odd.bin") && err.contains("--data-format"),
            "{err}"
        );
        let empty = tempfile::tempdir().unwrap();
        let err = find(empty.path(), DataFormat::Cifar10)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data_batch_"), "{err}");
        assert_eq!(find(empty.path(), DataFormat::Auto).unwrap(), None);
    }

    #[test]
    fn cifar10_batches_are_found_in_their_published_folder() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("cifar-10-batches-bin");
        std::fs::create_dir(&sub).unwrap();
        for (name, label) in [
            ("data_batch_2.bin", 3u8),
            ("data_batch_1.bin", 7),
            ("test_batch.bin", 1),
        ] {
            let mut bytes = vec![label];
            bytes.extend((0..PIXELS).map(|i| (i % 251) as u8));
            std::fs::write(sub.join(name), bytes).unwrap();
        }
        let set = find(dir.path(), DataFormat::Auto).unwrap().unwrap();
        assert_eq!(set.kind, CifarKind::Ten);
        let names: Vec<_> = set
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["data_batch_1.bin", "data_batch_2.bin"]);
        let ds = load(&set, &[], 32).unwrap();
        assert_eq!(ds.labels().unwrap(), [7, 3]);
        // Planar RGB: the red plane comes first, pixel (0, 0) of each plane.
        let img = ds.image(0).unwrap();
        assert_eq!(img[0], -1.0);
        assert_eq!(img[1024], f32::from((1024 % 251) as u8) / 127.5 - 1.0);
        assert_eq!(
            find(&sub.join("test_batch.bin"), DataFormat::Auto)
                .unwrap()
                .unwrap()
                .kind,
            CifarKind::Ten
        );
    }
}
