//! Streams through a real hub and a real agent to loopback targets: bulk echo, many concurrent
//! streams, who speaks first, half-close both ways, and resets from the target.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::sync::mpsc;
use std::sync::{Arc, Barrier};

use nowconnect_tests::*;

#[test]
fn echo_one_mebibyte_with_checksum() {
    let rig = Rig::start("echo1m", &[("echo", echo_target())], "");
    let data = payload(1, 1 << 20);
    let back = exchange(rig.listener("echo"), &data).expect("echo through the tunnel");
    assert_eq!(back.len(), data.len(), "echo length");
    assert_eq!(sha256(&back), sha256(&data), "echo checksum");
}

#[test]
fn two_hundred_concurrent_streams_each_echo_their_own_payload() {
    const STREAMS: usize = 200;
    const LEN: usize = 64 * 1024;
    // Two shards with a lane each, as in production: clients arrive on both shards.
    let rig = Rig::start_sharded("c200", &[("echo", echo_target())], "", 2);
    let addr = rig.listener("echo");
    let active = r#"nowconnect_streams_active{connector="echo"}"#;

    // Every client connects, then all wait until the hub holds the 200 streams at once, then
    // all transfer at once.
    let connected = Arc::new(Barrier::new(STREAMS + 1));
    let go = Arc::new(Barrier::new(STREAMS + 1));
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..STREAMS)
            .map(|i| {
                let (connected, go) = (Arc::clone(&connected), Arc::clone(&go));
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || -> Result<(), String> {
                        // Never panic before the barriers: the others would wait forever.
                        let conn = std::net::TcpStream::connect(addr);
                        connected.wait();
                        go.wait();
                        let conn = conn.map_err(|e| format!("stream {i}: connect: {e}"))?;
                        conn.set_read_timeout(Some(WAIT)).unwrap();
                        conn.set_write_timeout(Some(WAIT)).unwrap();
                        let data = payload(1000 + i as u64, LEN);
                        let back = exchange_on(conn, &data)
                            .map_err(|e| format!("stream {i}: exchange: {e}"))?;
                        if back.len() != data.len() || sha256(&back) != sha256(&data) {
                            return Err(format!(
                                "stream {i}: echo differs ({} of {} bytes back)",
                                back.len(),
                                data.len()
                            ));
                        }
                        Ok(())
                    })
                    .expect("spawn client")
            })
            .collect();
        connected.wait();
        let all_open = poll_until(WAIT, || rig.hub.metric(active) == Some(STREAMS as f64));
        let seen = rig.hub.metric(active);
        go.wait();
        let results: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        (all_open, seen, results)
    });
    let (all_open, seen, results) = results;
    let failures: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {STREAMS} streams failed, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        all_open,
        "the hub never held {STREAMS} streams at once (last seen {seen:?})"
    );
    assert!(
        poll_until(WAIT, || rig.hub.metric(active) == Some(0.0)),
        "streams still active after every client finished"
    );
    assert_eq!(
        rig.hub
            .metric(r#"nowconnect_stream_closes_total{connector="echo",reason="normal"}"#),
        Some(STREAMS as f64),
        "every stream ends normally"
    );
}

#[test]
fn client_first_protocol() {
    // Like an LDAP bind: the target says nothing until it has read a whole request line.
    let target = spawn_target(|mut conn| {
        let mut request = Vec::new();
        let mut byte = [0u8; 1];
        while !request.ends_with(b"\n") {
            match conn.read(&mut byte) {
                Ok(1) => request.push(byte[0]),
                _ => return,
            }
        }
        let mut answer = b"answer to ".to_vec();
        answer.extend_from_slice(&request);
        let _ = conn.write_all(&answer);
    });
    let rig = Rig::start("cfirst", &[("cf", target)], "");
    let mut c = client(rig.listener("cf"));
    c.write_all(b"bind cn=admin\n").unwrap();
    let mut answer = [0u8; 24];
    c.read_exact(&mut answer).expect("the target's answer");
    assert_eq!(&answer, b"answer to bind cn=admin\n");
}

