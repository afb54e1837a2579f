//! Shared helpers for the benchmarks live in `benches/`; this library is intentionally empty.
