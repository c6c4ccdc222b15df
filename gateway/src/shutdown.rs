//! How a gateway stops: the one signal that starts it, and the tasks it stops.
//!
//! The caller of `app::run` holds the only trigger, a `CancellationToken` (the binary cancels it
//! on SIGTERM or SIGINT through [`until_signal`]; tests and the demo cancel it themselves).
//! Cancelling it starts the drain (see `app::drain_sockets`). Everything the gateway spawns runs
//! on one [`Tasks`], so nothing outlives the drain unseen, under one token tree:
//!
//! ```text
//! deadline              cancelled when DRAIN_SECONDS have passed since the trigger
//! └── stop              cancelled once the sockets are gone (or with `deadline`)
//!     └── one child per background task
//! ```
//!
//! Periodic work stops at `stop`; the two tasks that still owe the database something (the
//! transition writer, the last impression round) keep writing until `deadline`.

use std::future::Future;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Every task a gateway spawns, and the tokens that stop them.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    deadline: CancellationToken,
    stop: CancellationToken,
}

impl Default for Tasks {
    fn default() -> Self {
        let deadline = CancellationToken::new();
        Tasks {
            tracker: TaskTracker::new(),
            stop: deadline.child_token(),
            deadline,
        }
    }
}

impl Tasks {
    /// Spawns a tracked task: the drain waits for it (up to the deadline).
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// A token for one periodic task: cancelled when background work stops.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.child_token()
    }

    /// A token cancelled when the drain's time is up: work that must finish what it holds (the
    /// transition writer) keeps going until then.
    pub fn deadline_token(&self) -> CancellationToken {
        self.deadline.child_token()
    }

    /// Stops background work and waits for every tracked task until `deadline`; then cancels
    /// whatever is left and returns whether everything had ended by itself.
    pub async fn stop_and_wait(&self, deadline: Instant) -> bool {
        self.stop.cancel();
        self.tracker.close();
        let ended = tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok();
        self.deadline.cancel();
        ended
    }
}

/// Runs `fut` (the server) and cancels `trigger` on the first SIGTERM or SIGINT, so the server
/// drains and returns. Kubernetes sends SIGTERM before killing a pod; Ctrl-C sends SIGINT.
pub async fn until_signal<F: Future>(trigger: CancellationToken, fut: F) -> F::Output {
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => return out,
        _ = signalled() => trigger.cancel(),
    }
    fut.await
}

/// The first SIGTERM or SIGINT.
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received."),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received."),
            },
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn periodic_work_stops_at_stop_and_holders_get_until_the_deadline() {
        let tasks = Tasks::default();
        let periodic_done = Arc::new(AtomicBool::new(false));
        let stop = tasks.stop_token();
        let done = periodic_done.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            done.store(true, Ordering::SeqCst);
        });
        // A writer that never finishes on its own: only the deadline ends it.
        let deadline = tasks.deadline_token();
        let flushed_until_deadline = Arc::new(AtomicBool::new(false));
        let flag = flushed_until_deadline.clone();
        tasks.spawn(async move {
            deadline.cancelled().await;
            flag.store(true, Ordering::SeqCst);
        });
        let start = Instant::now();
        let ended = tasks.stop_and_wait(start + Duration::from_secs(5)).await;
        assert!(!ended, "the writer was still running at the deadline");
        assert!(periodic_done.load(Ordering::SeqCst));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Cancelled at the deadline, the writer ends.
        tasks.tracker.wait().await;
        assert!(flushed_until_deadline.load(Ordering::SeqCst));
    }

    /// Every task the library starts goes through `Tasks` (so the drain stops and awaits it):
    /// no bare spawn anywhere in `src/` except the binary's demo, whose tasks are its own.
    #[test]
    fn nothing_in_the_library_spawns_outside_tasks() {
        fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    rust_files(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        assert!(files.len() > 20, "found only {files:?}");
        // Spelled in pieces so this test does not find itself.
        let bare = [
            concat!("tokio", "::spawn("),
            concat!("task", "::spawn("),
            concat!("thread", "::spawn("),
        ];
        let offenders: Vec<String> = files
            .iter()
            .filter(|f| !f.ends_with("demo.rs"))
            .filter_map(|f| {
                let text = std::fs::read_to_string(f).ok()?;
                bare.iter()
                    .any(|b| text.contains(b))
                    .then(|| f.display().to_string())
            })
            .collect();
        assert!(offenders.is_empty(), "bare spawns in {offenders:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn tasks_that_end_return_before_the_deadline() {
        let tasks = Tasks::default();
        let stop = tasks.stop_token();
        tasks.spawn(async move { stop.cancelled().await });
        let start = Instant::now();
        assert!(tasks.stop_and_wait(start + Duration::from_secs(30)).await);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