#[test]
fn server_first_protocol() {
    // Like SMTP: the target greets on accept, before the client has sent anything.
    let target = spawn_target(|mut conn| {
        if conn.write_all(b"220 target ready\r\n").is_err() {
            return;
        }
        let mut command = Vec::new();
        let mut byte = [0u8; 1];
        while !command.ends_with(b"\r\n") {
            match conn.read(&mut byte) {
                Ok(1) => command.push(byte[0]),
                _ => return,
            }
        }
        if command == b"QUIT\r\n" {
            let _ = conn.write_all(b"221 bye\r\n");
        }
    });
    let rig = Rig::start("sfirst", &[("sf", target)], "");
    let mut c = client(rig.listener("sf"));
    let mut banner = [0u8; 18];
    c.read_exact(&mut banner)
        .expect("the banner, without the client sending first");
    assert_eq!(&banner, b"220 target ready\r\n");
    c.write_all(b"QUIT\r\n").unwrap();
    let (rest, end) = read_to_end_with(&mut c, WAIT);
    assert_eq!(rest, b"221 bye\r\n");
    assert_eq!(end, End::Eof, "the target closed normally");
}

#[test]
fn client_half_closes_and_target_answers_after_eof() {
    // The target reads to EOF, then answers with what it read and closes.
    let target = spawn_target(|mut conn| {
        let mut request = Vec::new();
        if conn.read_to_end(&mut request).is_err() {
            return;
        }
        let answer = format!("read {} bytes, sha256 {}", request.len(), sha256(&request));
        let _ = conn.write_all(answer.as_bytes());
    });
    let rig = Rig::start("hc-client", &[("hc", target)], "");
    let request = payload(7, 100_000);
    let mut c = client(rig.listener("hc"));
    c.write_all(&request).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let (answer, end) = read_to_end_with(&mut c, WAIT);
    assert_eq!(
        String::from_utf8_lossy(&answer),
        format!("read 100000 bytes, sha256 {}", sha256(&request))
    );
    assert_eq!(end, End::Eof);
    assert!(
        poll_until(WAIT, || rig.hub.metric(
            r#"nowconnect_stream_closes_total{connector="hc",reason="normal"}"#
        ) == Some(1.0)),
        "the stream ends normally"
    );
}

#[test]
fn target_half_closes_first_and_still_receives() {
    // The target sends a banner and shuts down its write side at once, then reads everything
    // the client sends and reports it.
    let (got_tx, got_rx) = mpsc::channel::<Vec<u8>>();
    let got_tx = std::sync::Mutex::new(got_tx);
    let target = spawn_target(move |mut conn| {
        if conn.write_all(b"banner, then FIN").is_err() {
            return;
        }
        conn.shutdown(Shutdown::Write).unwrap();
        let mut received = Vec::new();
        let _ = conn.read_to_end(&mut received);
        let _ = got_tx.lock().unwrap().send(received);
    });
    let rig = Rig::start("hc-target", &[("hc", target)], "");
    let mut c = client(rig.listener("hc"));
    let (banner, end) = read_to_end_with(&mut c, WAIT);
    assert_eq!(banner, b"banner, then FIN");
    assert_eq!(end, End::Eof, "the client sees the target's FIN as EOF");
    // The other direction is still open.
    let late = payload(9, 200_000);
    c.write_all(&late)
        .expect("the client can still send after EOF");
    c.shutdown(Shutdown::Write).unwrap();
    let received = got_rx.recv_timeout(WAIT).expect("the target reached EOF");
    assert_eq!(received.len(), late.len());
    assert_eq!(sha256(&received), sha256(&late));
    assert!(
        poll_until(WAIT, || rig.hub.metric(
            r#"nowconnect_stream_closes_total{connector="hc",reason="normal"}"#
        ) == Some(1.0)),
        "the stream ends normally"
    );
}

#[test]
fn refused_target_resets_the_client() {
    let rig = Rig::start("refused", &[("gone", closed_port())], "");
    let mut c = client(rig.listener("gone"));
    let (bytes, end) = read_to_end_with(&mut c, WAIT);
    assert!(bytes.is_empty());
    assert_eq!(end, End::Reset, "the client must see a TCP reset");
    assert!(
        poll_until(WAIT, || rig.hub.metric(
            r#"nowconnect_stream_closes_total{connector="gone",reason="refused"}"#
        ) == Some(1.0)),
        "counted as refused by the target"
    );
}

