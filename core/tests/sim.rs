//! The protocol's documented semantics, checked on a simulated hub/agent pair.

mod common;

use common::{Ev, Pair, client, name};
use nowconnect_core::frame::{self, RstCode, StreamId};
use nowconnect_core::session::{
    MAX_TRANSMIT_BACKLOG, OpenError, Origin, SessionConfig, SessionError,
};
use nowconnect_core::stream::SendError;
use nowconnect_core::time::Millis;

#[test]
fn open_is_confirmed_by_open_ok() {
    let mut p = Pair::small();
    let id = p.hub.session.open(p.now, &name("ldap"), client()).unwrap();
    assert_eq!(id, StreamId(1));
    assert_eq!(p.deliver_to_agent(), vec![Ev::Opened(id, "ldap".into())]);
    p.agent.session.accept(id).unwrap();
    assert_eq!(p.deliver_to_hub(), vec![Ev::OpenOk(id)]);
    assert_eq!(p.hub.session.stream_count(), 1);
    assert_eq!(p.agent.session.stream_count(), 1);
    // Ids increase and are never reused.
    let second = p.hub.session.open(p.now, &name("ldap"), client()).unwrap();
    assert_eq!(second, StreamId(2));
}

#[test]
fn early_data_follows_open_before_open_ok() {
    let mut p = Pair::small();
    let id = p.hub.session.open(p.now, &name("ldap"), client()).unwrap();
    // A client-first protocol (an LDAP bind) must not wait for the round trip.
    p.hub.session.send_data(p.now, id, b"bind request").unwrap();
    p.hub.session.finish(id).unwrap();
    assert_eq!(
        p.deliver_to_agent(),
        vec![
            Ev::Opened(id, "ldap".into()),
            Ev::Data(id, b"bind request".to_vec()),
            Ev::Finished(id, false),
        ]
    );
    // The agent may not answer before its dial completed.
    assert_eq!(p.agent.session.send_credit(id), 0);
    assert_eq!(
        p.agent.session.send_data(p.now, id, b"x"),
        Err(SendError::NotEstablished)
    );
    p.agent.session.accept(id).unwrap();
    p.agent
        .session
        .send_data(p.now, id, b"bind response")
        .unwrap();
    p.agent.session.finish(id).unwrap();
    assert_eq!(
        p.deliver_to_hub(),
        vec![
            Ev::OpenOk(id),
            Ev::Data(id, b"bind response".to_vec()),
            Ev::Finished(id, true),
        ]
    );
    assert_eq!(p.hub.session.stream_count(), 0);
    assert_eq!(p.agent.session.stream_count(), 0);
}

#[test]
fn data_flows_both_ways_and_credit_returns() {
    let mut p = Pair::small();
    let id = p.open_established("pg");
    p.hub.session.send_data(p.now, id, &[1; 300]).unwrap();
    p.agent.session.send_data(p.now, id, &[2; 200]).unwrap();
    assert_eq!(p.deliver_to_agent(), vec![Ev::Data(id, vec![1; 300])]);
    assert_eq!(p.deliver_to_hub(), vec![Ev::Data(id, vec![2; 200])]);
    assert_eq!(p.hub.session.send_credit(id), 700);
    // Credit comes back only after the bytes reached the socket, batched at a quarter window.
    p.agent.session.consumed(p.now, id, 300);
    assert_eq!(p.deliver_to_hub(), vec![Ev::Writable(id, 1000)]);
    p.hub.session.consumed(p.now, id, 200);
    assert_eq!(
        p.deliver_to_agent(),
        vec![],
        "200 bytes are below a quarter window"
    );
    p.agent.session.send_data(p.now, id, &[3; 100]).unwrap();
    assert_eq!(p.deliver_to_hub(), vec![Ev::Data(id, vec![3; 100])]);
    p.hub.session.consumed(p.now, id, 100);
    assert_eq!(p.deliver_to_agent(), vec![Ev::Writable(id, 1000)]);
}

#[test]
fn frames_larger_than_max_frame_are_refused_locally() {
    let mut p = Pair::small();
    let id = p.open_established("pg");
    assert_eq!(
        p.hub.session.send_data(p.now, id, &[0; 401]),
        Err(SendError::OverCredit {
            len: 401,
            allowed: 400
        })
    );
}

