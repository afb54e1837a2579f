//! The agent connection's transport: plain TCP behind a TLS-terminating ingress, or TLS here.
//!
//! TLS uses rustls' connection state directly (it does no I/O of its own): ciphertext read from
//! the socket goes in, plaintext comes out, and plaintext to send is sealed into ciphertext that
//! the session's writer sends. The reader and writer tasks of a session share the state through
//! an `Rc<RefCell<…>>`, never borrowed across an `.await`, so reads and writes proceed
//! concurrently as they do on plain TCP.
//!
//! Bytes move with non-blocking `recv` and `sendmsg` calls made by those tasks themselves
//! ([`receive_some`], [`send_all`]); the runtime's driver only waits for readiness when the
//! socket is empty or full.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::rc::Rc;
use std::sync::Arc;

use compio::net::TcpStream;
use nowconnect_core::config::{ClientAuth, TlsConfig};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::pool::receive_now;

/// Builds the TLS configuration of the tunnel listener from the cert and key files, asking
/// agents for a client certificate when `client_auth` says so.
pub(crate) fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("tunnel.tls.cert_file: `{}`: {e}", tls.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "tunnel.tls.cert_file: `{}` holds no certificate",
            tls.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key_file)
        .map_err(|e| format!("tunnel.tls.key_file: `{}`: {e}", tls.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tunnel.tls: {e}"))?;
    let builder = match (tls.client_auth, &tls.client_ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (auth, Some(ca_file)) => {
            let shown = ca_file.display();
            let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_file)
                .and_then(|it| it.collect::<Result<_, _>>())
                .map_err(|e| format!("tunnel.tls.client_ca_file: `{shown}`: {e}"))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(cas);
            if added == 0 {
                return Err(format!(
                    "tunnel.tls.client_ca_file: `{shown}` holds no usable CA certificate"
                ));
            }
            let mut verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            );
            if auth == ClientAuth::Optional {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("tunnel.tls.client_ca_file: `{shown}`: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        (auth, None) => builder.with_client_cert_verifier(Arc::new(BindingOnly {
            algorithms: provider.signature_verification_algorithms,
            mandatory: auth == ClientAuth::Required,
        })),
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tunnel.tls.key_file: `{}`: {e}", tls.key_file.display()))?;
    Ok(Arc::new(config))
}

/// Client certificates without a CA: any certificate is accepted as long as the agent proves
/// it holds the key (the handshake signature is verified); it is trusted only through a
/// token bound to it (RFC 8705 `cnf.x5t#S256`), which the configuration then requires.
#[derive(Debug)]
struct BindingOnly {
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl rustls::server::danger::ClientCertVerifier for BindingOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 256 * 1024;

/// One agent connection. Cheap to clone: clones share the socket and the TLS state; each
/// clone keeps its own scratch buffers for ciphertext, reused from call to call.
pub(crate) struct Conn {
    tcp: TcpStream,
    tls: Option<Rc<RefCell<rustls::ServerConnection>>>,
    /// Ciphertext read from the socket; `cipher_in[cipher_pos..]` is not yet given to rustls.
    cipher_in: Vec<u8>,
    cipher_pos: usize,
    cipher_out: Vec<u8>,
    /// Reads made through this handle, for [`READS_PER_YIELD`].
    reads: u32,
    /// Taken by whichever clone is sending TLS records (see [`Conn::flush_tls`]).
    send_turn: Rc<tokio::sync::Mutex<()>>,
}

impl Clone for Conn {
    fn clone(&self) -> Conn {
        Conn {
            tcp: self.tcp.clone(),
            tls: self.tls.clone(),
            cipher_in: Vec::new(),
            cipher_pos: 0,
            cipher_out: Vec::new(),
            reads: 0,
            send_turn: self.send_turn.clone(),
        }
    }
}

impl Conn {
    /// A plain connection.
    pub(crate) fn plain(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            tls: None,
            cipher_in: Vec::new(),
            cipher_pos: 0,
            cipher_out: Vec::new(),
            reads: 0,
            send_turn: Rc::default(),
        }
    }

    /// A TLS connection; call [`Conn::handshake`] before anything else.
    pub(crate) fn tls(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Conn> {
        let state = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Conn {
            tcp,
            tls: Some(Rc::new(RefCell::new(state))),
            cipher_in: Vec::new(),
            cipher_pos: 0,
            cipher_out: Vec::new(),
            reads: 0,
            send_turn: Rc::default(),
        })
    }

