//! One stream's I/O: dialling the connector's target, then two tasks that pipe bytes between
//! the target socket and the session.
//!
//! Bytes from the hub reach the target straight from the session's reader while nothing is
//! queued before them: it writes what the socket takes at once, without a copy or a wake-up,
//! and returns the credit itself. What the socket does not take (and anything that arrives
//! before the target is connected) goes to the stream's writer task through an unbounded
//! channel (bounded in practice by the credit window: the hub cannot send more than `window`
//! bytes the agent has not yet written and returned as credit), and later bytes queue behind
//! it until the writer task has caught up, so a slow target stalls only its own stream. Large
//! payloads the reader spliced into the stream's pipe (see [`crate::splice`]) follow the same
//! rule: what the target does not take at once stays in the pipe, and its count is queued in
//! turn. The stream's reader task reads the target only within the credit the hub granted.

use std::sync::Arc;
use std::time::Duration;

use nowconnect_core::config::TargetAddr;
use nowconnect_core::frame::{RstCode, RstReason, StreamId};
use nowconnect_core::time::Millis;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio::task::AbortHandle;

use crate::clock;
use crate::session::Link;
use crate::splice::{PIPE_IDLE_MS, Pipe};

/// The largest read from a target socket; DATA frames are also bounded by `max_frame`.
const READ_BUF: usize = 64 * 1024;

/// What the session's reader hands a stream's writer task.
#[derive(Debug)]
pub(crate) enum ToTarget {
    /// Bytes to write to the target.
    Data(Vec<u8>),
    /// Bytes waiting in the stream's pipe, to move on to the target.
    Piped(Arc<Pipe>, usize),
    /// The hub finished sending: shut down the socket's write side after the bytes before.
    Fin,
}

/// Wake-ups the session gives a stream's tasks.
#[derive(Debug, Default)]
pub(crate) struct StreamSignals {
    /// The stream was reset (by the hub, the idle sweep, a violation or the session's end):
    /// close the target socket with a TCP RST.
    pub(crate) reset: Notify,
    /// The hub returned credit: the reader task may read again.
    pub(crate) credit: Notify,
}

/// The session's handle on one stream's tasks. Dropping it without firing `reset` lets the
/// writer task finish the bytes queued and exit: the stream ended normally.
#[derive(Debug)]
pub(crate) struct StreamEntry {
    /// Bytes and FIN for the target, for the writer task.
    to_target: mpsc::UnboundedSender<ToTarget>,
    /// Reset and credit wake-ups.
    pub(crate) signals: Arc<StreamSignals>,
    /// The target socket, once dialled and accepted.
    target: Option<Arc<TcpStream>>,
    /// Whether something sent to the writer task may still be unwritten. Set by whoever
    /// sends, cleared by the writer task once its channel is empty, both under the link's
    /// lock, so bytes written directly never overtake queued ones. While it is clear, the
    /// stream's pipe is empty too.
    queued: bool,
    /// The pipe large DATA payloads go through, once the stream has one.
    pipe: PipeState,
    /// When bytes last went into the pipe.
    piped_at: Millis,
}

/// Whether a stream moves large payloads through a pipe.
#[derive(Debug)]
enum PipeState {
    /// No payload large enough has come yet.
    Untried,
    /// The stream's pipe.
    Open(Arc<Pipe>),
    /// No pipe could be had: the stream stays on buffers.
    Refused,
}

impl StreamEntry {
    /// A new entry, with the receiving end of its channel for [`run`].
    pub(crate) fn new() -> (StreamEntry, mpsc::UnboundedReceiver<ToTarget>) {
        let (to_target, rx) = mpsc::unbounded_channel();
        let entry = StreamEntry {
            to_target,
            signals: Arc::new(StreamSignals::default()),
            target: None,
            queued: false,
            pipe: PipeState::Untried,
            piped_at: Millis::ZERO,
        };
        (entry, rx)
    }

    /// The stream's pipe for a payload the session's reader would move by splice, holding at
    /// least `window` bytes; opened on first use. `None` while the target is not connected,
    /// and for good once no pipe could be had.
    pub(crate) fn pipe(&mut self, window: usize) -> Option<Arc<Pipe>> {
        self.target.as_ref()?;
        if let PipeState::Untried = self.pipe {
            self.pipe = match Pipe::new(window) {
                Ok(pipe) => PipeState::Open(Arc::new(pipe)),
                Err(err) => {
                    tracing::debug!(error = %err, "no pipe for a bulk stream: it stays on buffers");
                    PipeState::Refused
                }
            };
        }
        match &self.pipe {
            PipeState::Open(pipe) => Some(Arc::clone(pipe)),
            PipeState::Untried | PipeState::Refused => None,
        }
    }

