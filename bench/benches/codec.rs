//! Hot paths of the protocol core: tunnel frame encode/decode, WebSocket unmasking beside a
//! plain memcpy of the same size, and WebSocket frame parsing.
//!
//! Run: `cargo bench -p nowconnect-bench --bench codec`
#![forbid(unsafe_code)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nowconnect_core::frame::{self, FrameDecoder, HEADER_LEN, StreamId};
use nowconnect_core::mask::apply_mask;
use nowconnect_core::ws;

const SIZES: [usize; 3] = [1024, 16 * 1024, 64 * 1024];

fn frame_codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for size in SIZES {
        // Encoding in place: the payload already sits behind the headroom, only the header is
        // written, as the hub does with bytes read straight from a socket. Reported per frame.
        let mut buf = vec![0u8; HEADER_LEN + size];
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("encode_in_place", size),
            &size,
            |b, &size| {
                b.iter(|| {
                    frame::encode_data_header_before(
                        black_box(&mut buf),
                        HEADER_LEN,
                        StreamId(7),
                        size as u32,
                    )
                    .unwrap()
                })
            },
        );

        // Encoding by copy into a reused buffer, as a copying driver does.
        let payload = vec![0xabu8; size];
        let mut out = Vec::with_capacity(HEADER_LEN + size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("encode_copy", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                frame::encode_data(&mut out, StreamId(7), black_box(&payload));
            })
        });

        // Decoding a message holding 64 DATA frames. Payloads are lent, not read, so the cost
        // is per frame and is reported in frames per second.
        let mut wire = Vec::new();
        for i in 0..64 {
            frame::encode_data(&mut wire, StreamId(i + 1), &payload);
        }
        group.throughput(Throughput::Elements(64));
        group.bench_with_input(BenchmarkId::new("decode", size), &size, |b, _| {
            b.iter(|| {
                let mut dec = FrameDecoder::new(64 * 1024);
                let mut input: &[u8] = black_box(&wire);
                let mut bytes = 0usize;
                while !input.is_empty() {
                    let (n, f) = dec.decode(input).unwrap();
                    if let Some(frame::Frame::Data { payload, .. }) = f {
                        bytes += payload.len();
                    }
                    input = &input[n..];
                }
                bytes
            })
        });
    }
    group.finish();
}

fn unmask_vs_memcpy(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmask");
    for size in [4 * 1024, 64 * 1024, 1024 * 1024] {
        let mut buf = vec![0x5au8; size];
        let src = vec![0xa5u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("apply_mask", size), &size, |b, _| {
            b.iter(|| apply_mask(black_box(&mut buf), [0x12, 0x34, 0x56, 0x78], 0))
        });
        group.bench_with_input(
            BenchmarkId::new("apply_mask_offset3", size),
            &size,
            |b, _| b.iter(|| apply_mask(black_box(&mut buf[1..]), [0x12, 0x34, 0x56, 0x78], 3)),
        );
        group.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| black_box(&mut buf).copy_from_slice(black_box(&src)))
        });
    }
    group.finish();
}

fn ws_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_parse");
    for (size, masked) in [
        (64, true),
        (1024, true),
        (16 * 1024, true),
        (16 * 1024, false),
    ] {
        let payload = vec![0x42u8; size];
        let mut wire = Vec::new();
        let mask = masked.then_some([1, 2, 3, 4]);
        for _ in 0..64 {
            ws::encode_frame(&mut wire, true, ws::Opcode::Binary, &payload, mask);
        }
        let role = if masked {
            ws::Role::Server
        } else {
            ws::Role::Client
        };
        let label = if masked { "masked" } else { "unmasked" };
        // Unmasking in place only flips payload bytes; headers are untouched, so the same
        // buffer parses again on every iteration.
        let mut scratch = wire.clone();
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new(label, size), &size, |b, _| {
            b.iter(|| {
                let mut dec = ws::Decoder::new(role, ws::Limits::default());
                let mut pos = 0;
                let mut bytes = 0usize;
                while pos < scratch.len() {
                    let (n, event) = dec.decode(&mut scratch[pos..]).unwrap();
                    if let Some(ws::Event::Binary { data, .. }) = event {
                        bytes += data.len();
                    }
                    pos += n;
                }
                black_box(bytes)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, frame_codec, unmask_vs_memcpy, ws_parse);
criterion_main!(benches);
