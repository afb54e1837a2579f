//! The Prometheus registry and the handles the data path updates.
//!
//! [`HubMetrics`] owns the registry and is shared (in an `Arc`) by every shard and the control
//! plane. The data path never looks a label set up per packet: a shard resolves a
//! [`ConnectorMetrics`] per listener and a [`ShardMetrics`] for itself once, and every update
//! through them is an atomic add on a pre-resolved counter. Session-, authentication- and
//! PDP-level events are rare and go through a label lookup on [`HubMetrics`].
//!
//! Every label value is bounded: connector names come from the configuration (others are
//! folded into [`OTHER_CONNECTOR`]), shard indexes from the shard count, agent ids from
//! authenticated tokens, and reasons from enums or static strings chosen by the hub.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The connector label under which streams of a connector not given to [`HubMetrics::new`]
/// are counted, so that no caller can grow the label set.
pub const OTHER_CONNECTOR: &str = "_other";

/// Upper bounds of the open-latency histogram buckets, in seconds: 100 µs to 10 s, four
/// buckets per decade (factor 10^¼), rounded to three significant digits.
pub const OPEN_LATENCY_BUCKETS: [f64; 21] = [
    0.0001, 0.000178, 0.000316, 0.000562, 0.001, 0.00178, 0.00316, 0.00562, 0.01, 0.0178, 0.0316,
    0.0562, 0.1, 0.178, 0.316, 0.562, 1.0, 1.78, 3.16, 5.62, 10.0,
];

/// Why a stream ended; the `reason` label of `nowconnect_stream_closes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Both FINs were delivered.
    Normal,
    /// The client reset its TCP connection.
    ClientReset,
    /// The agent reset the stream (its target reset the connection).
    AgentReset,
    /// The agent's dial was refused.
    Refused,
    /// The agent could not reach the target.
    Unreachable,
    /// The agent is not allowed to serve the connector.
    NotAuthorized,
    /// The agent does not know the connector.
    NoSuchConnector,
    /// No bytes flowed in either direction for the idle timeout.
    Idle,
    /// A peer broke the protocol on this stream (for instance overran a window).
    ProtocolViolation,
    /// The session carrying the stream ended.
    SessionEnded,
    /// The agent did not answer OPEN within the open timeout.
    OpenTimeout,
    /// The hub or the agent was overloaded.
    Overload,
    /// The drain timeout expired while the hub was draining.
    Drain,
}

impl CloseReason {
    /// Every reason, in declaration order (the order of `as usize`).
    pub const ALL: [CloseReason; 13] = [
        CloseReason::Normal,
        CloseReason::ClientReset,
        CloseReason::AgentReset,
        CloseReason::Refused,
        CloseReason::Unreachable,
        CloseReason::NotAuthorized,
        CloseReason::NoSuchConnector,
        CloseReason::Idle,
        CloseReason::ProtocolViolation,
        CloseReason::SessionEnded,
        CloseReason::OpenTimeout,
        CloseReason::Overload,
        CloseReason::Drain,
    ];

    /// The label value, in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::ClientReset => "client_reset",
            CloseReason::AgentReset => "agent_reset",
            CloseReason::Refused => "refused",
            CloseReason::Unreachable => "unreachable",
            CloseReason::NotAuthorized => "not_authorized",
            CloseReason::NoSuchConnector => "no_such_connector",
            CloseReason::Idle => "idle",
            CloseReason::ProtocolViolation => "protocol_violation",
            CloseReason::SessionEnded => "session_ended",
            CloseReason::OpenTimeout => "open_timeout",
            CloseReason::Overload => "overload",
            CloseReason::Drain => "drain",
        }
    }
}

/// Why a client connection was turned away before it became a stream; the `reason` label of
/// `nowconnect_rejected_clients_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The client's address is outside the allowed CIDRs.
    Cidr,
    /// No agent has registered the connector.
    NoAgent,
    /// The hub is draining.
    Draining,
    /// The hub is at a limit (streams per session, memory).
    Overload,
    /// The PDP denied the connection.
    Denied,
}