    /// Whether the stream has a pipe: it has carried a large payload.
    pub(crate) fn has_pipe(&self) -> bool {
        matches!(self.pipe, PipeState::Open(_))
    }

    /// Hands on `len` bytes the session's reader just moved into the stream's pipe: moves
    /// what the target takes at once when nothing waits before them, and leaves the rest to
    /// the writer task. Returns how many bytes reached the target here; the caller returns
    /// their credit (the writer task does for the rest).
    pub(crate) fn deliver_piped(&mut self, now: Millis, pipe: &Arc<Pipe>, len: usize) -> usize {
        self.piped_at = now;
        let mut written = 0;
        if !self.queued
            && let Some(target) = &self.target
        {
            // As in `deliver`: any error leaves the bytes to the writer task.
            written = pipe.push(target, len).unwrap_or(0);
        }
        if written < len {
            self.queued = true;
            let _ = self
                .to_target
                .send(ToTarget::Piped(Arc::clone(pipe), len - written));
        }
        written
    }

    /// Closes the stream's pipe when it is empty (nothing queued) and has not been used for
    /// [`PIPE_IDLE_MS`], so that quiet streams do not hold the process's pipes. Returns
    /// whether it did.
    pub(crate) fn release_idle_pipe(&mut self, now: Millis) -> bool {
        let idle = now.saturating_since(self.piped_at) >= PIPE_IDLE_MS;
        if self.queued || !idle || !self.has_pipe() {
            return false;
        }
        self.pipe = PipeState::Untried;
        true
    }

    /// Hands the hub's bytes to the target: writes what the socket takes at once when nothing
    /// waits before them, and queues the rest for the writer task. Returns how many bytes were
    /// written here; the caller returns their credit (the writer task does for the rest).
    pub(crate) fn deliver(&mut self, data: &[u8]) -> usize {
        let mut written = 0;
        if !self.queued
            && let Some(target) = &self.target
        {
            // Any error, WouldBlock included, leaves the bytes to the writer task, which
            // waits for room or reports the failure.
            written = target.try_write(data).unwrap_or(0);
        }
        if written < data.len() {
            self.queued = true;
            let _ = self
                .to_target
                .send(ToTarget::Data(data[written..].to_vec()));
        }
        written
    }

    /// The hub finished sending: the writer task shuts down the socket's write side after
    /// whatever it still has queued.
    pub(crate) fn finish(&mut self) {
        self.queued = true;
        let _ = self.to_target.send(ToTarget::Fin);
    }
}

/// Why a target could not be dialled.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DialError {
    /// Nothing answered within the dial timeout.
    #[error("dial timed out after {0} ms")]
    Timeout(u64),
    /// The host name did not resolve.
    #[error("cannot resolve target: {0}")]
    Resolve(std::io::Error),
    /// Every address of the target failed; this is the last error.
    #[error("cannot connect to target: {0}")]
    Connect(std::io::Error),
}

impl DialError {
    /// The RST code the hub is told: 1 when the target actively refused, 2 for everything
    /// else (timeout, unreachable network or host, name that does not resolve).
    pub(crate) fn rst_code(&self) -> RstCode {
        match self {
            DialError::Connect(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => {
                RstCode::Refused
            }
            DialError::Timeout(_) | DialError::Resolve(_) | DialError::Connect(_) => {
                RstCode::Unreachable
            }
        }
    }
}

/// Dials `target` within `timeout`, trying each resolved address in turn.
pub(crate) async fn dial_target(
    target: &TargetAddr,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let attempt = async {
        let addrs = tokio::net::lookup_host((target.host(), target.port()))
            .await
            .map_err(DialError::Resolve)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Latency matters more than packet count for interactive protocols.
                    stream.set_nodelay(true).map_err(DialError::Connect)?;
                    return Ok(stream);
                }
                Err(err) => last = Some(err),
            }
        }
        Err(match last {
            Some(err) => DialError::Connect(err),
            None => DialError::Resolve(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            )),
        })
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(DialError::Timeout(timeout.as_millis() as u64)))
}

