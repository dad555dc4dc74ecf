//! The threads sampling runs on, so the page's own thread only draws and answers input.
//!
//! In the browser: rayon's pool as one Web Worker per core, all sharing this module's memory
//! (wasm threads; the server's cross-origin-isolation headers make `SharedArrayBuffer`
//! available). Natively (the unit tests): rayon's own threads. A [`Task`] is work handed to the
//! pool; it reports progress and its result over a channel the page's thread awaits, and stops
//! at its next check when cancelled or dropped.
//!
//! The page's thread never blocks on the pool (browsers forbid it there): it only spawns and
//! awaits. Work on the pool may use rayon freely (`join`, parallel iterators): the other workers
//! pick it up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures_util::StreamExt;

/// What a [`Task`] sends to the page.
enum Message<P, T> {
    Progress(P),
    Done(T),
}

/// What [`Task::next`] hands the page.
#[derive(Debug, PartialEq)]
pub enum Event<P, T> {
    /// A progress report from the work.
    Progress(P),
    /// The work's result; the task is over.
    Done(T),
    /// The work ended without a result (it panicked: the panic hook shows why).
    Lost,
}

/// The work's side of a [`Task`]: report progress, check for cancellation.
pub struct Reporter<P> {
    sender: UnboundedSender<Message<P, ()>>,
    cancelled: Arc<AtomicBool>,
}

impl<P> Reporter<P> {
    /// Sends a progress report (dropped if the page no longer listens).
    pub fn report(&self, progress: P) {
        let _ = self.sender.unbounded_send(Message::Progress(progress));
    }

    /// Whether the page cancelled the task or dropped it: the work should stop.
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed) || self.sender.is_closed()
    }
}

/// Work running on the pool, seen from the page. Dropping it cancels the work.
pub struct Task<P, T> {
    progress: UnboundedReceiver<Message<P, ()>>,
    done: UnboundedReceiver<Message<(), T>>,
    cancelled: Arc<AtomicBool>,
}

impl<P: Send + 'static, T: Send + 'static> Task<P, T> {
    /// Hands `work` to the pool: it gets a [`Reporter`] and returns the result.
    pub async fn spawn(
        work: impl FnOnce(&Reporter<P>) -> T + Send + 'static,
    ) -> Result<Self, String> {
        ready().await?;
        let (progress_tx, progress) = unbounded();
        let (done_tx, done) = unbounded();
        let cancelled = Arc::new(AtomicBool::new(false));
        let reporter = Reporter {
            sender: progress_tx,
            cancelled: cancelled.clone(),
        };
        rayon::spawn(move || {
            let result = work(&reporter);
            let _ = done_tx.unbounded_send(Message::Done(result));
        });
        Ok(Task {
            progress,
            done,
            cancelled,
        })
    }

    /// Asks the work to stop at its next check.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// A handle that cancels this task, for a button.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancelled.clone())
    }

    /// The next progress report, else the result once the work is over. Reports sent before
    /// the result all come first.
    pub async fn next(&mut self) -> Event<P, T> {
        if let Some(Message::Progress(p)) = self.progress.next().await {
            return Event::Progress(p);
        }
        // The progress channel closed: the work returned (or unwound).
        match self.done.next().await {
            Some(Message::Done(result)) => Event::Done(result),
            _ => Event::Lost,
        }
    }
}

impl<P, T> Drop for Task<P, T> {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

/// Cancels a [`Task`] from elsewhere (a Cancel button); cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Canceller(Arc<AtomicBool>);

impl Canceller {
    /// Asks the task to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Whether this code runs on a pool worker rather than the page's thread (a browser worker
/// has no `window`).
pub fn on_worker() -> bool {
    #[cfg(target_arch = "wasm32")]
    {
        web_sys::window().is_none()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        rayon::current_thread_index().is_some()
    }
}

/// The pool's thread count once it is up, or why it could not start.
#[cfg(target_arch = "wasm32")]
pub async fn ready() -> Result<usize, String> {
    use futures_util::future::{FutureExt, LocalBoxFuture, Shared};
    thread_local! {
        static POOL: Shared<LocalBoxFuture<'static, Result<usize, String>>> = start().boxed_local().shared();
    }
    POOL.with(Clone::clone).await
}

/// Natively rayon's global pool starts on first use.
#[cfg(not(target_arch = "wasm32"))]
pub async fn ready() -> Result<usize, String> {
    Ok(rayon::current_num_threads())
}

/// `crossOriginIsolated`: whether the page may share memory with workers.
#[cfg(target_arch = "wasm32")]
pub fn cross_origin_isolated() -> bool {
    js_sys::Reflect::get(&js_sys::global(), &"crossOriginIsolated".into())
        .ok()
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
}

/// Starts one worker per core the browser reports.
#[cfg(target_arch = "wasm32")]
async fn start() -> Result<usize, String> {
    let window = web_sys::window().ok_or("no window to start the sampling workers from")?;
    if !cross_origin_isolated() {
        return Err(
            "the page is not cross-origin isolated, so it cannot share memory with \
                    sampling workers: serve the dashboard with diffit-server (it sends the \
                    Cross-Origin-Opener-Policy and Cross-Origin-Embedder-Policy headers)"
                .to_string(),
        );
    }
    let threads = (window.navigator().hardware_concurrency() as usize).clamp(1, 64);
    wasm_bindgen_futures::JsFuture::from(wasm_bindgen_rayon::init_thread_pool(threads))
        .await
        .map_err(|e| format!("the sampling workers did not start: {e:?}"))?;
    Ok(threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures_executor_lite(f)
    }

    /// A minimal executor for the tests: polls on this thread, parking until woken.
    fn futures_executor_lite<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
                return out;
            }
            std::thread::park();
        }
    }

    #[test]
    fn progress_comes_before_the_result_and_the_work_runs_on_the_pool() {
        let events = block_on(async {
            let mut task = Task::spawn(|r: &Reporter<u32>| {
                for i in 0..3 {
                    r.report(i);
                }
                on_worker()
            })
            .await
            .unwrap();
            let mut events = Vec::new();
            loop {
                match task.next().await {
                    Event::Done(d) => break events.push(Event::Done(d)),
                    e => events.push(e),
                }
            }
            events
        });
        assert_eq!(
            events,
            [
                Event::Progress(0),
                Event::Progress(1),
                Event::Progress(2),
                Event::Done(true)
            ]
        );
        assert!(!on_worker(), "the test itself is not on the pool");
    }

    #[test]
    fn cancel_stops_the_work_at_its_next_check() {
        let event = block_on(async {
            let (started_tx, started) = std::sync::mpsc::channel();
            let mut task = Task::spawn(move |r: &Reporter<()>| {
                let _ = started_tx.send(());
                while !r.cancelled() {
                    std::thread::yield_now();
                }
                "stopped"
            })
            .await
            .unwrap();
            started.recv().unwrap();
            task.canceller().cancel();
            task.next().await
        });
        // `next` only answers once the work saw the flag and returned its result (it would
        // never answer if cancelling did not reach the work).
        assert_eq!(event, Event::Done("stopped"));
    }

    #[test]
    fn a_dropped_task_is_cancelled() {
        let (seen_tx, seen) = std::sync::mpsc::channel();
        block_on(async {
            let task = Task::spawn(move |r: &Reporter<()>| {
                while !r.cancelled() {
                    std::thread::yield_now();
                }
                let _ = seen_tx.send(true);
            })
            .await
            .unwrap();
            drop(task);
        });
        assert_eq!(
            seen.recv_timeout(std::time::Duration::from_secs(30)),
            Ok(true)
        );
    }
}
