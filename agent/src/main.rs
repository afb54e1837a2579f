//! The NowConnect agent: dials out to hubs and connects their streams to local targets.
//!
//! Only the protocol core exists so far; this binary says so instead of pretending to run.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "nowconnect-agent: not implemented yet (only nowconnect-core exists in this release)"
    );
    std::process::ExitCode::FAILURE
}
