//! The benchmarks live in `benches/`; this library holds nothing of its own.
#![forbid(unsafe_code)]