    /// The DER of the client certificate the agent presented in the TLS handshake, if any.
    pub(crate) fn peer_certificate(&self) -> Option<Vec<u8>> {
        let tls = self.tls.as_ref()?.borrow();
        tls.peer_certificates()?
            .first()
            .map(|c| c.as_ref().to_vec())
    }

    /// Completes the TLS handshake (nothing to do on plain TCP). Ciphertext that arrives
    /// behind the handshake stays buffered for [`Conn::read`].
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.clone() else {
            return Ok(());
        };
        loop {
            self.flush_tls().await?;
            if !tls.borrow().is_handshaking() {
                return Ok(());
            }
            if self.cipher_pos >= self.cipher_in.len() && self.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut state = tls.borrow_mut();
            while state.is_handshaking() && self.cipher_pos < self.cipher_in.len() {
                self.feed(&mut state)?;
            }
        }
    }

    /// Reads more ciphertext from the socket into the (fully consumed) input buffer; returns
    /// how many bytes came, 0 at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut cipher = std::mem::take(&mut self.cipher_in);
        cipher.clear();
        cipher.reserve(READ_CHUNK);
        let result = receive_some(&self.tcp, &mut cipher).await;
        self.cipher_in = cipher;
        self.cipher_pos = 0;
        result
    }

    /// Gives rustls one record's worth of buffered ciphertext and processes it.
    fn feed(&mut self, state: &mut rustls::ServerConnection) -> io::Result<()> {
        let mut rest = &self.cipher_in[self.cipher_pos..];
        let n = state.read_tls(&mut rest)?;
        self.cipher_pos += n;
        state
            .process_new_packets()
            .map(|_| ())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Moves decrypted plaintext into `buf`, feeding buffered ciphertext in between so rustls
    /// never holds more plaintext than its limit. Returns true at the peer's close_notify.
    fn drain_plaintext(
        &mut self,
        tls: &RefCell<rustls::ServerConnection>,
        buf: &mut Vec<u8>,
    ) -> io::Result<bool> {
        let mut state = tls.borrow_mut();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            loop {
                match state.reader().read(&mut chunk) {
                    Ok(0) => return Ok(true),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            if buf.len() >= READ_CHUNK || self.cipher_pos >= self.cipher_in.len() {
                return Ok(false);
            }
            self.feed(&mut state)?;
        }
    }

    /// Sends whatever TLS records are waiting (handshake messages, alerts, sealed data).
    async fn flush_tls(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.clone() else {
            return Ok(());
        };
        if !tls.borrow().wants_write() {
            return Ok(());
        }
        // The reader (alerts, answers to the peer's key updates) and the writer both flush:
        // one at a time, so that a send the socket took only in part is finished before the
        // other's records follow it, and records leave whole and in the order rustls made them.
        let turn = self.send_turn.clone();
        let _turn = turn.lock().await;
        let mut out = std::mem::take(&mut self.cipher_out);
        out.clear();
        {
            let mut tls = tls.borrow_mut();
            while tls.wants_write() {
                tls.write_tls(&mut out)?;
            }
        }
        if out.is_empty() {
            self.cipher_out = out;
            return Ok(());
        }
        let result = send_all(&self.tcp, std::slice::from_ref(&out), false).await;
        self.cipher_out = out;
        result
    }

    /// Reads and returns the next plaintext bytes into `buf` (replacing its contents); an
    /// empty result means the peer closed the connection.
    pub(crate) async fn read(&mut self, mut buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        buf.clear();
        // Reads that find bytes waiting never pass through the runtime, so a busy session
        // would keep its shard's thread until the agent ran out of credit: every so many
        // reads, let the shard's other tasks (this session's writer with its credit, other
        // sessions, clients, timers) have their turn.
        self.reads = self.reads.wrapping_add(1);
        if self.reads.is_multiple_of(READS_PER_YIELD) {
            yield_now().await;
        }
        let Some(tls) = self.tls.clone() else {
            buf.reserve(READ_CHUNK);
            let result = receive_some(&self.tcp, &mut buf).await;
            return (result.map(|_| ()), buf);
        };
        loop {
            let closed = match self.drain_plaintext(&tls, &mut buf) {
                Ok(closed) => closed,
                Err(e) => {
                    // Send the alert rustls queued, if any, then give up.
                    let _ = self.flush_tls().await;
                    return (Err(e), buf);
                }
            };
            if let Err(e) = self.flush_tls().await {
                return (Err(e), buf);
            }
            if closed || !buf.is_empty() {
                return (Ok(()), buf);
            }
            match self.fill().await {
                Ok(0) => return (Ok(()), buf),
                Ok(_) => {}
                Err(e) => return (Err(e), buf),
            }
        }
    }

    /// Seals `data` and sends it, flushing whenever rustls' send buffer fills.
    async fn seal_all(
        &mut self,
        tls: &RefCell<rustls::ServerConnection>,
        mut data: &[u8],
    ) -> io::Result<()> {
        while !data.is_empty() {
            let n = tls.borrow_mut().writer().write(data)?;
            data = &data[n..];
            if !data.is_empty() {
                self.flush_tls().await?;
            }
        }
        Ok(())
    }

    /// Writes `plain` in order. On TLS it is sealed first (one copy, inherent to TLS).
    pub(crate) async fn write_all(&mut self, plain: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self.tls.clone() {
            None => {
                let result = send_all(&self.tcp, std::slice::from_ref(&plain), false).await;
                (result, plain)
            }
            Some(tls) => {
                if let Err(e) = self.seal_all(&tls, &plain).await {
                    return (Err(e), plain);
                }
                (self.flush_tls().await, plain)
            }
        }
    }

    /// Writes several buffers in order, vectored on plain TCP. `more` says that more bytes
    /// follow at once (a spliced payload), so the kernel may hold back a partial segment.
    pub(crate) async fn write_batch<T: compio::buf::IoBuf>(
        &mut self,
        bufs: Vec<T>,
        more: bool,
    ) -> (io::Result<()>, Vec<T>) {
        match self.tls.clone() {
            None => {
                let result = send_all(&self.tcp, &bufs, more).await;
                (result, bufs)
            }
            Some(tls) => {
                for b in &bufs {
                    if let Err(e) = self.seal_all(&tls, b.as_init()).await {
                        return (Err(e), bufs);
                    }
                }
                (self.flush_tls().await, bufs)
            }
        }
    }

    /// Whether bytes can be spliced into this connection: plain TCP, made non-blocking (which
    /// this does) so that a full socket cannot block the shard.
    pub(crate) fn prepare_splice(&self) -> bool {
        self.tls.is_none() && super::splice::set_nonblocking(&self.tcp).is_ok()
    }

    /// Moves `len` bytes from `pipe` into the connection; after [`Conn::prepare_splice`] said
    /// yes.
    pub(crate) async fn splice_from(
        &self,
        pipe: &super::splice::Pipe,
        len: usize,
        more: bool,
    ) -> io::Result<()> {
        if self.tls.is_some() {
            return Err(io::Error::other("splice into a TLS connection"));
        }
        pipe.drain(&self.tcp, len, more).await
    }

    /// Ends our direction: TLS close_notify, then a TCP half-close.
    pub(crate) async fn shutdown(&mut self) {
        if let Some(tls) = self.tls.clone() {
            tls.borrow_mut().send_close_notify();
            let _ = self.flush_tls().await;
        }
        shut_write(&self.tcp);
    }
}

/// Half-closes `tcp` (a FIN behind whatever is queued) with a direct `shutdown(2)`, which
/// never blocks on TCP. compio's own shutdown is an io_uring operation the kernel always hands
/// to a worker thread: a wake-up and two context switches per stream, 15 % of the hub's CPU
/// under connection churn. Errors are ignored: a socket that cannot half-close is already
/// closed or reset, and its reads say so.
pub(crate) fn shut_write(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).shutdown(std::net::Shutdown::Write);
}

