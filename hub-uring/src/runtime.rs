//! The thin layer over compio: one single-threaded runtime per shard, with the driver the
//! operator asked for.
//!
//! `auto` lets compio's fusion driver probe the kernel: io_uring when it can be set up and
//! supports the operations used, epoll otherwise (for instance under
//! `sysctl kernel.io_uring_disabled=2`). `io_uring` and `epoll` force one; a forced io_uring that
//! cannot be set up is a start-up error, not a silent fallback.

use std::io;

use compio::driver::{DriverType, ProactorBuilder};
use compio::runtime::{Runtime, RuntimeBuilder};
use nowconnect_core::config::Driver;

/// A shard's runtime and the driver it ended up with.
pub struct ShardRuntime {
    /// The compio runtime; run the shard's future on it with `block_on`.
    pub runtime: Runtime,
    /// `io_uring` or `epoll`, for logs and the `nowconnect_shard_driver` metric.
    pub driver: &'static str,
}

/// Entries in each io_uring submission queue (and the epoll events taken per wait). A full
/// queue is submitted and refilled, so this bounds a batch, not the operations in flight.
/// The kernel keeps the rings in memory it cannot page out: 64 bytes per submission entry.
const RING_ENTRIES: u32 = 256;

/// Entries in each io_uring completion queue: room for a burst of completions from many
/// streams (16 bytes each) without falling back on the kernel's slower overflow list.
const COMPLETION_ENTRIES: u32 = 4096;

/// The provided-buffer ring a shard's client receives draw from under io_uring.
#[derive(Clone, Copy, Debug)]
pub struct RecvRing {
    /// Buffers in the ring (rounded up to a power of two by compio).
    pub buffers: u16,
    /// Bytes each buffer receives; the allocator adds the header room in front.
    pub buffer_len: usize,
}

/// Builds the runtime of one shard on the calling thread.
pub fn build(driver: Driver, ring: RecvRing) -> io::Result<ShardRuntime> {
    let mut proactor = ProactorBuilder::new();
    proactor.capacity(RING_ENTRIES).cqsize(COMPLETION_ENTRIES);
    proactor
        .buffer_pool_size(
            std::num::NonZero::new(ring.buffers.max(1)).unwrap_or(std::num::NonZero::<u16>::MIN),
        )
        .buffer_pool_buffer_len(ring.buffer_len)
        .buffer_pool_allocator::<crate::shard::ring::HeadroomAllocator>();
    match driver {
        Driver::Auto => {}
        Driver::IoUring => {
            proactor.driver_type(DriverType::IoUring);
        }
        Driver::Epoll => {
            proactor.driver_type(DriverType::Poll);
        }
    }
    let runtime = RuntimeBuilder::new().with_proactor(proactor).build()?;
    let driver = driver_name(runtime.driver_type());
    Ok(ShardRuntime { runtime, driver })
}

fn driver_name(t: DriverType) -> &'static str {
    match t {
        DriverType::IoUring => "io_uring",
        DriverType::Poll => "epoll",
        DriverType::IOCP => "iocp",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: RecvRing = RecvRing {
        buffers: 8,
        buffer_len: 4096,
    };

    #[test]
    fn epoll_can_be_forced() {
        let rt = build(Driver::Epoll, RING).unwrap();
        assert_eq!(rt.driver, "epoll");
        assert_eq!(rt.runtime.block_on(async { 40 + 2 }), 42);
    }

    #[test]
    fn auto_picks_a_driver() {
        let rt = build(Driver::Auto, RING).unwrap();
        assert!(matches!(rt.driver, "io_uring" | "epoll"));
    }
}
