//! Keeping sessions up: one supervisor per hub URL, one task per lane, each reconnecting on its
//! own with backoff, forever.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nowconnect_core::config::{Lanes, TargetAddr, WsUrl};
use nowconnect_core::control::{self, Hello, PROTOCOL_VERSION};
use nowconnect_core::name::ConnectorName;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::{self, Backoff, HEALTHY_AFTER};
use crate::connect::{self, ConnectError, Target};
use crate::dpop::DpopKey;
use crate::health::Readiness;
use crate::proxy::Proxies;
use crate::session::{self, SessionParams};
use crate::threads::LaneThreads;
use crate::token::{self, read_token};

/// What every lane of every hub shares.
pub(crate) struct Agent {
    /// The hubs' tunnel URLs.
    pub(crate) hubs: Vec<WsUrl>,
    /// This agent's id, sent in HELLO.
    pub(crate) agent_id: String,
    /// Where the token is read from on every connect.
    pub(crate) token_file: PathBuf,
    /// The token file's contents as last polled; a change replaces every session.
    pub(crate) token: watch::Receiver<Option<Arc<str>>>,
    /// The HTTP proxies to reach hubs through (none without `trust_env`).
    pub(crate) proxies: Proxies,
    /// Connector name → target.
    pub(crate) connectors: Arc<BTreeMap<ConnectorName, TargetAddr>>,
    /// Sessions per hub.
    pub(crate) lanes: Lanes,
    /// TLS configuration for `wss://` hubs.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// The key that signs DPoP proofs, when the token is DPoP-bound.
    pub(crate) dpop: Option<DpopKey>,
    /// How long a target dial may take.
    pub(crate) dial_timeout: Duration,
    /// Whether plain sessions splice large payloads to their targets.
    pub(crate) splice: bool,
    /// Sessions up, per hub.
    pub(crate) readiness: Arc<Readiness>,
    /// Flips to true on SIGTERM/SIGINT.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Held by every task that must finish before the process exits; the receiver sees the
    /// channel close once they all have.
    pub(crate) alive: mpsc::Sender<()>,
    /// The threads lanes and their streams run on.
    pub(crate) threads: LaneThreads,
}

/// Resolves once shutdown begins (or nobody can begin it any more).
async fn shutdown_begun(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&down| down).await;
}

/// Keeps the lanes of hub `hub` running: `lanes` of them, or for `auto` one at first and then
/// as many as the hub reports shards (at most 64).
pub(crate) async fn run_hub(agent: Arc<Agent>, hub: usize) {
    let (shards_tx, mut shards_rx) = mpsc::unbounded_channel::<u32>();
    let (initial, auto) = match agent.lanes {
        Lanes::Count(n) => (n, false),
        Lanes::Auto => (1, true),
    };
    let known = Arc::new(AtomicU32::new(initial));
    let placement = Arc::new(Placement::default());
    let spawn_lane = |lane: u32| {
        agent.threads.spawn(run_lane(
            Arc::clone(&agent),
            hub,
            lane,
            Arc::clone(&known),
            auto.then(|| shards_tx.clone()),
            Arc::clone(&placement),
        ));
    };
    for lane in 0..initial {
        spawn_lane(lane);
    }
    if !auto {
        return;
    }
    let mut spawned = initial;
    let mut shutdown = agent.shutdown.clone();
    loop {
        let shards = tokio::select! {
            () = shutdown_begun(&mut shutdown) => return,
            shards = shards_rx.recv() => shards,
        };
        let Some(shards) = shards else { return };
        let wanted = shards.clamp(1, control::MAX_LANES);
        if wanted > spawned {
            known.store(wanted, Ordering::Relaxed);
            tracing::info!(hub = %agent.hubs[hub], lanes = wanted, "hub reports {shards} shards: opening one lane per shard");
            for lane in spawned..wanted {
                spawn_lane(lane);
            }
            spawned = wanted;
        }
    }
}

/// How many times a lane reconnects at once to land on a hub shard no other lane holds.
pub(crate) const PLACEMENT_TRIES: u32 = 8;

