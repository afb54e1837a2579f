//! Per-shard pool of send buffers with headroom in front for the frame headers.
//!
//! A client's bytes are read straight into a pooled buffer at [`HEADROOM`], the tunnel frame
//! header and the WebSocket header are written in front of them, and the whole buffer goes to
//! the session's writer without a copy. Buffers come back after the write. An idle client holds
//! no buffer: one is taken only when credit allows a read, and returned when the read's bytes
//! are written.

use std::cell::{Cell, RefCell};

use nowconnect_core::{frame, ws};

/// Room in front of the payload: the largest unmasked WebSocket header and a frame header.
pub(crate) const HEADROOM: usize = ws::MAX_HEADER_LEN + frame::HEADER_LEN;

/// A shard's free list. Single-threaded, like everything else on a shard.
pub(crate) struct BufferPool {
    free: RefCell<Vec<Vec<u8>>>,
    buffer_len: usize,
    max_free: usize,
    in_use: Cell<u64>,
    allocated: Cell<u64>,
}

impl BufferPool {
    /// A pool of buffers able to hold `payload` bytes behind the headroom, keeping at most
    /// `max_free` idle buffers.
    pub(crate) fn new(payload: usize, max_free: usize) -> BufferPool {
        BufferPool {
            free: RefCell::new(Vec::new()),
            buffer_len: HEADROOM + payload,
            max_free,
            in_use: Cell::new(0),
            allocated: Cell::new(0),
        }
    }

    /// A buffer whose first [`HEADROOM`] bytes are initialised (they are overwritten by
    /// headers) and whose capacity holds the payload behind them. Reads go to
    /// `buf.slice(HEADROOM..)`.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.in_use.set(self.in_use.get() + 1);
        match self.free.borrow_mut().pop() {
            Some(buf) => buf,
            None => {
                self.allocated.set(self.allocated.get() + 1);
                let mut buf = Vec::with_capacity(self.buffer_len);
                buf.resize(HEADROOM, 0);
                buf
            }
        }
    }

    /// The payload bytes a pooled buffer holds behind the headroom.
    pub(crate) fn payload_capacity(&self) -> usize {
        self.buffer_len - HEADROOM
    }

    /// Gives a buffer back. Buffers of another size are dropped.
    pub(crate) fn give(&self, mut buf: Vec<u8>) {
        self.in_use.set(self.in_use.get().saturating_sub(1));
        if buf.capacity() < self.buffer_len {
            return;
        }
        // No zeroing when the buffer already covers the headroom: only the length changes.
        if buf.len() >= HEADROOM {
            buf.truncate(HEADROOM);
        } else {
            buf.resize(HEADROOM, 0);
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.max_free {
            free.push(buf);
        }
    }

    /// Buffers held by the pool or in flight, and those in flight.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let free = self.free.borrow().len() as u64;
        (free + self.in_use.get(), self.in_use.get())
    }
}

/// Appends to `buf` what `socket` holds now, up to `want` bytes and the buffer's spare
/// capacity, without waiting: `WouldBlock` when nothing is there. A buffer from
/// [`BufferPool::take`] receives behind its headroom.
pub(crate) fn receive_now(
    socket: &compio::net::TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<usize> {
    let filled = buf.len();
    let want = want.min(buf.capacity() - filled);
    let n = socket2::SockRef::from(socket)
        .recv_with_flags(&mut buf.spare_capacity_mut()[..want], libc::MSG_DONTWAIT)?;
    #[allow(unsafe_code)]
    // SAFETY: `recv_with_flags` initialised the first `n` bytes of the spare capacity, which
    // begins at `filled` (it never returns more than the slice it was given).
    unsafe {
        buf.set_len(filled + n)
    };
    Ok(n)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// [`receive_now`] retried while it finds nothing, for up to a second: what the peer sent
    /// reaches the socket soon, not at once. `None` if nothing came.
    fn receive_soon(
        socket: &compio::net::TcpStream,
        buf: &mut Vec<u8>,
        want: usize,
    ) -> Option<usize> {
        for _ in 0..1000 {
            match receive_now(socket, buf, want) {
                Ok(got) => return Some(got),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        None
    }

    #[test]
    fn receive_now_takes_what_is_there_and_never_waits() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        compio::runtime::Runtime::new()
            .unwrap()
            .block_on(async move {
                let socket = compio::net::TcpStream::from_std(accepted).unwrap();
                let pool = BufferPool::new(16, 4);

                let mut buf = pool.take();
                let nothing = receive_now(&socket, &mut buf, 16).unwrap_err();
                assert_eq!(nothing.kind(), std::io::ErrorKind::WouldBlock);
                assert_eq!(
                    buf.len(),
                    HEADROOM,
                    "a read that found nothing leaves the buffer"
                );

                peer.write_all(b"twenty bytes of data").unwrap();
                let n = receive_soon(&socket, &mut buf, 8);
                assert_eq!(n, Some(8), "no more than asked for");
                assert_eq!(&buf[HEADROOM..], b"twenty b");
                pool.give(buf);

                let mut buf = pool.take();
                assert_eq!(receive_now(&socket, &mut buf, 64).unwrap(), 12, "the rest");
                assert_eq!(&buf[HEADROOM..], b"ytes of data");
                pool.give(buf);

                drop(peer);
                let mut buf = pool.take();
                let end = receive_soon(&socket, &mut buf, 16);
                assert_eq!(end, Some(0), "the end of stream reads as 0 bytes");
            });
    }
}
