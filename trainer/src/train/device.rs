//! Where training computes (`diffit train --device`): the CPU, the default and the tested path,
//! or an NVIDIA GPU through candle's CUDA backend (the trainer's `cuda` feature).
//!
//! The device is a property of the process, not of the run: a run trained on one device resumes
//! on another (its checkpoints hold plain `f32` values), and nothing about it is stored. A GPU
//! sums in a different order from the CPU, so the same run gives close, not bit-identical,
//! numbers on the two; `scripts/gpu-check.sh` measures how close.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use super::error::TrainError;

/// A device named on the command line: `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// The CPU (every core; see `training.data_shards`).
    #[default]
    Cpu,
    /// An NVIDIA GPU: GPU `N`, or with no number the process's own GPU, i.e. its local rank
    /// under an MPI launcher (one process per GPU) and GPU 0 otherwise.
    Cuda(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(None)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(|n| Self::Cuda(Some(n))).map_err(|_| {
                    format!("{s:?}: give `cpu`, `cuda` or `cuda:N` with N a GPU number (0, 1, …)")
                }),
                None => Err(format!("{s:?}: give `cpu`, `cuda` or `cuda:N`")),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(n)) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceChoice {
    /// The GPU number this process uses: the one named, else `local_rank` (the process's rank
    /// on its machine), `None` on the CPU.
    pub fn ordinal(self, local_rank: usize) -> Option<usize> {
        match self {
            Self::Cpu => None,
            Self::Cuda(n) => Some(n.unwrap_or(local_rank)),
        }
    }

    /// Opens the device. A GPU needs a `cuda` build and a working driver; either missing is a
    /// usage error that says what to do.
    pub fn open(self, local_rank: usize) -> Result<Device, TrainError> {
        let Some(ordinal) = self.ordinal(local_rank) else {
            return Ok(Device::Cpu);
        };
        open_cuda(self, ordinal)
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(choice: DeviceChoice, ordinal: usize) -> Result<Device, TrainError> {
    Device::new_cuda(ordinal).map_err(|e| {
        // The driver's reason, without the backtrace candle attaches under RUST_BACKTRACE.
        let e = match e {
            candle_core::Error::WithBacktrace { inner, .. } => *inner,
            e => e,
        };
        TrainError::Usage(format!(
            "--device {choice}: cannot open CUDA device {ordinal} (is there an NVIDIA GPU with \
             a driver, and CUDA's libcublas, libcurand and libnvrtc on the library path?): {e}"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(choice: DeviceChoice, _ordinal: usize) -> Result<Device, TrainError> {
    Err(TrainError::Usage(format!(
        "--device {choice}: this diffit was built without CUDA; build it with \
         scripts/build-cuda.sh (cargo build --release -p trainer --features cuda)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_three_forms() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("cuda", DeviceChoice::Cuda(None)),
            ("cuda:3", DeviceChoice::Cuda(Some(3))),
        ] {
            assert_eq!(text.parse::<DeviceChoice>(), Ok(choice));
            assert_eq!(choice.to_string(), text);
        }
        assert_eq!("gpu".parse(), Ok(DeviceChoice::Cuda(None)));
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x", "CUDA"] {
            let err = bad.parse::<DeviceChoice>().unwrap_err();
            assert!(err.contains("cuda"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_gpu_number_defaults_to_the_local_rank() {
        assert_eq!(DeviceChoice::Cpu.ordinal(2), None);
        assert_eq!(DeviceChoice::Cuda(None).ordinal(2), Some(2));
        assert_eq!(DeviceChoice::Cuda(Some(0)).ordinal(2), Some(0));
        assert!(DeviceChoice::Cpu.open(1).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_gpu_without_the_cuda_build_is_a_usage_error() {
        let err = DeviceChoice::Cuda(Some(0)).open(0).unwrap_err();
        assert!(matches!(err, TrainError::Usage(_)), "{err}");
        assert!(err.to_string().contains("--device cuda:0"), "{err}");
        assert!(err.to_string().contains("build-cuda.sh"), "{err}");
    }
}
