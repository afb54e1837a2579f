//! Token rotation without a restart: the agent notices a new token in its token file, opens a
//! fresh session with it, and lets the old session drain under a running transfer.

use std::io::{Read, Write};

use nowconnect_tests::*;
use serde_json::Value;

/// The `token_exp` (from the hub's WELCOME) of an agent's `session established` line.
fn token_exp(line: &Value) -> Option<u64> {
    log_field(line, "token_exp").and_then(Value::as_u64)
}

#[test]
fn a_rotated_token_opens_a_new_session_and_the_old_one_drains_after_its_transfer() {
    let rig = Rig::start("rotate", &[("echo", echo_target())], "");
    let addr = rig.listener("echo");
    let first_exp = {
        let lines = rig.agent.established_lines();
        assert_eq!(lines.len(), 1, "one session before the rotation");
        token_exp(&lines[0]).expect("session established carries token_exp")
    };

    // A transfer in two halves; the token is rotated between them, and the second half is
    // only sent once the new session is up, so the stream spans the whole rotation.
    let data = payload(7, 4 << 20);
    let (first, second) = data.split_at(data.len() / 2);
    let mut c = client(addr);
    let mut back = vec![0u8; data.len()];
    // Distinct from the first token's expiry, so the hub's WELCOME tells which token it
    // authenticated.
    let new_exp = now_unix() + 7200;
    std::thread::scope(|scope| {
        let mut reader = c.try_clone().unwrap();
        let back = &mut back;
        let read = scope.spawn(move || reader.read_exact(back));
        c.write_all(first).unwrap();
        let to_client = r#"nowconnect_bytes_total{connector="echo",direction="to_client"}"#;
        assert!(
            poll_until(WAIT, || rig
                .hub
                .metric(to_client)
                .is_some_and(|n| n >= first.len() as f64)),
            "the first half never came back"
        );

        write_atomically(
            &rig.token_file,
            rig.key
                .token_expiring(AGENT_ID, "jti-rotated", new_exp)
                .as_bytes(),
        );
        let renewed = rig.agent.proc.wait_log(0, WAIT, |l| {
            log_message(l) == Some("session established") && token_exp(l) == Some(new_exp)
        });
        assert!(
            renewed.is_some(),
            "no session was established with the rotated token (exp {new_exp})"
        );
        rig.hub.wait_sessions(AGENT_ID, 2);
        assert_eq!(
            rig.hub.count_session_ends(),
            0,
            "the old session still carries the running stream"
        );

        c.write_all(second).unwrap();
        read.join()
            .unwrap()
            .expect("the running transfer completes");
    });
    assert_eq!(sha256(&back), sha256(&data), "the transfer is intact");
    drop(c);

    // Once its stream ended, the old session closes normally, and only the new one is left.
    let ended = rig
        .hub
        .proc
        .wait_log(0, WAIT, |l| log_message(l) == Some("agent session ended"));
    let (_, ended) = ended.expect("the old session ended after its stream did");
    assert_eq!(
        log_field(&ended, "code").and_then(Value::as_u64),
        Some(1000),
        "the old session was drained, not failed: {ended}"
    );
    rig.hub.wait_sessions(AGENT_ID, 1);
    assert!(
        rig.agent
            .proc
            .wait_log(0, WAIT, |l| log_message(l) == Some("session ended")
                && log_field(l, "reason").and_then(Value::as_str)
                    == Some("drained"))
            .is_some(),
        "the agent logged the drained session"
    );
    let sessions: Vec<Option<u64>> = rig
        .agent
        .established_lines()
        .iter()
        .map(token_exp)
        .collect();
    assert_eq!(
        sessions,
        [Some(first_exp), Some(new_exp)],
        "exactly one new session, authenticated by the rotated token"
    );
    retry(WAIT, || echo_roundtrip(addr, b"after the rotation"))
        .expect("a client gets through the new session");
    assert_eq!(
        rig.agent.sessions_established(),
        2,
        "nothing else reconnected"
    );
}

#[test]
fn rewriting_the_same_token_changes_nothing() {
    let rig = Rig::start("rotate-same", &[("echo", echo_target())], "");
    let token = std::fs::read(&rig.token_file).unwrap();
    write_atomically(&rig.token_file, &token);
    // The agent polls every 2 s: give it several polls.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(rig.agent.sessions_established(), 1);
    assert_eq!(rig.hub.count_session_ends(), 0);
    echo_roundtrip(rig.listener("echo"), b"still the first session").unwrap();
}
