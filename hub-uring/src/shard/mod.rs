//! Shards: one thread per core, each with its own runtime, sockets, sessions and clients.
//!
//! Start-up binds every socket on the main thread (one `SO_REUSEPORT` socket per shard for each
//! listener and for the tunnel), starts the control plane, then one thread per shard pinned to
//! a core. A client is routed to the least-loaded session of its connector on the shard that
//! accepted it, so its frames never leave that shard; agents open one lane per shard (WELCOME
//! tells them the shard count) so that every shard has a session to route to.
//!
//! SIGTERM or SIGINT starts the drain: listeners stop accepting, every session gets GOAWAY,
//! streams finish for up to `limits.drain_timeout_ms`, then the remaining sessions are closed
//! with 1001 and the process exits 0.

mod client;
mod listen;
pub(crate) mod mesh;
pub(crate) mod pool;
pub(crate) mod ring;
mod session;
mod splice;
mod transport;
mod tunnel;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use nowconnect_core::cidr::CidrList;
use nowconnect_core::config::{HubConfig, Shards};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::time::Millis;
use nowconnect_core::ws::CloseCode;
use tokio::sync::watch;

use self::pool::BufferPool;
use self::session::{Ending, SessionCtx};
use crate::auth::{Authenticator, JwksStore};
use crate::health::Health;
use crate::logging::warn_limited;
use crate::metrics::{ConnectorMetrics, HubMetrics, ShardMetrics};
use crate::pdp::Pdp;

/// What every shard shares (read-only or atomic).
pub(crate) struct Shared {
    pub(crate) config: HubConfig,
    pub(crate) shards: usize,
    pub(crate) health: Arc<Health>,
    pub(crate) metrics: Arc<HubMetrics>,
    pub(crate) auth: Authenticator,
    /// The policy decision point, when `pdp` is configured.
    pub(crate) pdp: Option<Arc<Pdp>>,
    /// The tunnel's TLS configuration, when the hub terminates TLS itself.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) pending_handshakes: AtomicUsize,
    /// Session presence per shard and the wake-ups of the hand-off rings.
    pub(crate) mesh: mesh::Mesh,
    /// Becomes true when the drain starts.
    pub(crate) drain: watch::Receiver<bool>,
}

/// A listener as a shard sees it.
pub(crate) struct ListenerInfo {
    pub(crate) connector: ConnectorName,
    pub(crate) allow: CidrList,
    pub(crate) metrics: ConnectorMetrics,
}

/// One shard's state. Lives on the shard's thread only.
pub(crate) struct ShardCtx {
    pub(crate) index: usize,
    pub(crate) shared: Arc<Shared>,
    pub(crate) listeners: Vec<ListenerInfo>,
    pub(crate) pool: BufferPool,
    /// Bytes each buffer of the provided-buffer ring receives, when the shard runs on
    /// io_uring and client receives use the ring; `None` under epoll.
    pub(crate) recv_ring: Option<usize>,
    /// The pipes of streams whose bytes are spliced to the agent.
    pub(crate) pipes: Rc<splice::PipeBudget>,
    pub(crate) metrics: ShardMetrics,
    /// This shard's sending ends of the hand-off rings, by destination shard.
    outbound: RefCell<Vec<Option<rtrb::Producer<mesh::Handoff>>>>,
    origin: Instant,
    sessions: RefCell<Vec<Rc<SessionCtx>>>,
    routes: RefCell<HashMap<ConnectorName, Vec<Rc<SessionCtx>>>>,
    session_counter: Cell<u64>,
}

impl ShardCtx {
    /// Milliseconds since the shard started: the clock the core sees.
    pub(crate) fn now(&self) -> Millis {
        Millis(self.origin.elapsed().as_millis() as u64)
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.shared.drain.borrow()
    }

    pub(crate) fn next_session_id(&self) -> String {
        let n = self.session_counter.get() + 1;
        self.session_counter.set(n);
        format!("{}-{}-{}", self.shared.config.replica_id, self.index, n)
    }

    /// The least-loaded routable session of `connector` on this shard.
    pub(crate) fn route(&self, connector: &ConnectorName) -> Option<Rc<SessionCtx>> {
        let routes = self.routes.borrow();
        routes
            .get(connector)?
            .iter()
            .filter(|s| s.is_routable())
            .min_by_key(|s| s.load())
            .cloned()
    }

    pub(crate) fn add_session(&self, session: Rc<SessionCtx>) {
        let mut routes = self.routes.borrow_mut();
        for connector in &session.accepted {
            routes.entry(*connector).or_default().push(session.clone());
            self.shared.mesh.update(*connector, self.index, 1);
        }
        self.sessions.borrow_mut().push(session);
        self.metrics
            .set_sessions(self.sessions.borrow().len() as u64);
    }

