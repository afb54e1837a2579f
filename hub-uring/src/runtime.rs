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

/// Entries in each io_uring completion queue, 16 bytes each, in memory the kernel maps into
/// the hub at start: four times the submission queue. A burst of more completions than that
/// (a sweep closing thousands of idle streams at once) waits on the kernel's overflow list
/// and is taken on the next wait; nothing is lost. 4096 entries held 96 KiB more resident
/// over two shards, at no measurable gain in speed (`perf/README.md`).
const COMPLETION_ENTRIES: u32 = 1024;

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

    /// More completions at once than the completion queue holds (thousands of waits on one
    /// socket, all ended by one byte) must all reach their tasks: those past the queue's end
    /// wait on the kernel's overflow list, not in a lost wake-up.
    #[test]
    fn a_burst_larger_than_the_completion_queue_wakes_every_waiter() {
        let rt = build(Driver::IoUring, RING).expect("io_uring runtime");
        let waiters = 3 * COMPLETION_ENTRIES as usize;
        rt.runtime.block_on(async move {
            let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (writer, accepted) =
                futures_util::join!(compio::net::TcpStream::connect(addr), listener.accept());
            let mut writer = writer.unwrap();
            let reader = std::rc::Rc::new(accepted.unwrap().0);
            let woken = std::rc::Rc::new(std::cell::Cell::new(0usize));
            let tasks: Vec<_> = (0..waiters)
                .map(|_| {
                    let reader = reader.clone();
                    let woken = woken.clone();
                    compio::runtime::spawn(async move {
                        reader.to_poll_fd().unwrap().read_ready().await.unwrap();
                        woken.set(woken.get() + 1);
                    })
                })
                .collect();
            // Let every task submit its wait before the byte that ends them all.
            compio::runtime::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(woken.get(), 0, "nothing to read yet");
            compio::io::AsyncWriteExt::write_all(&mut writer, b"x")
                .await
                .0
                .unwrap();
            let all = futures_util::future::join_all(tasks);
            compio::runtime::time::timeout(std::time::Duration::from_secs(10), all)
                .await
                .expect("every waiter is woken");
            assert_eq!(woken.get(), waiters);
        });
    }
}
