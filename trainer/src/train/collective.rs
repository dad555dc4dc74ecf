//! How the processes of one training talk to each other: one [`Collective`] interface for a
//! single process (its batch split over its own cores, [`SingleProcess`]) and for a job of
//! several processes under an MPI launcher (`mpirun -n N diffit train …`, [`mpi`], behind the
//! `mpi` feature). The training step asks only for the operations below; it never knows how
//! many processes there are or how they are connected.
//!
//! **The contract of a distributed step.** A step's batch is split into `S` shards (the same
//! near-equal contiguous split as in one process), global shard `k` is computed by rank
//! `k mod ranks`, and every rank forks all `S` noise streams in shard order and keeps its own.
//! The ranks then exchange each shard's loss and gradients ([`Collective::all_gather`]) and
//! every rank sums them **in shard order** with the same tensor operations one process uses,
//! so a job of any size gives bit for bit the result of one process with the same shard count
//! (`training.data_shards`). MPI's own `Allreduce` would be faster on large jobs but sums in an
//! order of its choosing; ARCHITECTURE.md's scale plan says where that trade changes.
//!
//! **Who writes.** Rank 0 alone builds the run store, resolves the base, creates or resumes
//! the run and writes every file; it hands the others the settled configuration, the base
//! weights ([`Setup`]) and, after resuming, the whole training state ([`share_state`]). The
//! others never open the store. Validation is split over the ranks by batch and summed in
//! batch order, and every epoch ends with a barrier before rank 0 commits, so rank 0 never
//! commits an epoch another rank has not finished.

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use store::{LoraCheckpoint, StoredTensor, TensorMap};

use super::error::TrainError;
use super::state::TrainState;

/// How long a rank may wait in one collective operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// A training-step exchange: the other ranks are doing the same work, so a rank that does
    /// not answer within the job's timeout has died or hung, and the job ends.
    Bounded,
    /// Setting up: rank 0 may be pretraining a base model or bringing a run down from a
    /// bucket, which can take minutes; the launcher ends the job if rank 0 dies.
    Unbounded,
}

/// A collective operation that failed: a malformed message from another rank, or the
/// transport itself.
#[derive(Debug, thiserror::Error)]
#[error("rank {rank} of {ranks}: {what}: {reason}")]
pub struct CollectiveError {
    /// This process's rank.
    pub rank: usize,
    /// Ranks in the job.
    pub ranks: usize,
    /// The operation.
    pub what: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// The processes of one training and the operations between them.
pub trait Collective: std::fmt::Debug {
    /// This process's rank, `0..ranks()`; rank 0 writes the run.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn ranks(&self) -> usize;
    /// What connects them, for messages (`"one process"`, `"MPI"`).
    fn transport(&self) -> &'static str;
    /// Every rank's `local` bytes, in rank order (this rank's own included).
    fn all_gather(
        &self,
        what: &'static str,
        wait: Wait,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError>;
    /// Rank 0's `data`, on every rank (what the others pass is ignored).
    fn broadcast(
        &self,
        what: &'static str,
        wait: Wait,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&self, what: &'static str) -> Result<(), CollectiveError>;
    /// Ends every process of the job at once with `code`, after this rank has printed why.
    /// One process has nothing to end and returns (its caller exits as usual).
    fn abort(&self, code: i32);
}

/// One process: nothing to exchange.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn ranks(&self) -> usize {
        1
    }
    fn transport(&self) -> &'static str {
        "one process"
    }
    fn all_gather(
        &self,
        _what: &'static str,
        _wait: Wait,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![local.to_vec()])
    }
    fn broadcast(
        &self,
        _what: &'static str,
        _wait: Wait,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, CollectiveError> {
        Ok(data)
    }
    fn barrier(&self, _what: &'static str) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn abort(&self, _code: i32) {}
}

/// The collective this process was launched into: MPI when the binary has the `mpi` feature
/// and an MPI launcher started it (`mpirun`, `mpiexec`, `srun --mpi`), one process otherwise.
/// A job of several GPU processes (`device` a GPU) in a build with the `nccl` feature
/// exchanges over NCCL instead, MPI holding the job.
pub fn launched(device: &Device) -> Result<Box<dyn Collective>, TrainError> {
    #[cfg(feature = "mpi")]
    if let Some(job) = self::mpi::MpiCollective::from_launcher()? {
        #[cfg(feature = "nccl")]
        if device.is_cuda() && job.ranks() > 1 {
            return Ok(Box::new(self::nccl::NcclCollective::over(job, device)?));
        }
        return Ok(Box::new(job));
    }
    let _ = device;
    if let Some(var) = launcher_variable() {
        if launched_ranks().is_some_and(|n| n > 1) {
            return Err(TrainError::Usage(format!(
                "started by an MPI launcher ({var} is set) but this diffit was built without \
                 MPI: build it with `cargo build --release -p trainer --features mpi`"
            )));
        }
    }
    Ok(Box::new(SingleProcess))
}

/// The environment variable an MPI launcher set for this process, if any.
pub fn launcher_variable() -> Option<&'static str> {
    [
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_RANK",
        "MPI_LOCALNRANKS",
    ]
    .into_iter()
    .find(|v| std::env::var_os(v).is_some())
}

