//! Tunnel frames from an untrusted peer: decoded in arbitrary pieces and fed to an agent-side
//! and a hub-side session. Nothing may panic, and the decoder must make progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::frame::FrameDecoder;
use nowconnect_core::session::{Role, Session, SessionConfig};
use nowconnect_core::time::Millis;

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let config = SessionConfig {
        window: 4096,
        max_frame: 1024,
        idle_timeout_ms: 1000,
        max_streams: 8,
    };
    for role in [Role::Agent, Role::Hub] {
        let mut session = Session::new(role, config);
        let mut decoder = FrameDecoder::new(config.max_frame);
        let step = usize::from(split % 32) + 1;
        let mut now = Millis(0);
        'outer: for chunk in data.chunks(step) {
            let mut rest = chunk;
            while !rest.is_empty() {
                let Ok((n, frame)) = decoder.decode(rest) else {
                    break 'outer;
                };
                assert!(n > 0, "no progress");
                rest = &rest[n..];
                if let Some(frame) = frame {
                    match session.recv(now, frame) {
                        Ok(Some(nowconnect_core::session::Event::Data { id, data })) => {
                            session.consumed(now, id, data.len());
                        }
                        Ok(Some(nowconnect_core::session::Event::Opened { id, .. })) => {
                            let _ = session.accept(id);
                        }
                        Ok(_) => {}
                        Err(_) => break 'outer,
                    }
                }
            }
            now = now + 97;
            let mut expired = Vec::new();
            session.sweep_idle(now, &mut expired);
            session.clear_transmit();
        }
        let _ = decoder.end_of_message();
    }
});
