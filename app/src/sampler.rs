//! Sampling in the browser, without the UI: download the base and the weights-only LoRA
//! checkpoint (on the page's thread), then on the sampling pool ([`run_job`]) fuse them with
//! candle and run DDIM for the fused model and the base from the same noise, the two side by
//! side on two threads, reporting progress and preview images to the page as it goes.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use format::layout::CheckpointName;
use format::tensors::meta_keys;
use format::Metadata;
use model::diffusion::{to_rgb8, DdimSampler, Guidance, NoiseSchedule, DEFAULT_ETA};
use model::{fuse_lora_weights, validate_lora, Config, DiffiT, LoraConfig};
use serde_json::Value;

use format::api::checkpoint_path;

use crate::api::{fetch_bytes, ApiError};
use crate::base_cache::{load_base, BaseError, BaseSource, LoadedBase};
use crate::now_ms;
use crate::pool::{on_worker, Reporter};

/// Why sampling could not run; shown in the page.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// A download failed.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The base model could not be had intact.
    #[error(transparent)]
    Base(#[from] BaseError),
    /// A downloaded file is not a readable safetensors file.
    #[error("{what} is damaged: {message}")]
    Damaged {
        /// Which file.
        what: String,
        /// What failed to parse.
        message: String,
    },
    /// No model or LoRA configuration could be found for the run.
    #[error("run has no usable {0} configuration")]
    MissingConfig(&'static str),
    /// The weights do not fit the model (wrong shapes, missing tensors).
    #[error("the checkpoint does not fit the model: {0}")]
    Model(#[from] model::ModelError),
    /// A tensor operation failed while sampling.
    #[error("sampling failed: {0}")]
    Tensor(#[from] candle_core::Error),
    /// The class asked for is not one the model has.
    #[error("class {class} is out of range: {classes}")]
    NoSuchClass {
        /// The class asked for.
        class: u32,
        /// What the model has (`the model has 7 classes`, `the model has no class labels`).
        classes: String,
    },
}

/// Both models of a comparison, ready to sample.
pub struct Models {
    /// The model configuration.
    pub config: Config,
    /// The frozen base model alone.
    pub base: DiffiT,
    /// The base with the LoRA update merged into its weights.
    pub fused: DiffiT,
    /// Where the base bytes came from.
    pub base_source: BaseSource,
    /// Milliseconds spent checking the base against its recorded checksum, if it has one.
    pub base_verify_ms: Option<f64>,
    /// Bytes downloaded for this sample (0 for a cached base means only the LoRA file).
    pub downloaded_bytes: u64,
}

/// A loaded safetensors file: tensors and its `__metadata__` strings.
struct TensorFile {
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

fn parse_tensor_file(what: &str, bytes: &[u8]) -> Result<TensorFile, SampleError> {
    let damaged = |message: String| SampleError::Damaged {
        what: what.to_string(),
        message,
    };
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| damaged(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
        .map_err(|e| damaged(e.to_string()))?;
    Ok(TensorFile { tensors, metadata })
}

/// A config from a file's `__metadata__` JSON string under `key`.
fn from_file<T: serde::de::DeserializeOwned>(file: &TensorFile, key: &str) -> Option<T> {
    file.metadata
        .get(key)
        .and_then(|text| serde_json::from_str(text).ok())
}

/// The model config recorded in the run's metadata: `training_config.model` (an object or a
/// preset name), else `training_config.preset`.
pub fn model_config_from_metadata(meta: &Metadata) -> Option<Config> {
    let training = &meta.training_config;
    let model = training
        .get("model")
        .or_else(|| training.get("model_config"));
    match model {
        Some(Value::Object(_)) => model.and_then(|m| serde_json::from_value(m.clone()).ok()),
        Some(Value::String(name)) => Config::preset(name),
        _ => training
            .get("preset")
            .and_then(Value::as_str)
            .and_then(Config::preset),
    }
}

/// A checkpoint's files, downloaded (the base perhaps from the cache) but not parsed yet:
/// parsing and fusing are CPU work, done on the sampling pool by [`Downloaded::into_models`].
pub struct Downloaded {
    checkpoint: CheckpointName,
    base_bytes: Vec<u8>,
    lora_bytes: Vec<u8>,
    /// The model configuration the run's metadata records, for files that record none.
    model_config: Option<Config>,
    /// Likewise the LoRA configuration.
    lora_config: Value,
    base_source: BaseSource,
    base_verify_ms: Option<f64>,
    downloaded_bytes: u64,
}

/// Downloads the base (or takes it from the cache) and `checkpoint`'s LoRA weights.
/// `on_phase` is told what is happening.
pub async fn download(
    meta: &Metadata,
    checkpoint: CheckpointName,
    on_phase: impl Fn(&str),
) -> Result<Downloaded, SampleError> {
    let run = meta.run_number;
    let LoadedBase {
        bytes: base_bytes,
        source: base_source,
        verify_ms: base_verify_ms,
    } = load_base(
        &checkpoint_path(run, CheckpointName::Base, false),
        meta.base_model.as_ref(),
        &on_phase,
    )
    .await?;
    on_phase("downloading the LoRA weights");
    let lora_bytes = fetch_bytes(&checkpoint_path(run, checkpoint, true)).await?;
    let downloaded_bytes = lora_bytes.len() as u64
        + if base_source.downloaded() {
            base_bytes.len() as u64
        } else {
            0
        };
    Ok(Downloaded {
        checkpoint,
        base_bytes,
        lora_bytes,
        model_config: model_config_from_metadata(meta),
        lora_config: meta.lora_config.clone(),
        base_source,
        base_verify_ms,
        downloaded_bytes,
    })
}

impl Downloaded {
    /// Parses both files, checks they fit, and builds the base and fused models.
    pub fn into_models(self) -> Result<Models, SampleError> {
        let base = parse_tensor_file("the base model", &self.base_bytes)?;
        let lora = parse_tensor_file(
            &format!("the {} checkpoint", self.checkpoint),
            &self.lora_bytes,
        )?;
        let config: Config = from_file(&lora, meta_keys::MODEL_CONFIG)
            .or_else(|| from_file(&base, meta_keys::MODEL_CONFIG))
            .or(self.model_config)
            .ok_or(SampleError::MissingConfig("model"))?;
        let lora_config: LoraConfig = from_file(&lora, meta_keys::LORA_CONFIG)
            .or_else(|| serde_json::from_value(self.lora_config).ok())
            .ok_or(SampleError::MissingConfig("LoRA"))?;
        validate_lora(&config, &base.tensors, &lora.tensors, &lora_config)?;
        let fused_tensors = fuse_lora_weights(&base.tensors, &lora.tensors, &lora_config)?;
        let fused = DiffiT::new(
            &config,
            VarBuilder::from_tensors(fused_tensors, DType::F32, &Device::Cpu),
            None,
        )?;
        let base_model = DiffiT::new(
            &config,
            VarBuilder::from_tensors(base.tensors, DType::F32, &Device::Cpu),
            None,
        )?;
        Ok(Models {
            config,
            base: base_model,
            fused,
            base_source: self.base_source,
            base_verify_ms: self.base_verify_ms,
            downloaded_bytes: self.downloaded_bytes,
        })
    }
}

/// Where a [`SampleJob`] gets its models.
pub enum Source {
    /// Already built by an earlier job.
    Loaded(Arc<Models>),
    /// Just downloaded: the job parses and fuses them first.
    Downloaded(Box<Downloaded>),
}

/// One sampling run for the pool: what [`run_job`] does.
pub struct SampleJob {
    /// The models.
    pub source: Source,
    /// Noise seed.
    pub seed: u64,
    /// DDIM steps.
    pub steps: usize,
    /// Images per model.
    pub count: usize,
    /// Sample the base alone beside the fused model.
    pub with_base: bool,
    /// Class guidance for both models.
    pub guidance: Option<ClassGuidance>,
    /// Send the partly denoised images at most this often (`None`: only progress counts).
    pub preview_every_ms: Option<f64>,
}

/// What a running [`SampleJob`] tells the page.
pub enum SampleProgress {
    /// The models are built (parsed and fused); the page keeps them for its next job.
    Models(Arc<Models>),
    /// Steps done of total, with the current images when a preview was due.
    Step {
        /// Steps done.
        done: usize,
        /// Steps in all.
        total: usize,
        /// Fused and base images as they stand, when it was time for a preview.
        images: Option<SampledImages>,
    },
}

/// A finished [`SampleJob`].
pub struct SampleOutcome {
    /// The final images.
    pub images: SampledImages,
    /// Milliseconds per DDIM step (both models when the base was sampled beside), timed where
    /// the steps ran.
    pub step_ms: f64,
    /// Steps run.
    pub steps: usize,
    /// Whether the steps ran off the page's thread (on a sampling worker).
    pub on_worker: bool,
    /// Threads of the pool the steps could use.
    pub threads: usize,
    /// Width and height of each image.
    pub image_size: usize,
}

/// Runs `job` to its end on the pool, reporting to the page through `reporter`; `Ok(None)` when
/// the page cancelled it on the way. Errors are already messages (they cross threads).
pub fn run_job(
    job: SampleJob,
    reporter: &Reporter<SampleProgress>,
) -> Result<Option<SampleOutcome>, String> {
    let models = match job.source {
        Source::Loaded(models) => models,
        Source::Downloaded(files) => {
            let models = Arc::new(files.into_models().map_err(|e| e.to_string())?);
            reporter.report(SampleProgress::Models(models.clone()));
            models
        }
    };
    let mut sampling = Sampling::new(
        &models,
        job.seed,
        job.steps,
        job.count,
        job.with_base,
        job.guidance,
    )
    .map_err(|e| e.to_string())?;
    let started = now_ms();
    let mut previewed = started;
    loop {
        if reporter.cancelled() {
            return Ok(None);
        }
        let more = sampling.step(&models).map_err(|e| e.to_string())?;
        let (done, total) = sampling.progress();
        let preview = more
            && job
                .preview_every_ms
                .is_some_and(|every| now_ms() - previewed >= every);
        let images = if preview {
            previewed = now_ms();
            Some(sampling.images().map_err(|e| e.to_string())?)
        } else {
            None
        };
        reporter.report(SampleProgress::Step {
            done,
            total,
            images,
        });
        if !more {
            break;
        }
    }
    let steps = sampling.progress().1;
    let step_ms = (now_ms() - started) / steps.max(1) as f64;
    Ok(Some(SampleOutcome {
        images: sampling.images().map_err(|e| e.to_string())?,
        step_ms,
        steps,
        on_worker: on_worker(),
        threads: rayon::current_num_threads(),
        image_size: models.config.image_size,
    }))
}

/// Classifier-free guidance towards one class, for every image of a sampling run (what
/// `diffit sample --class C --cfg-scale S` does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassGuidance {
    /// The class label (`< num_classes`).
    pub class: u32,
    /// The guidance scale.
    pub scale: f64,
}

/// The sampler's guidance for `count` images of `guidance`'s class, checked against `config`.
fn guidance_for(
    config: &Config,
    guidance: ClassGuidance,
    count: usize,
) -> Result<Guidance, SampleError> {
    match config.num_classes {
        Some(n) if (guidance.class as usize) < n => Ok(Guidance {
            classes: vec![guidance.class; count],
            scale: guidance.scale,
        }),
        n => Err(SampleError::NoSuchClass {
            class: guidance.class,
            classes: n.map_or("the model has no class labels".into(), |n| {
                format!("the model has {n} classes")
            }),
        }),
    }
}

/// One sampling run: the fused model and (optionally) the base alone, from the same noise.
pub struct Sampling {
    lora: DdimSampler,
    base: Option<DdimSampler>,
}

impl Sampling {
    /// Prepares `count` images per model with `steps` DDIM steps from `seed`, guided towards
    /// a class when `guidance` is given (both models: the base has the same label table).
    pub fn new(
        models: &Models,
        seed: u64,
        steps: usize,
        count: usize,
        with_base: bool,
        guidance: Option<ClassGuidance>,
    ) -> Result<Self, SampleError> {
        let schedule = NoiseSchedule::default();
        let guidance = guidance
            .map(|g| guidance_for(&models.config, g, count))
            .transpose()?;
        let make = || -> Result<DdimSampler, SampleError> {
            let sampler =
                DdimSampler::new(&schedule, steps, count, &models.config, seed, &Device::Cpu)?
                    .with_eta(DEFAULT_ETA);
            Ok(match &guidance {
                Some(g) => sampler.with_guidance(g.clone())?,
                None => sampler,
            })
        };
        Ok(Sampling {
            lora: make()?,
            base: if with_base { Some(make()?) } else { None },
        })
    }

    /// `(steps done, total steps)` of the fused model.
    pub fn progress(&self) -> (usize, usize) {
        self.lora.progress()
    }

    /// Runs one step of each model, the two on two threads of the pool; false once done.
    /// Only on the pool: in the browser the page's thread may not wait for a worker.
    pub fn step(&mut self, models: &Models) -> Result<bool, SampleError> {
        let (lora, base) = (&mut self.lora, &mut self.base);
        let (more, base) = rayon::join(
            || lora.step(&models.fused),
            || base.as_mut().map(|b| b.step(&models.base)).transpose(),
        );
        base?;
        Ok(more?)
    }

    /// Current images as RGB bytes (HWC) per image: (fused, base). Final once [`Sampling::step`]
    /// returned false.
    pub fn images(&self) -> Result<SampledImages, SampleError> {
        let view = |s: &DdimSampler| -> Result<Vec<Vec<u8>>, SampleError> {
            let x = if s.is_done() {
                s.clone().finish()?
            } else {
                s.current_x0()?
            };
            Ok(to_rgb8(&x)?)
        };
        Ok((view(&self.lora)?, self.base.as_ref().map(view).transpose()?))
    }
}

/// RGB8 images of base+LoRA, and of the base alone when compared side by side.
pub type SampledImages = (Vec<Vec<u8>>, Option<Vec<Vec<u8>>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_config_from_training_config() {
        let mut meta = Metadata::new(1, "e", "t");
        meta.training_config = serde_json::json!({ "preset": "tiny" });
        assert_eq!(model_config_from_metadata(&meta), Some(Config::tiny()));
        meta.training_config = serde_json::json!({ "model": "small" });
        assert_eq!(model_config_from_metadata(&meta), Some(Config::small()));
        meta.training_config =
            serde_json::json!({ "model": serde_json::to_value(Config::tiny()).unwrap() });
        assert_eq!(model_config_from_metadata(&meta), Some(Config::tiny()));
        meta.training_config = serde_json::json!({});
        assert_eq!(model_config_from_metadata(&meta), None);
    }

    #[test]
    fn guidance_needs_a_class_the_model_has() {
        let guided = ClassGuidance {
            class: 2,
            scale: 3.0,
        };
        let g = guidance_for(&Config::published_tiny(), guided, 3).unwrap();
        assert_eq!(g.classes, [2, 2, 2]);
        assert_eq!(g.scale, 3.0);
        let too_high = ClassGuidance {
            class: Config::published_tiny().num_classes.unwrap() as u32,
            ..guided
        };
        let e = guidance_for(&Config::published_tiny(), too_high, 1).unwrap_err();
        assert!(e.to_string().contains("7 classes"), "{e}");
        let e = guidance_for(&Config::tiny(), guided, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "class 2 is out of range: the model has no class labels"
        );
    }
}
