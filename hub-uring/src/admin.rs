//! `/healthz`, `/readyz` and `/metrics` over HTTP/1.1.
//!
//! Served by hyper on the control plane's tokio runtime. The endpoint is for probes and
//! scrapers, so it is kept cheap and bounded: a connection must send its request head within
//! [`HEADER_READ_TIMEOUT`] (also between keep-alive requests), lives at most
//! [`CONNECTION_LIFETIME`], and at most [`MAX_CONNECTIONS`] are served at once.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::health::Health;
use crate::logging::warn_limited;
use crate::metrics::HubMetrics;

/// How long a connection may take to send a request head, or stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may live, however it is used; bounds a client that never reads.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Connections served at once; further ones are closed on accept.
pub const MAX_CONNECTIONS: usize = 64;

/// How long open connections get to finish their request once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// After a failed accept (out of descriptors, for instance), wait before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The timeouts of one server; tests shorten them.
#[derive(Clone, Copy, Debug)]
struct Limits {
    header_read: Duration,
    lifetime: Duration,
}

const LIMITS: Limits = Limits {
    header_read: HEADER_READ_TIMEOUT,
    lifetime: CONNECTION_LIFETIME,
};

/// Serves the admin endpoint on `listener` until `shutdown` completes, then stops accepting,
/// gives open connections a second to finish and returns.
///
/// - `GET /healthz`: 200 `ok` while every shard ticks, else 503 naming the stalled shards.
/// - `GET /readyz`: 200 `ready`, or 503 with what is missing.
/// - `GET /metrics`: 200 with the registry in the OpenMetrics text format.
///
/// Other paths answer 404; methods other than GET (and HEAD, which is GET without the body)
/// answer 405.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<HubMetrics>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, health, metrics, shutdown, LIMITS).await;
}

async fn serve_with(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<HubMetrics>,
    shutdown: impl Future<Output = ()>,
    limits: Limits,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_headers(64)
        .max_buf_size(16 * 1024)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                warn_limited!(error = %e, "admin endpoint: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "admin endpoint: too many connections, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let health = Arc::clone(&health);
        let metrics = Arc::clone(&metrics);
        let service = service_fn(move |req: Request<Incoming>| {
            let response = respond(&req, &health, &metrics);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            let lifetime = tokio::time::sleep(limits.lifetime);
            tokio::pin!(lifetime);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn.as_mut()).await.unwrap_or(Ok(()))
                }
                () = &mut lifetime => {
                    tracing::debug!(%peer, "admin endpoint: connection lifetime reached");
                    Ok(())
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "admin endpoint: connection ended with an error");
            }
        });
    }

    drop(listener);
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_millis(100), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
}

