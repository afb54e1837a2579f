//! The policy decision point client: may this agent serve this connector?
//!
//! Shards ask on each client connection, before the stream opens (`Pdp::decide`). An allow
//! still fresh in the cache answers at once. Otherwise the question goes through a bounded
//! channel to a worker on the control-plane thread, which makes the HTTP request, and the
//! client's task (only that one) waits for the answer; other streams and shards go on. When
//! an agent's session starts, `Pdp::prewarm` asks about all its connectors in one batch so
//! that its first clients find the cache warm.
//!
//! Only allow decisions are cached (`pdp.cache_ttl_ms`; a legacy answer's `ttl_sec` may
//! shorten it). No decision — a timeout, a transport error, an error status, a malformed
//! answer, a full queue — denies, unless `pdp.fail_open`, which never overrides an explicit
//! deny. The request formats are in [`nowconnect_core::authz`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nowconnect_core::authz::{self, AnswerError, Context, Subject};
use nowconnect_core::config::{PdpConfig, PdpDialect};
use nowconnect_core::name::ConnectorName;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::auth::{Binding, Identity};
use crate::control::Task;
use crate::logging::warn_limited;
use crate::metrics::HubMetrics;

/// Questions waiting for the worker; beyond this a question gets no decision (`overload`).
const QUEUE: usize = 4096;

/// Requests in flight to the PDP at once.
const MAX_IN_FLIGHT: usize = 256;

/// Subjects with cached decisions; past this, expired entries are dropped, then all.
const MAX_CACHED_SUBJECTS: usize = 16_384;

/// How much longer than `pdp.timeout_ms` a shard waits for the worker before it gives up on
/// it (the worker itself answers within the timeout; this only guards against it being gone).
const WORKER_GRACE: Duration = Duration::from_secs(1);

/// How often the bearer token file is checked for a change, at most.
const TOKEN_RECHECK: Duration = Duration::from_secs(1);

/// The longest PDP bearer token accepted from `pdp.token_file`.
const MAX_TOKEN_FILE_BYTES: u64 = 16 * 1024;

/// What the policy sees of a session's agent, with the key its cached decisions go under.
#[derive(Debug)]
pub struct SessionSubject {
    subject: Subject,
    key: Arc<str>,
    /// The agent's address, for the log lines about decisions.
    agent_addr: SocketAddr,
}

impl SessionSubject {
    /// The subject of a session authenticated as `identity`, from `agent_addr`.
    pub fn new(identity: &Identity, agent_addr: SocketAddr) -> SessionSubject {
        let subject = Subject {
            agent_id: identity.agent_id.clone(),
            client_id: identity.client_id.clone(),
            issuer: identity.issuer.clone(),
            scopes: identity.scopes.clone(),
            binding: match identity.binding {
                Binding::None => authz::Binding::Bearer,
                Binding::Certificate(_) => authz::Binding::Mtls,
                Binding::DpopKey(_) => authz::Binding::Dpop,
            },
        };
        let key = subject.cache_key().into();
        SessionSubject {
            subject,
            key,
            agent_addr,
        }
    }
}

/// The outcome for one client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The stream may open.
    Allow,
    /// The PDP said no.
    Deny,
    /// The PDP gave no decision and `pdp.fail_open` is off.
    NoDecision,
}

/// Why a request gave no decision; the `kind` label of `nowconnect_pdp_errors_total`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No answer within `pdp.timeout_ms`.
    #[error("no answer within pdp.timeout_ms")]
    Timeout,
    /// Connecting or talking to the PDP failed.
    #[error("request failed: {0}")]
    Transport(String),
    /// The PDP answered with a status other than 200.
    #[error("the PDP answered HTTP {0}")]
    Status(u16),
    /// The answer was not a decision.
    #[error("{0}")]
    Malformed(AnswerError),
    /// Too many questions were waiting, or the worker is gone.
    #[error("too many questions waiting for the PDP")]
    Overload,
}