#[test]
fn half_close_from_the_hub_side() {
    let mut p = Pair::small();
    let id = p.open_established("ldap");
    p.hub.session.finish(id).unwrap();
    assert_eq!(p.deliver_to_agent(), vec![Ev::Finished(id, false)]);
    assert_eq!(
        p.hub.session.send_data(p.now, id, b"late"),
        Err(SendError::Finished)
    );
    // The other direction keeps flowing.
    p.agent
        .session
        .send_data(p.now, id, b"still talking")
        .unwrap();
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Data(id, b"still talking".to_vec())]
    );
    p.agent.session.finish(id).unwrap();
    assert_eq!(p.agent.session.stream_count(), 0);
    assert_eq!(p.deliver_to_hub(), vec![Ev::Finished(id, true)]);
    assert_eq!(p.hub.session.stream_count(), 0);
}

#[test]
fn half_close_from_the_agent_side() {
    let mut p = Pair::small();
    let id = p.open_established("ldap");
    p.agent.session.send_data(p.now, id, b"banner").unwrap();
    p.agent.session.finish(id).unwrap();
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Data(id, b"banner".to_vec()), Ev::Finished(id, false)]
    );
    p.hub.session.send_data(p.now, id, b"reply").unwrap();
    p.hub.session.finish(id).unwrap();
    assert_eq!(
        p.deliver_to_agent(),
        vec![Ev::Data(id, b"reply".to_vec()), Ev::Finished(id, true)]
    );
    assert_eq!(p.hub.session.stream_count(), 0);
    assert_eq!(p.agent.session.stream_count(), 0);
}

#[test]
fn reset_from_the_hub() {
    let mut p = Pair::small();
    let id = p.open_established("ldap");
    assert!(p.hub.session.reset(id, RstCode::PeerReset, "client reset"));
    assert!(!p.hub.session.reset(id, RstCode::PeerReset, "twice"));
    // The agent's DATA crossing the RST in flight is ignored by the hub.
    p.agent.session.send_data(p.now, id, b"crossing").unwrap();
    assert_eq!(p.deliver_to_hub(), vec![]);
    assert_eq!(p.hub.session.stats().stale_frames, 1);
    assert_eq!(
        p.deliver_to_agent(),
        vec![Ev::Reset(id, RstCode::PeerReset, Origin::Peer)]
    );
    assert_eq!(p.agent.session.stream_count(), 0);
}

#[test]
fn reset_from_the_agent_when_the_target_refuses() {
    let mut p = Pair::small();
    let id = p.hub.session.open(p.now, &name("ldap"), client()).unwrap();
    p.hub.session.send_data(p.now, id, b"early").unwrap();
    assert_eq!(p.deliver_to_agent().len(), 2);
    assert!(
        p.agent
            .session
            .reset(id, RstCode::Refused, "connection refused")
    );
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(id, RstCode::Refused, Origin::Peer)]
    );
    assert_eq!(p.hub.session.stream_count(), 0);
}

