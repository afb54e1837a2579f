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