/// The number the first of `variables` set by a launcher holds, if any does.
fn launcher_number(variables: &[&str]) -> Option<usize> {
    variables
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The job size an MPI launcher announced for this process, if one started it.
pub fn launched_ranks() -> Option<usize> {
    launcher_number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])
}

/// This process's rank among the job's processes on its machine, as the launcher says (0 when
/// it does not): which GPU it takes when several share a machine.
pub fn local_rank() -> usize {
    launcher_number(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
    .unwrap_or(0)
}

/// Processes of this job on this machine, as the launcher says (1 when it does not).
pub fn local_ranks() -> usize {
    launcher_number(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"])
        .unwrap_or(1)
        .max(1)
}

/// True on every rank when any rank passes `flag` (a stop request seen by one process stops
/// them all at the same step).
pub fn any_rank(c: &dyn Collective, what: &'static str, flag: bool) -> Result<bool, TrainError> {
    if c.ranks() == 1 {
        return Ok(flag);
    }
    let all = c.all_gather(what, Wait::Bounded, &[u8::from(flag)])?;
    Ok(all.iter().any(|b| b.first() == Some(&1)))
}

/// A little-endian message being written.
#[derive(Debug, Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends an `f64`.
    pub fn f64(&mut self, v: f64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a length-prefixed byte string.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }
    /// Appends a length-prefixed run of `f32`s.
    pub fn f32s(&mut self, v: &[f32]) -> &mut Self {
        self.u64(v.len() as u64);
        self.0.reserve(v.len() * 4);
        for x in v {
            self.0.extend_from_slice(&x.to_le_bytes());
        }
        self
    }
    /// Appends a JSON value.
    pub fn json(&mut self, v: &serde_json::Value) -> &mut Self {
        self.bytes(v.to_string().as_bytes())
    }
    /// Appends a tensor: its shape, then its values as `f32`.
    pub fn tensor(&mut self, t: &Tensor) -> Result<&mut Self, TrainError> {
        let dims = t.dims().to_vec();
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        self.u64(dims.len() as u64);
        for d in dims {
            self.u64(d as u64);
        }
        Ok(self.f32s(&values))
    }
    /// Appends named stored tensors, in name order.
    pub fn tensor_map(&mut self, map: &TensorMap) -> &mut Self {
        self.u64(map.len() as u64);
        for (name, t) in map {
            self.bytes(name.as_bytes());
            self.u64(t.shape().len() as u64);
            for d in t.shape() {
                self.u64(*d as u64);
            }
            self.f32s(t.values());
        }
        self
    }
    /// The message.
    pub fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// A message being read; every read checks the length, so a short or corrupt message is an
/// error naming the operation, never a panic.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Reads `buf`, received in `what`.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }
    fn malformed(&self, reason: &str) -> TrainError {
        TrainError::Distributed(format!("{}: malformed message: {reason}", self.what))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], TrainError> {
        if self.buf.len() < n {
            return Err(
                self.malformed(&format!("{n} more bytes expected, {} left", self.buf.len()))
            );
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    /// Reads a `u64`.
    pub fn u64(&mut self) -> Result<u64, TrainError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| self.malformed("u64"))?,
        ))
    }
    /// Reads a `u64` that counts something held in memory.
    pub fn len(&mut self) -> Result<usize, TrainError> {
        let v = self.u64()?;
        usize::try_from(v).map_err(|_| self.malformed(&format!("length {v}")))
    }
    /// Reads an `f64`.
    pub fn f64(&mut self) -> Result<f64, TrainError> {
        Ok(f64::from_bits(self.u64()?))
    }
    /// Reads a length-prefixed byte string.
    pub fn bytes(&mut self) -> Result<&'a [u8], TrainError> {
        let n = self.len()?;
        self.take(n)
    }
    /// Reads a UTF-8 string.
    pub fn string(&mut self) -> Result<String, TrainError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.malformed("a name is not UTF-8"))
    }
    /// Reads a length-prefixed run of `f32`s.
    pub fn f32s(&mut self) -> Result<Vec<f32>, TrainError> {
        let n = self.len()?;
        let b = self.take(n.checked_mul(4).ok_or_else(|| self.malformed("length"))?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
    /// Reads a JSON value.
    pub fn json(&mut self) -> Result<serde_json::Value, TrainError> {
        serde_json::from_slice(self.bytes()?).map_err(|e| self.malformed(&format!("JSON: {e}")))
    }
    fn shape(&mut self) -> Result<Vec<usize>, TrainError> {
        let n = self.len()?;
        if n > 8 {
            return Err(self.malformed(&format!("a tensor of {n} dimensions")));
        }
        (0..n).map(|_| self.len()).collect()
    }
    /// Reads a tensor onto `device`.
    pub fn tensor(&mut self, device: &Device) -> Result<Tensor, TrainError> {
        let shape = self.shape()?;
        let values = self.f32s()?;
        if shape.iter().product::<usize>() != values.len() {
            return Err(self.malformed("a tensor's values do not fill its shape"));
        }
        Ok(Tensor::from_vec(values, shape, device)?)
    }
    /// Reads named stored tensors.
    pub fn tensor_map(&mut self) -> Result<TensorMap, TrainError> {
        let n = self.len()?;
        let mut map = TensorMap::new();
        for _ in 0..n {
            let name = self.string()?;
            let shape = self.shape()?;
            let values = self.f32s()?;
            let t = StoredTensor::new(shape, values)
                .ok_or_else(|| self.malformed("a tensor's values do not fill its shape"))?;
            map.insert(name, t);
        }
        Ok(map)
    }
    /// True once the whole message was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Fails unless the whole message was read.
    pub fn end(&self) -> Result<(), TrainError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.malformed(&format!("{} bytes left over", self.buf.len())))
        }
    }
}

