//! A hub-side and an agent-side session wired back to back, with a clock the test steps by hand.
//!
//! Frames travel the way they do on a real session: the sender's transmit buffer becomes one
//! WebSocket binary message (masked from the agent, unmasked from the hub), and the receiver
//! runs it through the WebSocket decoder and the frame decoder before its session sees it.
#![allow(dead_code, unreachable_pub)]

use nowconnect_core::frame::{FrameDecoder, RstCode, StreamId};
use nowconnect_core::name::ConnectorName;
use nowconnect_core::session::{Event, Origin, Role, Session, SessionConfig, SessionError};
use nowconnect_core::time::Millis;
use nowconnect_core::ws;

/// An owned copy of a session event, so tests can collect and compare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Opened(StreamId, String),
    OpenOk(StreamId),
    Data(StreamId, Vec<u8>),
    Finished(StreamId, bool),
    Reset(StreamId, RstCode, Origin),
    Writable(StreamId, u32),
}

impl From<Event<'_>> for Ev {
    fn from(e: Event<'_>) -> Ev {
        match e {
            Event::Opened { id, connector, .. } => Ev::Opened(id, connector.to_string()),
            Event::OpenOk { id } => Ev::OpenOk(id),
            Event::Data { id, data } => Ev::Data(id, data.to_vec()),
            Event::Finished { id, closed } => Ev::Finished(id, closed),
            Event::Reset {
                id, code, origin, ..
            } => Ev::Reset(id, code, origin),
            Event::Writable { id, credit } => Ev::Writable(id, credit),
        }
    }
}

/// One end: its session and its receive path.
pub struct End {
    pub session: Session,
    ws: ws::Decoder,
    frames: FrameDecoder,
}

pub struct Pair {
    pub now: Millis,
    pub hub: End,
    pub agent: End,
    mask_seed: u32,
}

pub fn name(s: &str) -> ConnectorName {
    ConnectorName::from_str(s).unwrap()
}

pub fn client() -> std::net::SocketAddr {
    "192.0.2.10:40000".parse().unwrap()
}

impl Pair {
    pub fn new(config: SessionConfig) -> Pair {
        let limits = || ws::Limits {
            max_message: 16 << 20,
            max_text: 64 << 10,
        };
        Pair {
            now: Millis::ZERO,
            hub: End {
                session: Session::new(Role::Hub, config),
                ws: ws::Decoder::new(ws::Role::Server, limits()),
                frames: FrameDecoder::new(config.max_frame),
            },
            agent: End {
                session: Session::new(Role::Agent, config),
                ws: ws::Decoder::new(ws::Role::Client, limits()),
                frames: FrameDecoder::new(config.max_frame),
            },
            mask_seed: 0x9e37_79b9,
        }
    }

    pub fn small() -> Pair {
        Pair::new(SessionConfig {
            window: 1000,
            max_frame: 400,
            idle_timeout_ms: 10_000,
            max_streams: 64,
        })
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now + ms;
    }

    /// Wraps what `from` has queued in a WebSocket binary message.
    fn take_message(&mut self, hub_sends: bool) -> Vec<u8> {
        let end = if hub_sends {
            &mut self.hub
        } else {
            &mut self.agent
        };
        let payload = end.session.transmit().to_vec();
        end.session.clear_transmit();
        if payload.is_empty() {
            return Vec::new();
        }
        let mask = if hub_sends {
            None
        } else {
            self.mask_seed = self
                .mask_seed
                .wrapping_mul(1_664_525)
                .wrapping_add(1_013_904_223);
            Some(self.mask_seed.to_be_bytes())
        };
        let mut wire = Vec::new();
        ws::encode_frame(&mut wire, true, ws::Opcode::Binary, &payload, mask);
        wire
    }

    /// Delivers raw frame bytes (not necessarily produced by a session) to one end, as one
    /// WebSocket message. Returns the receiver's events, or the session error.
    pub fn inject(&mut self, to_agent: bool, frames: &[u8]) -> Result<Vec<Ev>, SessionError> {
        let mut wire = Vec::new();
        let mask = if to_agent { None } else { Some([1, 2, 3, 4]) };
        ws::encode_frame(&mut wire, true, ws::Opcode::Binary, frames, mask);
        self.receive(to_agent, &mut wire)
    }

    fn receive(&mut self, to_agent: bool, wire: &mut [u8]) -> Result<Vec<Ev>, SessionError> {
        let now = self.now;
        let end = if to_agent {
            &mut self.agent
        } else {
            &mut self.hub
        };
        let mut events = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let (n, event) = end.ws.decode(&mut wire[pos..]).expect("websocket layer");
            match event {
                Some(ws::Event::Binary { data, last }) => {
                    let mut input: &[u8] = data;
                    while !input.is_empty() {
                        let (used, frame) = end.frames.decode(input)?;
                        input = &input[used..];
                        if let Some(frame) = frame
                            && let Some(ev) = end.session.recv(now, frame)?
                        {
                            events.push(Ev::from(ev));
                        }
                    }
                    if last {
                        end.frames.end_of_message()?;
                    }
                }
                Some(other) => panic!("unexpected websocket event {other:?}"),
                None => {}
            }
            pos += n;
        }
        Ok(events)
    }

    /// Sends what the hub queued to the agent; returns the agent's events.
    pub fn deliver_to_agent(&mut self) -> Vec<Ev> {
        let mut wire = self.take_message(true);
        self.receive(true, &mut wire).expect("agent session")
    }

    /// Sends what the agent queued to the hub; returns the hub's events.
    pub fn deliver_to_hub(&mut self) -> Vec<Ev> {
        let mut wire = self.take_message(false);
        self.receive(false, &mut wire).expect("hub session")
    }

    /// Opens a stream from the hub and has the agent accept it.
    pub fn open_established(&mut self, connector: &str) -> StreamId {
        let id = self
            .hub
            .session
            .open(self.now, &name(connector), client())
            .unwrap();
        assert_eq!(
            self.deliver_to_agent(),
            vec![Ev::Opened(id, connector.to_string())]
        );
        self.agent.session.accept(id).unwrap();
        assert_eq!(self.deliver_to_hub(), vec![Ev::OpenOk(id)]);
        id
    }
}
