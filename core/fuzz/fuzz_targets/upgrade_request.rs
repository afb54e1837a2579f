//! The HTTP upgrade request an unauthenticated peer sends, and the reply an agent reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::handshake::{self, Parsed, RequestLimits};

fuzz_target!(|input: &[u8]| {
    let limits = RequestLimits::default();
    if let Ok(Parsed::Complete { value, consumed }) = handshake::parse_request(input, &limits) {
        assert!(consumed <= input.len());
        let mut reply = Vec::new();
        handshake::write_response(&mut reply, &value);
        assert!(reply.starts_with(b"HTTP/1.1 101"));
    }
    let _ = handshake::parse_response(input, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", &limits);
});