#[test]
fn window_stall_and_resume() {
    let mut p = Pair::small();
    let id = p.open_established("bulk");
    for _ in 0..2 {
        p.hub.session.send_data(p.now, id, &[7; 400]).unwrap();
    }
    p.hub.session.send_data(p.now, id, &[7; 200]).unwrap();
    assert_eq!(p.hub.session.send_credit(id), 0);
    assert_eq!(
        p.hub.session.send_data(p.now, id, b"x"),
        Err(SendError::OverCredit { len: 1, allowed: 0 })
    );
    let delivered: usize = p
        .deliver_to_agent()
        .iter()
        .map(|e| match e {
            Ev::Data(_, d) => d.len(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(delivered, 1000);
    // The agent's socket is slow: only 100 bytes written. No credit yet (below a quarter window).
    p.agent.session.consumed(p.now, id, 100);
    assert_eq!(p.deliver_to_hub(), vec![]);
    p.agent.session.consumed(p.now, id, 200);
    assert_eq!(p.deliver_to_hub(), vec![Ev::Writable(id, 300)]);
    p.hub.session.send_data(p.now, id, &[8; 300]).unwrap();
    assert_eq!(p.deliver_to_agent(), vec![Ev::Data(id, vec![8; 300])]);
}

#[test]
fn a_stalled_stream_does_not_stall_another() {
    let mut p = Pair::small();
    let stalled = p.open_established("a");
    let moving = p.open_established("b");
    p.hub.session.send_data(p.now, stalled, &[0; 400]).unwrap();
    p.hub.session.send_data(p.now, stalled, &[0; 400]).unwrap();
    p.hub.session.send_data(p.now, stalled, &[0; 200]).unwrap();
    p.deliver_to_agent();
    for _ in 0..10 {
        p.hub.session.send_data(p.now, moving, &[1; 400]).unwrap();
        assert_eq!(p.deliver_to_agent(), vec![Ev::Data(moving, vec![1; 400])]);
        p.agent.session.consumed(p.now, moving, 400);
        p.deliver_to_hub();
    }
    assert_eq!(p.hub.session.send_credit(stalled), 0);
}

#[test]
fn window_overrun_is_reset_with_code_5_and_the_session_survives() {
    let mut p = Pair::small();
    let victim = p.open_established("a");
    let bystander = p.open_established("b");
    // A misbehaving hub ignores its credit: 1001 bytes against a 1000-byte window.
    let mut raw = Vec::new();
    frame::encode_data(&mut raw, victim, &[0; 400]);
    frame::encode_data(&mut raw, victim, &[0; 400]);
    frame::encode_data(&mut raw, victim, &[0; 201]);
    let events = p.inject(true, &raw).unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(
        events[2],
        Ev::Reset(victim, RstCode::ProtocolViolation, Origin::Local)
    );
    assert_eq!(p.agent.session.stats().violations, 1);
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(victim, RstCode::ProtocolViolation, Origin::Peer)]
    );
    // The other stream and the session carry on.
    p.hub.session.send_data(p.now, bystander, b"fine").unwrap();
    assert_eq!(
        p.deliver_to_agent(),
        vec![Ev::Data(bystander, b"fine".to_vec())]
    );
}

#[test]
fn credit_beyond_the_window_is_a_violation() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_window(&mut raw, id, 1);
    let events = p.inject(false, &raw).unwrap();
    assert_eq!(
        events,
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)]
    );
    assert_eq!(
        p.deliver_to_agent(),
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Peer)]
    );
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_window(&mut raw, id, 0);
    let events = p.inject(false, &raw).unwrap();
    assert_eq!(
        events,
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)]
    );
}

#[test]
fn agent_data_before_open_ok_is_a_violation() {
    let mut p = Pair::small();
    let id = p.hub.session.open(p.now, &name("a"), client()).unwrap();
    p.deliver_to_agent();
    let mut raw = Vec::new();
    frame::encode_data(&mut raw, id, b"too soon");
    let events = p.inject(false, &raw).unwrap();
    assert_eq!(
        events,
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)]
    );
}

#[test]
fn data_after_fin_and_double_fin_are_violations() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_fin(&mut raw, id);
    frame::encode_data(&mut raw, id, b"after");
    let events = p.inject(true, &raw).unwrap();
    assert_eq!(
        events,
        vec![
            Ev::Finished(id, false),
            Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)
        ]
    );
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Peer)]
    );
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_fin(&mut raw, id);
    frame::encode_fin(&mut raw, id);
    let events = p.inject(true, &raw).unwrap();
    assert_eq!(
        events[1],
        Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)
    );
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Peer)]
    );
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_open_ok(&mut raw, id);
    let events = p.inject(false, &raw).unwrap();
    assert_eq!(
        events,
        vec![Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)]
    );
}

#[test]
fn idle_streams_are_swept_at_the_exact_deadline() {
    let mut p = Pair::small(); // idle timeout 10 s
    let quiet = p.open_established("a");
    let busy = p.open_established("b");
    assert_eq!(p.hub.session.next_idle_deadline(), Some(Millis(10_000)));
    p.advance(6_000);
    p.hub.session.send_data(p.now, busy, b"tick").unwrap();
    p.deliver_to_agent();
    let mut expired = Vec::new();
    p.now = Millis(9_999);
    p.hub.session.sweep_idle(p.now, &mut expired);
    assert!(expired.is_empty());
    p.now = Millis(10_000);
    p.hub.session.sweep_idle(p.now, &mut expired);
    assert_eq!(expired, vec![quiet]);
    assert_eq!(p.hub.session.stats().idle_resets, 1);
    assert_eq!(
        p.deliver_to_agent(),
        vec![Ev::Reset(quiet, RstCode::Idle, Origin::Peer)]
    );
    // The busy stream was re-armed at its last activity plus the timeout.
    assert_eq!(p.hub.session.next_idle_deadline(), Some(Millis(16_000)));
    expired.clear();
    p.now = Millis(15_999);
    p.hub.session.sweep_idle(p.now, &mut expired);
    assert!(expired.is_empty());
    p.now = Millis(16_000);
    p.hub.session.sweep_idle(p.now, &mut expired);
    assert_eq!(expired, vec![busy]);
}