/// What rank 0 settles before training and every other rank needs: the configuration as
/// stored, the model, the frozen base, the class names, the run it writes, and the data sizes
/// each rank must see too.
#[derive(Debug)]
pub struct Setup {
    /// The training config in its stored form ([`super::TrainingConfig::to_stored`]).
    pub config: serde_json::Value,
    /// The model config.
    pub model_config: serde_json::Value,
    /// The frozen base weights.
    pub base: HashMap<String, Tensor>,
    /// Class names of a labelled run.
    pub classes: Vec<String>,
    /// The run rank 0 writes (for messages).
    pub run_number: u32,
    /// Its directory on rank 0.
    pub run_dir: String,
    /// Training and validation images rank 0 loaded.
    pub images: (u64, u64),
}

impl Setup {
    /// The setup as one message.
    pub fn encode(&self) -> Result<Vec<u8>, TrainError> {
        let mut w = Writer::new();
        w.json(&self.config).json(&self.model_config);
        let mut names: Vec<&String> = self.base.keys().collect();
        names.sort();
        w.u64(names.len() as u64);
        for name in names {
            w.bytes(name.as_bytes());
            w.tensor(&self.base[name])?;
        }
        w.u64(self.classes.len() as u64);
        for c in &self.classes {
            w.bytes(c.as_bytes());
        }
        w.u64(u64::from(self.run_number))
            .bytes(self.run_dir.as_bytes())
            .u64(self.images.0)
            .u64(self.images.1);
        Ok(w.finish())
    }

