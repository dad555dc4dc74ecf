//! An image file in the `--data` folder: `trainer::data::decode_image`, the decoder
//! `load_folder` runs on each file's bytes (format guessed from the content, as for a file
//! whose extension lies).

#![no_main]

// Linked for its allocation cap (a `#[global_allocator]`), though nothing else is used here.
use diffit_fuzz as _;
use libfuzzer_sys::fuzz_target;

/// Training image side: small, so the fuzzer spends its time in the decoders, not in resizing.
const SIZE: usize = 8;

fuzz_target!(|data: &[u8]| {
    if let Ok(pixels) = trainer::data::decode_image(data, SIZE) {
        assert_eq!(pixels.len(), 3 * SIZE * SIZE);
        assert!(
            pixels.iter().all(|v| (-1.0..=1.0).contains(v)),
            "pixel values outside [-1, 1]"
        );
    }
});
