//! The steady-state data path allocates nothing.
//!
//! A counting global allocator records allocations made on the test's own thread while a flag
//! is set. After a warm-up (buffers and maps reach their working size), moving DATA both ways
//! through the frame codec, the WebSocket codec with in-place unmasking, and the sessions'
//! accounting must not allocate at all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use nowconnect_core::frame::{self, FrameDecoder, HEADER_LEN, StreamId};
use nowconnect_core::mask::apply_mask;
use nowconnect_core::name::ConnectorName;
use nowconnect_core::session::{Event, Role, Session, SessionConfig};
use nowconnect_core::time::Millis;
use nowconnect_core::ws;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting touches only
// const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(|n| n.get())
}

/// Both ends of one session plus their receive paths and reusable buffers.
struct Rig {
    now: Millis,
    hub: Session,
    agent: Session,
    hub_ws: ws::Decoder,
    agent_ws: ws::Decoder,
    hub_frames: FrameDecoder,
    agent_frames: FrameDecoder,
    id: StreamId,
    /// Hub-side receive buffer with headroom for both headers, as a shard would use.
    pooled: Vec<u8>,
    /// Agent-side outgoing message buffer.
    out: Vec<u8>,
    scratch: Vec<u8>,
    delivered: usize,
}

const HEADROOM: usize = ws::MAX_HEADER_LEN + HEADER_LEN;
const CHUNK: usize = 16 * 1024;

impl Rig {
    fn new() -> Rig {
        let config = SessionConfig::default();
        let mut hub = Session::new(Role::Hub, config);
        let mut agent = Session::new(Role::Agent, config);
        let limits = || ws::Limits {
            max_message: 1 << 20,
            max_text: 1 << 16,
        };
        let connector = ConnectorName::from_str("bulk").unwrap();
        let id = hub
            .open(Millis(0), &connector, "127.0.0.1:1".parse().unwrap())
            .unwrap();
        let mut rig = Rig {
            now: Millis(0),
            hub,
            agent: Session::new(Role::Agent, config),
            hub_ws: ws::Decoder::new(ws::Role::Server, limits()),
            agent_ws: ws::Decoder::new(ws::Role::Client, limits()),
            hub_frames: FrameDecoder::new(config.max_frame),
            agent_frames: FrameDecoder::new(config.max_frame),
            id,
            pooled: vec![0; HEADROOM + CHUNK],
            out: Vec::with_capacity(64 * 1024),
            scratch: Vec::with_capacity(64 * 1024),
            delivered: 0,
        };
        std::mem::swap(&mut rig.agent, &mut agent);
        rig.hub_to_agent_control();
        rig.agent.accept(id).unwrap();
        rig.agent_to_hub();
        rig
    }

    /// Hub → agent: control frames waiting in the hub's transmit buffer.
    fn hub_to_agent_control(&mut self) {
        self.scratch.clear();
        let len = self.hub.transmit().len() as u64;
        if len == 0 {
            return;
        }
        let mut header = [0u8; ws::MAX_HEADER_LEN];
        let n = ws::encode_header(&mut header, true, ws::Opcode::Binary, len, None);
        self.scratch.extend_from_slice(&header[..n]);
        self.scratch.extend_from_slice(self.hub.transmit());
        self.hub.clear_transmit();
        let mut wire = std::mem::take(&mut self.scratch);
        self.agent_receive(&mut wire);
        self.scratch = wire;
    }