/// Which hub shard each live lane of one hub landed on (WELCOME's `shard`).
///
/// The hub's kernel spreads connections over its shards by hash, so a few lanes often pile
/// onto one shard. A lane that lands where another lane already is, while some shard has none,
/// reconnects at once, a bounded number of times: then every shard serves its clients with a
/// local session and no client has to be handed between shards.
#[derive(Default)]
pub(crate) struct Placement {
    shards: std::sync::Mutex<BTreeMap<u32, u32>>,
}

impl Placement {
    /// Whether `lane` should keep a session on `shard` of `shards`, given the other lanes.
    /// Records the lane there when it should.
    pub(crate) fn settle(&self, lane: u32, shard: u32, shards: u32, tries: u32) -> bool {
        let mut placed = self.shards.lock().unwrap_or_else(|e| e.into_inner());
        placed.remove(&lane);
        let taken = placed.values().any(|&s| s == shard);
        let mut covered: Vec<u32> = placed.values().copied().collect();
        covered.sort_unstable();
        covered.dedup();
        // `shard` is among `covered` when taken: another shard is free if fewer are covered.
        let room_elsewhere = (covered.len() as u32) < shards;
        if taken && room_elsewhere && tries < PLACEMENT_TRIES {
            return false;
        }
        placed.insert(lane, shard);
        true
    }

    /// `lane` has no session any more.
    pub(crate) fn leave(&self, lane: u32) {
        self.shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&lane);
    }
}

/// A lane's current session: its task and the channels between the two.
struct Current {
    /// The session's task.
    task: tokio::task::JoinHandle<()>,
    /// Fires when the hub sent GOAWAY.
    goaway: oneshot::Receiver<()>,
    /// Tells the session to drain.
    drain: oneshot::Sender<()>,
}

/// How a session's time as the lane's current session ended.
enum Handover {
    /// The session ended.
    Ended,
    /// The hub sent GOAWAY: the session drains on its own.
    GoAway,
    /// The token file holds a new token: the session drains once this sender fires, which the
    /// lane does when a session with the new token is up.
    Rotate(oneshot::Sender<()>),
}

