//! Configuration text: YAML for the hub and the agent. Not network input, but an operator's
//! typo must give an error line, never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::config::{AgentConfig, HubConfig};

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Err(e) = HubConfig::load(text, |_| None) {
        assert!(!e.to_string().contains('\n'), "error is not one line: {e}");
    }
    if let Err(e) = AgentConfig::load(Some(text), |_| None) {
        assert!(!e.to_string().contains('\n'), "error is not one line: {e}");
    }
});
