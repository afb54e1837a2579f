//! `nowconnect-hub`: see the crate documentation of `nowconnect_hub`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    nowconnect_hub::cli::main()
}
