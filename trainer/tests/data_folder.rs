//! The image-folder loader: crops, resizes, skips what it cannot read, names the file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests and benchmarks fail loudly.

use model::data::DataError;
use trainer::data::load_folder;

fn write_png(path: &std::path::Path, w: u32, h: u32) {
    let img =
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 5) as u8, 128]));
    img.save(path).unwrap();
}

#[test]
fn loads_crops_and_resizes() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 40, 20);
    write_png(&dir.path().join("b.PNG"), 12, 30);
    let ds = load_folder(dir.path(), 8).unwrap();
    assert_eq!((ds.len(), ds.size(), ds.channels()), (2, 8, 3));
    assert!(ds.skipped().is_empty());
    assert!(ds
        .image(0)
        .unwrap()
        .iter()
        .all(|v| (-1.0..=1.0).contains(v)));
}

#[test]
fn unreadable_files_are_skipped_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("good.png"), 16, 16);
    std::fs::write(dir.path().join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"hello").unwrap();
    let ds = load_folder(dir.path(), 8).unwrap();
    assert_eq!(ds.len(), 1);
    assert_eq!(ds.skipped().len(), 2);
    assert!(ds.skipped()[0].contains("broken.png"), "{:?}", ds.skipped());
    assert!(ds.skipped()[1].contains("notes.txt"), "{:?}", ds.skipped());
}

#[test]
fn empty_or_missing_folders_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_folder(dir.path(), 8).unwrap_err();
    assert!(matches!(err, DataError::EmptyFolder { .. }), "{err}");
    std::fs::write(dir.path().join("broken.jpg"), b"garbage").unwrap();
    let err = load_folder(dir.path(), 8).unwrap_err();
    assert!(err.to_string().contains("broken.jpg"), "{err}");
    let missing = dir.path().join("nope");
    let err = load_folder(&missing, 8).unwrap_err();
    assert!(
        matches!(err, DataError::Io { .. }) && err.to_string().contains("nope"),
        "{err}"
    );
}
