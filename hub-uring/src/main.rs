//! The NowConnect hub: thread-per-core io_uring shards serving agent sessions and client listeners.
//!
//! Only the protocol core exists so far; this binary says so instead of pretending to run.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!("nowconnect-hub: not implemented yet (only nowconnect-core exists in this release)");
    std::process::ExitCode::FAILURE
}
