//! Receive buffers from an io_uring provided-buffer ring, with room in front for the headers.
//!
//! Under io_uring a client connection keeps one multishot receive armed; the kernel picks a
//! buffer from the shard's ring only when bytes arrive, so an idle client holds none. compio
//! owns the ring and fills each buffer from the pointer our allocator hands it. The allocator
//! reserves [`HEADROOM`] bytes in front of that pointer, which the kernel never touches, so
//! the tunnel frame header and the WebSocket header can be written in front of the received
//! bytes and the whole message goes to the agent without a copy. The buffer returns to the
//! ring when the message has been written.
//!
//! This is the one module of the hub with `unsafe` code: the pointer arithmetic into the
//! headroom. Everything it hands out is a safe type.

#![allow(unsafe_code)]

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
use std::cell::Cell;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use compio::buf::IoBuf;
use compio::driver::{BufferAllocator, BufferRef};

use super::pool::HEADROOM;

/// Alignment of each allocation: a cache line, so neighbouring buffers share none.
const ALIGN: usize = 64;

/// Allocates ring buffers with [`HEADROOM`] zeroed bytes in front of what compio sees.
pub(crate) struct HeadroomAllocator;

fn layout(len: u32) -> Layout {
    // `len` fits a u32 and HEADROOM is a few dozen bytes: no overflow on 64-bit targets.
    Layout::from_size_align(HEADROOM + len as usize, ALIGN)
        .unwrap_or_else(|_| handle_alloc_error(Layout::new::<u8>()))
}

impl BufferAllocator for HeadroomAllocator {
    fn allocate(len: u32) -> NonNull<MaybeUninit<u8>> {
        let layout = layout(len);
        // SAFETY: the layout has a non-zero size (HEADROOM > 0).
        let base = unsafe { alloc(layout) };
        if base.is_null() {
            handle_alloc_error(layout);
        }
        // The headroom is zeroed once so it is always initialised: headers overwrite it and
        // the kernel never writes there. Its provenance is exposed so that a pointer to the
        // received bytes can be walked back to the headroom (see `RecvBuf::frame_mut`).
        // SAFETY: `base` is valid for `HEADROOM + len` bytes; `HEADROOM` are in bounds.
        unsafe {
            base.write_bytes(0, HEADROOM);
            let _ = base.expose_provenance();
            NonNull::new_unchecked(base.add(HEADROOM)).cast()
        }
    }

    unsafe fn deallocate(ptr: NonNull<MaybeUninit<u8>>, len: u32) {
        // SAFETY: `ptr` came from `allocate(len)`, so it sits HEADROOM bytes into an
        // allocation of `layout(len)` and keeps that allocation's provenance.
        unsafe { dealloc(ptr.as_ptr().cast::<u8>().sub(HEADROOM), layout(len)) }
    }
}

thread_local! {
    /// Ring buffers this shard's connections hold out of the ring right now.
    static TAKEN: Cell<u64> = const { Cell::new(0) };
}

/// Ring buffers taken out of this shard's ring and not yet given back.
pub(crate) fn taken() -> u64 {
    TAKEN.with(Cell::get)
}

/// Received bytes in a ring buffer, and then the message built around them. Dropping it gives
/// the buffer back to the ring.
pub(crate) struct RecvBuf {
    buf: BufferRef,
    /// Where the message starts, counted from the start of the headroom. `HEADROOM` while no
    /// header has been written.
    start: usize,
}

impl RecvBuf {
    /// Takes over a buffer compio returned from a receive into the ring of a runtime built
    /// with [`HeadroomAllocator`] (see `runtime::build`).
    pub(crate) fn new(buf: BufferRef) -> RecvBuf {
        TAKEN.with(|t| t.set(t.get() + 1));
        RecvBuf {
            buf,
            start: HEADROOM,
        }
    }

    /// The received bytes.
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// The headroom followed by the received bytes, which start at index [`HEADROOM`].
    pub(crate) fn frame_mut(&mut self) -> &mut [u8] {
        let len = self.buf.len();
        let payload = self.buf.as_mut_ptr();
        let base = std::ptr::with_exposed_provenance_mut::<u8>(payload.addr() - HEADROOM);
        // SAFETY: the buffer was allocated by `HeadroomAllocator` (the only allocator the
        // shard runtimes use), so `base` is the start of its allocation, whose provenance was
        // exposed there; the HEADROOM bytes are initialised (zeroed at allocation, written
        // only by us since) and the `len` bytes behind them were written by the kernel. We
        // own the buffer (it is out of the ring) and hand out one exclusive borrow of it.
        unsafe { std::slice::from_raw_parts_mut(base, HEADROOM + len) }
    }

    /// Marks the message as starting `start` bytes into the headroom, where the headers
    /// written with [`RecvBuf::frame_mut`] begin.
    pub(crate) fn set_start(&mut self, start: usize) {
        self.start = start.min(HEADROOM);
    }
}

impl IoBuf for RecvBuf {
    /// The message: the headers from `start` and the received bytes.
    fn as_init(&self) -> &[u8] {
        let len = self.buf.len();
        let payload = self.buf.as_ptr();
        let base = std::ptr::with_exposed_provenance::<u8>(payload.addr() - HEADROOM);
        // SAFETY: as in `frame_mut`; `start <= HEADROOM`, so the range lies in the headroom
        // and the received bytes, all initialised. Shared borrow of `self`: no writer exists.
        unsafe { std::slice::from_raw_parts(base.add(self.start), HEADROOM - self.start + len) }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        TAKEN.with(|t| t.set(t.get().saturating_sub(1)));
    }
}

impl std::fmt::Debug for RecvBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuf")
            .field("len", &self.len())
            .field("start", &self.start)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use compio::io::{AsyncReadMulti, AsyncWriteExt};
    use compio::net::{TcpListener, TcpStream};
    use futures_util::StreamExt;
    use nowconnect_core::config::Driver;

    use super::*;
    use crate::runtime::{RecvRing, build};

    #[test]
    fn headers_go_in_front_of_the_received_bytes() {
        let ring = RecvRing {
            buffers: 8,
            buffer_len: 1024,
        };
        let rt = build(Driver::IoUring, ring).expect("io_uring runtime");
        rt.runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            client.write_all(b"hello").await.0.unwrap();
            let mut reader = &server;
            let mut received = std::pin::pin!(reader.read_multi(0));
            let mut buf = RecvBuf::new(received.next().await.unwrap().unwrap());
            assert_eq!(buf.len(), 5);
            assert_eq!(taken(), 1);

            let frame = buf.frame_mut();
            assert_eq!(frame.len(), HEADROOM + 5);
            assert_eq!(&frame[HEADROOM..], b"hello");
            assert!(
                frame[..HEADROOM].iter().all(|&b| b == 0),
                "headroom is zeroed"
            );
            frame[HEADROOM - 3..HEADROOM].copy_from_slice(b"hdr");
            buf.set_start(HEADROOM - 3);
            assert_eq!(buf.as_init(), b"hdrhello");

            // The buffer goes back to the ring and is filled again from the same address,
            // headroom untouched by the kernel.
            drop(buf);
            assert_eq!(taken(), 0);
            client.write_all(b"again").await.0.unwrap();
            let mut again = RecvBuf::new(received.next().await.unwrap().unwrap());
            assert_eq!(&again.frame_mut()[HEADROOM..], b"again");
        });
    }
}