#[test]
fn the_agent_sweeps_too() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    p.now = Millis(10_000);
    let mut expired = Vec::new();
    p.agent.session.sweep_idle(p.now, &mut expired);
    assert_eq!(expired, vec![id]);
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(id, RstCode::Idle, Origin::Peer)]
    );
}

#[test]
fn goaway_refuses_new_streams_and_lets_old_ones_finish() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    p.hub.session.go_away();
    assert_eq!(
        p.hub.session.open(p.now, &name("a"), client()),
        Err(OpenError::GoingAway)
    );
    assert!(!p.hub.session.is_drained());
    p.hub.session.send_data(p.now, id, b"last words").unwrap();
    p.hub.session.finish(id).unwrap();
    p.deliver_to_agent();
    p.agent.session.finish(id).unwrap();
    p.deliver_to_hub();
    assert!(p.hub.session.is_drained());
}

#[test]
fn frames_in_the_wrong_direction_end_the_session() {
    let mut p = Pair::small();
    let mut raw = Vec::new();
    frame::encode_open(&mut raw, StreamId(1), &name("a"), client());
    assert!(matches!(
        p.inject(false, &raw),
        Err(SessionError::WrongDirection { frame: "OPEN", .. })
    ));
    let mut p = Pair::small();
    let id = p.hub.session.open(p.now, &name("a"), client()).unwrap();
    p.deliver_to_agent();
    let mut raw = Vec::new();
    frame::encode_open_ok(&mut raw, id);
    assert!(matches!(
        p.inject(true, &raw),
        Err(SessionError::WrongDirection {
            frame: "OPEN_OK",
            ..
        })
    ));
}

#[test]
fn reused_and_unknown_stream_ids_end_the_session() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_open(&mut raw, id, &name("a"), client());
    assert_eq!(
        p.inject(true, &raw),
        Err(SessionError::StreamIdReuse { id, highest: 1 })
    );

    let mut p = Pair::small();
    let mut raw = Vec::new();
    frame::encode_data(&mut raw, StreamId(5), b"?");
    assert_eq!(
        p.inject(true, &raw),
        Err(SessionError::UnknownStream(StreamId(5)))
    );
    let mut p = Pair::small();
    assert_eq!(
        p.inject(false, &raw),
        Err(SessionError::UnknownStream(StreamId(5)))
    );
}

#[test]
fn ids_may_skip_but_never_go_back() {
    let mut p = Pair::small();
    let mut raw = Vec::new();
    frame::encode_open(&mut raw, StreamId(10), &name("a"), client());
    frame::encode_open(&mut raw, StreamId(12), &name("a"), client());
    assert_eq!(p.inject(true, &raw).unwrap().len(), 2);
    let mut raw = Vec::new();
    frame::encode_open(&mut raw, StreamId(11), &name("a"), client());
    assert_eq!(
        p.inject(true, &raw),
        Err(SessionError::StreamIdReuse {
            id: StreamId(11),
            highest: 12
        })
    );
}

#[test]
fn a_full_agent_session_refuses_with_overload() {
    let mut p = Pair::new(SessionConfig {
        max_streams: 2,
        ..SessionConfig::default()
    });
    p.open_established("a");
    p.open_established("a");
    // The hub's own limit would stop a third; a hub configured with a higher limit is refused by the agent.
    let mut raw = Vec::new();
    frame::encode_open(&mut raw, StreamId(3), &name("a"), client());
    assert_eq!(p.inject(true, &raw).unwrap(), vec![]);
    assert_eq!(p.agent.session.stats().overload_refusals, 1);
    let mut dec = frame::FrameDecoder::new(400);
    let wire = p.agent.session.transmit();
    let (n, _) = dec.decode(wire).unwrap();
    let (_, rst) = dec.decode(&wire[n..]).unwrap();
    assert!(matches!(
        rst,
        Some(frame::Frame::Rst {
            stream: StreamId(3),
            code: RstCode::Overload,
            ..
        })
    ));
    p.agent.session.clear_transmit();
    assert_eq!(
        p.hub.session.open(p.now, &name("a"), client()),
        Err(OpenError::TooManyStreams)
    );
}

