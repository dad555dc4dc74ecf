//! [`Collective`] over MPI (the `mpi` crate, i.e. rsmpi, over the system's OpenMPI or MPICH),
//! for jobs started by `mpirun -n N diffit train …`.
//!
//! Faults end the job instead of hanging it:
//! - a rank that dies (kill -9, out of memory) is seen by the launcher, which ends the others;
//! - a rank that fails (an error it reports) calls `MPI_Abort`, which ends every rank;
//! - a rank that stops answering (stopped, hung, cut off) leaves the others waiting in a
//!   training-step exchange: a watchdog thread on each rank ends its process when one such
//!   exchange has waited longer than `DIFFIT_COLLECTIVE_TIMEOUT` seconds (default 600), and
//!   the launcher then ends the rest.
//!
//! Only rank 0 ever writes the run, so a job ended at any instant leaves the run as the store
//! leaves any interrupted writer: its last committed checkpoint valid and resumable.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::{Count, Threading};

use super::{launcher_variable, Collective, CollectiveError, Wait};
use crate::train::error::TrainError;

/// The environment variable that bounds a training-step exchange, in seconds.
pub const TIMEOUT_VARIABLE: &str = "DIFFIT_COLLECTIVE_TIMEOUT";

/// The default bound: long enough for rank 0 to write a large checkpoint or validate while
/// the others wait at the next step, short enough that a hung job ends within minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest piece one broadcast call moves (MPI counts are `int`s).
const PIECE: usize = 1 << 30;

/// What a rank is waiting for, watched by [`watchdog`].
#[derive(Debug, Default)]
struct Watch {
    waiting: Mutex<Option<(&'static str, Instant)>>,
}

/// Clears the watch when the exchange it guards returns.
pub(super) struct Armed<'a>(Option<&'a Watch>);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        if let Some(watch) = self.0 {
            if let Ok(mut w) = watch.waiting.lock() {
                *w = None;
            }
        }
    }
}

/// One rank of an MPI job.
pub struct MpiCollective {
    world: SimpleCommunicator,
    rank: usize,
    ranks: usize,
    watch: Arc<Watch>,
    // Dropped last: finalizes MPI.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective")
            .field("rank", &self.rank)
            .field("ranks", &self.ranks)
            .finish_non_exhaustive()
    }
}

impl MpiCollective {
    /// Joins the job an MPI launcher started this process in; `None` when no launcher did.
    pub fn from_launcher() -> Result<Option<Self>, TrainError> {
        if launcher_variable().is_none() {
            return Ok(None);
        }
        let timeout = timeout_from_env()?;
        // Only this thread calls MPI; the shards' threads and the watchdog never do.
        let (universe, _) =
            mpi::initialize_with_threading(Threading::Funneled).ok_or_else(|| {
                TrainError::Distributed("MPI could not be initialised (or already was)".into())
            })?;
        let world = universe.world();
        let rank = usize::try_from(world.rank())
            .map_err(|_| TrainError::Distributed("MPI gave a negative rank".into()))?;
        let ranks = usize::try_from(world.size())
            .map_err(|_| TrainError::Distributed("MPI gave a negative size".into()))?;
        let watch = Arc::new(Watch::default());
        let watched = watch.clone();
        thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || watchdog(&watched, rank, ranks, timeout))
            .map_err(|e| TrainError::Distributed(format!("cannot start the watchdog: {e}")))?;
        Ok(Some(Self {
            world,
            rank,
            ranks,
            watch,
            _universe: universe,
        }))
    }

    /// Arms the watchdog for one exchange (`Wait::Bounded`) until the guard is dropped.
    pub(super) fn arm(&self, what: &'static str, wait: Wait) -> Armed<'_> {
        if wait == Wait::Unbounded {
            return Armed(None);
        }
        if let Ok(mut w) = self.watch.waiting.lock() {
            *w = Some((what, Instant::now()));
        }
        Armed(Some(&self.watch))
    }

    fn error(&self, what: &'static str, reason: String) -> CollectiveError {
        CollectiveError {
            rank: self.rank,
            ranks: self.ranks,
            what,
            reason,
        }
    }
}

/// `DIFFIT_COLLECTIVE_TIMEOUT` in seconds, or the default.
fn timeout_from_env() -> Result<Duration, TrainError> {
    match std::env::var(TIMEOUT_VARIABLE) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(secs) if secs.is_finite() && secs > 0.0 => Ok(Duration::from_secs_f64(secs)),
            _ => Err(TrainError::Usage(format!(
                "{TIMEOUT_VARIABLE}={text:?}: give a number of seconds greater than 0"
            ))),
        },
    }
}

/// Ends this process when one exchange has waited longer than `timeout`; the launcher then
/// ends the others.
fn watchdog(watch: &Watch, rank: usize, ranks: usize, timeout: Duration) {
    let tick = (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        thread::sleep(tick);
        let stuck = match watch.waiting.lock() {
            Ok(w) => w.filter(|(_, since)| since.elapsed() > timeout),
            Err(_) => None,
        };
        if let Some((what, _)) = stuck {
            eprintln!(
                "error: rank {rank} of {ranks}: {what}: no answer from the other ranks within \
                 {:.0} s ({TIMEOUT_VARIABLE}); a rank has died or hung, ending the job. The \
                 run's last committed checkpoint is intact: resume it with --resume",
                timeout.as_secs_f64()
            );
            std::process::exit(1);
        }
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn ranks(&self) -> usize {
        self.ranks
    }

    fn transport(&self) -> &'static str {
        "MPI"
    }

    fn all_gather(
        &self,
        what: &'static str,
        wait: Wait,
        local: &[u8],
    ) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let _armed = self.arm(what, wait);
        let mut lens = vec![0u64; self.ranks];
        self.world
            .all_gather_into(&(local.len() as u64), &mut lens[..]);
        let too_big = || self.error(what, "a message of over 2 GiB".into());
        let counts: Vec<Count> = lens
            .iter()
            .map(|&l| Count::try_from(l).map_err(|_| too_big()))
            .collect::<Result<_, _>>()?;
        let mut displs = Vec::with_capacity(self.ranks);
        let mut total: Count = 0;
        for &c in &counts {
            displs.push(total);
            total = total.checked_add(c).ok_or_else(too_big)?;
        }
        let mut buf = vec![0u8; usize::try_from(total).map_err(|_| too_big())?];
        {
            let mut partition = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(local, &mut partition);
        }
        let mut out = Vec::with_capacity(self.ranks);
        let mut at = 0usize;
        for &len in &lens {
            let end = at + len as usize;
            out.push(buf[at..end].to_vec());
            at = end;
        }
        Ok(out)
    }

    fn broadcast(
        &self,
        what: &'static str,
        wait: Wait,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, CollectiveError> {
        let _armed = self.arm(what, wait);
        let root = self.world.process_at_rank(0);
        let mut len = data.len() as u64;
        root.broadcast_into(&mut len);
        let len = usize::try_from(len)
            .map_err(|_| self.error(what, format!("a message of {len} bytes")))?;
        let mut buf = if self.rank == 0 { data } else { vec![0u8; len] };
        for piece in buf.chunks_mut(PIECE) {
            root.broadcast_into(piece);
        }
        Ok(buf)
    }

    fn barrier(&self, what: &'static str) -> Result<(), CollectiveError> {
        let _armed = self.arm(what, Wait::Bounded);
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) {
        self.world.abort(code)
    }
}