impl Failure {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Transport(_) => "transport",
            Failure::Status(_) => "status",
            Failure::Malformed(_) => "malformed",
            Failure::Overload => "overload",
        }
    }
}

/// What the worker found out for one question.
#[derive(Debug)]
enum Verdict {
    Allow,
    Deny,
    Failed(Failure),
}

/// A question for the worker.
enum Job {
    /// One connector, for a client waiting on `reply`.
    Evaluate {
        subject: Arc<SessionSubject>,
        connector: ConnectorName,
        client: IpAddr,
        deadline: Instant,
        reply: oneshot::Sender<Verdict>,
    },
    /// Every connector of a new session, to fill the cache; nobody waits.
    Prewarm {
        subject: Arc<SessionSubject>,
        connectors: Vec<ConnectorName>,
    },
}

/// Allow decisions still fresh, by subject and connector.
type Cache = HashMap<Arc<str>, HashMap<ConnectorName, Instant>>;

/// The shards' side of the PDP client; shared by every shard.
pub struct Pdp {
    timeout: Duration,
    cache_ttl: Duration,
    fail_open: bool,
    cache: Mutex<Cache>,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<HubMetrics>,
}

impl std::fmt::Debug for Pdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pdp")
            .field("timeout", &self.timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

fn lock(cache: &Mutex<Cache>) -> MutexGuard<'_, Cache> {
    cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Builds the PDP client of `config`: the handle the shards use, and the worker to run on the
/// control plane. Fails, naming the key, when the token file cannot be read or the HTTP
/// client cannot be built.
pub fn start(
    config: &PdpConfig,
    replica_id: &str,
    metrics: Arc<HubMetrics>,
) -> Result<(Arc<Pdp>, Task), String> {
    let timeout = Duration::from_millis(config.timeout_ms);
    let (jobs, queue) = mpsc::channel(QUEUE);
    let pdp = Arc::new(Pdp {
        timeout,
        cache_ttl: Duration::from_millis(config.cache_ttl_ms),
        fail_open: config.fail_open,
        cache: Mutex::new(HashMap::new()),
        jobs,
        metrics,
    });
    let token = match &config.token_file {
        Some(path) => Some(TokenFile::load(path.clone())?),
        None => None,
    };
    let https = config.url.to_ascii_lowercase().starts_with("https://");
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("nowconnect-hub/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .https_only(https);
    if !https {
        // A plain-http PDP is a sidecar or on the local network: never through a proxy, as
        // for the key set.
        builder = builder.no_proxy();
    }
    let http = builder
        .build()
        .map_err(|e| format!("pdp.url: cannot build the HTTP client: {e}"))?;
    let base = config.url.trim_end_matches('/');
    let endpoints = match config.dialect {
        PdpDialect::AuthZen => Endpoints::AuthZen {
            evaluation: format!("{base}/access/v1/evaluation"),
            evaluations: format!("{base}/access/v1/evaluations"),
        },
        PdpDialect::Legacy => Endpoints::Legacy(config.url.clone()),
    };
    let worker = Arc::new(Worker {
        pdp: pdp.clone(),
        http,
        endpoints,
        token: token.map(Mutex::new),
        replica_id: replica_id.to_owned(),
        request_ids: RequestIds::new(),
    });
    Ok((pdp.clone(), Box::pin(worker.run(queue))))
}

impl Pdp {
    /// Whether a client of `connector` may be served by the agent of `subject`. Waits for the
    /// PDP unless a fresh allow is cached; counts the decision.
    pub(crate) async fn decide(
        &self,
        subject: &Arc<SessionSubject>,
        connector: ConnectorName,
        client: IpAddr,
    ) -> Decision {
        if self.cached(&subject.key, connector) {
            self.metrics.pdp_decision("allow", "cache");
            return Decision::Allow;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job::Evaluate {
            subject: subject.clone(),
            connector,
            client,
            deadline: Instant::now() + self.timeout,
            reply,
        };
        let verdict = if self.jobs.try_send(job).is_ok() {
            match compio::time::timeout(self.timeout + WORKER_GRACE, answer).await {
                Ok(Ok(verdict)) => verdict,
                Ok(Err(_)) | Err(_) => Verdict::Failed(Failure::Overload),
            }
        } else {
            Verdict::Failed(Failure::Overload)
        };
        match verdict {
            Verdict::Allow => {
                self.metrics.pdp_decision("allow", "pdp");
                Decision::Allow
            }
            Verdict::Deny => {
                self.metrics.pdp_decision("deny", "pdp");
                Decision::Deny
            }
            Verdict::Failed(failure) => {
                if matches!(failure, Failure::Overload) {
                    // The worker never saw it: count and log it here (it does the others).
                    self.metrics.pdp_error(failure.kind());
                    warn_limited!(per failure.kind(); agent = %subject.subject.agent_id,
                        agent_addr = %subject.agent_addr, connector = %connector, %client,
                        kind = failure.kind(), error = %failure,
                        fail_open = self.fail_open, "the PDP gave no decision");
                }
                if self.fail_open {
                    self.metrics.pdp_decision("allow", "fail_open");
                    Decision::Allow
                } else {
                    self.metrics.pdp_decision("deny", "error");
                    Decision::NoDecision
                }
            }
        }
    }

    /// Asks, in the background, about every connector of a new session whose allow is not
    /// cached, so that its first clients need not wait. Nothing happens without a cache.
    pub(crate) fn prewarm(&self, subject: &Arc<SessionSubject>, connectors: &[ConnectorName]) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let connectors: Vec<ConnectorName> = connectors
            .iter()
            .copied()
            .filter(|c| !self.cached(&subject.key, *c))
            .collect();
        if connectors.is_empty() {
            return;
        }
        let job = Job::Prewarm {
            subject: subject.clone(),
            connectors,
        };
        if self.jobs.try_send(job).is_err() {
            self.metrics.pdp_error(Failure::Overload.kind());
        }
    }

    fn cached(&self, key: &str, connector: ConnectorName) -> bool {
        if self.cache_ttl.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        let Some(decisions) = cache.get_mut(key) else {
            return false;
        };
        match decisions.get(&connector) {
            Some(&until) if until > now => true,
            Some(_) => {
                decisions.remove(&connector);
                false
            }
            None => false,
        }
    }

    /// Caches an allow for `ttl` (capped at `pdp.cache_ttl_ms`).
    fn remember(&self, key: &Arc<str>, connector: ConnectorName, ttl: Duration) {
        let ttl = ttl.min(self.cache_ttl);
        if ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = lock(&self.cache);
        if cache.len() >= MAX_CACHED_SUBJECTS && !cache.contains_key(&**key) {
            cache.retain(|_, decisions| {
                decisions.retain(|_, until| *until > now);
                !decisions.is_empty()
            });
            if cache.len() >= MAX_CACHED_SUBJECTS {
                cache.clear();
            }
        }
        cache
            .entry(key.clone())
            .or_default()
            .insert(connector, now + ttl);
    }
}

/// Where requests go.
enum Endpoints {
    AuthZen {
        evaluation: String,
        evaluations: String,
    },
    Legacy(String),
}

/// The bearer token sent to the PDP, re-read when its file changes.
struct TokenFile {
    path: PathBuf,
    value: reqwest::header::HeaderValue,
    modified: Option<SystemTime>,
    checked: Instant,
}

impl TokenFile {
    fn load(path: PathBuf) -> Result<TokenFile, String> {
        let (value, modified) = read_token(&path)?;
        Ok(TokenFile {
            path,
            value,
            modified,
            checked: Instant::now(),
        })
    }

    /// The `Authorization` value, after re-reading the file if it changed; the last good
    /// token is kept when the file cannot be read.
    fn header(&mut self) -> reqwest::header::HeaderValue {
        if self.checked.elapsed() >= TOKEN_RECHECK {
            self.checked = Instant::now();
            let modified = std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok();
            if modified != self.modified {
                match read_token(&self.path) {
                    Ok((value, modified)) => {
                        self.value = value;
                        self.modified = modified;
                        tracing::info!(path = %self.path.display(), "PDP token reloaded");
                    }
                    Err(line) => {
                        tracing::warn!("{line}; keeping the last good PDP token");
                    }
                }
            }
        }
        self.value.clone()
    }
}

fn read_token(
    path: &std::path::Path,
) -> Result<(reqwest::header::HeaderValue, Option<SystemTime>), String> {
    use std::io::Read;
    let fail = |why: String| format!("pdp.token_file {}: {why}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let modified = file.metadata().and_then(|m| m.modified()).ok();
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_TOKEN_FILE_BYTES} bytes")));
    }
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            "must hold one token of visible ASCII characters".to_owned(),
        ));
    }
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| fail(e.to_string()))?;
    value.set_sensitive(true);
    Ok((value, modified))
}

