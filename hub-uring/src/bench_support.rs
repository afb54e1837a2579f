//! For benchmarks only, not a stable API.
//!
//! Thin wrappers that let the `nowconnect-bench` crate drive two shard internals, the
//! cross-shard hand-off rings ([`mesh`]) and the send-buffer pool ([`pool`]), through the very
//! code the shards run. Nothing here is used by the hub itself, and any of it may change or
//! go away with the internals it wraps.

/// The cross-shard hand-off rings of `shard::mesh`.
pub mod mesh {
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;

    use rtrb::{Consumer, Producer};

    use crate::shard::mesh as inner;

    /// Hand-offs each ring holds before refusing more.
    pub const RING_CAPACITY: usize = inner::RING_CAPACITY;

    /// A client on its way to another shard: the hub's hand-off item, unchanged.
    pub struct Handoff(inner::Handoff);

    impl Handoff {
        /// A hand-off of `stream`, accepted from `peer` on listener `listener`.
        pub fn new(stream: TcpStream, peer: SocketAddr, listener: usize) -> Handoff {
            Handoff(inner::Handoff {
                stream,
                peer,
                listener,
            })
        }
    }

    /// One shard's sending end of the ring to one other shard.
    pub struct Sender {
        mesh: Arc<inner::Mesh>,
        producer: Producer<inner::Handoff>,
        to: usize,
    }

    impl Sender {
        /// Pushes `handoff` as a shard does (waking the receiver only when the ring was
        /// empty); gives it back when the ring is full.
        #[inline]
        pub fn send(&mut self, handoff: Handoff) -> Result<(), Handoff> {
            inner::send(&self.mesh, &mut self.producer, self.to, handoff.0).map_err(Handoff)
        }
    }

    /// One shard's receiving end of the ring from one other shard.
    pub struct Receiver {
        consumer: Consumer<inner::Handoff>,
    }

    impl Receiver {
        /// Pops every hand-off the ring holds, as a woken shard does, passing each to
        /// `each`; returns how many there were.
        #[inline]
        pub fn drain(&mut self, mut each: impl FnMut(Handoff)) -> usize {
            let mut n = 0;
            while let Ok(handoff) = self.consumer.pop() {
                each(Handoff(handoff));
                n += 1;
            }
            n
        }
    }

    /// One shard's ends of the rings of a two-shard mesh.
    pub struct ShardEnds {
        /// The ring to the other shard.
        pub to_other: Sender,
        /// The ring from the other shard.
        pub from_other: Receiver,
    }

    /// A two-shard mesh with rings of [`RING_CAPACITY`], as the hub builds it: the ends of
    /// shard 0 and of shard 1.
    pub fn two_shards() -> [ShardEnds; 2] {
        let (mesh, mut ends) = inner::Mesh::new(2);
        let mesh = Arc::new(mesh);
        let mut take = |shard: usize| {
            let other = 1 - shard;
            let producer = ends[shard].outbound[other].take();
            let consumer = ends[shard].inbound[other].take();
            match (producer, consumer) {
                (Some(producer), Some(consumer)) => ShardEnds {
                    to_other: Sender {
                        mesh: Arc::clone(&mesh),
                        producer,
                        to: other,
                    },
                    from_other: Receiver { consumer },
                },
                _ => unreachable!("a mesh links every ordered pair of shards"),
            }
        };
        [take(0), take(1)]
    }
}

/// The per-shard send-buffer pool of `shard::pool`.
pub mod pool {
    use crate::shard::pool as inner;

    /// Room the pool keeps in front of the payload for the frame headers.
    pub const HEADROOM: usize = inner::HEADROOM;

    /// A shard's buffer pool.
    pub struct BufferPool(inner::BufferPool);

    impl BufferPool {
        /// A pool of buffers holding `payload` bytes behind the headroom, keeping at most
        /// `max_free` idle buffers.
        pub fn new(payload: usize, max_free: usize) -> BufferPool {
            BufferPool(inner::BufferPool::new(payload, max_free))
        }

        /// Takes a buffer: [`HEADROOM`] initialised bytes, capacity for the payload behind.
        #[inline]
        pub fn take(&self) -> Vec<u8> {
            self.0.take()
        }

        /// Gives a buffer back.
        #[inline]
        pub fn give(&self, buf: Vec<u8>) {
            self.0.give(buf)
        }

        /// Buffers held by the pool or in flight, and those in flight.
        pub fn usage(&self) -> (u64, u64) {
            self.0.usage()
        }
    }
}
