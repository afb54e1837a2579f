//! Command line and start-up. Placeholder until the shards land: says so and exits 1.

use std::process::ExitCode;

/// Entry point of the `nowconnect-hub` binary.
pub fn main() -> ExitCode {
    eprintln!("nowconnect-hub: not implemented yet");
    ExitCode::FAILURE
}