#[test]
fn ending_a_session_hands_back_every_stream() {
    let mut p = Pair::small();
    let a = p.open_established("a");
    let b = p.open_established("b");
    let mut ids = Vec::new();
    p.hub.session.end(&mut ids);
    ids.sort();
    assert_eq!(ids, vec![a, b]);
    assert_eq!(p.hub.session.stream_count(), 0);
    assert_eq!(
        p.hub.session.open(p.now, &name("a"), client()),
        Err(OpenError::GoingAway)
    );
}

#[test]
fn churn_does_not_grow_the_deadline_queue() {
    let mut p = Pair::small();
    for _ in 0..10_000 {
        let id = p.hub.session.open(p.now, &name("a"), client()).unwrap();
        p.hub.session.reset(id, RstCode::PeerReset, "");
        p.hub.session.clear_transmit();
    }
    assert!(p.hub.session.pending_deadlines() <= 2 * p.hub.session.stream_count() + 65);
}

#[test]
fn empty_data_obeys_the_stream_rules() {
    let mut p = Pair::small();
    let mut raw = Vec::new();
    frame::encode_data(&mut raw, StreamId(9), b"");
    assert_eq!(
        p.inject(true, &raw),
        Err(SessionError::UnknownStream(StreamId(9)))
    );

    let mut p = Pair::small();
    let id = p.open_established("a");
    let mut raw = Vec::new();
    frame::encode_data(&mut raw, id, b"");
    assert_eq!(
        p.inject(true, &raw).unwrap(),
        vec![],
        "empty DATA means nothing"
    );
    frame::encode_fin(&mut raw, id);
    frame::encode_data(&mut raw, id, b"");
    let events = p.inject(true, &raw).unwrap();
    assert_eq!(
        events,
        vec![
            Ev::Finished(id, false),
            Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local)
        ]
    );
}

#[test]
fn open_ok_to_the_agent_is_wrong_even_for_a_gone_stream() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    p.agent.session.reset(id, RstCode::PeerReset, "");
    let mut raw = Vec::new();
    frame::encode_open_ok(&mut raw, id);
    assert!(matches!(
        p.inject(true, &raw),
        Err(SessionError::WrongDirection {
            frame: "OPEN_OK",
            ..
        })
    ));
}

#[test]
fn a_peer_that_provokes_frames_it_never_reads_hits_the_backlog_bound() {
    let mut p = Pair::new(SessionConfig {
        max_streams: 1,
        ..SessionConfig::default()
    });
    // Every OPEN beyond the first is refused with an RST 9 that the flooding hub never reads.
    let mut raw = Vec::new();
    let mut result = Ok(Vec::new());
    for id in 1..=400_000u32 {
        raw.clear();
        frame::encode_open(&mut raw, StreamId(id), &name("a"), client());
        result = p.inject(true, &raw);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(SessionError::Backlog(_))),
        "{result:?}"
    );
    assert!(p.agent.session.transmit().len() <= MAX_TRANSMIT_BACKLOG + 64);
}

#[test]
fn our_own_data_within_the_windows_never_counts_as_backlog() {
    // Many streams, each sending a whole window, while the driver does not get to write:
    // far more than MAX_TRANSMIT_BACKLOG queued, and the session keeps taking input.
    let window = 1 << 20;
    let mut p = Pair::new(SessionConfig {
        window,
        max_frame: 1 << 20,
        max_streams: 64,
        ..SessionConfig::default()
    });
    let ids: Vec<StreamId> = (0..8).map(|_| p.open_established("bulk")).collect();
    let chunk = vec![9u8; 64 << 10];
    for id in &ids {
        for _ in 0..(window as usize / chunk.len()) {
            p.agent.session.send_data(p.now, *id, &chunk).unwrap();
        }
        p.agent
            .session
            .send_data_from(p.now, *id, |_, _| Ok::<_, ()>(0))
            .unwrap()
            .unwrap();
    }
    assert!(p.agent.session.transmit().len() > MAX_TRANSMIT_BACKLOG);
    // A frame from the hub still goes through.
    let mut raw = Vec::new();
    frame::encode_window(&mut raw, ids[0], 1);
    assert!(p.inject(true, &raw).is_ok());
}