    pub(crate) fn remove_session(&self, session: &Rc<SessionCtx>) {
        for connector in &session.accepted {
            self.shared.mesh.update(*connector, self.index, -1);
        }
        let mut routes = self.routes.borrow_mut();
        for list in routes.values_mut() {
            list.retain(|s| !Rc::ptr_eq(s, session));
        }
        self.sessions
            .borrow_mut()
            .retain(|s| !Rc::ptr_eq(s, session));
        self.metrics
            .set_sessions(self.sessions.borrow().len() as u64);
    }

    /// Moves a client to another shard that has a session for `connector`. Gives the stream
    /// back when no shard has one or the ring is full.
    pub(crate) fn hand_off(
        &self,
        connector: &ConnectorName,
        stream: compio::net::TcpStream,
        peer: SocketAddr,
        listener: usize,
    ) -> Result<usize, compio::net::TcpStream> {
        let Some(to) = self.shared.mesh.shard_with(connector, self.index) else {
            return Err(stream);
        };
        let Ok(dup) = socket2::SockRef::from(&stream).try_clone() else {
            return Err(stream);
        };
        let handoff = mesh::Handoff {
            stream: dup.into(),
            peer,
            listener,
        };
        let mut outbound = self.outbound.borrow_mut();
        let Some(Some(producer)) = outbound.get_mut(to) else {
            return Err(stream);
        };
        match mesh::send(&self.shared.mesh, producer, to, handoff) {
            Ok(()) => {
                self.metrics.cross_shard(to, 1);
                // The duplicate now owns the connection; closing ours leaves it open.
                drop(stream);
                Ok(to)
            }
            Err(_) => Err(stream),
        }
    }
}

/// The sockets one shard serves.
struct ShardSockets {
    tunnel: TcpListener,
    listeners: Vec<TcpListener>,
}

fn shard_count(config: &HubConfig) -> usize {
    match config.hub.shards {
        Shards::Count(n) => n as usize,
        Shards::Auto => core_affinity::get_core_ids()
            .map(|ids| ids.len())
            .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
            .unwrap_or(1)
            .max(1),
    }
}

/// Runs the hub until it has drained after SIGTERM or SIGINT.
pub fn run_hub(config: HubConfig) -> ExitCode {
    match start(config) {
        Ok(code) => code,
        Err(line) => {
            tracing::error!("{line}");
            eprintln!("nowconnect-hub: {line}");
            ExitCode::FAILURE
        }
    }
}

