//! Images with an alpha channel: transparent pixels are composited onto a background colour
//! (white unless chosen), whatever RGB values they hold, instead of losing their alpha.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly.

use std::path::Path;

use trainer::data::{decode_image, load_folder, load_folder_on, Background};

/// An RGBA PNG of `w × h` pixels all equal to `px`.
fn write_rgba(path: &Path, w: u32, h: u32, px: [u8; 4]) {
    image::RgbaImage::from_pixel(w, h, image::Rgba(px))
        .save(path)
        .unwrap();
}

/// Every value of one channel (CHW, `[-1, 1]`) of an image of `n` pixels.
fn channel(pixels: &[f32], n: usize, c: usize) -> &[f32] {
    &pixels[c * n..(c + 1) * n]
}

fn to_byte(v: f32) -> u8 {
    ((v + 1.0) * 127.5).round() as u8
}

#[test]
fn transparent_pixels_take_the_background_not_their_junk_rgb() {
    let dir = tempfile::tempdir().unwrap();
    // Fully transparent, holding a saturated green that must never show.
    write_rgba(&dir.path().join("a_clear.png"), 12, 12, [0, 255, 0, 0]);
    // Half-transparent red.
    write_rgba(&dir.path().join("b_half.png"), 12, 12, [255, 0, 0, 128]);
    let n = 8 * 8;
    let expect = |data: &model::data::Dataset, image: usize, rgb: [u8; 3]| {
        let pixels = data.image(image).unwrap();
        for (c, want) in rgb.iter().enumerate() {
            for v in channel(pixels, n, c) {
                assert_eq!(to_byte(*v), *want, "image {image} channel {c}: {v}");
            }
        }
    };
    // White by default: c·α + 255·(1 − α), rounded (128/255 of red over white).
    let white = load_folder(dir.path(), 8).unwrap();
    expect(&white, 0, [255, 255, 255]);
    expect(&white, 1, [255, 127, 127]);
    let black = load_folder_on(dir.path(), 8, "0,0,0".parse().unwrap()).unwrap();
    expect(&black, 0, [0, 0, 0]);
    expect(&black, 1, [128, 0, 0]);
    let teal: Background = "#008080".parse().unwrap();
    expect(
        &load_folder_on(dir.path(), 8, teal).unwrap(),
        0,
        [0, 128, 128],
    );

    // The decoder the loader runs on each file's bytes does the same.
    let bytes = std::fs::read(dir.path().join("a_clear.png")).unwrap();
    let pixels = decode_image(&bytes, 4).unwrap();
    assert!(pixels.iter().all(|v| to_byte(*v) == 255), "{pixels:?}");
}

#[test]
fn background_colours_parse_and_print() {
    for (text, rgb) in [
        ("white", [255, 255, 255]),
        ("black", [0, 0, 0]),
        ("#FF8000", [255, 128, 0]),
        ("0, 64,255", [0, 64, 255]),
    ] {
        assert_eq!(
            text.parse::<Background>().unwrap(),
            Background(rgb),
            "{text}"
        );
    }
    assert_eq!(Background([255, 128, 0]).to_string(), "#ff8000");
    for bad in ["", "#fff", "#gggggg", "1,2", "1,2,256", "red"] {
        let err = bad.parse::<Background>().unwrap_err();
        assert!(err.contains("#rrggbb"), "{bad}: {err}");
    }
}
