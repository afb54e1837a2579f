//! Property tests: random splits, random read and write sizes, random FIN/RST orderings.
//!
//! Whatever the order of operations, every byte sent on a stream arrives exactly once and in
//! order, no receiver ever holds more than one window of a stream's bytes, and honest peers
//! never trip a protocol violation.

mod common;

use std::collections::HashMap;

use common::{Ev, Pair, client, name};
use nowconnect_core::frame::{self, Frame, FrameDecoder, RstCode, RstReason, StreamId};
use nowconnect_core::session::{Origin, SessionConfig};
use proptest::prelude::*;

/// A frame to encode, for the split property.
#[derive(Clone, Debug)]
enum Spec {
    Open(u32, u8),
    OpenOk(u32),
    Data(u32, Vec<u8>),
    Fin(u32),
    Rst(u32, u8, String),
    Window(u32, u32),
}

fn spec() -> impl Strategy<Value = Spec> {
    let id = 1u32..1000;
    prop_oneof![
        (id.clone(), 0u8..3).prop_map(|(i, c)| Spec::Open(i, c)),
        id.clone().prop_map(Spec::OpenOk),
        (id.clone(), proptest::collection::vec(any::<u8>(), 0..600))
            .prop_map(|(i, d)| Spec::Data(i, d)),
        id.clone().prop_map(Spec::Fin),
        (id.clone(), 1u8..=9, "[a-z é]{0,40}").prop_map(|(i, c, r)| Spec::Rst(i, c, r)),
        (id, 1u32..u32::MAX).prop_map(|(i, w)| Spec::Window(i, w)),
    ]
}

/// A decoded frame with DATA payloads owned, for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Open(u32, String),
    OpenOk(u32),
    Data(u32, Vec<u8>),
    Fin(u32),
    Rst(u32, RstCode, RstReason),
    Window(u32, u32),
}

fn own(f: Frame<'_>) -> Owned {
    match f {
        Frame::Open {
            stream, connector, ..
        } => Owned::Open(stream.0, connector.to_string()),
        Frame::OpenOk { stream } => Owned::OpenOk(stream.0),
        Frame::Data { stream, payload } => Owned::Data(stream.0, payload.to_vec()),
        Frame::Fin { stream } => Owned::Fin(stream.0),
        Frame::Rst {
            stream,
            code,
            reason,
        } => Owned::Rst(stream.0, code, reason),
        Frame::Window { stream, increment } => Owned::Window(stream.0, increment),
    }
}

