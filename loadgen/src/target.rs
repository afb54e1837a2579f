//! Target servers: the TCP services that scenarios drive, directly or through a tunnel.
//!
//! - `echo` writes every byte back; when the client half-closes, it half-closes too.
//! - `sink` reads and counts; when the client half-closes, it writes the count as an 8-byte
//!   big-endian integer and closes, so an upload measures bytes that really arrived.
//! - `source` writes the [`pattern`] without end, until the client goes away.
//! - `rr` reads requests of a fixed size and answers each with a reply of a fixed size (the
//!   pattern), like a small RPC server; it half-closes when the client does.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use clap::ValueEnum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::pattern;

/// Size of the read and write buffers of every target connection.
const BUF: usize = 64 * 1024;

/// Which target server to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum TargetKind {
    /// Write every byte back; half-close when the client half-closes.
    Echo,
    /// Read and count; on the client's half-close, reply with the count (8 bytes, big endian).
    Sink,
    /// Write the test pattern without end.
    Source,
    /// Answer each fixed-size request with a fixed-size reply.
    Rr,
}

/// Request and reply sizes of the `rr` target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RrSizes {
    /// Bytes per request.
    pub(crate) request: usize,
    /// Bytes per reply.
    pub(crate) reply: usize,
}

impl Default for RrSizes {
    fn default() -> Self {
        RrSizes {
            request: 64,
            reply: 64,
        }
    }
}

/// Binds `addr` and serves `kind` on it in the background; returns the bound address.
pub(crate) async fn spawn(kind: TargetKind, addr: SocketAddr) -> io::Result<SocketAddr> {
    spawn_with(kind, addr, RrSizes::default()).await
}

/// [`spawn`] with the `rr` sizes given.
pub(crate) async fn spawn_with(
    kind: TargetKind,
    addr: SocketAddr,
    rr: RrSizes,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, kind, rr));
    Ok(local)
}

/// Accepts connections on `listener` for ever, serving each with `kind`.
pub(crate) async fn serve(listener: TcpListener, kind: TargetKind, rr_sizes: RrSizes) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let _ = conn.set_nodelay(true);
                tokio::spawn(async move {
                    // A client that resets or vanishes ends its connection; nothing to report.
                    let _ = match kind {
                        TargetKind::Echo => echo(conn).await,
                        TargetKind::Sink => sink(conn).await,
                        TargetKind::Source => source(conn).await,
                        TargetKind::Rr => rr(conn, rr_sizes).await,
                    };
                });
            }
            // Out of descriptors or a connection aborted before accept: back off briefly.
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn echo(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return conn.shutdown().await;
        }
        conn.write_all(&buf[..n]).await?;
    }
}

async fn sink(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            conn.write_all(&total.to_be_bytes()).await?;
            return conn.shutdown().await;
        }
        total += n as u64;
    }
}

async fn source(mut conn: TcpStream) -> io::Result<()> {
    let mut offset = 0u64;
    loop {
        conn.write_all(pattern::slice(offset, BUF)).await?;
        offset += BUF as u64;
    }
}

async fn rr(mut conn: TcpStream, sizes: RrSizes) -> io::Result<()> {
    let mut request = vec![0u8; sizes.request.max(1)];
    let reply = pattern::slice(0, sizes.reply.min(pattern::MAX_SLICE));
    loop {
        match conn.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return conn.shutdown().await,
            Err(e) => return Err(e),
        }
        conn.write_all(reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(kind: TargetKind) -> TcpStream {
        let addr = spawn(kind, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        TcpStream::connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn echo_returns_bytes_and_the_half_close() {
        let mut c = connect(TargetKind::Echo).await;
        c.write_all(b"hello").await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello");
    }

    #[tokio::test]
    async fn sink_reports_what_it_read() {
        let mut c = connect(TargetKind::Sink).await;
        for _ in 0..10 {
            c.write_all(pattern::slice(0, 10_000)).await.unwrap();
        }
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, 100_000u64.to_be_bytes());
    }

    #[tokio::test]
    async fn rr_answers_each_request_with_a_fixed_reply() {
        let sizes = RrSizes {
            request: 10,
            reply: 3000,
        };
        let addr = spawn_with(TargetKind::Rr, "127.0.0.1:0".parse().unwrap(), sizes)
            .await
            .unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Two requests split across writes, then the half-close.
        c.write_all(&[1u8; 15]).await.unwrap();
        c.write_all(&[2u8; 5]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 6000);
        assert_eq!(pattern::check(0, &back[..3000]), Ok(()));
        assert_eq!(&back[..3000], &back[3000..]);
    }

    #[tokio::test]
    async fn source_writes_the_pattern() {
        let mut c = connect(TargetKind::Source).await;
        let mut got = vec![0u8; 300_000];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(pattern::check(0, &got), Ok(()));
    }
}
