//! The HELLO an agent sends, and any control message either side may receive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::control::{ControlMessage, Hello};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(hello) = Hello::parse(text) {
        // Whatever was accepted survives a round trip unchanged.
        assert_eq!(Hello::parse(&hello.to_json()).ok(), Some(hello));
    }
    let _ = ControlMessage::parse(text);
});
