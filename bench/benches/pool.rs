//! The shard's send-buffer pool (`shard::pool`, reached through
//! `nowconnect_hub::bench_support`) beside allocating and dropping a buffer of the same size
//! each time.
//!
//! Steady state: take a buffer with room for 64 KiB of payload behind the header room, write a
//! few bytes behind the room, give it back. The baseline does the same work on a fresh
//! `Vec::with_capacity(HEADROOM + 65536)` (including the zeroed header room a fresh pooled
//! buffer gets) and drops it. Both are run with one buffer in flight at a time and with 64 in
//! flight (all taken, then all returned), the latter closer to a shard serving many clients.
//!
//! Run: `cargo bench -p nowconnect-bench --bench pool`
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nowconnect_hub::bench_support::pool::{BufferPool, HEADROOM};

/// Payload bytes each buffer holds behind the header room.
const PAYLOAD: usize = 64 * 1024;

/// Idle buffers a shard's pool keeps (as in `shard::start`).
const MAX_FREE: usize = 4096;

/// What a read leaves behind the header room in these runs.
const BYTES: &[u8] = b"GET / HTTP/1.1\r\n";

/// A buffer as the pool hands out a fresh one, without the pool.
fn allocate() -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADROOM + PAYLOAD);
    buf.resize(HEADROOM, 0);
    buf
}

fn take_give(c: &mut Criterion) {
    let mut group = c.benchmark_group("buffer");
    for in_flight in [1usize, 64] {
        group.throughput(Throughput::Elements(in_flight as u64));

        let pool = BufferPool::new(PAYLOAD, MAX_FREE);
        let mut held: Vec<Vec<u8>> = Vec::with_capacity(in_flight);
        group.bench_with_input(
            BenchmarkId::new("pool", in_flight),
            &in_flight,
            |b, &in_flight| {
                b.iter(|| {
                    for _ in 0..in_flight {
                        let mut buf = pool.take();
                        buf.extend_from_slice(black_box(BYTES));
                        held.push(black_box(buf));
                    }
                    for buf in held.drain(..) {
                        pool.give(buf);
                    }
                })
            },
        );
        // The pool never held more buffers than were in flight at once (none when the run
        // was filtered out), and every one came back.
        let (held_total, in_use) = pool.usage();
        assert!(held_total <= in_flight as u64 && in_use == 0);

        group.bench_with_input(
            BenchmarkId::new("allocate", in_flight),
            &in_flight,
            |b, &in_flight| {
                b.iter(|| {
                    for _ in 0..in_flight {
                        let mut buf = allocate();
                        buf.extend_from_slice(black_box(BYTES));
                        held.push(black_box(buf));
                    }
                    held.clear();
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, take_give);
criterion_main!(benches);