/// The response to one request.
fn respond(
    req: &Request<Incoming>,
    health: &Health,
    metrics: &HubMetrics,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/healthz" => {
            let stalled = health.stalled_shards();
            if stalled.is_empty() {
                text(StatusCode::OK, "ok\n".into())
            } else {
                let list: Vec<String> = stalled.iter().map(usize::to_string).collect();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("stalled shards: {}\n", list.join(", ")),
                )
            }
        }
        "/readyz" => match health.readiness() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/metrics" => with_type(StatusCode::OK, HubMetrics::content_type(), metrics.encode()),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body)
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::sync::oneshot;

    /// A parsed response: status code, lower-cased header lines, body.
    #[derive(Debug)]
    pub(crate) struct Reply {
        pub(crate) status: u16,
        pub(crate) headers: Vec<(String, String)>,
        pub(crate) body: String,
    }

    impl Reply {
        pub(crate) fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    fn parse(raw: &[u8]) -> Reply {
        let raw = std::str::from_utf8(raw).expect("response is UTF-8");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a complete head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        Reply {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// One request on a fresh connection (`Connection: close`), the whole response read.
    pub(crate) async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("response within 10 s")
            .unwrap();
        parse(&raw)
    }

    /// Reads one response with a `content-length` body from a kept-alive connection.
    async fn read_one(stream: &mut TcpStream) -> Reply {
        let mut raw = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let reply = parse(&raw[..end + 4]);
                let len: usize = reply.header("content-length").unwrap().parse().unwrap();
                if raw.len() >= end + 4 + len {
                    return parse(&raw[..end + 4 + len]);
                }
            }
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed early");
            raw.extend_from_slice(&buf[..n]);
        }
    }

    struct Server {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    async fn start(health: Arc<Health>, metrics: Arc<HubMetrics>, limits: Limits) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve_with(
            listener,
            health,
            metrics,
            async {
                let _ = stopped.await;
            },
            limits,
        ));
        Server { addr, stop, task }
    }

    fn ready_health() -> Arc<Health> {
        let health = Arc::new(Health::new(2));
        health.tick(0);
        health.tick(1);
        health.set_listeners_bound();
        health.set_jwks_loaded();
        health
    }

    fn metrics() -> Arc<HubMetrics> {
        Arc::new(HubMetrics::new(&["ldap".to_owned()], 2))
    }

    #[tokio::test]
    async fn healthz_readyz_and_metrics() {
        let health = Arc::new(Health::new(1));
        let metrics = metrics();
        metrics.connector("ldap").stream_opened();
        let server = start(Arc::clone(&health), Arc::clone(&metrics), LIMITS).await;

        let r = request(server.addr, "GET", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));

        let r = request(server.addr, "GET", "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "not ready: listeners not bound\n");
        health.set_listeners_bound();
        let r = request(server.addr, "GET", "/readyz").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "not ready: JWKS not loaded\n")
        );
        health.set_jwks_loaded();
        let r = request(server.addr, "GET", "/readyz").await;
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        health.set_draining();
        let r = request(server.addr, "GET", "/readyz?verbose").await;
        assert_eq!((r.status, r.body.as_str()), (503, "not ready: draining\n"));

        let r = request(server.addr, "GET", "/metrics").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some(HubMetrics::content_type()));
        assert!(
            r.body
                .contains("nowconnect_streams_total{connector=\"ldap\"} 1\n")
        );
        assert!(r.body.ends_with("# EOF\n"));

        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("serve returns on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let server = start(ready_health(), metrics(), LIMITS).await;
        let r = request(server.addr, "GET", "/").await;
        assert_eq!(r.status, 404);
        let r = request(server.addr, "GET", "/metricsz").await;
        assert_eq!(r.status, 404);
        let r = request(server.addr, "POST", "/metrics").await;
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
        let r = request(server.addr, "DELETE", "/healthz").await;
        assert_eq!(r.status, 405);
        let r = request(server.addr, "HEAD", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        assert_eq!(r.header("content-length"), Some("3"));
        server.stop.send(()).unwrap();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn healthz_names_stalled_shards() {
        let health = ready_health();
        let server = start(Arc::clone(&health), metrics(), LIMITS).await;
        // Shard 1 stops ticking; shard 0 keeps going.
        let deadline = tokio::time::Instant::now() + crate::health::SHARD_STALL;
        while tokio::time::Instant::now() < deadline + Duration::from_millis(300) {
            health.tick(0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = request(server.addr, "GET", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (503, "stalled shards: 1\n"));
        let r = request(server.addr, "GET", "/readyz").await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (503, "not ready: a shard is stalled\n")
        );
        health.tick(1);
        let r = request(server.addr, "GET", "/healthz").await;
        assert_eq!(r.status, 200);
        server.stop.send(()).unwrap();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests() {
        let server = start(ready_health(), metrics(), LIMITS).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        for path in ["/healthz", "/readyz"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
            stream.write_all(req.as_bytes()).await.unwrap();
            let reply = read_one(&mut stream).await;
            assert_eq!(reply.status, 200, "{path}");
        }
        server.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("shutdown closes idle keep-alive connections")
            .unwrap();
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_after_the_header_timeout() {
        let limits = Limits {
            header_read: Duration::from_millis(200),
            lifetime: Duration::from_secs(30),
        };
        let server = start(ready_health(), metrics(), limits).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        // Half a request line, then nothing.
        stream.write_all(b"GET /hea").await.unwrap();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
        assert!(read.is_ok(), "the server closed the connection");
        // The endpoint still answers others.
        assert_eq!(request(server.addr, "GET", "/healthz").await.status, 200);
        server.stop.send(()).unwrap();
        server.task.await.unwrap();
    }

    #[tokio::test]
    async fn a_connection_is_closed_after_its_lifetime() {
        let limits = Limits {
            header_read: Duration::from_secs(30),
            lifetime: Duration::from_millis(200),
        };
        let server = start(ready_health(), metrics(), limits).await;
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /hea").await.unwrap();
        let mut raw = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
        assert!(read.is_ok(), "the server closed the connection");
        server.stop.send(()).unwrap();
        server.task.await.unwrap();
    }
}
