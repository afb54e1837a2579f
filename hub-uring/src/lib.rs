//! The NowConnect hub.
//!
//! One shard per core, each a thread with its own compio runtime (io_uring, or epoll where
//! io_uring cannot be set up), owning its own `SO_REUSEPORT` sockets, sessions and client
//! connections. A control-plane thread runs the admin endpoint and the JWKS refresher on tokio;
//! shards reach it through channels and shared, lock-free snapshots.
//!
//! - [`cli`]: command line, configuration loading, `--check`.
//! - [`runtime`]: the thin layer over compio: building a runtime with the chosen driver.
//! - [`shard`]: a shard's thread, listeners, sessions and client connections.
//! - [`auth`]: JWT validation against the JWKS.
//! - [`pdp`]: the policy decision point client asked before each stream opens.
//! - [`control`]: the control-plane thread.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus registry and the handles the data path updates.
//! - [`health`]: readiness flags and shard liveness ticks.
//! - [`logging`]: JSON or text log lines.
//! - `bench_support`: hidden wrappers over shard internals, for benchmarks only, not a stable
//!   API.
//!
//! `unsafe` is denied everywhere except `shard::ring`, which writes headers into the room its
//! allocator keeps in front of the io_uring provided buffers, and one call in `shard::pool`,
//! which marks the bytes a `recv` wrote into a buffer's spare capacity as filled.
#![deny(unsafe_code)]

pub mod admin;
pub mod auth;
#[doc(hidden)]
pub mod bench_support;
pub mod cli;
pub mod control;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod pdp;
pub mod runtime;
pub mod shard;
