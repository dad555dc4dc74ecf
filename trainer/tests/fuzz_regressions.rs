//! Hostile `--data` images (see fuzz/fuzz_targets/image_decode.rs): inputs that once made the
//! decoder misbehave, or that a size limit exists for, kept so the fix stays; and the seed
//! corpora of the trainer's fuzz targets, which `make test`'s fuzz smoke run leaves out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use trainer::data::{decode_image, MAX_DECODED_BYTES};

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// A PNG whose header claims `width × height` 8-bit RGB and whose one IDAT chunk holds
/// `idat` (a zlib stream, or anything).
fn png_claiming(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, adaptive filter, no interlace
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A zlib stream of `rows` PNG rows of `width` black RGB pixels, uncompressed (stored blocks).
fn zlib_black_rows(width: u32, rows: u32) -> Vec<u8> {
    let raw = vec![0u8; rows as usize * (1 + 3 * width as usize)];
    let mut out = vec![0x78, 0x01];
    let mut blocks = raw.chunks(65_535).peekable();
    while let Some(block) = blocks.next() {
        out.push(u8::from(blocks.peek().is_none()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in &raw {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

#[test]
fn the_png_builder_makes_files_the_decoder_reads() {
    let pixels = decode_image(&png_claiming(5, 3, &zlib_black_rows(5, 3)), 2).unwrap();
    assert_eq!(pixels, vec![-1.0; 3 * 2 * 2]);
}

/// A PNG claiming a 12000 × 12000 picture (432 MB of RGB): the decoder's default limit
/// (512 MiB) let it allocate that, and the RGB conversion and the crop a copy each, so a 420 KB
/// file of black rows in `--data` took 1.27 GB. It is refused from its header now.
#[test]
fn a_png_claiming_a_huge_picture_is_refused_from_its_header() {
    let side = 12_000;
    assert!(u64::from(side) * u64::from(side) * 3 > MAX_DECODED_BYTES);
    let png = png_claiming(side, side, &zlib_black_rows(side, 1));
    assert!(png.len() < 40_000);
    let err = decode_image(&png, 16).unwrap_err();
    assert!(err.contains("cannot decode"), "{err}");
    assert!(err.to_lowercase().contains("limit"), "{err}");
}

/// Just under the cap, a truncated picture is still decoded as far as it goes or refused as
/// truncated, not as too large: the cap does not refuse ordinary large photos.
#[test]
fn a_large_but_allowed_picture_is_not_refused_for_its_size() {
    let (w, h) = (6000, 4000); // 24 megapixels, 72 MB of RGB
    let png = png_claiming(w, h, &zlib_black_rows(w, 2));
    let err = decode_image(&png, 16).unwrap_err();
    assert!(!err.to_lowercase().contains("limit"), "{err}");
}

/// 672 bytes of JPEG (a real 8 × 6 file with its frame header patched) claiming 12000 × 12000:
/// before the cap, decoding it took 3 s and 1.27 GB (the picture, then its RGB copy).
#[test]
fn a_jpeg_claiming_a_huge_picture_is_refused_from_its_header() {
    let jpeg = include_bytes!("fuzz_cases/jpeg_claims_12000x12000.jpg");
    let err = decode_image(jpeg, 16).unwrap_err();
    assert!(err.contains("cannot decode"), "{err}");
    assert!(err.to_lowercase().contains("limit"), "{err}");
}

#[test]
fn a_zero_training_size_is_an_error_not_a_panic() {
    let png = png_claiming(4, 4, &zlib_black_rows(4, 4));
    let err = decode_image(&png, 0).unwrap_err();
    assert!(err.contains("resize"), "{err}");
}

/// The seed corpus of one of the trainer's fuzz targets: fuzz/corpus/<target>/, every file.
fn seeds(target: &str) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// The fuzz smoke run of `make test` leaves out the targets that link candle, so their seeds are
/// replayed here, each held to its target's property and more: a seed is a valid input.
#[test]
fn the_yaml_config_seeds_parse_validate_and_round_trip_through_the_stored_form() {
    use trainer::train::config::TrainingConfig;
    for (path, bytes) in seeds("yaml_config") {
        let text = std::str::from_utf8(&bytes).unwrap();
        let cfg = TrainingConfig::from_yaml_str(text, &path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored = cfg.to_stored();
        let back = TrainingConfig::from_stored(stored.clone()).unwrap();
        assert_eq!(back.to_stored(), stored, "{}", path.display());
    }
}

#[test]
fn the_stored_config_seeds_read_back_unchanged() {
    use trainer::train::config::TrainingConfig;
    for (path, bytes) in seeds("stored_config") {
        let saved: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let section = saved.get("training").cloned().unwrap_or(saved);
        let cfg = TrainingConfig::from_stored(section)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored = cfg.to_stored();
        let back = TrainingConfig::from_stored(stored.clone()).unwrap();
        assert_eq!(back.to_stored(), stored, "{}", path.display());
        back.validate().unwrap();
    }
}

#[test]
fn the_image_seeds_decode_to_pixels_in_range() {
    const SIZE: usize = 8;
    for (path, bytes) in seeds("image_decode") {
        let pixels =
            decode_image(&bytes, SIZE).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(pixels.len(), 3 * SIZE * SIZE, "{}", path.display());
        assert!(
            pixels.iter().all(|v| (-1.0..=1.0).contains(v)),
            "{}: pixel values outside [-1, 1]",
            path.display()
        );
    }
}