#[test]
fn data_appended_in_place_is_a_normal_frame_within_credit() {
    let mut p = Pair::small();
    let id = p.open_established("pg");
    let credit = p.agent.session.send_credit(id) as usize;
    let offer = credit.min(p.agent.session.config().max_frame as usize);
    // The filler is offered the credit (capped at a frame) and writes straight into the
    // transmit buffer.
    let wrote = p
        .agent
        .session
        .send_data_from(p.now, id, |buf, room| {
            assert_eq!(room, offer);
            buf.extend_from_slice(&[5; 250]);
            Ok::<_, ()>(250)
        })
        .unwrap();
    assert_eq!(wrote, Ok(250));
    assert_eq!(p.deliver_to_hub(), vec![Ev::Data(id, vec![5; 250])]);
    assert_eq!(p.agent.session.send_credit(id) as usize, credit - 250);

    // Nothing appended, or the filler's error: nothing queued, the buffer as it was.
    let before = p.agent.session.transmit().len();
    let empty = p
        .agent
        .session
        .send_data_from(p.now, id, |_, _| Ok::<_, ()>(0));
    assert_eq!(empty, Ok(Ok(0)));
    let failed = p.agent.session.send_data_from(p.now, id, |buf, _| {
        buf.push(1);
        Err("read failed")
    });
    assert_eq!(failed, Ok(Err("read failed")));
    assert_eq!(p.agent.session.transmit().len(), before);

    // Appending more than offered is refused and undone.
    let greedy = p.agent.session.send_data_from(p.now, id, |buf, room| {
        buf.extend(std::iter::repeat_n(0u8, room + 1));
        Ok::<_, ()>(room + 1)
    });
    assert!(
        matches!(greedy, Err(SendError::OverCredit { .. })),
        "{greedy:?}"
    );
    assert_eq!(p.agent.session.transmit().len(), before);
    assert_eq!(p.agent.session.send_credit(id) as usize, credit - 250);

    // Unknown streams are refused before the filler runs.
    let unknown =
        p.agent
            .session
            .send_data_from(p.now, StreamId(99), |_, _| -> Result<usize, ()> {
                panic!("called")
            });
    assert_eq!(unknown, Err(SendError::UnknownStream));
}

#[test]
fn payload_moved_past_the_decoders_is_held_to_the_rules_of_data() {
    let mut p = Pair::small();
    let id = p.open_established("a");
    let other = p.open_established("b");
    // The hub sends 600 bytes, which the agent moves past its decoders (here: drops).
    p.hub.session.send_data(p.now, id, &[1; 400]).unwrap();
    p.hub.session.send_data(p.now, id, &[1; 200]).unwrap();
    p.hub.session.clear_transmit();
    // Within the credit: accepted without an event, and the credit is spent as by DATA.
    assert_eq!(p.agent.session.recv_moved(p.now, id, 600), Ok(None));
    assert_eq!(p.agent.session.stream(id).unwrap().recv_credit(), 400);
    // Handed on to the target: the credit goes back to the hub.
    p.agent.session.consumed(p.now, id, 600);
    assert_eq!(p.deliver_to_hub(), vec![Ev::Writable(id, 1000)]);
    // Past the credit: a violation, reset with code 5; the session carries on.
    let reset = p.agent.session.recv_moved(p.now, other, 1001).unwrap();
    assert_eq!(
        reset.map(Ev::from),
        Some(Ev::Reset(other, RstCode::ProtocolViolation, Origin::Local))
    );
    assert_eq!(p.agent.session.stats().violations, 1);
    assert_eq!(
        p.deliver_to_hub(),
        vec![Ev::Reset(other, RstCode::ProtocolViolation, Origin::Peer)]
    );
    // After the hub's FIN, like DATA after FIN.
    p.hub.session.finish(id).unwrap();
    assert_eq!(p.deliver_to_agent(), vec![Ev::Finished(id, false)]);
    assert_eq!(
        p.agent
            .session
            .recv_moved(p.now, id, 1)
            .unwrap()
            .map(Ev::from),
        Some(Ev::Reset(id, RstCode::ProtocolViolation, Origin::Local))
    );
    // A stream the session never knew is an error, as for a frame.
    assert_eq!(
        p.agent.session.recv_moved(p.now, StreamId(99), 1),
        Err(SessionError::UnknownStream(StreamId(99)))
    );
}