fn start(config: HubConfig) -> Result<ExitCode, String> {
    let shards = shard_count(&config);
    let mut per_shard: Vec<ShardSockets> = Vec::new();
    let tunnel = listen::bind_all(config.tunnel.listen, shards)
        .map_err(|e| format!("tunnel.listen {}: {e}", config.tunnel.listen))?;
    let mut listeners = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        listeners.push(
            listen::bind_all(l.listen, shards)
                .map_err(|e| format!("listeners[{i}].listen {}: {e}", l.listen))?,
        );
    }
    let tunnel_addr = tunnel[0].local_addr().map_err(|e| e.to_string())?;
    let listener_addrs: Vec<SocketAddr> = listeners
        .iter()
        .filter_map(|l| l[0].local_addr().ok())
        .collect();
    let mut tunnel = tunnel.into_iter();
    let mut listeners: Vec<_> = listeners.into_iter().map(|l| l.into_iter()).collect();
    for _ in 0..shards {
        per_shard.push(ShardSockets {
            tunnel: tunnel.next().ok_or("socket count")?,
            listeners: listeners
                .iter_mut()
                .map(|l| l.next().ok_or("socket count"))
                .collect::<Result<_, _>>()?,
        });
    }

    let connectors: Vec<String> = config
        .listeners
        .iter()
        .map(|l| l.connector.to_string())
        .collect();
    let health = Arc::new(Health::new(shards));
    let metrics = Arc::new(HubMetrics::new(&connectors, shards));
    let (store, requests) = JwksStore::new();
    let auth = Authenticator::new(&config.security, &config.tunnel, store.clone());
    let jwks_url = config
        .security
        .jwks_url
        .clone()
        .ok_or("security.jwks_url: not set")?;
    let on_loaded = {
        let health = health.clone();
        move || health.set_jwks_loaded()
    };
    let refresher = Box::pin(crate::auth::refresher(jwks_url, store, requests, on_loaded));
    let mut tasks: Vec<crate::control::Task> = vec![refresher];
    let pdp = match &config.pdp {
        Some(pdp) => {
            let (pdp, worker) = crate::pdp::start(pdp, &config.replica_id, metrics.clone())?;
            tasks.push(worker);
            Some(pdp)
        }
        None => None,
    };
    // The control plane's runtime catches SIGTERM and SIGINT for the main thread, which
    // needs no runtime of its own to wait for them.
    let (signalled, signal) = std::sync::mpsc::channel::<()>();
    tasks.push(Box::pin(async move {
        wait_for_signal().await;
        let _ = signalled.send(());
    }));
    let control =
        crate::control::start(config.admin.listen, health.clone(), metrics.clone(), tasks)
            .map_err(|e| format!("admin.listen {}: {e}", config.admin.listen))?;

    let tls = match &config.tunnel.tls {
        Some(tls) => Some(transport::server_config(tls)?),
        None => None,
    };
    let (mesh, ring_ends) = mesh::Mesh::new(shards);
    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_timeout = Duration::from_millis(config.limits.drain_timeout_ms);
    let shared = Arc::new(Shared {
        config,
        shards,
        health: health.clone(),
        metrics,
        auth,
        pdp,
        tls,
        pending_handshakes: AtomicUsize::new(0),
        mesh,
        drain: drain_rx,
    });

    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for (index, (sockets, ends)) in per_shard.into_iter().zip(ring_ends).enumerate() {
        let shared = shared.clone();
        let core = cores.get(index % cores.len().max(1)).copied();
        let ready = ready_tx.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nc-shard-{index}"))
            .spawn(move || {
                if let Some(core) = core {
                    core_affinity::set_for_current(core);
                }
                shard_thread(index, shared, sockets, ends, ready);
            })
            .map_err(|e| format!("starting shard {index}: {e}"))?;
        threads.push(thread);
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(line)) => return Err(line),
            Err(_) => return Err("a shard failed to start".into()),
        }
    }
    health.set_listeners_bound();
    tracing::info!(shards, tunnel = %tunnel_addr, listeners = ?listener_addrs,
        admin = %control.local_admin_addr(), "hub started");

    // Returns on a signal, or should the control plane have stopped without one.
    let _ = signal.recv();
    tracing::info!(timeout_ms = drain_timeout.as_millis() as u64, "draining");
    health.set_draining();
    let _ = drain_tx.send(true);
    for thread in threads {
        let _ = thread.join();
    }
    control.shutdown();
    tracing::info!("hub stopped");
    Ok(ExitCode::SUCCESS)
}

/// Returns on SIGTERM or SIGINT. Should the handlers not install, says so and never returns:
/// the hub then runs until it is killed.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => (term, int),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot catch SIGTERM and SIGINT; stop the hub with SIGKILL");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn shard_thread(
    index: usize,
    shared: Arc<Shared>,
    sockets: ShardSockets,
    ends: mesh::Ends,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let ring = crate::runtime::RecvRing {
        buffers: shared.config.hub.recv_buffers.min(u32::from(u16::MAX)) as u16,
        buffer_len: recv_ring_buffer_len(&shared.config.limits),
    };
    let rt = match crate::runtime::build(shared.config.hub.driver, ring) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "hub.driver {}: shard {index} cannot start its runtime: {e}",
                shared.config.hub.driver
            )));
            return;
        }
    };
    let metrics = shared.metrics.shard(index);
    metrics.set_driver(rt.driver);
    tracing::info!(shard = index, driver = rt.driver, "shard runtime started");
    let listeners = shared
        .config
        .listeners
        .iter()
        .map(|l| ListenerInfo {
            connector: l.connector,
            allow: l.allow_cidrs.clone(),
            metrics: shared.metrics.connector(l.connector.as_str()),
        })
        .collect();
    let frame_payload = shared.config.limits.max_frame_bytes as usize;
    let ring_on = shared.config.hub.recv_buffers > 0;
    let ctx = Rc::new(ShardCtx {
        index,
        shared,
        listeners,
        pool: BufferPool::new(frame_payload, 4096),
        recv_ring: (rt.driver == "io_uring" && ring_on).then_some(ring.buffer_len),
        pipes: Rc::default(),
        metrics,
        outbound: RefCell::new(ends.outbound),
        origin: Instant::now(),
        sessions: RefCell::new(Vec::new()),
        routes: RefCell::new(HashMap::new()),
        session_counter: Cell::new(0),
    });
    rt.runtime
        .block_on(shard_main(ctx, sockets, ends.inbound, ready));
}

/// Bytes each receive-ring buffer holds: a whole frame's payload, at most 64 KiB. Never more
/// than a frame or a window, so a full buffer always fits the credit a stream can have.
fn recv_ring_buffer_len(limits: &nowconnect_core::config::LimitsConfig) -> usize {
    (limits.max_frame_bytes.min(limits.stream_window_bytes) as usize).min(64 * 1024)
}

