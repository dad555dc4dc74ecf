//! A checkpoint file as the server serves it: its header read from the open file
//! (`FileFactsCache::get_or_read`), the weights-only view built from it
//! (`Representation::lora_only`), byte ranges of that view (`Representation::slice`) and the
//! bodies streamed from the file (`Representation::into_stream`).
//!
//! Checked, beyond "no panic": the view is a valid safetensors file holding exactly the LoRA
//! tensors of the original, byte for byte, and a range of it is the same bytes as that range of
//! the whole view.

#![no_main]

use std::collections::BTreeMap;
use std::fs::File;
use std::sync::{Arc, OnceLock};

use format::tensors::is_lora_tensor;
use futures_util::TryStreamExt;
use libfuzzer_sys::fuzz_target;
use server::tensor_file::{FileFactsCache, FileKey, Representation};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(
        || match tokio::runtime::Builder::new_current_thread().build() {
            Ok(rt) => rt,
            Err(e) => diffit_fuzz::harness_failure("start", std::path::Path::new("a runtime"), &e),
        },
    )
}

/// The body the server would send for `rep`.
fn body(rep: Representation, file: &Arc<File>) -> Vec<u8> {
    let chunks: Vec<bytes::Bytes> = runtime()
        .block_on(rep.into_stream(file.clone()).try_collect())
        .unwrap_or_else(|e| panic!("streaming a representation failed: {e}"));
    chunks.concat()
}

fuzz_target!(|data: &[u8]| {
    let path = diffit_fuzz::write_scratch("served.safetensors", data);
    let file = diffit_fuzz::open_scratch(&path);
    let key =
        FileKey::of(&file).unwrap_or_else(|e| diffit_fuzz::harness_failure("stat", &path, &e));
    // A fresh cache: the scratch file is rewritten in place, so its key may repeat.
    let Ok(facts) = FileFactsCache::default().get_or_read(&file, key) else {
        return;
    };
    let names = facts.tensor_names();
    let view = Representation::lora_only(&facts).unwrap_or_else(|e| {
        panic!("no weights-only view of a file whose header was accepted: {e}")
    });
    let file = Arc::new(file);

    let whole = body(Representation::whole(key.size), &file);
    assert_eq!(whole, data, "the whole file is not served as stored");

    let served = body(view.clone(), &file);
    assert_eq!(served.len() as u64, view.len());
    let original = safetensors::SafeTensors::deserialize(data)
        .unwrap_or_else(|e| panic!("the header reader accepted an invalid file: {e}"));
    let lora = safetensors::SafeTensors::deserialize(&served)
        .unwrap_or_else(|e| panic!("the weights-only view is not a valid safetensors file: {e}"));
    let expected: BTreeMap<String, Vec<u8>> = original
        .tensors()
        .into_iter()
        .filter(|(name, _)| is_lora_tensor(name))
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect();
    let got: BTreeMap<String, Vec<u8>> = lora
        .tensors()
        .into_iter()
        .map(|(name, t)| (name, t.data().to_vec()))
        .collect();
    assert_eq!(
        got, expected,
        "the view's tensors differ from the file's LoRA tensors"
    );
    assert_eq!(names.len(), original.len());

    if !served.is_empty() {
        // A range picked by the input itself.
        let len = served.len() as u64;
        let seed = data
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        let from = seed % len;
        let to = from + (seed >> 32) % (len - from);
        let part = body(view.slice(from..=to), &file);
        assert_eq!(
            part,
            &served[from as usize..=to as usize],
            "range {from}-{to} of the view"
        );
    }
});
