//! [`Collective`] over NCCL, for jobs of GPU processes (`mpirun -n N diffit train --device
//! cuda`, behind the trainer's `nccl` feature): each training-step exchange goes GPU to GPU
//! (NVLink, or InfiniBand with GPUDirect) instead of through MPI's host network.
//!
//! MPI still starts and holds the job: rank 0 makes the NCCL id and MPI hands it to the others,
//! MPI exchanges the message sizes, and the barrier, the abort and the watchdog are MPI's
//! ([`MpiCollective`]), so a fault ends the job exactly as under MPI alone. A step's bytes are
//! the same as under MPI (the shards' encoded losses and gradients), staged through the GPU:
//! NCCL's all-gather needs equal counts, so each rank's message is padded to the longest and
//! cut back after. The sum over shards stays on every rank in shard order, so the job's
//! numbers do not depend on the transport.

use std::ffi::c_char;
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id};
use candle_core::Device;

use super::mpi::MpiCollective;
use super::{all_gather_padded, decode_len, Collective, CollectiveError, Wait};
use crate::train::error::TrainError;

/// Bytes in an NCCL unique id.
const ID_BYTES: usize = 128;

/// One rank of a job whose exchanges run over NCCL.
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
    // Dropped after the communicator: finalizes MPI.
    mpi: MpiCollective,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.mpi.rank())
            .field("ranks", &self.mpi.ranks())
            .finish_non_exhaustive()
    }
}

impl NcclCollective {
    /// Joins the NCCL communicator of `mpi`'s job on `device`, this rank's GPU.
    pub fn over(mpi: MpiCollective, device: &Device) -> Result<Self, TrainError> {
        const WHAT: &str = "setting up NCCL";
        let Device::Cuda(gpu) = device else {
            return Err(TrainError::Internal(format!(
                "{WHAT}: NCCL needs a CUDA device"
            )));
        };
        let failed = |e: &dyn std::fmt::Debug| {
            TrainError::Distributed(format!(
                "rank {} of {}: {WHAT}: {e:?}",
                mpi.rank(),
                mpi.ranks()
            ))
        };
        let id = if mpi.rank() == 0 {
            let id = Id::new().map_err(|e| failed(&e))?;
            id.internal().iter().map(|&c| c as u8).collect()
        } else {
            Vec::new()
        };
        let id = mpi.broadcast(WHAT, Wait::Unbounded, id)?;
        let mut internal = [0 as c_char; ID_BYTES];
        if id.len() != ID_BYTES {
            return Err(failed(&format!("an id of {} bytes from rank 0", id.len())));
        }
        for (to, from) in internal.iter_mut().zip(&id) {
            *to = *from as c_char;
        }
        let stream = gpu.cuda_stream();
        let comm = Comm::from_rank(
            stream.clone(),
            mpi.rank(),
            mpi.ranks(),
            Id::uninit(internal),
        )
        .map_err(|e| failed(&e))?;
        Ok(Self { comm, stream, mpi })
    }

    fn error(&self, what: &'static str, e: &dyn std::fmt::Debug) -> CollectiveError {
        CollectiveError {
            rank: self.mpi.rank(),
            ranks: self.mpi.ranks(),
            what,
            reason: format!("NCCL: {e:?}"),
        }
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn ranks(&self) -> usize {
        self.mpi.ranks()
    }

    fn transport(&self) -> &'static str {
        "NCCL"
    }

    fn all_gather(
        &self,
        what: &'static str,
        wait: Wait,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        all_gather_padded(&self.mpi, what, wait, local, |padded| {
            let _armed = self.mpi.arm(what, wait);
            let send = self
                .stream
                .clone_htod(padded.as_slice())
                .map_err(|e| self.error(what, &e))?;
            let mut recv = self
                .stream
                .alloc_zeros::<u8>(padded.len() * self.ranks())
                .map_err(|e| self.error(what, &e))?;
            self.comm
                .all_gather(&send, &mut recv)
                .map_err(|e| self.error(what, &e))?;
            // Waits for the exchange (the watchdog bounds the wait).
            self.stream
                .clone_dtoh(&recv)
                .map_err(|e| self.error(what, &e))
        })
    }

    fn broadcast(
        &self,
        what: &'static str,
        wait: Wait,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, CollectiveError> {
        let len = self
            .mpi
            .broadcast(what, wait, (data.len() as u64).to_le_bytes().to_vec())?;
        let len = decode_len(&len).ok_or_else(|| self.error(what, &"a malformed message size"))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let _armed = self.mpi.arm(what, wait);
        let mut buf = if self.rank() == 0 {
            self.stream.clone_htod(data.as_slice())
        } else {
            self.stream.alloc_zeros::<u8>(len)
        }
        .map_err(|e| self.error(what, &e))?;
        self.comm
            .broadcast_in_place(&mut buf, 0)
            .map_err(|e| self.error(what, &e))?;
        self.stream
            .clone_dtoh(&buf)
            .map_err(|e| self.error(what, &e))
    }

    fn barrier(&self, what: &'static str) -> Result<(), CollectiveError> {
        self.mpi.barrier(what)
    }

    fn abort(&self, code: i32) {
        self.mpi.abort(code)
    }
}
