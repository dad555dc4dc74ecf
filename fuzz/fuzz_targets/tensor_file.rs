//! Safetensors files as the store reads them: the header alone (`store::read_header`, which the
//! server and the base-config reader use) and the whole file (`read_tensor_file`, which loads
//! checkpoints and base models).

#![no_main]

use libfuzzer_sys::fuzz_target;
use safetensors::Dtype;
use store::tensor_file::read_tensor_file;

fuzz_target!(|data: &[u8]| {
    let size = data.len() as u64;
    let header = store::read_header(data, size);
    if let Ok(header) = &header {
        assert!(header.data_start <= size, "data starts past the end");
        let _ = header.metadata_value("format");
    }
    // A size larger than what can be read: a file that shrank while it was being read.
    let _ = store::read_header(
        data,
        size.saturating_add(1 + u64::from(data.first().copied().unwrap_or(0))),
    );

    let path = diffit_fuzz::write_scratch("x.safetensors", data);
    let full = read_tensor_file(&path, None);
    match (&header, &full) {
        (Err(e), Ok(_)) => {
            panic!("the whole-file reader accepted a file whose header is refused: {e}")
        }
        (Ok(h), Err(e)) => {
            // The whole-file reader only refuses dtypes it cannot turn into f32 values.
            let convertible = h
                .header
                .tensors()
                .values()
                .all(|info| matches!(info.dtype, Dtype::F32 | Dtype::F64));
            assert!(!convertible, "header accepted, whole file refused: {e}");
        }
        (Ok(h), Ok(file)) => {
            assert_eq!(file.digest.size, size);
            assert_eq!(file.tensors.len(), h.header.tensors().len());
        }
        (Err(_), Err(_)) => {}
    }
});