    /// Hub → agent: one DATA frame read "from a socket" straight into the pooled buffer.
    fn hub_sends_data(&mut self) {
        self.hub_to_agent_control();
        let payload_start = HEADROOM;
        for (i, b) in self.pooled[payload_start..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let frame_start = self
            .hub
            .seal_data(self.now, self.id, &mut self.pooled, payload_start, CHUNK)
            .unwrap();
        let ws_start = ws::encode_header_before(
            &mut self.pooled,
            frame_start,
            true,
            ws::Opcode::Binary,
            (HEADER_LEN + CHUNK) as u64,
            None,
        )
        .unwrap();
        let mut wire = std::mem::take(&mut self.pooled);
        self.agent_receive(&mut wire[ws_start..]);
        self.pooled = wire;
    }

    fn agent_receive(&mut self, wire: &mut [u8]) {
        let mut pos = 0;
        while pos < wire.len() {
            let (n, event) = self.agent_ws.decode(&mut wire[pos..]).unwrap();
            if let Some(ws::Event::Binary { data, last }) = event {
                let mut input: &[u8] = data;
                while !input.is_empty() {
                    let (used, f) = self.agent_frames.decode(input).unwrap();
                    input = &input[used..];
                    if let Some(f) = f {
                        match self.agent.recv(self.now, f).unwrap() {
                            Some(Event::Data { id, data }) => {
                                self.delivered += data.len();
                                self.agent.consumed(self.now, id, data.len());
                            }
                            Some(Event::Opened { .. } | Event::Writable { .. }) | None => {}
                            Some(other) => panic!("{other:?}"),
                        }
                    }
                }
                if last {
                    self.agent_frames.end_of_message().unwrap();
                }
            }
            pos += n;
        }
    }

    /// Agent → hub: DATA by copy plus whatever control frames are waiting, masked.
    fn agent_sends_data(&mut self, payload: &[u8]) {
        self.agent.send_data(self.now, self.id, payload).unwrap();
        self.agent_to_hub();
    }

    fn agent_to_hub(&mut self) {
        let len = self.agent.transmit().len();
        if len == 0 {
            return;
        }
        let key = [0x11, 0x22, 0x33, 0x44];
        self.out.clear();
        let mut header = [0u8; ws::MAX_HEADER_LEN];
        let n = ws::encode_header(&mut header, true, ws::Opcode::Binary, len as u64, Some(key));
        self.out.extend_from_slice(&header[..n]);
        self.out.extend_from_slice(self.agent.transmit());
        self.agent.clear_transmit();
        apply_mask(&mut self.out[n..], key, 0);
        let mut pos = 0;
        while pos < self.out.len() {
            let (used, event) = self.hub_ws.decode(&mut self.out[pos..]).unwrap();
            if let Some(ws::Event::Binary { data, last }) = event {
                let mut input: &[u8] = data;
                while !input.is_empty() {
                    let (k, f) = self.hub_frames.decode(input).unwrap();
                    input = &input[k..];
                    if let Some(f) = f
                        && let Some(Event::Data { id, data }) = self.hub.recv(self.now, f).unwrap()
                    {
                        self.hub.consumed(self.now, id, data.len());
                    }
                }
                if last {
                    self.hub_frames.end_of_message().unwrap();
                }
            }
            pos += used;
        }
    }

    fn round(&mut self, payload: &[u8]) {
        self.now = self.now + 1;
        self.hub_sends_data();
        self.agent_sends_data(payload);
        self.hub_to_agent_control();
    }
}

#[test]
fn steady_state_data_path_allocates_nothing() {
    let mut rig = Rig::new();
    let payload = vec![0x5a; 4096];
    for _ in 0..64 {
        rig.round(&payload);
    }
    let before = rig.delivered;
    let allocations = allocations_during(|| {
        for _ in 0..1000 {
            rig.round(&payload);
        }
    });
    assert_eq!(
        rig.delivered - before,
        1000 * CHUNK,
        "every byte was delivered"
    );
    assert_eq!(allocations, 0, "allocations on the steady-state data path");

    // And the counter does see allocations when they happen.
    let seen = allocations_during(|| {
        std::hint::black_box(Vec::<u8>::with_capacity(10));
    });
    assert_eq!(seen, 1);
}

#[test]
fn unmasking_and_frame_encoding_allocate_nothing() {
    let mut buf = vec![0u8; 1 << 20];
    let mut out = Vec::with_capacity(64 * 1024);
    let allocations = allocations_during(|| {
        for offset in 0..8 {
            apply_mask(&mut buf[offset..], [1, 2, 3, 4], offset);
        }
        for i in 0..1000u32 {
            out.clear();
            frame::encode_data(&mut out, StreamId(i + 1), &buf[..4096]);
            frame::encode_window(&mut out, StreamId(i + 1), 4096);
            frame::encode_fin(&mut out, StreamId(i + 1));
        }
    });
    assert_eq!(allocations, 0);
}
