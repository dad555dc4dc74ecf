//! `AppState`: what every handler shares (the checkpoints root, the cached run list, the
//! file-facts cache, the event channel) and `ServerConfig`, what it is built from.

use std::path::PathBuf;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::access::AccessToken;
use crate::root::CheckpointsRoot;
use crate::tensor_file::FileFactsCache;
use crate::watch::{self, RunChange, RunsSnapshot};

/// Default interval between scans of the checkpoints dir.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Where the server reads from.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The checkpoints dir (it may not exist yet; it is then an empty list).
    pub checkpoints_dir: PathBuf,
    /// The built dashboard (`make app` output).
    pub app_dir: PathBuf,
    /// Interval between scans for changes.
    pub poll_interval: Duration,
    /// The token every request must carry; `None` serves anyone who can connect (loopback
    /// only: see `access::token_for`).
    pub token: Option<AccessToken>,
    /// The checkpoints dir is a local copy of a bucket's runs (`remote::Follower`).
    pub follows_bucket: bool,
}

impl ServerConfig {
    /// A config with the default poll interval.
    pub fn new(checkpoints_dir: impl Into<PathBuf>, app_dir: impl Into<PathBuf>) -> Self {
        Self {
            checkpoints_dir: checkpoints_dir.into(),
            app_dir: app_dir.into(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            token: None,
            follows_bucket: false,
        }
    }
}

/// Shared server state; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) shared: Arc<Shared>,
}

/// The state behind `AppState`.
#[derive(Debug)]
pub struct Shared {
    /// The checkpoints dir.
    pub root: CheckpointsRoot,
    /// The built dashboard.
    pub app_dir: PathBuf,
    /// The access token required, if any.
    pub token: Option<AccessToken>,
    /// Header and checksum cache of tensor files.
    pub files: FileFactsCache,
    runs: RwLock<Arc<RunsSnapshot>>,
    /// Change notifications for `/api/events`.
    pub events: broadcast::Sender<RunChange>,
    /// Cancelled on shutdown: ends the watcher and open event streams.
    pub shutdown: CancellationToken,
}

impl Shared {
    /// The run list as last scanned.
    pub fn runs(&self) -> Arc<RunsSnapshot> {
        match self.runs.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(crate) fn set_runs(&self, snapshot: RunsSnapshot) {
        let snapshot = Arc::new(snapshot);
        match self.runs.write() {
            Ok(mut guard) => *guard = snapshot,
            Err(poisoned) => *poisoned.into_inner() = snapshot,
        }
    }
}

impl AppState {
    /// Scans the checkpoints dir once, then starts the background watcher. Needs a Tokio runtime.
    pub async fn start(config: ServerConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            root: if config.follows_bucket {
                CheckpointsRoot::following_bucket(config.checkpoints_dir)
            } else {
                CheckpointsRoot::new(config.checkpoints_dir)
            },
            app_dir: config.app_dir,
            token: config.token,
            files: FileFactsCache::default(),
            runs: RwLock::new(Arc::new(RunsSnapshot::empty())),
            events,
            shutdown: CancellationToken::new(),
        });
        refresh(&shared).await;
        spawn_watcher(Arc::downgrade(&shared), config.poll_interval);
        Self { shared }
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Ends the watcher and every open event stream (for graceful shutdown).
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }
}

/// Rescans once and publishes the result (new snapshot first, then the events).
pub(crate) async fn refresh(shared: &Arc<Shared>) {
    let worker = shared.clone();
    let result = tokio::task::spawn_blocking(move || {
        let prev = worker.runs();
        watch::rescan(&worker.root, &prev)
    })
    .await;
    match result {
        Ok(Some((snapshot, events))) => {
            shared.set_runs(snapshot);
            for event in events {
                // No subscribers is fine.
                let _ = shared.events.send(event);
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(error = %err, "rescanning the checkpoints dir failed"),
    }
}

/// Polls every `interval` until the server state is dropped or shut down.
fn spawn_watcher(shared: Weak<Shared>, interval: Duration) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let shutdown = match shared.upgrade() {
                Some(shared) => shared.shutdown.clone(),
                None => return,
            };
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let Some(shared) = shared.upgrade() else {
                return;
            };
            refresh(&shared).await;
        }
    });
}