impl RejectReason {
    /// Every reason, in declaration order (the order of `as usize`).
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Cidr,
        RejectReason::NoAgent,
        RejectReason::Draining,
        RejectReason::Overload,
        RejectReason::Denied,
    ];

    /// The label value, in snake case.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Cidr => "cidr",
            RejectReason::NoAgent => "no_agent",
            RejectReason::Draining => "draining",
            RejectReason::Overload => "overload",
            RejectReason::Denied => "denied",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorReasonLabels {
    connector: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    connector: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabels {
    agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PdpLabels {
    decision: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: usize,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriverLabels {
    shard: usize,
    driver: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CrossShardLabels {
    from: usize,
    to: usize,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn open_latency_histogram() -> Histogram {
    Histogram::new(OPEN_LATENCY_BUCKETS)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every update is one call.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The families behind the per-connector handles.
#[derive(Clone, Debug)]
struct ConnectorFamilies {
    streams_total: Family<ConnectorLabels, Counter>,
    streams_active: Family<ConnectorLabels, Gauge>,
    closes: Family<ConnectorReasonLabels, Counter>,
    bytes: Family<DirectionLabels, Counter>,
    open_latency: HistogramFamily<ConnectorLabels>,
    rejected: Family<ConnectorReasonLabels, Counter>,
}

impl ConnectorFamilies {
    fn resolve(&self, name: &str) -> ConnectorMetrics {
        let connector = ConnectorLabels {
            connector: name.to_owned(),
        };
        let with_reason = |family: &Family<ConnectorReasonLabels, Counter>, reason| {
            family.get_or_create_owned(&ConnectorReasonLabels {
                connector: name.to_owned(),
                reason,
            })
        };
        let direction = |direction| {
            self.bytes.get_or_create_owned(&DirectionLabels {
                connector: name.to_owned(),
                direction,
            })
        };
        ConnectorMetrics {
            inner: Arc::new(ConnectorHandles {
                streams_total: self.streams_total.get_or_create_owned(&connector),
                streams_active: self.streams_active.get_or_create_owned(&connector),
                closes: CloseReason::ALL.map(|r| with_reason(&self.closes, r.as_str())),
                bytes_to_agent: direction("to_agent"),
                bytes_to_client: direction("to_client"),
                open_latency: self.open_latency.get_or_create_owned(&connector),
                rejected: RejectReason::ALL.map(|r| with_reason(&self.rejected, r.as_str())),
            }),
        }
    }
}

#[derive(Debug)]
struct ConnectorHandles {
    streams_total: Counter,
    streams_active: Gauge,
    closes: [Counter; CloseReason::ALL.len()],
    bytes_to_agent: Counter,
    bytes_to_client: Counter,
    open_latency: Histogram,
    rejected: [Counter; RejectReason::ALL.len()],
}

/// Pre-resolved metrics of one connector, for the data path: every update is an atomic add.
///
/// Cloning is one reference-count increment; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct ConnectorMetrics {
    inner: Arc<ConnectorHandles>,
}

impl ConnectorMetrics {
    /// A client connection became a stream: `nowconnect_streams_total` and
    /// `nowconnect_streams_active` go up by one.
    pub fn stream_opened(&self) {
        self.inner.streams_total.inc();
        self.inner.streams_active.inc();
    }

    /// A stream opened with [`stream_opened`](Self::stream_opened) is gone:
    /// `nowconnect_streams_active` goes down by one and
    /// `nowconnect_stream_closes_total{reason}` up by one.
    pub fn stream_closed(&self, reason: CloseReason) {
        self.inner.streams_active.dec();
        self.inner.closes[reason as usize].inc();
    }

    /// `n` bytes of client data were sent towards the agent.
    pub fn bytes_to_agent(&self, n: u64) {
        self.inner.bytes_to_agent.inc_by(n);
    }

    /// `n` bytes of target data were written towards the client.
    pub fn bytes_to_client(&self, n: u64) {
        self.inner.bytes_to_client.inc_by(n);
    }

    /// Time from accepting the client to OPEN_OK, in seconds.
    pub fn open_latency(&self, seconds: f64) {
        self.inner.open_latency.observe(seconds);
    }

    /// A client connection was turned away before it became a stream.
    pub fn client_rejected(&self, reason: RejectReason) {
        self.inner.rejected[reason as usize].inc();
    }
}

/// The families behind the per-shard handles.
#[derive(Clone, Debug)]
struct ShardFamilies {
    driver: Family<DriverLabels, Gauge>,
    buffers: Family<ShardLabels, Gauge>,
    buffers_in_use: Family<ShardLabels, Gauge>,
    ring_buffers: Family<ShardLabels, Gauge>,
    ring_in_use: Family<ShardLabels, Gauge>,
    ring_exhausted: Family<ShardLabels, Counter>,
    splice_pipes: Family<ShardLabels, Counter>,
    splice_pipes_open: Family<ShardLabels, Gauge>,
    splice_refused: Family<ShardLabels, Counter>,
    spliced_bytes: Family<ShardLabels, Counter>,
    cross_shard: Family<CrossShardLabels, Counter>,
    streams: Family<ShardLabels, Gauge>,
    sessions: Family<ShardLabels, Gauge>,
    /// The driver each shard last reported, so a change replaces the old series.
    drivers: Arc<Mutex<HashMap<usize, String>>>,
}

impl ShardFamilies {
    fn resolve(&self, shard: usize, shards: usize) -> ShardMetrics {
        let labels = ShardLabels { shard };
        ShardMetrics {
            inner: Arc::new(ShardHandles {
                shard,
                buffers: self.buffers.get_or_create_owned(&labels),
                buffers_in_use: self.buffers_in_use.get_or_create_owned(&labels),
                ring_buffers: self.ring_buffers.get_or_create_owned(&labels),
                ring_in_use: self.ring_in_use.get_or_create_owned(&labels),
                ring_exhausted: self.ring_exhausted.get_or_create_owned(&labels),
                splice_pipes: self.splice_pipes.get_or_create_owned(&labels),
                splice_pipes_open: self.splice_pipes_open.get_or_create_owned(&labels),
                splice_refused: self.splice_refused.get_or_create_owned(&labels),
                spliced_bytes: self.spliced_bytes.get_or_create_owned(&labels),
                cross_shard: (0..shards)
                    .map(|to| {
                        self.cross_shard
                            .get_or_create_owned(&CrossShardLabels { from: shard, to })
                    })
                    .collect(),
                streams: self.streams.get_or_create_owned(&labels),
                sessions: self.sessions.get_or_create_owned(&labels),
                families: self.clone(),
            }),
        }
    }
}

#[derive(Debug)]
struct ShardHandles {
    shard: usize,
    buffers: Gauge,
    buffers_in_use: Gauge,
    ring_buffers: Gauge,
    ring_in_use: Gauge,
    ring_exhausted: Counter,
    splice_pipes: Counter,
    splice_pipes_open: Gauge,
    splice_refused: Counter,
    spliced_bytes: Counter,
    /// Indexed by the destination shard.
    cross_shard: Box<[Counter]>,
    streams: Gauge,
    sessions: Gauge,
    families: ShardFamilies,
}

/// Pre-resolved metrics of one shard. Cloning is one reference-count increment.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    inner: Arc<ShardHandles>,
}

impl ShardMetrics {
    /// The I/O driver the shard runs on (`io_uring`, `epoll`):
    /// `nowconnect_shard_driver{shard,driver}` is 1, and a previously reported driver of this
    /// shard disappears.
    pub fn set_driver(&self, driver: &str) {
        let families = &self.inner.families;
        let shard = self.inner.shard;
        let mut drivers = lock(&families.drivers);
        if let Some(old) = drivers.insert(shard, driver.to_owned())
            && old != driver
        {
            families.driver.remove(&DriverLabels { shard, driver: old });
        }
        families
            .driver
            .get_or_create(&DriverLabels {
                shard,
                driver: driver.to_owned(),
            })
            .set(1);
    }

    /// The shard's receive-buffer pool holds `size` buffers, `in_use` of them lent out.
    pub fn set_buffer_pool(&self, size: u64, in_use: u64) {
        self.inner.buffers.set(gauge_value(size));
        self.inner.buffers_in_use.set(gauge_value(in_use));
    }

    /// The shard's provided-buffer ring holds `size` buffers (0 when the driver has none),
    /// `in_use` of them taken out by connections.
    pub fn set_recv_ring(&self, size: u64, in_use: u64) {
        self.inner.ring_buffers.set(gauge_value(size));
        self.inner.ring_in_use.set(gauge_value(in_use));
    }

    /// A client receive found the shard's ring empty and fell back to the buffer pool.
    pub fn recv_ring_exhausted(&self) {
        self.inner.ring_exhausted.inc();
    }

    /// A bulk client stream got a pipe to splice its bytes to the agent.
    pub fn splice_pipe_opened(&self) {
        self.inner.splice_pipes.inc();
    }

    /// The shard's spliced streams hold `open` pipes.
    pub fn set_splice_pipes_open(&self, open: u64) {
        self.inner.splice_pipes_open.set(gauge_value(open));
    }

    /// A bulk client stream could have spliced but got no pipe (the shard's pipe budget, file
    /// descriptors or pipe memory ran out), and stays on buffers.
    pub fn splice_pipe_refused(&self) {
        self.inner.splice_refused.inc();
    }

    /// `n` client bytes went to the agent by splice, not through a buffer.
    pub fn spliced(&self, n: u64) {
        self.inner.spliced_bytes.inc_by(n);
    }

    /// `n` frames were handed from this shard to shard `to` through its ring.
    pub fn cross_shard(&self, to: usize, n: u64) {
        match self.inner.cross_shard.get(to) {
            Some(counter) => {
                counter.inc_by(n);
            }
            // A shard index beyond the configured count: slow path, still counted.
            None => {
                self.inner
                    .families
                    .cross_shard
                    .get_or_create(&CrossShardLabels {
                        from: self.inner.shard,
                        to,
                    })
                    .inc_by(n);
            }
        }
    }

    /// The shard currently carries `n` streams.
    pub fn set_streams(&self, n: u64) {
        self.inner.streams.set(gauge_value(n));
    }

    /// The shard currently holds `n` agent sessions.
    pub fn set_sessions(&self, n: u64) {
        self.inner.sessions.set(gauge_value(n));
    }
}

/// The hub's Prometheus registry and every metric family in it; shared by the shards and the
/// control plane. All names start with `nowconnect_`.
#[derive(Debug)]
pub struct HubMetrics {
    registry: Registry,
    shards: usize,
    connector_families: ConnectorFamilies,
    connectors: HashMap<String, ConnectorMetrics>,
    shard_families: ShardFamilies,
    shard_handles: Box<[ShardMetrics]>,
    sessions: Family<AgentLabels, Gauge>,
    /// Serialises session open and close so that a gauge falling to zero can be removed
    /// without racing an open of the same agent on another shard.
    sessions_lock: Mutex<()>,
    session_closes: Family<CodeLabels, Counter>,
    auth_failures: Family<ReasonLabels, Counter>,
    handshake_rejections: Family<ReasonLabels, Counter>,
    protocol_errors: Family<KindLabels, Counter>,
    pdp_decisions: Family<PdpLabels, Counter>,
    pdp_errors: Family<KindLabels, Counter>,
    pdp_latency: Histogram,
}

impl HubMetrics {
    /// A registry with every family registered and the series of the configured
    /// `connectors` and of `shards` shards created at zero.
    pub fn new(connectors: &[String], shards: usize) -> HubMetrics {
        let mut registry = Registry::with_prefix("nowconnect");

        let connector_families = ConnectorFamilies {
            streams_total: Family::default(),
            streams_active: Family::default(),
            closes: Family::default(),
            bytes: Family::default(),
            open_latency: Family::new_with_constructor(open_latency_histogram),
            rejected: Family::default(),
        };
        let cf = &connector_families;
        registry.register(
            "streams",
            "Client connections that became streams",
            cf.streams_total.clone(),
        );
        registry.register(
            "streams_active",
            "Streams open now",
            cf.streams_active.clone(),
        );
        registry.register(
            "stream_closes",
            "Streams ended, by reason",
            cf.closes.clone(),
        );
        registry.register(
            "bytes",
            "Stream payload bytes relayed, by direction",
            cf.bytes.clone(),
        );
        registry.register_with_unit(
            "open_latency",
            "Time from accepting a client to the agent's OPEN_OK",
            Unit::Seconds,
            cf.open_latency.clone(),
        );
        registry.register(
            "rejected_clients",
            "Client connections turned away before becoming streams, by reason",
            cf.rejected.clone(),
        );

        let sessions = Family::<AgentLabels, Gauge>::default();
        let session_closes = Family::<CodeLabels, Counter>::default();
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        let handshake_rejections = Family::<ReasonLabels, Counter>::default();
        let protocol_errors = Family::<KindLabels, Counter>::default();
        let pdp_decisions = Family::<PdpLabels, Counter>::default();
        let pdp_errors = Family::<KindLabels, Counter>::default();
        let pdp_latency = Histogram::new(OPEN_LATENCY_BUCKETS);
        registry.register(
            "sessions",
            "Agent sessions open now, by agent",
            sessions.clone(),
        );
        registry.register(
            "session_closes",
            "Agent sessions ended, by WebSocket close code",
            session_closes.clone(),
        );
        registry.register(
            "auth_failures",
            "Agent authentication failures, by reason",
            auth_failures.clone(),
        );
        registry.register(
            "handshake_rejections",
            "Tunnel handshakes rejected before authentication, by reason",
            handshake_rejections.clone(),
        );
        registry.register(
            "protocol_errors",
            "Protocol errors on agent sessions, by kind",
            protocol_errors.clone(),
        );
        registry.register(
            "pdp_decisions",
            "Policy decisions, by outcome and source (pdp, cache, batch, fail_open, error)",
            pdp_decisions.clone(),
        );
        registry.register(
            "pdp_errors",
            "PDP requests that gave no decision, by kind (timeout, transport, status, malformed, overload)",
            pdp_errors.clone(),
        );
        registry.register_with_unit(
            "pdp_request",
            "Time a PDP request took, answered or not",
            Unit::Seconds,
            pdp_latency.clone(),
        );

        let shard_families = ShardFamilies {
            driver: Family::default(),
            buffers: Family::default(),
            buffers_in_use: Family::default(),
            ring_buffers: Family::default(),
            ring_in_use: Family::default(),
            ring_exhausted: Family::default(),
            splice_pipes: Family::default(),
            splice_pipes_open: Family::default(),
            splice_refused: Family::default(),
            spliced_bytes: Family::default(),
            cross_shard: Family::default(),
            streams: Family::default(),
            sessions: Family::default(),
            drivers: Arc::default(),
        };
        let sf = &shard_families;
        registry.register(
            "shard_driver",
            "The I/O driver a shard runs on (1 for the driver in use)",
            sf.driver.clone(),
        );
        registry.register(
            "buffer_pool_buffers",
            "Receive buffers in a shard's pool",
            sf.buffers.clone(),
        );
        registry.register(
            "buffer_pool_in_use",
            "Receive buffers of a shard's pool lent out",
            sf.buffers_in_use.clone(),
        );
        registry.register(
            "recv_ring_buffers",
            "Buffers in a shard's io_uring provided-buffer ring for client receives",
            sf.ring_buffers.clone(),
        );
        registry.register(
            "recv_ring_in_use",
            "Buffers of a shard's receive ring held by connections",
            sf.ring_in_use.clone(),
        );
        registry.register(
            "recv_ring_exhausted",
            "Client receives that found the shard's ring empty and used the buffer pool",
            sf.ring_exhausted.clone(),
        );
        registry.register(
            "splice_pipes",
            "Bulk client streams that got a pipe to splice their bytes to the agent",
            sf.splice_pipes.clone(),
        );
        registry.register(
            "splice_pipes_open",
            "Pipes a shard's spliced streams hold now",
            sf.splice_pipes_open.clone(),
        );
        registry.register(
            "splice_pipes_refused",
            "Bulk client streams that got no pipe (the shard's budget, descriptors or pipe memory ran out) and stayed on buffers",
            sf.splice_refused.clone(),
        );
        registry.register(
            "spliced_bytes",
            "Client bytes moved to the agent by splice, without a copy through the hub",
            sf.spliced_bytes.clone(),
        );
        registry.register(
            "cross_shard_messages",
            "Frames handed between shards through their rings",
            sf.cross_shard.clone(),
        );
        registry.register(
            "shard_streams",
            "Streams a shard carries now",
            sf.streams.clone(),
        );
        registry.register(
            "shard_sessions",
            "Agent sessions a shard holds now",
            sf.sessions.clone(),
        );

        let connector_handles = connectors
            .iter()
            .map(|name| (name.clone(), connector_families.resolve(name)))
            .collect();
        let shard_handles = (0..shards)
            .map(|shard| shard_families.resolve(shard, shards))
            .collect();

        HubMetrics {
            registry,
            shards,
            connector_families,
            connectors: connector_handles,
            shard_families,
            shard_handles,
            sessions,
            sessions_lock: Mutex::new(()),
            session_closes,
            auth_failures,
            handshake_rejections,
            protocol_errors,
            pdp_decisions,
            pdp_errors,
            pdp_latency,
        }
    }

    /// The handle of connector `name`. A name not given to [`new`](Self::new) is counted under
    /// [`OTHER_CONNECTOR`] (and logged), so the label set stays the configured one.
    pub fn connector(&self, name: &str) -> ConnectorMetrics {
        match self.connectors.get(name) {
            Some(handle) => handle.clone(),
            None => {
                tracing::warn!(
                    connector = name,
                    "metrics requested for an unconfigured connector; counted as {OTHER_CONNECTOR}"
                );
                self.connector_families.resolve(OTHER_CONNECTOR)
            }
        }
    }

    /// The handle of shard `shard`. An index beyond the shard count given to
    /// [`new`](Self::new) gets a handle built on demand that updates the same series as any
    /// other handle of that index.
    pub fn shard(&self, shard: usize) -> ShardMetrics {
        match self.shard_handles.get(shard) {
            Some(handle) => handle.clone(),
            None => self.shard_families.resolve(shard, self.shards),
        }
    }

    /// An authenticated session of `agent_id` opened: `nowconnect_sessions{agent}` goes up.
    pub fn session_opened(&self, agent_id: &str) {
        let _serial = lock(&self.sessions_lock);
        self.sessions
            .get_or_create(&AgentLabels {
                agent: agent_id.to_owned(),
            })
            .inc();
    }

    /// A session of `agent_id` opened with [`session_opened`](Self::session_opened) closed with
    /// WebSocket close `code`. The agent's series disappears when its last session closes, so
    /// agents that come and go do not accumulate.
    pub fn session_closed(&self, agent_id: &str, code: u16) {
        self.session_closes
            .get_or_create(&CodeLabels { code })
            .inc();
        let labels = AgentLabels {
            agent: agent_id.to_owned(),
        };
        let _serial = lock(&self.sessions_lock);
        let last = match self.sessions.get(&labels) {
            Some(gauge) => gauge.dec() <= 1,
            None => false,
        };
        if last {
            self.sessions.remove(&labels);
        }
    }

    /// An agent failed authentication (`reason`: a static description such as `expired`).
    pub fn auth_failure(&self, reason: &str) {
        self.auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A tunnel handshake was rejected before authentication (`reason`: `bad_upgrade`,
    /// `timeout`, `too_many_pending`, `cidr`, ...).
    pub fn handshake_rejected(&self, reason: &str) {
        self.handshake_rejections
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// A session broke the protocol (`kind`: a bad frame, a WebSocket error, ...).
    pub fn protocol_error(&self, kind: &str) {
        self.protocol_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A policy decision (`decision`: `allow`, `deny`) came from `source`: `pdp` (asked for
    /// this stream), `cache` (an allow reused), `batch` (the pre-warm on HELLO), `fail_open`
    /// (no decision, allowed by `pdp.fail_open`) or `error` (no decision, denied).
    pub fn pdp_decision(&self, decision: &str, source: &str) {
        self.pdp_decisions
            .get_or_create(&PdpLabels {
                decision: decision.to_owned(),
                source: source.to_owned(),
            })
            .inc();
    }

    /// A PDP request gave no decision (`kind`: `timeout`, `transport`, `status`, `malformed`,
    /// `overload`).
    pub fn pdp_error(&self, kind: &str) {
        self.pdp_errors
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// A PDP request took `seconds`, answered or not.
    pub fn pdp_request_seconds(&self, seconds: f64) {
        self.pdp_latency.observe(seconds);
    }

    /// The whole registry in the OpenMetrics text format, ending with `# EOF`; serve it with
    /// [`content_type`](Self::content_type).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String cannot fail; a label that cannot be encoded would.
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// The content type of [`encode`](Self::encode)'s output.
    pub fn content_type() -> &'static str {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HubMetrics {
        HubMetrics::new(&["ldap".to_owned(), "pg".to_owned()], 2)
    }

    /// The value of the sample line `series` (name and labels exactly as encoded).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    #[track_caller]
    fn assert_sample(text: &str, series: &str, want: f64) {
        assert_eq!(sample(text, series), Some(want), "{series} in\n{text}");
    }

    #[test]
    fn connector_families_have_their_labels_and_values() {
        let m = hub();
        let ldap = m.connector("ldap");
        ldap.stream_opened();
        ldap.stream_opened();
        ldap.stream_closed(CloseReason::ClientReset);
        ldap.bytes_to_agent(100);
        ldap.bytes_to_agent(20);
        ldap.bytes_to_client(7);
        ldap.open_latency(0.002);
        ldap.client_rejected(RejectReason::NoAgent);
        ldap.client_rejected(RejectReason::Cidr);
        let text = m.encode();

        assert_sample(&text, r#"nowconnect_streams_total{connector="ldap"}"#, 2.0);
        assert_sample(&text, r#"nowconnect_streams_active{connector="ldap"}"#, 1.0);
        assert_sample(
            &text,
            r#"nowconnect_stream_closes_total{connector="ldap",reason="client_reset"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_stream_closes_total{connector="ldap",reason="normal"}"#,
            0.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_bytes_total{connector="ldap",direction="to_agent"}"#,
            120.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_bytes_total{connector="ldap",direction="to_client"}"#,
            7.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_open_latency_seconds_count{connector="ldap"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_open_latency_seconds_bucket{le="0.00178",connector="ldap"}"#,
            0.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_open_latency_seconds_bucket{le="0.00316",connector="ldap"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_rejected_clients_total{connector="ldap",reason="no_agent"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_rejected_clients_total{connector="ldap",reason="cidr"}"#,
            1.0,
        );
        // The other configured connector exists at zero before any use.
        assert_sample(&text, r#"nowconnect_streams_total{connector="pg"}"#, 0.0);
        assert!(text.contains("# TYPE nowconnect_open_latency_seconds histogram"));
        assert!(text.contains("# UNIT nowconnect_open_latency_seconds seconds"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn every_reason_has_its_own_series() {
        let m = hub();
        let pg = m.connector("pg");
        for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i);
            for _ in 0..=i {
                pg.stream_opened();
                pg.stream_closed(reason);
            }
        }
        for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i);
            for _ in 0..=i {
                pg.client_rejected(reason);
            }
        }
        let text = m.encode();
        for (i, reason) in CloseReason::ALL.into_iter().enumerate() {
            let series = format!(
                r#"nowconnect_stream_closes_total{{connector="pg",reason="{}"}}"#,
                reason.as_str()
            );
            assert_sample(&text, &series, (i + 1) as f64);
        }
        for (i, reason) in RejectReason::ALL.into_iter().enumerate() {
            let series = format!(
                r#"nowconnect_rejected_clients_total{{connector="pg",reason="{}"}}"#,
                reason.as_str()
            );
            assert_sample(&text, &series, (i + 1) as f64);
        }
        assert_sample(&text, r#"nowconnect_streams_active{connector="pg"}"#, 0.0);
    }

    #[test]
    fn open_latency_buckets_are_exponential_from_100us_to_10s() {
        assert_eq!(OPEN_LATENCY_BUCKETS[0], 0.0001);
        assert_eq!(OPEN_LATENCY_BUCKETS[OPEN_LATENCY_BUCKETS.len() - 1], 10.0);
        let factor = 10f64.powf(0.25);
        for pair in OPEN_LATENCY_BUCKETS.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!((ratio / factor - 1.0).abs() < 0.01, "{pair:?}");
        }
    }

    #[test]
    fn handles_of_one_connector_share_series_and_unknown_names_fold() {
        let m = hub();
        m.connector("ldap").stream_opened();
        m.connector("ldap").stream_opened();
        m.connector("not-configured").stream_opened();
        m.connector("also-not").bytes_to_client(5);
        let text = m.encode();
        assert_sample(&text, r#"nowconnect_streams_total{connector="ldap"}"#, 2.0);
        assert_sample(
            &text,
            r#"nowconnect_streams_total{connector="_other"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_bytes_total{connector="_other",direction="to_client"}"#,
            5.0,
        );
        assert!(!text.contains("not-configured"));
    }

    #[test]
    fn session_auth_and_pdp_families() {
        let m = hub();
        m.session_opened("agent-1");
        m.session_opened("agent-1");
        m.session_opened("agent-2");
        m.session_closed("agent-2", 1000);
        m.session_closed("agent-1", 1001);
        m.auth_failure("expired");
        m.auth_failure("expired");
        m.handshake_rejected("timeout");
        m.protocol_error("bad_frame");
        m.pdp_decision("allow", "cache");
        m.pdp_decision("deny", "pdp");
        m.pdp_decision("deny", "pdp");
        let text = m.encode();
        assert_sample(&text, r#"nowconnect_sessions{agent="agent-1"}"#, 1.0);
        // The last session of agent-2 closed: its series is gone.
        assert_eq!(
            sample(&text, r#"nowconnect_sessions{agent="agent-2"}"#),
            None
        );
        assert_sample(
            &text,
            r#"nowconnect_session_closes_total{code="1000"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_session_closes_total{code="1001"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_auth_failures_total{reason="expired"}"#,
            2.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_handshake_rejections_total{reason="timeout"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_protocol_errors_total{kind="bad_frame"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_pdp_decisions_total{decision="allow",source="cache"}"#,
            1.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_pdp_decisions_total{decision="deny",source="pdp"}"#,
            2.0,
        );
    }

    #[test]
    fn closing_a_session_never_opened_does_not_go_negative() {
        let m = hub();
        m.session_closed("ghost", 1008);
        let text = m.encode();
        assert_eq!(sample(&text, r#"nowconnect_sessions{agent="ghost"}"#), None);
        assert_sample(
            &text,
            r#"nowconnect_session_closes_total{code="1008"}"#,
            1.0,
        );
    }

    #[test]
    fn shard_families() {
        let m = hub();
        let s0 = m.shard(0);
        let s1 = m.shard(1);
        s0.set_driver("epoll");
        s0.set_driver("io_uring");
        s1.set_driver("io_uring");
        s0.set_buffer_pool(512, 17);
        s0.cross_shard(1, 40);
        s0.cross_shard(1, 2);
        s1.cross_shard(0, 3);
        s1.cross_shard(5, 1);
        s0.set_streams(9);
        s1.set_sessions(4);
        let text = m.encode();
        assert_sample(
            &text,
            r#"nowconnect_shard_driver{shard="0",driver="io_uring"}"#,
            1.0,
        );
        assert_eq!(
            sample(
                &text,
                r#"nowconnect_shard_driver{shard="0",driver="epoll"}"#
            ),
            None
        );
        assert_sample(
            &text,
            r#"nowconnect_shard_driver{shard="1",driver="io_uring"}"#,
            1.0,
        );
        assert_sample(&text, r#"nowconnect_buffer_pool_buffers{shard="0"}"#, 512.0);
        assert_sample(&text, r#"nowconnect_buffer_pool_in_use{shard="0"}"#, 17.0);
        assert_sample(
            &text,
            r#"nowconnect_cross_shard_messages_total{from="0",to="1"}"#,
            42.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_cross_shard_messages_total{from="1",to="0"}"#,
            3.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_cross_shard_messages_total{from="1",to="5"}"#,
            1.0,
        );
        assert_sample(&text, r#"nowconnect_shard_streams{shard="0"}"#, 9.0);
        assert_sample(&text, r#"nowconnect_shard_sessions{shard="1"}"#, 4.0);
        // A handle built on demand for an index past the count updates the same series.
        m.shard(7).set_streams(1);
        m.shard(7).set_streams(2);
        assert_sample(&m.encode(), r#"nowconnect_shard_streams{shard="7"}"#, 2.0);
    }

    #[test]
    fn gauges_saturate_instead_of_wrapping() {
        let m = hub();
        m.shard(0).set_buffer_pool(u64::MAX, 0);
        assert_sample(
            &m.encode(),
            r#"nowconnect_buffer_pool_buffers{shard="0"}"#,
            i64::MAX as f64,
        );
    }

    #[test]
    fn concurrent_updates_add_up() {
        const THREADS: usize = 4;
        const ROUNDS: u64 = 10_000;
        let m = Arc::new(hub());
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    let ldap = m.connector("ldap");
                    let shard = m.shard(t % 2);
                    let agent = format!("agent-{}", t % 2);
                    for i in 0..ROUNDS {
                        ldap.stream_opened();
                        ldap.bytes_to_agent(3);
                        ldap.bytes_to_client(1);
                        ldap.open_latency(0.001);
                        shard.cross_shard(1 - t % 2, 1);
                        if i % 100 == 0 {
                            m.session_opened(&agent);
                            m.session_closed(&agent, 1000);
                        }
                        ldap.stream_closed(CloseReason::Normal);
                    }
                    // One session per thread stays open.
                    m.session_opened(&agent);
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let total = (THREADS as u64 * ROUNDS) as f64;
        let text = m.encode();
        assert_sample(
            &text,
            r#"nowconnect_streams_total{connector="ldap"}"#,
            total,
        );
        assert_sample(&text, r#"nowconnect_streams_active{connector="ldap"}"#, 0.0);
        assert_sample(
            &text,
            r#"nowconnect_stream_closes_total{connector="ldap",reason="normal"}"#,
            total,
        );
        assert_sample(
            &text,
            r#"nowconnect_bytes_total{connector="ldap",direction="to_agent"}"#,
            3.0 * total,
        );
        assert_sample(
            &text,
            r#"nowconnect_bytes_total{connector="ldap",direction="to_client"}"#,
            total,
        );
        assert_sample(
            &text,
            r#"nowconnect_open_latency_seconds_count{connector="ldap"}"#,
            total,
        );
        assert_sample(
            &text,
            r#"nowconnect_cross_shard_messages_total{from="0",to="1"}"#,
            total / 2.0,
        );
        assert_sample(
            &text,
            r#"nowconnect_cross_shard_messages_total{from="1",to="0"}"#,
            total / 2.0,
        );
        assert_sample(&text, r#"nowconnect_sessions{agent="agent-0"}"#, 2.0);
        assert_sample(&text, r#"nowconnect_sessions{agent="agent-1"}"#, 2.0);
        assert_sample(
            &text,
            r#"nowconnect_session_closes_total{code="1000"}"#,
            (THREADS as u64 * ROUNDS / 100) as f64,
        );
    }

    #[test]
    fn hub_metrics_is_shareable() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<HubMetrics>();
        shareable::<ConnectorMetrics>();
        shareable::<ShardMetrics>();
    }
}