    /// A setup read back from [`Setup::encode`]'s message.
    pub fn decode(buf: &[u8], device: &Device) -> Result<Self, TrainError> {
        let mut r = Reader::new(buf, "the training setup");
        let config = r.json()?;
        let model_config = r.json()?;
        let mut base = HashMap::new();
        for _ in 0..r.len()? {
            let name = r.string()?;
            base.insert(name, r.tensor(device)?);
        }
        let classes = (0..r.len()?)
            .map(|_| r.string())
            .collect::<Result<_, _>>()?;
        let run_number = u32::try_from(r.u64()?)
            .map_err(|_| TrainError::Distributed("the training setup: run number".into()))?;
        let run_dir = r.string()?;
        let images = (r.u64()?, r.u64()?);
        r.end()?;
        Ok(Self {
            config,
            model_config,
            base,
            classes,
            run_number,
            run_dir,
            images,
        })
    }
}

/// A checkpoint as one message (the whole training state: adapters, AdamW, schedule, RNG).
fn encode_checkpoint(c: &LoraCheckpoint) -> Vec<u8> {
    let mut w = Writer::new();
    w.tensor_map(&c.lora)
        .tensor_map(&c.optimizer_tensors)
        .u64(u64::from(c.epoch))
        .u64(c.global_step);
    w.u64(c.metrics.len() as u64);
    for (k, v) in &c.metrics {
        w.bytes(k.as_bytes()).f64(*v);
    }
    w.json(&c.optimizer)
        .json(&c.scheduler)
        .json(&c.rng)
        .json(&c.lora_config)
        .json(&c.model_config);
    w.bytes(c.base_checksum.as_deref().unwrap_or("").as_bytes());
    w.finish()
}

fn decode_checkpoint(buf: &[u8]) -> Result<LoraCheckpoint, TrainError> {
    let mut r = Reader::new(buf, "the training state");
    let lora = r.tensor_map()?;
    let optimizer_tensors = r.tensor_map()?;
    let epoch = u32::try_from(r.u64()?)
        .map_err(|_| TrainError::Distributed("the training state: epoch".into()))?;
    let mut c = LoraCheckpoint::new(epoch, r.u64()?);
    c.lora = lora;
    c.optimizer_tensors = optimizer_tensors;
    for _ in 0..r.len()? {
        let k = r.string()?;
        c.metrics.insert(k, r.f64()?);
    }
    c.optimizer = r.json()?;
    c.scheduler = r.json()?;
    c.rng = r.json()?;
    c.lora_config = r.json()?;
    c.model_config = r.json()?;
    let checksum = r.string()?;
    c.base_checksum = (!checksum.is_empty()).then_some(checksum);
    r.end()?;
    Ok(c)
}

