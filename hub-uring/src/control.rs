//! The control-plane thread: an ordinary tokio runtime beside the shards.
//!
//! It serves the admin endpoint and runs the hub's background tasks (the JWKS refresher, PDP
//! calls); shards reach it through channels and shared snapshots, never by blocking on it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::admin;
use crate::health::Health;
use crate::metrics::HubMetrics;

/// A task the control plane runs until shutdown.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How long the runtime waits for tasks stuck outside an `.await` when it shuts down.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// Handle of the running control-plane thread. Dropping it shuts the thread down and joins
/// it, as [`shutdown`](Self::shutdown) does.
#[derive(Debug)]
pub struct ControlPlane {
    admin_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts a thread named `nc-control` running a tokio current-thread runtime that serves
/// [`admin::serve`] on `admin_listen` and runs every future in `tasks` until shutdown.
///
/// The address is bound before the thread starts, so a bad or busy address fails here with an
/// error naming it.
pub fn start(
    admin_listen: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<HubMetrics>,
    tasks: Vec<Task>,
) -> io::Result<ControlPlane> {
    let listener = std::net::TcpListener::bind(admin_listen).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("admin.listen: cannot bind {admin_listen}: {e}"),
        )
    })?;
    listener.set_nonblocking(true)?;
    let admin_addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel::<()>();

    let thread = std::thread::Builder::new()
        .name("nc-control".to_owned())
        .spawn(move || {
            runtime.block_on(run(listener, health, metrics, tasks, stopped));
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
        })?;
    tracing::info!(%admin_addr, "admin endpoint listening");

    Ok(ControlPlane {
        admin_addr,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn run(
    listener: std::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<HubMetrics>,
    tasks: Vec<Task>,
    stopped: oneshot::Receiver<()>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            // Registering a bound socket with the reactor fails only if the reactor is broken.
            tracing::error!(error = %e, "admin endpoint: cannot register the listener");
            return;
        }
    };
    let mut running = JoinSet::new();
    for task in tasks {
        running.spawn(task);
    }
    let serving = admin::serve(listener, health, metrics, async {
        // A dropped sender means the handle is gone: stop as well.
        let _ = stopped.await;
    });
    tokio::pin!(serving);
    loop {
        tokio::select! {
            () = &mut serving => break,
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "control-plane task panicked");
                }
            }
        }
    }
    running.shutdown().await;
}

impl ControlPlane {
    /// The address the admin endpoint listens on (the bound port when started on port 0).
    pub fn local_admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Stops serving and the tasks, and joins the thread.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the control-plane thread panicked");
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::tests::request;
    use std::time::Instant;

    fn metrics() -> Arc<HubMetrics> {
        Arc::new(HubMetrics::new(&[], 1))
    }

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn get(addr: SocketAddr, path: &str) -> crate::admin::tests::Reply {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(request(addr, "GET", path))
    }

    #[test]
    fn serves_runs_tasks_and_shuts_down_promptly() {
        let health = Arc::new(Health::new(1));
        health.tick(0);
        let (ran_tx, ran_rx) = std::sync::mpsc::channel();
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
        let tasks: Vec<Task> = vec![
            Box::pin(async move {
                ran_tx
                    .send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
            }),
            // A task that never ends: shutdown must still be prompt, and drop its state.
            Box::pin(async move {
                let _dropped = dropped_tx;
                std::future::pending::<()>().await;
            }),
        ];
        let control = start(loopback(), Arc::clone(&health), metrics(), tasks).unwrap();
        let addr = control.local_admin_addr();
        assert_ne!(addr.port(), 0);

        let thread = ran_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("task ran");
        assert_eq!(thread.as_deref(), Some("nc-control"));

        let r = get(addr, "/readyz");
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "not ready: listeners not bound\n")
        );
        health.set_listeners_bound();
        health.set_jwks_loaded();
        let r = get(addr, "/readyz");
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        assert_eq!(get(addr, "/metrics").status, 200);

        let began = Instant::now();
        control.shutdown();
        assert!(
            began.elapsed() < Duration::from_secs(3),
            "shutdown took {:?}",
            began.elapsed()
        );
        assert_eq!(
            dropped_rx.recv_timeout(Duration::from_secs(1)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
            "the pending task was dropped"
        );
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "nothing listens after shutdown"
        );
    }

    #[test]
    fn a_busy_address_fails_naming_it() {
        let taken = std::net::TcpListener::bind(loopback()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr, Arc::new(Health::new(1)), metrics(), Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        let message = err.to_string();
        assert!(message.contains(&addr.to_string()), "{message}");
        assert!(message.contains("admin.listen"), "{message}");
    }

    #[test]
    fn dropping_the_handle_stops_the_thread() {
        let control = start(loopback(), Arc::new(Health::new(1)), metrics(), Vec::new()).unwrap();
        let addr = control.local_admin_addr();
        assert_eq!(get(addr, "/healthz").status, 200);
        drop(control);
        assert!(std::net::TcpStream::connect(addr).is_err());
    }
}
