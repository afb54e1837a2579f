//! The threads sessions run on.
//!
//! Each thread runs its own current-thread tokio runtime, and a lane (one session to a hub,
//! reconnecting as needed) lives on one of them with every stream the session carries: its
//! reader and writer tasks and each stream's two tasks. A byte that crosses the agent is then
//! handled by one thread from the socket it arrived on to the socket it leaves by, and handing
//! it from one task to the next wakes no other thread. Lanes are spread over the threads in
//! turn, so with one lane per hub shard (the default) the agent uses as many cores as the hub
//! has shards, up to one thread per core.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};

/// A fixed set of threads, each running a current-thread runtime until the process exits.
pub(crate) struct LaneThreads {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

impl LaneThreads {
    /// Starts `count` threads (at least one), named `nc-lane-N`.
    pub(crate) fn start(count: usize) -> std::io::Result<LaneThreads> {
        let mut handles = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("nc-lane-{index}"))
                .spawn(move || {
                    let runtime = match Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = tx.send(Ok(runtime.handle().clone()));
                    // Runs the tasks spawned onto this runtime until the process exits.
                    runtime.block_on(std::future::pending::<()>());
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a lane thread exited while starting"))??;
            handles.push(handle);
        }
        Ok(LaneThreads {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// How many threads there are.
    pub(crate) fn len(&self) -> usize {
        self.handles.len()
    }

    /// Runs `task` on the next thread in turn.
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_go_to_the_threads_in_turn_and_stay_there() {
        let threads = LaneThreads::start(2).unwrap();
        assert_eq!(threads.len(), 2);
        let (tx, rx) = std::sync::mpsc::channel();
        for task in 0..4 {
            let tx = tx.clone();
            threads.spawn(async move {
                let before = std::thread::current().name().map(str::to_owned);
                // A task spawned from a lane's task runs on the same thread.
                let inner = tokio::spawn(async {
                    tokio::task::yield_now().await;
                    std::thread::current().name().map(str::to_owned)
                });
                let after = inner.await.unwrap();
                let _ = tx.send((task, before, after));
            });
        }
        drop(tx);
        let mut seen: Vec<_> = rx.iter().collect();
        seen.sort();
        let names: Vec<_> = seen.iter().map(|(_, b, _)| b.clone().unwrap()).collect();
        assert_eq!(names, ["nc-lane-0", "nc-lane-1", "nc-lane-0", "nc-lane-1"]);
        for (task, before, after) in &seen {
            assert_eq!(before, after, "task {task}'s child ran on another thread");
        }
    }
}