/// `X-Request-ID` values: a random prefix per process and a counter.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> RequestIds {
        let mut random = [0u8; 8];
        // Without randomness the prefix is the clock: still distinct across restarts.
        let prefix = if aws_lc_rs::rand::fill(&mut random).is_ok() {
            random.iter().map(|b| format!("{b:02x}")).collect()
        } else {
            format!("{:x}", crate::shard::now_unix())
        };
        RequestIds {
            prefix,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.prefix)
    }
}

/// The control-plane side: takes questions off the queue and asks the PDP.
struct Worker {
    pdp: Arc<Pdp>,
    http: reqwest::Client,
    endpoints: Endpoints,
    token: Option<Mutex<TokenFile>>,
    replica_id: String,
    request_ids: RequestIds,
}

impl Worker {
    async fn run(self: Arc<Self>, mut queue: mpsc::Receiver<Job>) {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        while let Some(job) = queue.recv().await {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                return;
            };
            let worker = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match job {
                    Job::Evaluate {
                        subject,
                        connector,
                        client,
                        deadline,
                        reply,
                    } => {
                        let verdict = worker.evaluate(&subject, connector, client, deadline).await;
                        // A client that went away meanwhile no longer listens.
                        let _ = reply.send(verdict);
                    }
                    Job::Prewarm {
                        subject,
                        connectors,
                    } => worker.prewarm(&subject, &connectors).await,
                }
            });
        }
    }

    fn context(&self, source_ip: Option<IpAddr>) -> Context<'_> {
        Context {
            replica_id: &self.replica_id,
            source_ip,
            now_unix: crate::shard::now_unix(),
        }
    }

    /// Asks about one connector, in the configured dialect: the decision and for how long an
    /// allow may be cached, or why there is none; with the request's id either way.
    async fn ask(
        &self,
        subject: &SessionSubject,
        connector: ConnectorName,
        client: Option<IpAddr>,
        deadline: Instant,
    ) -> (String, Result<(bool, Duration), Failure>) {
        let context = self.context(client);
        let request_id = self.request_ids.next();
        let answer = match &self.endpoints {
            Endpoints::AuthZen { evaluation, .. } => {
                let body = authz::evaluation_request(&subject.subject, connector.as_str(), context);
                self.post(evaluation, body, &request_id, deadline)
                    .await
                    .and_then(|body| {
                        authz::parse_evaluation(&body)
                            .map(|allow| (allow, self.pdp.cache_ttl))
                            .map_err(Failure::Malformed)
                    })
            }
            Endpoints::Legacy(url) => {
                let body = authz::legacy_request(&subject.subject, connector.as_str(), context);
                self.post(url, body, &request_id, deadline)
                    .await
                    .and_then(|body| {
                        authz::parse_legacy(&body)
                            .map(|a| {
                                let ttl = a.ttl_sec.map_or(self.pdp.cache_ttl, Duration::from_secs);
                                (a.allow, ttl)
                            })
                            .map_err(Failure::Malformed)
                    })
            }
        };
        (request_id, answer)
    }

    async fn evaluate(
        &self,
        subject: &Arc<SessionSubject>,
        connector: ConnectorName,
        client: IpAddr,
        deadline: Instant,
    ) -> Verdict {
        let (request_id, answer) = self.ask(subject, connector, Some(client), deadline).await;
        match answer {
            Ok((true, ttl)) => {
                self.pdp.remember(&subject.key, connector, ttl);
                Verdict::Allow
            }
            Ok((false, _)) => {
                tracing::info!(agent = %subject.subject.agent_id, agent_addr = %subject.agent_addr,
                    connector = %connector, client = %client, request_id,
                    "the PDP denied a stream");
                Verdict::Deny
            }
            Err(failure) => {
                self.failed(&failure, &request_id, subject, &[connector], Some(client));
                Verdict::Failed(failure)
            }
        }
    }

    async fn prewarm(&self, subject: &Arc<SessionSubject>, connectors: &[ConnectorName]) {
        let deadline = Instant::now() + self.pdp.timeout;
        match &self.endpoints {
            Endpoints::AuthZen { evaluations, .. } => {
                let names: Vec<&str> = connectors.iter().map(ConnectorName::as_str).collect();
                let body = authz::evaluations_request(&subject.subject, &names, self.context(None));
                let request_id = self.request_ids.next();
                let decisions = self
                    .post(evaluations, body, &request_id, deadline)
                    .await
                    .and_then(|body| {
                        authz::parse_evaluations(&body, names.len()).map_err(Failure::Malformed)
                    });
                match decisions {
                    Ok(decisions) => {
                        for (connector, allow) in connectors.iter().zip(decisions) {
                            self.batch_decision(subject, *connector, allow, self.pdp.cache_ttl);
                        }
                    }
                    Err(failure) => {
                        self.failed(&failure, &request_id, subject, connectors, None);
                    }
                }
            }
            Endpoints::Legacy(_) => {
                // The legacy form has no batch: one request per connector, side by side.
                let asks = connectors.iter().map(|&connector| async move {
                    match self.ask(subject, connector, None, deadline).await {
                        (_, Ok((allow, ttl))) => {
                            self.batch_decision(subject, connector, allow, ttl);
                        }
                        (request_id, Err(failure)) => {
                            self.failed(&failure, &request_id, subject, &[connector], None);
                        }
                    }
                });
                futures_util::future::join_all(asks).await;
            }
        }
        tracing::debug!(agent = %subject.subject.agent_id, agent_addr = %subject.agent_addr,
            connectors = connectors.len(), "PDP cache pre-warmed for a new session");
    }

    fn batch_decision(
        &self,
        subject: &Arc<SessionSubject>,
        connector: ConnectorName,
        allow: bool,
        ttl: Duration,
    ) {
        if allow {
            self.pdp.remember(&subject.key, connector, ttl);
            self.pdp.metrics.pdp_decision("allow", "batch");
        } else {
            self.pdp.metrics.pdp_decision("deny", "batch");
        }
    }

    fn failed(
        &self,
        failure: &Failure,
        request_id: &str,
        subject: &SessionSubject,
        connectors: &[ConnectorName],
        client: Option<IpAddr>,
    ) {
        self.pdp.metrics.pdp_error(failure.kind());
        // A batch asked on connect has no client.
        warn_limited!(per failure.kind(); agent = %subject.subject.agent_id,
            agent_addr = %subject.agent_addr, connectors = ?connectors, client = ?client, request_id,
            kind = failure.kind(), error = %failure, fail_open = self.pdp.fail_open,
            "the PDP gave no decision");
    }

    /// POSTs `body` and reads a 200 answer of at most [`authz::MAX_ANSWER_BYTES`], all before
    /// `deadline`.
    async fn post(
        &self,
        url: &str,
        body: Vec<u8>,
        request_id: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>, Failure> {
        let began = Instant::now();
        let Some(remaining) = deadline
            .checked_duration_since(began)
            .filter(|d| !d.is_zero())
        else {
            return Err(Failure::Timeout);
        };
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header("X-Request-ID", request_id)
            .body(body);
        if let Some(token) = &self.token {
            let value = token
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .header();
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let exchange = async {
            let mut response = request.send().await.map_err(transport)?;
            let status = response.status();
            if status != reqwest::StatusCode::OK {
                return Err(Failure::Status(status.as_u16()));
            }
            if response
                .content_length()
                .is_some_and(|len| len > authz::MAX_ANSWER_BYTES as u64)
            {
                return Err(Failure::Malformed(AnswerError::TooLarge));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(transport)? {
                if body.len() + chunk.len() > authz::MAX_ANSWER_BYTES {
                    return Err(Failure::Malformed(AnswerError::TooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body)
        };
        let result = match tokio::time::timeout(remaining, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Timeout),
        };
        self.pdp
            .metrics
            .pdp_request_seconds(began.elapsed().as_secs_f64());
        result
    }
}

fn transport(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else {
        // The chain of sources says what failed (refused, reset, TLS); the URL is known.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Failure::Transport(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdp(cache_ttl_ms: u64) -> Arc<Pdp> {
        let config = PdpConfig {
            url: "http://127.0.0.1:9/".into(),
            dialect: PdpDialect::AuthZen,
            token_file: None,
            timeout_ms: 100,
            cache_ttl_ms,
            fail_open: false,
        };
        start(&config, "hub", Arc::new(HubMetrics::new(&[], 1)))
            .unwrap()
            .0
    }

    fn connector(name: &str) -> ConnectorName {
        name.parse().unwrap()
    }

    #[test]
    fn allows_are_cached_per_subject_and_connector_until_they_expire() {
        let pdp = pdp(60_000);
        let a: Arc<str> = "subject-a".into();
        let ldap = connector("ldap");
        assert!(!pdp.cached(&a, ldap));
        pdp.remember(&a, ldap, Duration::from_secs(3600));
        assert!(pdp.cached(&a, ldap));
        assert!(!pdp.cached("subject-b", ldap));
        assert!(!pdp.cached(&a, connector("web")));
        // A shorter ttl (a legacy answer's) wins; an expired entry is a miss and goes.
        pdp.remember(&a, ldap, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!pdp.cached(&a, ldap));
        assert!(lock(&pdp.cache)[&a].is_empty());
    }

    #[test]
    fn a_zero_ttl_caches_nothing() {
        let pdp = pdp(0);
        let a: Arc<str> = "subject-a".into();
        pdp.remember(&a, connector("ldap"), Duration::from_secs(60));
        assert!(!pdp.cached(&a, connector("ldap")));
        assert!(lock(&pdp.cache).is_empty());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let pdp = pdp(60_000);
        let ldap = connector("ldap");
        for i in 0..MAX_CACHED_SUBJECTS + 10 {
            let key: Arc<str> = format!("subject-{i}").into();
            pdp.remember(&key, ldap, Duration::from_secs(60));
        }
        assert!(lock(&pdp.cache).len() <= MAX_CACHED_SUBJECTS);
        let last: Arc<str> = format!("subject-{}", MAX_CACHED_SUBJECTS + 9).into();
        assert!(pdp.cached(&last, ldap));
    }

    #[test]
    fn token_file_rules() {
        let dir = std::env::temp_dir().join(format!("nc-pdp-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "abc.def-ghi\n").unwrap();
        let (value, _) = read_token(&path).unwrap();
        assert_eq!(value.to_str().unwrap(), "Bearer abc.def-ghi");
        assert!(value.is_sensitive());
        for bad in ["", "  \n", "two words", "tab\there"] {
            std::fs::write(&path, bad).unwrap();
            let err = read_token(&path).unwrap_err();
            assert!(err.starts_with("pdp.token_file "), "{err}");
        }
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        assert!(read_token(&path).unwrap_err().contains("larger than"));
        let missing = read_token(&dir.join("missing")).unwrap_err();
        assert!(missing.contains("missing"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn request_ids_are_distinct() {
        let ids = RequestIds::new();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert_ne!(RequestIds::new().next(), a);
    }
}