/// One lane: connect, run the session, and reconnect with backoff when it ends, until
/// shutdown. After GOAWAY the replacement is opened at once while the old session drains; when
/// the token file changes, a replacement is opened with the new token and the old session
/// drains once it is up.
async fn run_lane(
    agent: Arc<Agent>,
    hub: usize,
    lane: u32,
    known_lanes: Arc<AtomicU32>,
    shards: Option<mpsc::UnboundedSender<u32>>,
    placement: Arc<Placement>,
) {
    let mut placement_tries = 0;
    let url = &agent.hubs[hub];
    let mut shutdown = agent.shutdown.clone();
    let mut token_rx = agent.token.clone();
    let mut backoff = Backoff::new();
    let target = Target {
        url,
        tls: agent.tls.as_ref(),
        proxy: agent.proxies.for_url(url),
        dpop: agent.dpop.as_ref(),
    };
    // The session a rotation replaces, until its replacement is up.
    let mut replaced: Option<oneshot::Sender<()>> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let hello = Hello {
            v: PROTOCOL_VERSION,
            agent_id: agent.agent_id.clone(),
            connectors: agent.connectors.keys().cloned().collect(),
            lane,
            lanes: known_lanes.load(Ordering::Relaxed).max(lane + 1),
            software: crate::SOFTWARE.to_owned(),
        };
        // Whatever the watcher has seen so far is older than (or equal to) what is read now.
        token_rx.borrow_and_update();
        let attempt = async {
            let token = read_token(&agent.token_file).await?;
            let connected = connect::connect(&target, &token, &hello).await?;
            Ok::<_, ConnectError>((connected, token))
        };
        let connected = tokio::select! {
            () = shutdown_begun(&mut shutdown) => return,
            connected = attempt => connected,
        };
        let failure = match connected {
            Ok((connected, token)) => {
                let welcome = &connected.welcome;
                if !placement.settle(lane, welcome.shard, welcome.shards, placement_tries) {
                    placement_tries += 1;
                    tracing::debug!(hub = %url, lane, shard = welcome.shard,
                        "another lane holds this hub shard: reconnecting to land elsewhere");
                    drop(connected);
                    continue;
                }
                placement_tries = 0;
                // The hub's view of the token's expiry, else the token's own claim.
                let token_exp = welcome.token_exp.or_else(|| token::expiry(&token));
                tracing::info!(
                    hub = %url,
                    lane,
                    session = %welcome.session,
                    replica = %welcome.replica_id,
                    shard = welcome.shard,
                    shards = welcome.shards,
                    token_exp,
                    connectors = %session::describe_welcome(welcome),
                    "session established"
                );
                for refusal in &welcome.refused {
                    tracing::warn!(hub = %url, lane, connector = %refusal.connector, reason = %refusal.reason, "hub refused connector");
                }
                if let Some(shards) = &shards {
                    let _ = shards.send(welcome.shards);
                }
                if let Some(old) = replaced.take() {
                    let _ = old.send(());
                }
                let started = Instant::now();
                let (goaway_tx, goaway_rx) = oneshot::channel();
                let (drain_tx, drain_rx) = oneshot::channel();
                let params = SessionParams {
                    hub: url.to_string(),
                    lane,
                    connectors: Arc::clone(&agent.connectors),
                    dial_timeout: agent.dial_timeout,
                    shutdown: agent.shutdown.clone(),
                    goaway: goaway_tx,
                    drain: drain_rx,
                    ready: agent.readiness.session_up(hub),
                    splice: agent.splice,
                };
                let alive = agent.alive.clone();
                let task = tokio::spawn(async move {
                    session::run(connected, params).await;
                    drop(alive);
                });
                let expires = token_exp.map(unix_time);
                let current = Current {
                    task,
                    goaway: goaway_rx,
                    drain: drain_tx,
                };
                let handover =
                    watch_session(&agent, current, &mut token_rx, &token, expires, (url, lane))
                        .await;
                placement.leave(lane);
                match handover {
                    Handover::GoAway => {
                        backoff.reset();
                        wait_for_fresh_token(&agent, &mut token_rx, &token, expires, (url, lane))
                            .await;
                        continue;
                    }
                    Handover::Rotate(drain) => {
                        tracing::info!(hub = %url, lane, "token file changed: opening a session with the new token");
                        // A rotation that supersedes an earlier one still waiting for its
                        // replacement: that older session drains now.
                        if let Some(older) = replaced.replace(drain) {
                            let _ = older.send(());
                        }
                        backoff.reset();
                        continue;
                    }
                    Handover::Ended => {}
                }
                if started.elapsed() >= HEALTHY_AFTER {
                    backoff.reset();
                }
                None
            }
            Err(err) => Some(err),
        };
        if *shutdown.borrow() {
            return;
        }
        let delay = backoff.next_delay(backoff::uniform);
        let retry_in_ms = delay.as_millis() as u64;
        match failure {
            Some(ConnectError::Rejected {
                status,
                www_authenticate,
            }) => tracing::warn!(
                hub = %url,
                lane,
                status,
                www_authenticate = www_authenticate.as_deref().unwrap_or(""),
                retry_in_ms,
                "hub refused the session"
            ),
            Some(ConnectError::ProxyRefused {
                proxy,
                target,
                status,
                status_line,
            }) => tracing::error!(
                hub = %url,
                lane,
                proxy = %proxy,
                target = %target,
                status,
                status_line = %status_line,
                retry_in_ms,
                "proxy refused the CONNECT tunnel to the hub"
            ),
            Some(err) => {
                tracing::warn!(hub = %url, lane, error = %err, retry_in_ms, "connect failed")
            }
            None => tracing::info!(hub = %url, lane, retry_in_ms, "reconnecting"),
        }
        tokio::select! {
            () = shutdown_begun(&mut shutdown) => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// After GOAWAY: when the token file still holds the session's `token` and it expires
/// within [`token::RENEW_AHEAD`], a replacement with it would be sent away at once (the hub
/// sends GOAWAY that far ahead of `exp`). Waits until the file holds another token, the token
/// has expired (then connecting fails visibly and backs off), or shutdown.
async fn wait_for_fresh_token(
    agent: &Agent,
    token_rx: &mut watch::Receiver<Option<Arc<str>>>,
    token: &str,
    expires: Option<SystemTime>,
    (url, lane): (&WsUrl, u32),
) {
    let Some(expires) = expires else { return };
    if !until_renewal(expires).is_zero() {
        return;
    }
    match read_token(&agent.token_file).await {
        Ok(current) if current == token => {}
        _ => return,
    }
    let left = expires
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tracing::warn!(hub = %url, lane, expires_in_s = left.as_secs(),
        "GOAWAY for an expiring token and the token file holds no newer one: waiting for a renewed token");
    let mut shutdown = agent.shutdown.clone();
    let fresh = async {
        loop {
            if token_rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            if token_rx
                .borrow_and_update()
                .as_deref()
                .is_some_and(|fresh| fresh != token)
            {
                return;
            }
        }
    };
    tokio::select! {
        () = shutdown_begun(&mut shutdown) => {}
        () = fresh => {}
        () = tokio::time::sleep(left) => {}
    }
}

/// Seconds since the Unix epoch as a wall-clock time.
fn unix_time(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// How long until `expires` is within [`token::RENEW_AHEAD`]; zero if it already is.
fn until_renewal(expires: SystemTime) -> Duration {
    let renew_at = expires
        .checked_sub(token::RENEW_AHEAD)
        .unwrap_or(UNIX_EPOCH);
    renew_at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Waits while `task` is the lane's current session: until it ends, the hub sends GOAWAY, or
/// a token other than `token` turns up in the token file (published by the watcher, or read
/// when the session's token is about to expire).
async fn watch_session(
    agent: &Agent,
    current: Current,
    token_rx: &mut watch::Receiver<Option<Arc<str>>>,
    token: &str,
    expires: Option<SystemTime>,
    (url, lane): (&WsUrl, u32),
) -> Handover {
    let Current {
        mut task,
        mut goaway,
        drain,
    } = current;
    let mut goaway_open = true;
    let mut watching = true;
    let mut renewal_due = expires.is_some();
    let renewal = tokio::time::sleep(expires.map_or(Duration::ZERO, until_renewal));
    tokio::pin!(renewal);
    loop {
        tokio::select! {
            biased;
            _ = &mut task => return Handover::Ended,
            said = &mut goaway, if goaway_open => {
                goaway_open = false;
                if said.is_ok() {
                    return Handover::GoAway;
                }
            }
            changed = token_rx.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let fresh = token_rx.borrow_and_update().clone();
                if fresh.is_some_and(|fresh| *fresh != *token) {
                    return Handover::Rotate(drain);
                }
            }
            () = &mut renewal, if renewal_due => {
                renewal_due = false;
                // The watcher polls anyway; read at once so no poll interval is lost.
                if let Ok(fresh) = read_token(&agent.token_file).await
                    && fresh != token
                {
                    return Handover::Rotate(drain);
                }
                let left = expires
                    .and_then(|e| e.duration_since(SystemTime::now()).ok())
                    .unwrap_or(Duration::ZERO);
                tracing::warn!(hub = %url, lane, expires_in_s = left.as_secs(),
                    "the session's token expires soon and the token file holds no newer token; the session is replaced as soon as it does");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_on_a_free_shard_stays() {
        let p = Placement::default();
        assert!(p.settle(0, 1, 2, 0));
        assert!(p.settle(1, 0, 2, 0));
    }

    #[test]
    fn a_lane_on_a_taken_shard_retries_while_another_is_free() {
        let p = Placement::default();
        assert!(p.settle(0, 1, 2, 0));
        assert!(!p.settle(1, 1, 2, 0));
        assert!(!p.settle(1, 1, 2, PLACEMENT_TRIES - 1));
        // The bound: after that many tries it stays where it is.
        assert!(p.settle(1, 1, 2, PLACEMENT_TRIES));
    }

    #[test]
    fn with_every_shard_covered_a_duplicate_stays() {
        let p = Placement::default();
        assert!(p.settle(0, 0, 2, 0));
        assert!(p.settle(1, 1, 2, 0));
        assert!(
            p.settle(2, 1, 2, 0),
            "both shards are covered: nothing to gain"
        );
    }

    #[test]
    fn a_lane_that_left_frees_its_shard() {
        let p = Placement::default();
        assert!(p.settle(0, 1, 2, 0));
        p.leave(0);
        assert!(p.settle(1, 1, 2, 0));
    }
}
