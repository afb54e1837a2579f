//! WebSocket frames from an untrusted peer, in both roles, split at arbitrary points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::ws::{Decoder, Event, Limits, Role};

fuzz_target!(|input: &[u8]| {
    let Some((&control, data)) = input.split_first() else {
        return;
    };
    let role = if control & 1 == 0 { Role::Server } else { Role::Client };
    let step = usize::from(control >> 1) + 1;
    let mut decoder = Decoder::new(
        role,
        Limits {
            max_message: 4096,
            max_text: 1024,
        },
    );
    let mut bytes = data.to_vec();
    let mut text_bytes = 0usize;
    for chunk in bytes.chunks_mut(step) {
        let mut pos = 0;
        while pos < chunk.len() {
            let Ok((n, event)) = decoder.decode(&mut chunk[pos..]) else {
                return;
            };
            if let Some(Event::Text(text)) = &event {
                text_bytes += text.len();
                assert!(text.len() <= 1024, "text over the limit");
            }
            if n == 0 && event.is_none() {
                panic!("no progress");
            }
            pos += n;
        }
    }
    let _ = text_bytes;
});