/// Makes every rank's training state rank 0's, after rank 0 has resumed (or started) it: the
/// others restore rank 0's state as if from its checkpoint. A fresh run is already the same
/// everywhere (the same seed) and only its base checksum is shared.
pub fn share_state(c: &dyn Collective, state: &mut TrainState) -> Result<(), TrainError> {
    if c.ranks() == 1 {
        return Ok(());
    }
    let what = "sharing the training state";
    let message = if c.rank() == 0 {
        let mut w = Writer::new();
        match state.resumed_from {
            Some(_) => {
                w.u64(1).bytes(&encode_checkpoint(
                    &state.to_checkpoint(&state.last_metrics)?,
                ));
            }
            None => {
                w.u64(0)
                    .bytes(state.base_checksum.as_deref().unwrap_or("").as_bytes());
            }
        }
        w.finish()
    } else {
        Vec::new()
    };
    let message = c.broadcast(what, Wait::Unbounded, message)?;
    if c.rank() == 0 {
        return Ok(());
    }
    let mut r = Reader::new(&message, what);
    if r.u64()? == 1 {
        let ckpt = decode_checkpoint(r.bytes()?)?;
        state.base_checksum = ckpt.base_checksum.clone();
        state.restore(&ckpt, true, true)?;
    } else {
        let checksum = r.string()?;
        state.base_checksum = (!checksum.is_empty()).then_some(checksum);
    }
    r.end()
}

/// A message length as [`all_gather_padded`] and NCCL's broadcast exchange it: 8 bytes, LE.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn decode_len(bytes: &[u8]) -> Option<usize> {
    let bytes = <[u8; 8]>::try_from(bytes).ok()?;
    usize::try_from(u64::from_le_bytes(bytes)).ok()
}

/// An all-gather of messages of any length over a transport whose own all-gather moves equal
/// counts (NCCL): `sizes` gathers every rank's length, each message is padded to the longest,
/// `equal` gathers the padded messages (concatenated in rank order), and each is cut back to
/// its length.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub(crate) fn all_gather_padded(
    sizes: &dyn Collective,
    what: &'static str,
    wait: Wait,
    local: &[u8],
    equal: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, CollectiveError>,
) -> Result<Vec<Vec<u8>>, CollectiveError> {
    let error = |reason: String| CollectiveError {
        rank: sizes.rank(),
        ranks: sizes.ranks(),
        what,
        reason,
    };
    let lens = sizes
        .all_gather(what, wait, &(local.len() as u64).to_le_bytes())?
        .iter()
        .map(|b| decode_len(b).ok_or_else(|| error("a malformed message size".into())))
        .collect::<Result<Vec<_>, _>>()?;
    let longest = lens.iter().copied().max().unwrap_or(0);
    if longest == 0 {
        return Ok(vec![Vec::new(); lens.len()]);
    }
    let mut padded = local.to_vec();
    padded.resize(longest, 0);
    let all = equal(padded)?;
    if all.len() != longest * lens.len() {
        return Err(error(format!(
            "{} bytes gathered, {} expected",
            all.len(),
            longest * lens.len()
        )));
    }
    Ok(all
        .chunks(longest)
        .zip(&lens)
        .map(|(chunk, &len)| chunk[..len].to_vec())
        .collect())
}

/// Ranks as threads of one test process, exchanging through shared memory.
#[cfg(test)]
pub(crate) mod loopback {
    use std::sync::{Arc, Barrier, Mutex};

    use super::{Collective, CollectiveError, Wait};

    /// One rank of a job of threads.
    #[derive(Debug)]
    pub(crate) struct Loopback {
        rank: usize,
        ranks: usize,
        board: Arc<(Mutex<Vec<Vec<u8>>>, Barrier)>,
    }

    impl Loopback {
        /// The ranks of a job of `ranks` threads.
        pub(crate) fn job(ranks: usize) -> Vec<Self> {
            let board = Arc::new((Mutex::new(vec![Vec::new(); ranks]), Barrier::new(ranks)));
            (0..ranks)
                .map(|rank| Self {
                    rank,
                    ranks,
                    board: board.clone(),
                })
                .collect()
        }
    }

