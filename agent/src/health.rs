//! Readiness bookkeeping and the health listener: `GET /healthz`, `GET /readyz`.
//!
//! The listener speaks just enough HTTP/1.1 for probes: it reads at most 4 KiB of request head
//! within a few seconds, answers one of three fixed responses and closes. A plain TCP connect
//! (a TCP probe) succeeds as soon as the listener is bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The most bytes of request head read.
const MAX_REQUEST: usize = 4096;

/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Sessions up per hub URL.
#[derive(Debug)]
pub(crate) struct Readiness {
    up: Vec<AtomicUsize>,
}

impl Readiness {
    /// Bookkeeping for `hubs` hub URLs, none up yet.
    pub(crate) fn new(hubs: usize) -> Readiness {
        Readiness {
            up: (0..hubs).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    /// Whether every hub URL has at least one session up.
    pub(crate) fn is_ready(&self) -> bool {
        self.up.iter().all(|n| n.load(Ordering::Relaxed) > 0)
    }

    /// Counts one more session up to hub `hub` until the guard is released or dropped.
    pub(crate) fn session_up(self: &Arc<Self>, hub: usize) -> ReadyGuard {
        self.up[hub].fetch_add(1, Ordering::Relaxed);
        ReadyGuard {
            readiness: Some(Arc::clone(self)),
            hub,
        }
    }
}

/// One session counted as up; uncounted on [`ReadyGuard::release`] or drop.
#[derive(Debug)]
pub(crate) struct ReadyGuard {
    readiness: Option<Arc<Readiness>>,
    hub: usize,
}

impl ReadyGuard {
    /// Stops counting the session (it received GOAWAY, or ended). Idempotent.
    pub(crate) fn release(&mut self) {
        if let Some(readiness) = self.readiness.take() {
            readiness.up[self.hub].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ReadyGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Serves health probes on `listener` forever.
pub(crate) async fn serve(listener: TcpListener, readiness: Arc<Readiness>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(answer(stream, Arc::clone(&readiness)));
            }
            Err(err) => {
                // Usually descriptor exhaustion: back off briefly rather than spin.
                tracing::warn!(error = %err, "health listener accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head and answers it.
async fn answer(mut stream: TcpStream, readiness: Arc<Readiness>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) || head.is_empty() {
        return; // A TCP probe, a slow client or a reset: nothing to answer.
    }
    let response = respond(&head, readiness.is_ready());
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The full response to a request head.
pub(crate) fn respond(head: &[u8], ready: bool) -> String {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "ok\n"),
        ("GET", "/readyz") if ready => ("200 OK", "ready\n"),
        ("GET", "/readyz") => ("503 Service Unavailable", "not ready\n"),
        (_, "/healthz" | "/readyz") => ("405 Method Not Allowed", "method not allowed\n"),
        _ => ("404 Not Found", "not found\n"),
    };
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn listen(readiness: Arc<Readiness>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, readiness));
        addr
    }

    async fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn healthz_is_always_ok() {
        let addr = listen(Arc::new(Readiness::new(1))).await;
        let reply = get(addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\nok\n"), "{reply}");
        assert!(reply.contains("Content-Length: 3\r\n"), "{reply}");
    }

    #[tokio::test]
    async fn readyz_follows_sessions_of_every_hub() {
        let readiness = Arc::new(Readiness::new(2));
        let addr = listen(Arc::clone(&readiness)).await;
        let req = "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(get(addr, req).await.starts_with("HTTP/1.1 503 "));

        let first = readiness.session_up(0);
        assert!(
            get(addr, req).await.starts_with("HTTP/1.1 503 "),
            "hub 1 has none"
        );
        let mut second = readiness.session_up(1);
        assert!(get(addr, req).await.starts_with("HTTP/1.1 200 "));

        second.release();
        second.release();
        assert!(get(addr, req).await.starts_with("HTTP/1.1 503 "));
        let _again = readiness.session_up(1);
        assert!(get(addr, req).await.starts_with("HTTP/1.1 200 "));
        drop(first);
        assert!(get(addr, req).await.starts_with("HTTP/1.1 503 "));
    }

    #[tokio::test]
    async fn unknown_paths_and_methods() {
        let addr = listen(Arc::new(Readiness::new(1))).await;
        let reply = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 404 "), "{reply}");
        let reply = get(addr, "POST /healthz HTTP/1.1\r\n\r\n").await;
        assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
        assert!(reply.contains("Allow: GET\r\n"), "{reply}");
    }

    #[tokio::test]
    async fn a_plain_tcp_probe_connects_and_an_oversized_head_is_cut_off() {
        let addr = listen(Arc::new(Readiness::new(1))).await;
        drop(TcpStream::connect(addr).await.unwrap());
        // A head with no end: the listener stops reading at 4 KiB and answers the first line.
        let mut long = String::from("GET /healthz HTTP/1.1\r\nX: ");
        long.push_str(&"a".repeat(MAX_REQUEST - long.len()));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let _ = stream.write_all(long.as_bytes()).await;
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply).await;
        assert!(reply.starts_with(b"HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn query_strings_are_ignored() {
        assert!(
            respond(b"GET /healthz?verbose=1 HTTP/1.1\r\n\r\n", false).starts_with("HTTP/1.1 200")
        );
    }
}