#[test]
fn target_reset_mid_stream_resets_the_client() {
    // The target sends 5000 bytes, waits for the client's go-ahead, then resets.
    let target = spawn_target(|mut conn| {
        if conn.write_all(&payload(3, 5000)).is_err() {
            return;
        }
        let mut go = [0u8; 2];
        if conn.read_exact(&mut go).is_ok() {
            reset(conn);
        }
    });
    let rig = Rig::start("rst-mid", &[("rst", target)], "");
    let mut c = client(rig.listener("rst"));
    let mut first = vec![0u8; 5000];
    c.read_exact(&mut first)
        .expect("the bytes before the reset");
    assert_eq!(first, payload(3, 5000));
    c.write_all(b"go").unwrap();
    let (after, end) = read_to_end_with(&mut c, WAIT);
    assert!(after.is_empty(), "nothing after the reset: {after:?}");
    assert_eq!(end, End::Reset, "the target's reset reaches the client");
    assert!(
        poll_until(WAIT, || rig.hub.metric(
            r#"nowconnect_stream_closes_total{connector="rst",reason="agent_reset"}"#
        ) == Some(1.0)),
        "counted as a reset from the agent's side"
    );
}

#[test]
fn the_tunnel_stays_usable_after_resets() {
    // Resets are per stream: after a refused and a reset stream, an echo on the same session
    // still works.
    let resetting = spawn_target(reset);
    let rig = Rig::start(
        "rst-then-echo",
        &[
            ("gone", closed_port()),
            ("rst", resetting),
            ("echo", echo_target()),
        ],
        "",
    );
    let (_, end) = read_to_end_with(&mut client(rig.listener("gone")), WAIT);
    assert_eq!(end, End::Reset);
    let (_, end) = read_to_end_with(&mut client(rig.listener("rst")), WAIT);
    assert_eq!(end, End::Reset);
    echo_roundtrip(rig.listener("echo"), &payload(5, 300_000)).expect("echo after resets");
    assert_eq!(rig.agent.sessions_established(), 1, "no reconnect needed");
}

/// Reads `s` to its end in pieces of up to `piece` bytes, pausing after every `every` bytes,
/// so that the sender keeps finding the socket full and then room again.
fn read_with_pauses(s: &mut std::net::TcpStream, piece: usize, every: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece];
    let mut since_pause = 0;
    loop {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        since_pause += n;
        if since_pause >= every {
            since_pause = 0;
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
    }
}

const PAUSED_LEN: usize = 6 << 20;

#[test]
fn a_target_that_reads_in_fits_and_starts_gets_every_byte_in_order() {
    // The agent writes to the target directly while it keeps up and queues once its socket
    // is full: bytes written either way must come out in order.
    let target = spawn_target(|mut conn| {
        let got = read_with_pauses(&mut conn, 7_000, 300_000);
        let _ = conn.write_all(format!("{} {}", got.len(), sha256(&got)).as_bytes());
    });
    let rig = Rig::start("pausedtarget", &[("slow", target)], "");
    let data = payload(7, PAUSED_LEN);
    let back = exchange(rig.listener("slow"), &data).expect("exchange through the tunnel");
    assert_eq!(
        String::from_utf8_lossy(&back),
        format!("{} {}", data.len(), sha256(&data)),
        "what the target received (length and checksum)"
    );
}

#[test]
fn a_client_that_reads_in_fits_and_starts_gets_every_byte_in_order() {
    // The same for the hub's writes to the client.
    let target = spawn_target(|mut conn| {
        let _ = conn.write_all(&payload(8, PAUSED_LEN));
    });
    let rig = Rig::start("pausedclient", &[("fast", target)], "");
    let mut conn = client(rig.listener("fast"));
    let got = read_with_pauses(&mut conn, 5_000, 250_000);
    assert_eq!(got.len(), PAUSED_LEN, "bytes the client received");
    assert_eq!(sha256(&got), sha256(&payload(8, PAUSED_LEN)), "checksum");
}