    impl Collective for Loopback {
        fn rank(&self) -> usize {
            self.rank
        }
        fn ranks(&self) -> usize {
            self.ranks
        }
        fn transport(&self) -> &'static str {
            "threads"
        }
        fn all_gather(
            &self,
            _what: &'static str,
            _wait: Wait,
            local: &[u8],
        ) -> Result<Vec<Vec<u8>>, CollectiveError> {
            let (slots, barrier) = &*self.board;
            slots.lock().unwrap()[self.rank] = local.to_vec();
            barrier.wait();
            let all = slots.lock().unwrap().clone();
            barrier.wait();
            Ok(all)
        }
        fn broadcast(
            &self,
            what: &'static str,
            wait: Wait,
            data: Vec<u8>,
        ) -> Result<Vec<u8>, CollectiveError> {
            let mut all = self.all_gather(what, wait, &data)?;
            Ok(std::mem::take(&mut all[0]))
        }
        fn barrier(&self, _what: &'static str) -> Result<(), CollectiveError> {
            self.board.1.wait();
            Ok(())
        }
        fn abort(&self, _code: i32) {}
    }
}

#[cfg(test)]
mod tests {
    use super::loopback::Loopback;
    use super::*;

    #[test]
    fn a_padded_all_gather_gives_every_message_at_its_own_length() {
        // Ranks with messages of 5, 0 and 3 bytes; `equal` is an all-gather of equal counts
        // (what NCCL offers), here the loopback's, concatenated.
        let messages: [&[u8]; 3] = [b"abcde", b"", b"xyz"];
        let job = Loopback::job(3);
        let got: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = job
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        all_gather_padded(c, "test", Wait::Bounded, messages[c.rank()], |p| {
                            assert_eq!(p.len(), 5, "padded to the longest message");
                            Ok(c.all_gather("test", Wait::Bounded, &p)?.concat())
                        })
                        .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for on_rank in &got {
            assert_eq!(on_rank, &messages.map(<[u8]>::to_vec).to_vec());
        }
        // A transport that returns the wrong count is an error, not a misread message.
        let err = all_gather_padded(&SingleProcess, "test", Wait::Bounded, b"ab", |p| {
            Ok(p[..1].to_vec())
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("1 bytes gathered, 2 expected"),
            "{err}"
        );
        assert_eq!(decode_len(&[0; 7]), None);
        assert_eq!(decode_len(&9u64.to_le_bytes()), Some(9));
    }

    #[test]
    fn messages_round_trip_and_short_ones_are_errors() {
        let t = Tensor::arange(0f32, 6.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let mut w = Writer::new();
        w.u64(7).f64(-0.5).bytes(b"name");
        w.tensor(&t).unwrap();
        let buf = w.finish();
        let mut r = Reader::new(&buf, "test");
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.f64().unwrap(), -0.5);
        assert_eq!(r.string().unwrap(), "name");
        let back = r.tensor(&Device::Cpu).unwrap();
        assert_eq!(back.dims(), &[2, 3]);
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        r.end().unwrap();
        for cut in [0, 3, 9, buf.len() - 1] {
            let mut r = Reader::new(&buf[..cut], "test");
            let read = (|| -> Result<(), TrainError> {
                r.u64()?;
                r.f64()?;
                r.string()?;
                r.tensor(&Device::Cpu)?;
                Ok(())
            })();
            let err = read.expect_err("a cut message must not decode").to_string();
            assert!(err.contains("test: malformed message"), "{err}");
        }
    }

    #[test]
    fn a_checkpoint_survives_the_wire() {
        let mut c = LoraCheckpoint::new(3, 42);
        c.lora.insert(
            "blocks.0.attn.qkv.lora_A.weight".into(),
            StoredTensor::new(vec![2, 2], vec![1.0, -2.0, 3.5, f32::MIN_POSITIVE]).unwrap(),
        );
        c.metrics.insert("val_loss".into(), 0.125);
        c.optimizer = serde_json::json!({"step": 42});
        c.base_checksum = Some("blake3:abc".into());
        let back = decode_checkpoint(&encode_checkpoint(&c)).unwrap();
        assert_eq!(back.lora, c.lora);
        assert_eq!((back.epoch, back.global_step), (3, 42));
        assert_eq!(back.metrics, c.metrics);
        assert_eq!(back.optimizer, c.optimizer);
        assert_eq!(back.base_checksum, c.base_checksum);
    }
}
