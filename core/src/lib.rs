//! The protocol core of NowConnect, free of I/O.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock. Drivers (the hub's
//! shards, the agent's tasks, the tests) hand it bytes and the current time, and ask it what to
//! send and when it next needs attention. The same code therefore runs under io_uring, under
//! tokio, and against a simulated clock in tests.
//!
//! The modules, from the wire upwards:
//!
//! - [`mask`]: RFC 6455 masking, applied in place a machine word at a time.
//! - [`ws`]: the WebSocket frame codec for both roles.
//! - [`handshake`]: the HTTP/1.1 upgrade request and reply.
//! - [`frame`]: the tunnel frame codec carried inside WebSocket binary messages.
//! - [`control`]: HELLO, WELCOME and GOAWAY, the JSON control messages.
//! - [`name`]: connector names and their character set.
//! - [`stream`]: one stream's state and its credit windows.
//! - [`session`]: all streams of one tunnel session, for the hub role and the agent role.
//! - [`sweeper`]: idle deadlines, swept at a cost proportional to what expired.
//! - [`heartbeat`]: ping scheduling and silence detection.
//! - [`time`]: the driver-supplied clock value.
//! - [`config`]: the hub and agent configuration model and its validation.
//! - [`cidr`]: address allow-lists.
//! - [`authz`]: policy decision requests and answers (AuthZEN, legacy).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authz;
pub mod cidr;
pub mod config;
pub mod control;
pub mod frame;
pub mod handshake;
pub mod heartbeat;
pub mod mask;
pub mod name;
pub mod session;
pub mod stream;
pub mod sweeper;
pub mod time;
pub mod ws;
