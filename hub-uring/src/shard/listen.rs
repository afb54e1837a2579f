//! Binding sockets: one `SO_REUSEPORT` socket per shard for every listener and the tunnel.
//!
//! All sockets are bound on the main thread before the shards start, so a port in use fails
//! start-up with one clear line instead of a shard dying later. The kernel then spreads new
//! connections across the shards' sockets.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Listen backlog of every socket.
const BACKLOG: i32 = 1024;

/// Binds a listening socket with `SO_REUSEPORT`. An IPv6 wildcard is bound dual-stack.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Binds `shards` sockets on `addr`. For port 0 the first socket's port is reused by the
/// others, so every shard serves the same ephemeral port.
pub(crate) fn bind_all(addr: SocketAddr, shards: usize) -> io::Result<Vec<TcpListener>> {
    let first = bind(addr)?;
    let actual = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..shards {
        all.push(bind(actual)?);
    }
    Ok(all)
}
