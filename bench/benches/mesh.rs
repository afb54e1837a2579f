//! Cross-shard hand-off rings beside `std::sync::mpsc::sync_channel` of the same capacity.
//!
//! The rings are the hub's own (`shard::mesh`, reached through
//! `nowconnect_hub::bench_support`): one `rtrb` single-producer single-consumer ring per
//! ordered pair of shards, pushed with the shards' `send` (which wakes the receiver only when
//! the ring was empty) and drained in one batch. The items are the hub's hand-off items,
//! holding real sockets (duplicates of one loopback connection, made once before measuring),
//! so they move by value exactly as in the hub. What surrounds a real hand-off, duplicating
//! the socket and registering it with the receiving shard's runtime, is not measured.
//!
//! Both sides poll: the receiver of the two-thread runs spins (yielding) on an empty ring or
//! channel instead of sleeping, so the figures compare the queues, not the wake-up paths.
//!
//! Run: `cargo bench -p nowconnect-bench --bench mesh`
#![forbid(unsafe_code)]

use std::hint::black_box;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Barrier;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nowconnect_hub::bench_support::mesh::{self, Handoff, RING_CAPACITY, Sender};

/// `n` hand-off items, each owning a duplicate of one loopback connection's socket.
fn handoffs(n: usize) -> Vec<Handoff> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let stream = TcpStream::connect(listener.local_addr().expect("local address"))
        .expect("connect loopback");
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    (0..n)
        .map(|i| {
            let dup = stream.try_clone().expect("duplicate socket");
            Handoff::new(dup, peer, i)
        })
        .collect()
}

/// Pushes through the hub's ring, retrying while it is full.
fn ring_send(sender: &mut Sender, mut handoff: Handoff) {
    loop {
        match sender.send(handoff) {
            Ok(()) => return,
            Err(back) => {
                handoff = back;
                std::thread::yield_now();
            }
        }
    }
}

/// Pushes through the channel, retrying while it is full.
fn channel_send(tx: &SyncSender<Handoff>, mut handoff: Handoff) {
    loop {
        match tx.try_send(handoff) {
            Ok(()) => return,
            Err(std::sync::mpsc::TrySendError::Full(back)) => {
                handoff = back;
                std::thread::yield_now();
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => panic!("receiver gone"),
        }
    }
}

/// Pops everything the channel holds, as the ring's `drain` does.
fn channel_drain(rx: &mut Receiver<Handoff>, mut each: impl FnMut(Handoff)) -> usize {
    let mut n = 0;
    while let Ok(handoff) = rx.try_recv() {
        each(handoff);
        n += 1;
    }
    n
}

/// One thread pushes a batch, then pops it back in one drain. Reported per hand-off.
fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh_batch");
    for batch in [1, 64, RING_CAPACITY] {
        let mut items = handoffs(batch);
        group.throughput(Throughput::Elements(batch as u64));

        let [mut from, mut to] = mesh::two_shards();
        group.bench_with_input(BenchmarkId::new("rtrb", batch), &batch, |b, &batch| {
            b.iter(|| {
                for handoff in items.drain(..) {
                    assert!(from.to_other.send(handoff).is_ok(), "ring full");
                }
                let drained = to.from_other.drain(|handoff| items.push(handoff));
                assert_eq!(drained, batch);
                black_box(&mut items);
            })
        });

        let (tx, mut rx) = sync_channel::<Handoff>(RING_CAPACITY);
        group.bench_with_input(
            BenchmarkId::new("sync_channel", batch),
            &batch,
            |b, &batch| {
                b.iter(|| {
                    for handoff in items.drain(..) {
                        assert!(tx.try_send(handoff).is_ok(), "channel full");
                    }
                    let drained = channel_drain(&mut rx, |handoff| items.push(handoff));
                    assert_eq!(drained, batch);
                    black_box(&mut items);
                })
            },
        );
    }
    group.finish();
}

/// Two threads, as two shards: the measuring thread pushes a batch to the other, which drains
/// its ring and pushes every item back through the reverse ring; the measuring thread drains
/// until the whole batch is back. Each item crosses twice, so a round trip of `batch` items
/// counts `2 × batch` hand-offs.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh_round_trip");
    for batch in [1, 64] {
        let mut items = handoffs(batch);
        group.throughput(Throughput::Elements(2 * batch as u64));

        let [mut here, mut there] = mesh::two_shards();
        group.bench_with_input(BenchmarkId::new("rtrb", batch), &batch, |b, &batch| {
            b.iter_custom(|rounds| {
                let total = rounds * batch as u64;
                let start = Barrier::new(2);
                std::thread::scope(|s| {
                    s.spawn(|| {
                        start.wait();
                        let mut left = total;
                        while left > 0 {
                            let got = there
                                .from_other
                                .drain(|handoff| ring_send(&mut there.to_other, handoff));
                            if got == 0 {
                                std::thread::yield_now();
                            }
                            left -= got as u64;
                        }
                    });
                    start.wait();
                    let began = Instant::now();
                    for _ in 0..rounds {
                        for handoff in items.drain(..) {
                            ring_send(&mut here.to_other, handoff);
                        }
                        let mut back = 0;
                        while back < batch {
                            let got = here.from_other.drain(|handoff| items.push(handoff));
                            if got == 0 {
                                std::thread::yield_now();
                            }
                            back += got;
                        }
                    }
                    began.elapsed()
                })
            })
        });

        let (out_tx, mut out_rx) = sync_channel::<Handoff>(RING_CAPACITY);
        let (back_tx, mut back_rx) = sync_channel::<Handoff>(RING_CAPACITY);
        group.bench_with_input(
            BenchmarkId::new("sync_channel", batch),
            &batch,
            |b, &batch| {
                b.iter_custom(|rounds| {
                    let total = rounds * batch as u64;
                    let start = Barrier::new(2);
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            start.wait();
                            let mut left = total;
                            while left > 0 {
                                let got = channel_drain(&mut out_rx, |handoff| {
                                    channel_send(&back_tx, handoff)
                                });
                                if got == 0 {
                                    std::thread::yield_now();
                                }
                                left -= got as u64;
                            }
                        });
                        start.wait();
                        let began = Instant::now();
                        for _ in 0..rounds {
                            for handoff in items.drain(..) {
                                channel_send(&out_tx, handoff);
                            }
                            let mut back = 0;
                            while back < batch {
                                let got =
                                    channel_drain(&mut back_rx, |handoff| items.push(handoff));
                                if got == 0 {
                                    std::thread::yield_now();
                                }
                                back += got;
                            }
                        }
                        began.elapsed()
                    })
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