/// Closes `stream` with a TCP RST instead of a FIN (`SO_LINGER` 0).
fn reset_socket(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Runs one stream the hub opened: dials `target`, answers OPEN_OK or RST, then pipes bytes
/// until the stream ends.
pub(crate) async fn run(
    link: Arc<Link>,
    id: StreamId,
    target: TargetAddr,
    rx: mpsc::UnboundedReceiver<ToTarget>,
    signals: Arc<StreamSignals>,
    dial_timeout: Duration,
) {
    let dialled = tokio::select! {
        biased;
        // Reset (or the session ended) while dialling: nothing was connected yet.
        () = signals.reset.notified() => return,
        result = dial_target(&target, dial_timeout) => result,
    };
    let stream = match dialled {
        Ok(stream) => stream,
        Err(err) => {
            let code = err.rst_code();
            let reason = RstReason::new(&err.to_string());
            {
                let mut st = link.lock();
                if st.session.reset(id, code, reason.as_str()) {
                    st.forget_stream(id);
                }
            }
            link.flush();
            tracing::debug!(stream = %id, target = %target, code = code.as_str(), error = %err, "target dial failed");
            return;
        }
    };
    let stream = Arc::new(stream);
    {
        let mut st = link.lock();
        let Some(entry) = st.streams.get_mut(&id) else {
            drop(st);
            reset_socket(&stream);
            return;
        };
        entry.target = Some(Arc::clone(&stream));
        if st.session.accept(id).is_err() {
            st.forget_stream(id);
            drop(st);
            reset_socket(&stream);
            return;
        }
    }
    link.flush();
    tracing::debug!(stream = %id, target = %target, "target connected");
    let reader = tokio::spawn(from_target(
        Arc::clone(&link),
        id,
        Arc::clone(&stream),
        Arc::clone(&signals),
    ));
    to_target(link, id, stream, rx, signals, reader.abort_handle()).await;
}

/// Target → hub: reads within the stream's credit and queues DATA; FIN on EOF, RST 6 on a
/// TCP reset. The bytes are read straight into the session's transmit buffer behind a DATA
/// header (no buffer of its own, so an idle stream holds none, and no copy).
async fn from_target(
    link: Arc<Link>,
    id: StreamId,
    read: Arc<TcpStream>,
    signals: Arc<StreamSignals>,
) {
    loop {
        let has_credit = {
            let st = link.lock();
            if st.session.stream(id).is_none() {
                return;
            }
            st.session.send_credit(id) > 0
        };
        if !has_credit {
            signals.credit.notified().await;
            continue;
        }
        if let Err(err) = read.readable().await {
            return reset_from_target(&link, id, &err);
        }
        let now = clock::now();
        let mut st = link.lock();
        // Credit only grows while we wait, and only this task sends on the stream, so a
        // stream still here still has credit: a read of 0 bytes is the target's end of stream.
        let read_once = st.session.send_data_from(now, id, |transmit, room| {
            let mut room = bytes::BufMut::limit(transmit, room.min(READ_BUF));
            read.try_read_buf(&mut room)
        });
        match read_once {
            Ok(Ok(0)) => {
                if let Ok(true) = st.session.finish(id) {
                    st.forget_stream(id);
                }
                drop(st);
                link.flush();
                return;
            }
            Ok(Ok(_)) => {
                drop(st);
                link.flush();
            }
            Ok(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Ok(Err(err)) => {
                drop(st);
                return reset_from_target(&link, id, &err);
            }
            // The stream was reset meanwhile; its bytes have nowhere to go.
            Err(_) => return,
        }
    }
}

/// The target's side failed (a TCP reset, typically): RST 6 to the hub, RST to the socket.
fn reset_from_target(link: &Link, id: StreamId, err: &std::io::Error) {
    {
        let mut st = link.lock();
        if st
            .session
            .reset(id, RstCode::PeerReset, "target reset the connection")
        {
            st.abort_stream(id);
        }
    }
    link.flush();
    tracing::debug!(stream = %id, error = %err, "target read failed");
}

/// Hub → target: writes the bytes the session queued, returns credit once they are written,
/// shuts down the write side on FIN, and resets the socket when the stream is reset.
async fn to_target(
    link: Arc<Link>,
    id: StreamId,
    socket: Arc<TcpStream>,
    mut rx: mpsc::UnboundedReceiver<ToTarget>,
    signals: Arc<StreamSignals>,
    reader: AbortHandle,
) {
    // The socket closes (with RST, as linger is 0) once the reader task and the session's
    // entry have let go of it too.
    let abort = |socket: &TcpStream| {
        reset_socket(socket);
        reader.abort();
    };
    loop {
        let message = tokio::select! {
            biased;
            () = signals.reset.notified() => return abort(&socket),
            message = rx.recv() => message,
        };
        let result = match message {
            // The stream ended and everything queued was written: no more bytes will come.
            None => {
                let _ = socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write);
                return;
            }
            Some(ToTarget::Data(bytes)) => {
                let written = tokio::select! {
                    biased;
                    () = signals.reset.notified() => return abort(&socket),
                    written = write_all(&socket, &bytes) => written,
                };
                if written.is_ok() {
                    written_out(&link, id, &rx, bytes.len());
                }
                written
            }
            Some(ToTarget::Piped(pipe, len)) => {
                let written = tokio::select! {
                    biased;
                    () = signals.reset.notified() => return abort(&socket),
                    written = pipe.drain(&socket, len) => written,
                };
                if written.is_ok() {
                    written_out(&link, id, &rx, len);
                }
                written
            }
            Some(ToTarget::Fin) => {
                socket2::SockRef::from(&*socket).shutdown(std::net::Shutdown::Write)
            }
        };
        if let Err(err) = result {
            {
                let mut st = link.lock();
                if st
                    .session
                    .reset(id, RstCode::PeerReset, "target reset the connection")
                {
                    st.forget_stream(id);
                }
            }
            link.flush();
            tracing::debug!(stream = %id, error = %err, "target write failed");
            return abort(&socket);
        }
    }
}

/// The writer task wrote `len` queued bytes to the target: returns their credit, and lets the
/// session's reader write directly again once nothing else is queued.
fn written_out(link: &Link, id: StreamId, rx: &mpsc::UnboundedReceiver<ToTarget>, len: usize) {
    let now = clock::now();
    let mut st = link.lock();
    st.session.consumed(now, id, len);
    if rx.is_empty()
        && let Some(entry) = st.streams.get_mut(&id)
    {
        entry.queued = false;
    }
    link.unlock_and_flush(st);
}

/// Writes all of `bytes` to `socket`, waiting for room as needed.
async fn write_all(socket: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        socket.writable().await?;
        match socket.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Error, ErrorKind};

    fn target(s: &str) -> TargetAddr {
        TargetAddr::parse(s).unwrap()
    }

    #[test]
    fn refused_maps_to_code_1_and_everything_else_to_2() {
        let refused = DialError::Connect(Error::from(ErrorKind::ConnectionRefused));
        assert_eq!(refused.rst_code(), RstCode::Refused);
        for err in [
            DialError::Timeout(10),
            DialError::Resolve(Error::other("no such host")),
            DialError::Connect(Error::from(ErrorKind::HostUnreachable)),
            DialError::Connect(Error::from(ErrorKind::NetworkUnreachable)),
            DialError::Connect(Error::from(ErrorKind::TimedOut)),
        ] {
            assert_eq!(err.rst_code(), RstCode::Unreachable, "{err}");
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = dial_target(&target(&addr.to_string()), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.rst_code(), RstCode::Refused, "{err}");
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_unreachable() {
        let err = dial_target(&target("no-such-host.invalid:80"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.rst_code(), RstCode::Unreachable, "{err}");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_dial_that_does_not_finish_in_time_is_unreachable() {
        // A listener whose accept queue is full: Linux drops further SYNs, so a connect hangs
        // until the dial timeout.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(
                &"127.0.0.1:0"
                    .parse::<std::net::SocketAddr>()
                    .unwrap()
                    .into(),
            )
            .unwrap();
        socket.listen(0).unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        let mut filling = Vec::new();
        let mut timed_out = None;
        for _ in 0..8 {
            match dial_target(&target(&addr.to_string()), Duration::from_millis(200)).await {
                Ok(stream) => filling.push(stream),
                Err(err) => {
                    timed_out = Some(err);
                    break;
                }
            }
        }
        let err = timed_out.expect("the accept queue never filled up");
        assert!(matches!(err, DialError::Timeout(200)), "{err}");
        assert_eq!(err.rst_code(), RstCode::Unreachable);
    }

    /// The size of the chunks [`fill_target`] delivers.
    const CHUNK: usize = 64 * 1024;

    /// Delivers chunks until the target's socket takes only part of one (or nothing), which
    /// the entry queues; returns the bytes the socket took.
    fn fill_target(entry: &mut StreamEntry) -> usize {
        let chunk = vec![7u8; CHUNK];
        let mut written = 0;
        loop {
            let n = entry.deliver(&chunk);
            written += n;
            if n < chunk.len() {
                return written;
            }
        }
    }

    /// Reads `len` bytes at the target's end, `peer`, then waits until the entry's target
    /// socket has room again.
    async fn drain_target(peer: &TcpStream, entry: &StreamEntry, len: usize) {
        let mut buf = vec![0u8; 1 << 20];
        let mut drained = 0;
        while drained < len {
            peer.readable().await.unwrap();
            drained += peer.try_read(&mut buf).unwrap_or(0);
        }
        entry.target.as_ref().unwrap().writable().await.unwrap();
    }

    /// A connected pair on loopback: ours, and the peer's end.
    pub(crate) async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (ours, peer)
    }

    #[tokio::test]
    async fn bytes_queue_behind_queued_ones_even_when_the_socket_has_room_again() {
        let (ours, peer) = pair().await;
        let (mut entry, mut rx) = StreamEntry::new();
        // Before the target is connected, everything is queued.
        assert_eq!(entry.deliver(b"early"), 0);
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Data(b)) if b == b"early"));
        // The writer task caught up: direct writes from here.
        entry.queued = false;
        entry.target = Some(Arc::new(ours));
        assert_eq!(entry.deliver(b"direct"), 6);
        // Fill the socket until it takes only part of a chunk or nothing.
        let written = fill_target(&mut entry);
        assert!(entry.queued);
        let Ok(ToTarget::Data(rest)) = rx.try_recv() else {
            panic!("the rest of the chunk was not queued");
        };
        assert_eq!(written % CHUNK + rest.len(), CHUNK);
        // The peer drains everything: the socket has room, but the queue is not empty, so
        // later bytes must wait behind it.
        drain_target(&peer, &entry, 6 + written).await;
        assert_eq!(
            entry.deliver(b"later"),
            0,
            "later bytes overtook queued ones"
        );
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Data(b)) if b == b"later"));
        entry.finish();
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Fin)));
    }

    #[tokio::test]
    async fn piped_bytes_keep_their_place_among_queued_ones() {
        use tokio::io::AsyncWriteExt;

        let (session, mut hub) = pair().await;
        let (ours, peer) = pair().await;
        let (mut entry, mut rx) = StreamEntry::new();
        assert!(
            entry.pipe(256 * 1024).is_none(),
            "no pipe before the target is connected"
        );
        entry.queued = false;
        entry.target = Some(Arc::new(ours));
        let pipe = entry.pipe(256 * 1024).expect("a pipe");
        assert!(entry.has_pipe());
        // Moves `bytes` from the hub into the pipe, as the session's reader does.
        let mut fill = async |bytes: &[u8]| {
            hub.write_all(bytes).await.unwrap();
            let mut moved = 0;
            while moved < bytes.len() {
                session.readable().await.unwrap();
                moved += pipe.fill(&session, bytes.len() - moved).unwrap_or(0);
            }
        };

        // Nothing queued: piped bytes go straight on.
        fill(b"spliced").await;
        assert_eq!(entry.deliver_piped(Millis(1_000), &pipe, 7), 7);
        assert!(rx.try_recv().is_err());

        // The target's socket fills up: the rest of a chunk is queued.
        let written = 7 + fill_target(&mut entry);
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Data(_))));
        // The target reads everything written: the socket has room again, but piped bytes
        // must wait behind the queued ones, and later bytes behind them.
        drain_target(&peer, &entry, written).await;
        fill(b"more").await;
        assert_eq!(entry.deliver_piped(Millis(2_000), &pipe, 4), 0);
        assert_eq!(entry.deliver(b"later"), 0);
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Piped(_, 4))));
        assert!(matches!(rx.try_recv(), Ok(ToTarget::Data(b)) if b == b"later"));

        // A pipe that may hold bytes is never closed, however long it sat.
        assert!(!entry.release_idle_pipe(Millis(60_000)));
        assert!(entry.has_pipe());
        // Once the writer task caught up, a quiet stream gives its pipe back, and gets a new
        // one with its next large payload.
        entry.queued = false;
        assert!(!entry.release_idle_pipe(Millis(2_000 + PIPE_IDLE_MS - 1)));
        assert!(entry.release_idle_pipe(Millis(2_000 + PIPE_IDLE_MS)));
        assert!(!entry.has_pipe());
        assert!(entry.pipe(256 * 1024).is_some());
    }

    #[tokio::test]
    async fn a_listening_port_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = dial_target(&target(&addr.to_string()), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(stream.nodelay().unwrap());
    }
}