/// A session's reader lets other tasks run before every this many reads (up to 4 MiB).
const READS_PER_YIELD: u32 = 16;

/// Returns to the runtime once, after waking itself: the shard's other ready tasks run first.
async fn yield_now() {
    struct YieldNow(bool);
    impl std::future::Future for YieldNow {
        type Output = ();
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<()> {
            if self.0 {
                return std::task::Poll::Ready(());
            }
            self.0 = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    }
    YieldNow(false).await
}

/// Appends to `buf` what the socket holds, up to its spare capacity, waiting for the socket
/// to become readable only when nothing is there; returns how many bytes came, 0 at end of
/// stream. Like [`send_all`], it spares io_uring a trip through the ring whenever bytes are
/// already waiting, which on a busy session is nearly always.
async fn receive_some(tcp: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    // With no room, `recv` would return 0 and pass for the end of the stream.
    debug_assert!(buf.capacity() > buf.len(), "reserve room before receiving");
    loop {
        match receive_now(tcp, buf, usize::MAX) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tcp.to_poll_fd()?.read_ready().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The most buffers one vectored send takes (the session writer batches at most 64).
const MAX_SEND_SLICES: usize = 64;

/// Writes all of `bufs`, in order, with non-blocking vectored sends from this task, waiting
/// for the socket to become writable only when it is full. Under io_uring this spares each
/// write the socket takes at once (nearly all of them) a trip through the ring and a wake-up
/// of this task; under epoll it is what compio's own write does.
async fn send_all<T: compio::buf::IoBuf>(
    tcp: &TcpStream,
    bufs: &[T],
    more: bool,
) -> io::Result<()> {
    let total: usize = bufs.iter().map(|b| b.as_init().len()).sum();
    let mut sent = 0;
    while sent < total {
        match send_now(tcp, bufs, sent, more) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tcp.to_poll_fd()?.write_ready().await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One non-blocking vectored send of `bufs` from byte `skip` on (of them all), up to
/// [`MAX_SEND_SLICES`] buffers, with `MSG_MORE` if `more`; returns how many bytes the socket
/// took.
fn send_now<T: compio::buf::IoBuf>(
    tcp: &TcpStream,
    bufs: &[T],
    mut skip: usize,
    more: bool,
) -> io::Result<usize> {
    let mut slices = [io::IoSlice::new(&[]); MAX_SEND_SLICES];
    let mut count = 0;
    for buf in bufs {
        let bytes = buf.as_init();
        if skip >= bytes.len() {
            skip -= bytes.len();
            continue;
        }
        slices[count] = io::IoSlice::new(&bytes[skip..]);
        skip = 0;
        count += 1;
        if count == MAX_SEND_SLICES {
            break;
        }
    }
    let more = if more { libc::MSG_MORE } else { 0 };
    socket2::SockRef::from(tcp).send_vectored_with_flags(
        &slices[..count],
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | more,
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use nowconnect_core::config::Driver;

    use super::*;

    /// Runs `test` on a runtime of each driver: `auto` (io_uring where the kernel has it)
    /// and epoll, whose readiness waits work differently.
    fn on_each_driver(test: impl Fn(&compio::runtime::Runtime)) {
        for driver in [Driver::Auto, Driver::Epoll] {
            let ring = crate::runtime::RecvRing {
                buffers: 8,
                buffer_len: 4096,
            };
            let rt = crate::runtime::build(driver, ring).unwrap();
            test(&rt.runtime);
        }
    }

    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        (accepted, peer)
    }

    /// More buffers than one send takes, of uneven sizes, through a small send buffer to a
    /// peer that starts reading late: the sends come back partial and then blocked, and every
    /// byte must still arrive once, in order.
    #[test]
    fn send_all_delivers_every_byte_in_order_through_partial_and_blocked_sends() {
        on_each_driver(|rt| {
            let (accepted, mut peer) = pair();
            socket2::SockRef::from(&accepted)
                .set_send_buffer_size(4096)
                .unwrap();
            let bufs: Vec<Vec<u8>> = (0..MAX_SEND_SLICES * 2 + 7)
                .map(|i| {
                    let len = 1 + (i * 7919) % 40_000;
                    (0..len).map(|j| (i * 31 + j) as u8).collect()
                })
                .collect();
            let expected: Vec<u8> = bufs.concat();
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let mut got = Vec::new();
                peer.read_to_end(&mut got).unwrap();
                got
            });
            rt.block_on(async {
                let socket = TcpStream::from_std(accepted).unwrap();
                send_all(&socket, &bufs, false).await.unwrap();
            });
            let got = reader.join().unwrap();
            assert_eq!(got.len(), expected.len());
            assert!(got == expected, "bytes lost, doubled or reordered");
        });
    }

    #[test]
    fn send_now_starts_inside_a_buffer_after_a_partial_send() {
        on_each_driver(|rt| {
            let (accepted, mut peer) = pair();
            rt.block_on(async {
                let socket = TcpStream::from_std(accepted).unwrap();
                let bufs = [b"abc".to_vec(), b"defg".to_vec(), b"hi".to_vec()];
                assert_eq!(send_now(&socket, &bufs, 5, false).unwrap(), 4);
            });
            let mut got = [0u8; 4];
            peer.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"fghi");
        });
    }

    /// Waits until `socket` holds at least `len` bytes, without taking them.
    fn wait_for_bytes(socket: &std::net::TcpStream, len: usize) {
        let mut peeked = vec![0u8; len];
        for _ in 0..5000 {
            if matches!(socket.peek(&mut peeked), Ok(n) if n >= len) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("{len} bytes never arrived");
    }

    /// Reads that find bytes waiting never pass through the runtime: a session whose agent
    /// keeps its socket full would hold the shard's thread for as long as the flow lasts, and
    /// the shard's other tasks (its own writer among them) would starve. Each read here finds
    /// bytes waiting; exactly every `READS_PER_YIELD`-th must return to the runtime once.
    #[test]
    fn a_reader_that_always_finds_bytes_returns_to_the_runtime_every_so_many_reads() {
        use std::task::{Context, Poll, Waker};
        on_each_driver(|rt| {
            let (accepted, mut peer) = pair();
            let probe = accepted.try_clone().unwrap();
            rt.block_on(async {
                let mut conn = Conn::plain(TcpStream::from_std(accepted).unwrap());
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = Vec::new();
                let mut yielded = Vec::new();
                for i in 1..=3 * READS_PER_YIELD {
                    let chunk = vec![i as u8; 100];
                    peer.write_all(&chunk).unwrap();
                    wait_for_bytes(&probe, chunk.len());
                    let mut read = std::pin::pin!(conn.read(std::mem::take(&mut buf)));
                    let (result, bytes) = match read.as_mut().poll(&mut cx) {
                        Poll::Ready(done) => done,
                        Poll::Pending => {
                            yielded.push(i);
                            match read.as_mut().poll(&mut cx) {
                                Poll::Ready(done) => done,
                                Poll::Pending => panic!("read {i} waits with bytes waiting"),
                            }
                        }
                    };
                    result.unwrap();
                    assert_eq!(bytes, chunk, "read {i}");
                    buf = bytes;
                }
                let every = READS_PER_YIELD;
                assert_eq!(yielded, [every, 2 * every, 3 * every]);
            });
        });
    }

    /// A TLS server configuration and a client configuration that trusts it.
    fn tls_configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let der = cert.cert.der().clone();
        let key = PrivateKeyDer::try_from(cert.signing_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// The session's writer and its reader both send TLS records on one connection. A writer
    /// whose records the socket took only in part waits for room with the rest in hand; a
    /// record the reader's side sends meanwhile (here a KeyUpdate, as when answering the
    /// agent's) must wait behind them, or it lands inside one and the agent's TLS fails.
    #[test]
    fn tls_records_from_two_flushes_leave_whole_and_in_order() {
        const LEN: usize = 2 << 20;
        let pattern = |i: usize| (i % 251) as u8;
        on_each_driver(|rt| {
            let (server_config, client_config) = tls_configs();
            let (accepted, peer) = pair();
            socket2::SockRef::from(&accepted)
                .set_send_buffer_size(4096)
                .unwrap();
            let (go, start_reading) = std::sync::mpsc::channel::<()>();
            let client = std::thread::spawn(move || {
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(client_config, name).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, peer);
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).unwrap();
                }
                start_reading.recv().unwrap();
                let mut got = vec![0u8; LEN];
                tls.read_exact(&mut got)
                    .map(|()| got)
                    .map_err(|e| e.to_string())
            });
            rt.block_on(async {
                let tcp = TcpStream::from_std(accepted).unwrap();
                let mut conn = Conn::tls(tcp, server_config).unwrap();
                conn.handshake().await.unwrap();
                let mut other = conn.clone();
                let plain: Vec<u8> = (0..LEN).map(pattern).collect();
                let writer = compio::runtime::spawn(async move { conn.write_all(plain).await.0 });
                // Until the writer holds records the full socket did not take.
                compio::time::sleep(Duration::from_millis(100)).await;
                assert!(!writer.is_finished(), "the socket took everything at once");
                other
                    .tls
                    .as_ref()
                    .unwrap()
                    .borrow_mut()
                    .refresh_traffic_keys()
                    .unwrap();
                let flusher = compio::runtime::spawn(async move { other.flush_tls().await });
                compio::time::sleep(Duration::from_millis(50)).await;
                go.send(()).unwrap();
                writer.await.unwrap().unwrap();
                flusher.await.unwrap().unwrap();
            });
            let got = client.join().unwrap().expect("the client's TLS failed");
            assert!(
                got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
                "plaintext lost, doubled or reordered"
            );
        });
    }

    #[test]
    fn receive_some_waits_for_bytes_and_reads_the_end_as_zero() {
        on_each_driver(|rt| {
            let (accepted, mut peer) = pair();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                peer.write_all(b"late bytes").unwrap();
                peer
            });
            rt.block_on(async {
                let socket = TcpStream::from_std(accepted).unwrap();
                let mut buf = Vec::with_capacity(64);
                let mut got = 0;
                while got < 10 {
                    got += receive_some(&socket, &mut buf).await.unwrap();
                }
                assert_eq!(buf, b"late bytes");
                drop(writer.join().unwrap());
                buf.clear();
                assert_eq!(receive_some(&socket, &mut buf).await.unwrap(), 0);
            });
        });
    }
}
