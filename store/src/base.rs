//! The frozen base model: saved once per run, hard-linked from another run of the same
//! checkpoints dir when that run already stores byte-identical weights.

use std::fs;
use std::path::PathBuf;

use format::layout::parse_run_dir_name;
use format::metadata::FORMAT_VERSION;
use format::tensors::{meta_keys, BASE_MODEL_FORMAT};
use format::{BaseIdentity, CheckpointName, FileRecord, RunLayout};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::atomic::link_or_copy_atomic;
use super::checksum::{digest_file, FileDigest};
use super::error::{Result, StoreError};
use super::manager::CheckpointManager;
use super::saved::SavedBase;
use super::tensor_file::{
    digest_tensor_file, read_tensor_file, write_tensor_file, HeaderMetadata, TensorMap,
};

/// The header of a base model file: its format, version and model configuration.
fn base_header(model_config: &Value) -> HeaderMetadata {
    let mut header = HeaderMetadata::new();
    header.insert(meta_keys::FORMAT.into(), BASE_MODEL_FORMAT.into());
    header.insert(meta_keys::FORMAT_VERSION.into(), FORMAT_VERSION.to_string());
    header.insert(meta_keys::MODEL_CONFIG.into(), model_config.to_string());
    header
}

/// A base model read back.
#[derive(Debug)]
pub struct BaseModel {
    /// The frozen parameters by module path.
    pub tensors: TensorMap,
    /// The model configuration stored with them (`Null` if none).
    pub model_config: Value,
}

/// Only the part of metadata.json that base-model sharing looks at.
#[derive(Deserialize)]
struct BaseOnly {
    #[serde(default)]
    base_model: Option<FileRecord>,
}

impl CheckpointManager {
    /// Saves the frozen base model once. When another run in the same checkpoints directory
    /// already stores a byte-identical base model, it is hard-linked instead of written again.
    pub fn save_base_model(
        &mut self,
        tensors: &TensorMap,
        model_config: &Value,
    ) -> Result<SavedBase> {
        self.require_writer("save the base model")?;
        let path = self.layout.checkpoint(CheckpointName::Base);
        let header = base_header(model_config);
        let named = || tensors.iter().map(|(k, v)| (k.as_str(), v));
        let expected = digest_tensor_file(&path, named(), &header)?;
        let (digest, linked_from) = match self.find_base_file(&expected) {
            Some(source) => {
                link_or_copy_atomic(&source, &path)?;
                (expected, Some(source))
            }
            None => (write_tensor_file(&path, named(), &header)?, None),
        };
        let mut next = self.metadata.clone();
        next.base_model = Some(FileRecord {
            path: CheckpointName::Base.relative_path(self.run_number()),
            checksum: digest.checksum.clone(),
            size: digest.size,
            extra: Map::new(),
        });
        next.base_identity = Some(BaseIdentity {
            checksum: digest.checksum.clone(),
            size: digest.size,
        });
        self.commit(next)?;
        Ok(SavedBase {
            path,
            digest,
            linked_from,
        })
    }

    /// The digest `tensors` would have as this run's base model file, without writing it: how
    /// weights found elsewhere are recognised as the run's base ([`Self::required_base`]).
    pub fn base_digest(&self, tensors: &TensorMap, model_config: &Value) -> Result<FileDigest> {
        let path = self.layout.checkpoint(CheckpointName::Base);
        let named = tensors.iter().map(|(k, v)| (k.as_str(), v));
        digest_tensor_file(&path, named, &base_header(model_config))
    }

    /// Records which base model the run trains on without storing its weights
    /// (`save_base_model: false`): a resume then accepts only weights with this digest.
    pub fn record_base_identity(
        &mut self,
        tensors: &TensorMap,
        model_config: &Value,
    ) -> Result<FileDigest> {
        self.require_writer("record the base model")?;
        let digest = self.base_digest(tensors, model_config)?;
        let mut next = self.metadata.clone();
        next.base_identity = Some(BaseIdentity {
            checksum: digest.checksum.clone(),
            size: digest.size,
        });
        self.commit(next)?;
        Ok(digest)
    }