/// Joins consecutive DATA pieces of one stream and drops empty ones: the decoder may split a
/// frame's payload wherever the input was split.
fn normalise(frames: Vec<Owned>) -> Vec<Owned> {
    let mut out: Vec<Owned> = Vec::new();
    for f in frames {
        match (out.last_mut(), f) {
            (_, Owned::Data(_, d)) if d.is_empty() => {}
            (Some(Owned::Data(a, acc)), Owned::Data(b, d)) if *a == b => acc.extend_from_slice(&d),
            (_, f) => out.push(f),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_survive_any_split(specs in proptest::collection::vec(spec(), 1..30), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40)) {
        let connectors = ["ldap", "pg.main", "x-1"];
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for s in &specs {
            match s {
                Spec::Open(i, c) => {
                    frame::encode_open(&mut wire, StreamId(*i), &name(connectors[*c as usize]), client());
                    expected.push(Owned::Open(*i, connectors[*c as usize].into()));
                }
                Spec::OpenOk(i) => {
                    frame::encode_open_ok(&mut wire, StreamId(*i));
                    expected.push(Owned::OpenOk(*i));
                }
                Spec::Data(i, d) => {
                    frame::encode_data(&mut wire, StreamId(*i), d);
                    expected.push(Owned::Data(*i, d.clone()));
                }
                Spec::Fin(i) => {
                    frame::encode_fin(&mut wire, StreamId(*i));
                    expected.push(Owned::Fin(*i));
                }
                Spec::Rst(i, c, r) => {
                    let code = RstCode::from_u8(*c).unwrap();
                    frame::encode_rst(&mut wire, StreamId(*i), code, r);
                    expected.push(Owned::Rst(*i, code, RstReason::new(r)));
                }
                Spec::Window(i, w) => {
                    frame::encode_window(&mut wire, StreamId(*i), *w);
                    expected.push(Owned::Window(*i, *w));
                }
            }
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut dec = FrameDecoder::new(600);
        let mut got = Vec::new();
        for w in points.windows(2) {
            let mut chunk = &wire[w[0]..w[1]];
            while !chunk.is_empty() {
                let (n, f) = dec.decode(chunk).unwrap();
                prop_assert!(n > 0);
                if let Some(f) = f {
                    got.push(own(f));
                }
                chunk = &chunk[n..];
            }
        }
        prop_assert!(dec.is_at_boundary());
        prop_assert_eq!(normalise(got), normalise(expected));
    }
}

/// What a test does next on the simulated pair.
#[derive(Clone, Copy, Debug)]
enum Op {
    Send {
        hub: bool,
        stream: usize,
        size: usize,
    },
    Consume {
        hub: bool,
        stream: usize,
        size: usize,
    },
    Deliver {
        to_agent: bool,
    },
    Finish {
        hub: bool,
        stream: usize,
    },
    Reset {
        hub: bool,
        stream: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<bool>(), 0usize..4, 1usize..700).prop_map(|(hub, stream, size)| Op::Send { hub, stream, size }),
        8 => (any::<bool>(), 0usize..4, 1usize..700).prop_map(|(hub, stream, size)| Op::Consume { hub, stream, size }),
        8 => any::<bool>().prop_map(|to_agent| Op::Deliver { to_agent }),
        2 => (any::<bool>(), 0usize..4).prop_map(|(hub, stream)| Op::Finish { hub, stream }),
        1 => (any::<bool>(), 0usize..4).prop_map(|(hub, stream)| Op::Reset { hub, stream }),
    ]
}

/// The byte at `offset` of what one side sends on one stream.
fn pattern(stream: StreamId, from_hub: bool, offset: usize) -> u8 {
    (offset as u32)
        .wrapping_mul(31)
        .wrapping_add(stream.0 * 7 + from_hub as u32) as u8
}

/// One direction of one stream as the test sees it.
#[derive(Default, Debug)]
struct Flow {
    /// Bytes the sender has to send in all.
    total: usize,
    /// Bytes handed to the sender's session.
    sent: usize,
    /// Bytes the receiver's session delivered.
    delivered: usize,
    /// Bytes the receiver wrote to its socket.
    consumed: usize,
    /// The sender queued FIN.
    fin_sent: bool,
    /// The receiver saw FIN.
    fin_seen: bool,
}

#[derive(Debug)]
struct Model {
    ids: Vec<StreamId>,
    /// Per stream: [hub → agent, agent → hub].
    flows: HashMap<StreamId, [Flow; 2]>,
    reset: HashMap<StreamId, (bool, bool)>,
    window: usize,
}

impl Model {
    fn on_events(&mut self, at_hub: bool, events: Vec<Ev>) -> Result<(), TestCaseError> {
        for e in events {
            match e {
                Ev::Data(id, data) => {
                    let flow = &mut self.flows.get_mut(&id).unwrap()[at_hub as usize];
                    for (k, b) in data.iter().enumerate() {
                        prop_assert_eq!(
                            *b,
                            pattern(id, !at_hub, flow.delivered + k),
                            "byte {} of stream {}",
                            flow.delivered + k,
                            id
                        );
                    }
                    flow.delivered += data.len();
                    prop_assert!(flow.delivered <= flow.sent, "delivered more than was sent");
                    prop_assert!(
                        flow.delivered - flow.consumed <= self.window,
                        "receiver holds more than a window"
                    );
                    prop_assert!(!flow.fin_seen);
                }
                Ev::Finished(id, _) => {
                    let flow = &mut self.flows.get_mut(&id).unwrap()[at_hub as usize];
                    prop_assert_eq!(flow.delivered, flow.total, "FIN before every byte arrived");
                    flow.fin_seen = true;
                }
                Ev::Reset(id, code, origin) => {
                    prop_assert_eq!(origin, Origin::Peer, "an honest peer caused a local reset");
                    prop_assert_eq!(code, RstCode::PeerReset);
                    let r = self.reset.entry(id).or_default();
                    if at_hub { r.0 = true } else { r.1 = true }
                }
                Ev::Writable(..) => {}
                other => prop_assert!(false, "unexpected event {:?}", other),
            }
        }
        Ok(())
    }
}

fn run_ops(p: &mut Pair, m: &mut Model, ops: &[Op]) -> Result<(), TestCaseError> {
    for &op in ops {
        match op {
            Op::Send { hub, stream, size } => {
                let id = m.ids[stream];
                let flow = &mut m.flows.get_mut(&id).unwrap()[!hub as usize];
                let session = if hub {
                    &mut p.hub.session
                } else {
                    &mut p.agent.session
                };
                let credit = session.send_credit(id) as usize;
                prop_assert!(credit <= m.window);
                let n = size.min(credit).min(400).min(flow.total - flow.sent);
                if n > 0 && !flow.fin_sent {
                    let bytes: Vec<u8> = (flow.sent..flow.sent + n)
                        .map(|k| pattern(id, hub, k))
                        .collect();
                    session.send_data(p.now, id, &bytes).unwrap();
                    flow.sent += n;
                }
            }
            Op::Consume { hub, stream, size } => {
                let id = m.ids[stream];
                let flow = &mut m.flows.get_mut(&id).unwrap()[hub as usize];
                let n = size.min(flow.delivered - flow.consumed);
                flow.consumed += n;
                let session = if hub {
                    &mut p.hub.session
                } else {
                    &mut p.agent.session
                };
                session.consumed(p.now, id, n);
            }
            Op::Deliver { to_agent } => {
                let events = if to_agent {
                    p.deliver_to_agent()
                } else {
                    p.deliver_to_hub()
                };
                m.on_events(!to_agent, events)?;
            }
            Op::Finish { hub, stream } => {
                let id = m.ids[stream];
                let flow = &mut m.flows.get_mut(&id).unwrap()[!hub as usize];
                let session = if hub {
                    &mut p.hub.session
                } else {
                    &mut p.agent.session
                };
                if flow.sent == flow.total && !flow.fin_sent && session.stream(id).is_some() {
                    session.finish(id).unwrap();
                    flow.fin_sent = true;
                }
            }
            Op::Reset { hub, stream } => {
                let id = m.ids[stream];
                let session = if hub {
                    &mut p.hub.session
                } else {
                    &mut p.agent.session
                };
                if session.reset(id, RstCode::PeerReset, "test") {
                    let r = m.reset.entry(id).or_default();
                    if hub { r.0 = true } else { r.1 = true }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn streams_deliver_every_byte_once_in_order(
        totals in proptest::collection::vec((0usize..5000, 0usize..5000), 4),
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let config = SessionConfig { window: 1024, max_frame: 400, idle_timeout_ms: 60_000, max_streams: 16 };
        let mut p = Pair::new(config);
        let mut m = Model { ids: Vec::new(), flows: HashMap::new(), reset: HashMap::new(), window: 1024 };
        for (i, (down, up)) in totals.iter().enumerate() {
            let id = p.open_established(if i % 2 == 0 { "a" } else { "b" });
            m.ids.push(id);
            m.flows.insert(id, [Flow { total: *down, ..Flow::default() }, Flow { total: *up, ..Flow::default() }]);
        }
        run_ops(&mut p, &mut m, &ops)?;

        // Then let everything finish: both sides keep writing, reading and finishing.
        for _ in 0..200 {
            let mut drain = Vec::new();
            for s in 0..4 {
                for hub in [true, false] {
                    drain.push(Op::Consume { hub, stream: s, size: usize::MAX });
                    drain.push(Op::Send { hub, stream: s, size: 400 });
                    drain.push(Op::Finish { hub, stream: s });
                }
            }
            drain.push(Op::Deliver { to_agent: true });
            drain.push(Op::Deliver { to_agent: false });
            run_ops(&mut p, &mut m, &drain)?;
            if p.hub.session.stream_count() == 0 && p.agent.session.stream_count() == 0 {
                break;
            }
        }
        prop_assert_eq!(p.hub.session.stream_count(), 0);
        prop_assert_eq!(p.agent.session.stream_count(), 0);
        prop_assert_eq!(p.hub.session.stats().violations + p.agent.session.stats().violations, 0);
        for id in &m.ids {
            let flows = &m.flows[id];
            if m.reset.contains_key(id) {
                // A reset stream delivered a prefix, never more.
                prop_assert!(flows.iter().all(|f| f.delivered <= f.sent));
            } else {
                for f in flows {
                    prop_assert_eq!(f.delivered, f.total);
                    prop_assert!(f.fin_seen);
                }
            }
        }
    }
}
