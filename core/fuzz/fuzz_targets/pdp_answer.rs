//! A policy decision point's answer, in each form the hub reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nowconnect_core::authz::{
    MAX_LEGACY_TTL_SECS, parse_evaluation, parse_evaluations, parse_legacy,
};

fuzz_target!(|input: &[u8]| {
    let _ = parse_evaluation(input);
    if let Ok(decisions) = parse_evaluations(input, 3) {
        assert_eq!(decisions.len(), 3);
    }
    if let Ok(answer) = parse_legacy(input) {
        assert!(answer.ttl_sec.is_none_or(|t| t <= MAX_LEGACY_TTL_SECS));
    }
});