    /// Records which base-training run and checkpoint the base came from.
    pub fn record_base_lineage(&mut self, lineage: format::metadata::BaseLineage) -> Result<()> {
        self.require_writer("record the base model's lineage")?;
        let mut next = self.metadata.clone();
        next.base_lineage = Some(lineage);
        self.commit(next)
    }

    /// The digest of the base model the run was trained on: recorded for every run since
    /// `base_identity` exists, and known from the stored base's record for older runs.
    pub fn required_base(&self) -> Option<FileDigest> {
        let m = &self.metadata;
        m.base_identity
            .as_ref()
            .map(|b| FileDigest {
                checksum: b.checksum.clone(),
                size: b.size,
            })
            .or_else(|| {
                m.base_model.as_ref().map(|r| FileDigest {
                    checksum: r.checksum.clone(),
                    size: r.size,
                })
            })
    }

    /// Whether the run's own base model file exists and matches its record (hashing it).
    pub fn own_base_intact(&self) -> bool {
        let Some(record) = &self.metadata.base_model else {
            return false;
        };
        let path = self.layout.checkpoint(CheckpointName::Base);
        digest_file(&path).is_ok_and(|d| d.checksum == record.checksum && d.size == record.size)
    }

    /// Another run of this checkpoints dir whose base model file is exactly the one this run
    /// needs ([`Self::required_base`]), checked by hashing it.
    pub fn find_base_in_other_runs(&self) -> Option<PathBuf> {
        self.find_base_file(&self.required_base()?)
    }

    /// Another run's base model file with exactly these bytes (checked by hashing it).
    fn find_base_file(&self, expected: &FileDigest) -> Option<PathBuf> {
        let base_dir = self.layout.base_dir();
        let entries = fs::read_dir(base_dir).ok()?;
        for entry in entries.flatten() {
            let Some(n) = entry.file_name().to_str().and_then(parse_run_dir_name) else {
                continue;
            };
            if n == self.run_number() {
                continue;
            }
            let other = RunLayout::new(base_dir, n);
            // Other runs may be broken or half-written; they are simply not candidates then.
            let Ok(bytes) = fs::read(other.metadata()) else {
                continue;
            };
            let Ok(BaseOnly {
                base_model: Some(record),
            }) = serde_json::from_slice(&bytes)
            else {
                continue;
            };
            if record.checksum != expected.checksum || record.size != expected.size {
                continue;
            }
            let candidate = other.checkpoint(CheckpointName::Base);
            if digest_file(&candidate).is_ok_and(|d| &d == expected) {
                return Some(candidate);
            }
        }
        None
    }

    /// True once a base model file is recorded (see [`Self::own_base_intact`]).
    pub fn has_base_model(&self) -> bool {
        self.metadata.base_model.is_some()
    }

    /// Loads and verifies the base model.
    pub fn load_base_model(&self) -> Result<BaseModel> {
        self.refuse_if_seed("load the base model of")?;
        let path = self.layout.checkpoint(CheckpointName::Base);
        let record = self.metadata.base_model.as_ref();
        if !path.exists() {
            return Err(StoreError::MissingCheckpoint {
                which: "base".into(),
                run_dir: self.layout.root(),
                reason: format!("{} does not exist", path.display()),
            });
        }
        let expected = record.map(|r| FileDigest {
            checksum: r.checksum.clone(),
            size: r.size,
        });
        let file = read_tensor_file(&path, expected.as_ref())?;
        let bad = |reason: String| StoreError::BadTensorFile {
            path: path.clone(),
            reason,
        };
        if let Some(format) = file.metadata.get(meta_keys::FORMAT) {
            if format != BASE_MODEL_FORMAT {
                return Err(bad(format!(
                    "format is {format:?}, expected {BASE_MODEL_FORMAT:?}"
                )));
            }
        }
        let model_config = match file.metadata.get(meta_keys::MODEL_CONFIG) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| bad(format!("model_config is not JSON: {e}")))?,
            None => Value::Null,
        };
        Ok(BaseModel {
            tensors: file.tensors,
            model_config,
        })
    }
}