/// Serves clients handed over by other shards: drains every inbound ring per wake-up.
async fn receive_handoffs(
    ctx: Rc<ShardCtx>,
    mut inbound: Vec<Option<rtrb::Consumer<mesh::Handoff>>>,
) {
    loop {
        ctx.shared.mesh.woken(ctx.index).await;
        for consumer in inbound.iter_mut().flatten() {
            while let Ok(handoff) = consumer.pop() {
                match compio::net::TcpStream::from_std(handoff.stream) {
                    Ok(stream) => {
                        let serve = client::serve(
                            ctx.clone(),
                            stream,
                            handoff.peer,
                            handoff.listener,
                            true,
                        );
                        compio::runtime::spawn(serve).detach();
                    }
                    Err(e) => {
                        warn_limited!(shard = ctx.index, error = %e, "handed-over client lost")
                    }
                }
            }
        }
    }
}

/// Accepts connections on `listener` forever, serving each in a task of its own. An accept
/// error (for instance, out of file descriptors) is logged and retried after a short pause.
async fn accept_loop<F, Fut>(
    listener: compio::net::TcpListener,
    what: &'static str,
    shard: usize,
    serve: F,
) where
    F: Fn(compio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => compio::runtime::spawn(serve(stream, peer)).detach(),
            Err(e) => {
                warn_limited!(per what; shard, error = %e, "{what} accept failed");
                compio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Seconds since the Unix epoch, for token times.
pub(crate) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn shard_main(
    ctx: Rc<ShardCtx>,
    sockets: ShardSockets,
    inbound: Vec<Option<rtrb::Consumer<mesh::Handoff>>>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let tunnel = match compio::net::TcpListener::from_std(sockets.tunnel) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("tunnel.listen: {e}")));
            return;
        }
    };
    let mut accept_tasks = Vec::new();
    accept_tasks.push(compio::runtime::spawn(receive_handoffs(
        ctx.clone(),
        inbound,
    )));
    {
        let ctx = ctx.clone();
        accept_tasks.push(compio::runtime::spawn(accept_loop(
            tunnel,
            "tunnel",
            ctx.index,
            move |stream, peer| tunnel::serve(ctx.clone(), stream, peer),
        )));
    }
    for (i, std_listener) in sockets.listeners.into_iter().enumerate() {
        let listener = match compio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(format!("listeners[{i}].listen: {e}")));
                return;
            }
        };
        let ctx = ctx.clone();
        accept_tasks.push(compio::runtime::spawn(accept_loop(
            listener,
            "client",
            ctx.index,
            move |stream, peer| client::serve(ctx.clone(), stream, peer, i, false),
        )));
    }
    let _ = ready.send(Ok(()));

    // Liveness ticks and pool gauges until the drain starts.
    let mut drain = ctx.shared.drain.clone();
    loop {
        ctx.shared.health.tick(ctx.index);
        let (size, in_use) = ctx.pool.usage();
        ctx.metrics.set_buffer_pool(size, in_use);
        ctx.metrics.set_splice_pipes_open(ctx.pipes.open() as u64);
        if ctx.recv_ring.is_some() {
            let size = u64::from(ctx.shared.config.hub.recv_buffers).next_power_of_two();
            ctx.metrics.set_recv_ring(size, ring::taken());
        }
        let tick = compio::time::sleep(Duration::from_millis(500));
        let closed =
            match futures_util::future::select(Box::pin(tick), Box::pin(drain.changed())).await {
                futures_util::future::Either::Left(_) => false,
                futures_util::future::Either::Right((changed, _)) => changed.is_err(),
            };
        if closed || *drain.borrow() {
            break;
        }
    }

    // Drain: stop accepting, GOAWAY everywhere, wait for streams, then close what is left.
    drop(accept_tasks);
    let sessions: Vec<Rc<SessionCtx>> = ctx.sessions.borrow().clone();
    for s in &sessions {
        s.go_away("draining");
    }
    let deadline =
        Instant::now() + Duration::from_millis(ctx.shared.config.limits.drain_timeout_ms);
    while Instant::now() < deadline && ctx.sessions.borrow().iter().any(|s| !s.has_ended()) {
        ctx.shared.health.tick(ctx.index);
        compio::time::sleep(Duration::from_millis(50)).await;
    }
    let left: Vec<Rc<SessionCtx>> = ctx.sessions.borrow().clone();
    for s in left {
        s.end(Ending {
            code: CloseCode::GOING_AWAY,
            reason: "hub shutting down",
        });
    }
    // Let the writers send their close frames.
    let grace = Instant::now() + Duration::from_millis(500);
    while Instant::now() < grace && !ctx.sessions.borrow().is_empty() {
        compio::time::sleep(Duration::from_millis(20)).await;
    }
}
