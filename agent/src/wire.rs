//! What the agent puts on the WebSocket: masked frames, and the session's transmit buffer cut
//! into binary messages at frame boundaries.

use std::cell::RefCell;
use std::ops::Range;

use nowconnect_core::frame;
use nowconnect_core::ws::{self, CloseCode, Opcode};

/// The largest binary message the agent builds from whole tunnel frames. Well under the hub's
/// 16 MiB message limit, and above the largest frame (1 MiB of DATA plus its header), so every
/// frame fits one message.
pub(crate) const MAX_MESSAGE: usize = 2 << 20;

/// Random bytes fetched from the OS at a time for masking keys: one system call per 1024
/// keys instead of one per frame.
const KEY_BLOCK: usize = 4096;

thread_local! {
    /// This thread's unused masking-key bytes, and how many of them are used up.
    static KEYS: RefCell<(Box<[u8; KEY_BLOCK]>, usize)> =
        RefCell::new((Box::new([0; KEY_BLOCK]), KEY_BLOCK));
}

/// A fresh random masking key (RFC 6455 §5.3 asks for one per frame, unpredictable). Every
/// key is four bytes of the OS random source never used before; an earlier key, seen on the
/// wire, says nothing of a later one.
pub(crate) fn mask_key() -> [u8; 4] {
    KEYS.with(|keys| {
        let mut keys = keys.borrow_mut();
        let (block, used) = &mut *keys;
        if *used + 4 > KEY_BLOCK {
            // If the OS random source fails, the block keeps its old bytes and frames stay
            // valid; masking protects intermediaries, not the tunnel's confidentiality.
            let _ = getrandom::fill(&mut block[..]);
            *used = 0;
        }
        let mut key = [0u8; 4];
        key.copy_from_slice(&block[*used..*used + 4]);
        *used += 4;
        key
    })
}

/// Appends one masked WebSocket frame holding all of `payload`.
pub(crate) fn push_masked(dst: &mut Vec<u8>, opcode: Opcode, payload: &[u8]) {
    ws::encode_frame(dst, true, opcode, payload, Some(mask_key()));
}

/// Appends a masked Close frame.
pub(crate) fn push_close(dst: &mut Vec<u8>, code: CloseCode, reason: &str) {
    ws::encode_close(dst, code, reason, Some(mask_key()));
}

/// Appends `frames` (whole tunnel frames, as [`nowconnect_core::session::Session::transmit`]
/// holds them) as masked binary messages of at most [`MAX_MESSAGE`] payload bytes each, cut only
/// between frames.
#[cfg(test)]
pub(crate) fn push_frames(dst: &mut Vec<u8>, frames: &[u8]) {
    for range in message_ranges(frames, MAX_MESSAGE) {
        push_masked(dst, Opcode::Binary, &frames[range]);
    }
}

/// Masks `frames` in place as the payloads of binary messages of at most [`MAX_MESSAGE`] bytes,
/// cut only between frames (a longer frame gets a message of its own), appending each
/// message's header to `headers`; `parts` gets, per message, the range of its header in
/// `headers` and of its payload in `frames`. Sending those slices in order puts the messages
/// on the wire without copying the payloads.
pub(crate) fn mask_messages(
    frames: &mut [u8],
    headers: &mut Vec<u8>,
    parts: &mut Vec<(Range<usize>, Range<usize>)>,
) {
    let mut start = 0;
    while let Some(range) = next_message(frames, start, MAX_MESSAGE) {
        start = range.end;
        let key = mask_key();
        let mut header = [0u8; ws::MAX_HEADER_LEN];
        let n = ws::encode_header(
            &mut header,
            true,
            Opcode::Binary,
            range.len() as u64,
            Some(key),
        );
        let start = headers.len();
        headers.extend_from_slice(&header[..n]);
        nowconnect_core::mask::apply_mask(&mut frames[range.clone()], key, 0);
        parts.push((start..headers.len(), range));
    }
}

/// Splits a buffer of whole tunnel frames into ranges of at most `limit` bytes that each hold
/// whole frames. A single frame longer than `limit` gets a range of its own. Bytes that do not
/// end in a whole frame (which the core never produces) stay with the last range.
#[cfg(test)]
pub(crate) fn message_ranges(
    frames: &[u8],
    limit: usize,
) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        let range = next_message(frames, start, limit)?;
        start = range.end;
        Some(range)
    })
}

/// The range from `start` of at most `limit` bytes that holds whole frames (a single longer
/// frame gets a range of its own), if any bytes are left.
fn next_message(frames: &[u8], start: usize, limit: usize) -> Option<Range<usize>> {
    if start >= frames.len() {
        return None;
    }
    let mut end = start;
    loop {
        let Some(len) = frame_len(&frames[end..]) else {
            end = frames.len();
            break;
        };
        if end > start && end + len - start > limit {
            break;
        }
        end += len;
        if end >= frames.len() {
            break;
        }
    }
    Some(start..end)
}

/// The total length of the frame at the front of `buf`, if its header and payload are there.
fn frame_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..frame::HEADER_LEN)?;
    let payload = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    let len = frame::HEADER_LEN + payload;
    (len <= buf.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nowconnect_core::frame::{FrameDecoder, StreamId};

    fn data_frames(sizes: &[usize]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            frame::encode_data(&mut buf, StreamId(i as u32 + 1), &vec![7u8; n]);
        }
        buf
    }

    #[test]
    fn masking_keys_keep_coming_fresh_across_blocks() {
        // Three blocks' worth: 3072 keys of 32 random bits hold a repeat with a probability
        // of about 0.1 %; more than a handful would mean reused bytes.
        let keys: Vec<[u8; 4]> = (0..3 * KEY_BLOCK / 4).map(|_| mask_key()).collect();
        let distinct: std::collections::HashSet<[u8; 4]> = keys.iter().copied().collect();
        assert!(
            distinct.len() + 4 >= keys.len(),
            "{} of {}",
            distinct.len(),
            keys.len()
        );
        // Consecutive blocks differ: the second is not the first again.
        let per_block = KEY_BLOCK / 4;
        assert_ne!(keys[..per_block], keys[per_block..2 * per_block]);
    }

    #[test]
    fn small_frames_share_one_message() {
        let buf = data_frames(&[10, 20, 30]);
        let ranges: Vec<_> = message_ranges(&buf, 1000).collect();
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0], 0..buf.len());
    }

    #[test]
    fn messages_are_cut_between_frames() {
        let buf = data_frames(&[100, 100, 100, 500]);
        let ranges: Vec<_> = message_ranges(&buf, 250).collect();
        assert_eq!(ranges, [0..218, 218..327, 327..836]);
        // Every range decodes as whole frames.
        for range in ranges {
            let mut dec = FrameDecoder::new(1000);
            let mut input = &buf[range];
            while !input.is_empty() {
                let (n, _) = dec.decode(input).unwrap();
                input = &input[n..];
            }
            dec.end_of_message().unwrap();
        }
    }

    #[test]
    fn masking_in_place_puts_the_same_messages_on_the_wire() {
        let mut frames = data_frames(&[10, 70_000, 3, 1_500_000, 0, 900_000]);
        let original = frames.clone();
        let mut headers = Vec::new();
        let mut parts = Vec::new();
        mask_messages(&mut frames, &mut headers, &mut parts);
        let mut wire = Vec::new();
        for (h, p) in &parts {
            wire.extend_from_slice(&headers[h.clone()]);
            wire.extend_from_slice(&frames[p.clone()]);
        }
        // The hub's decoder unmasks them back into the original frames, message by message.
        let mut decoder = ws::Decoder::new(ws::Role::Server, ws::Limits::default());
        let mut got = Vec::new();
        let mut messages = 0;
        let mut pos = 0;
        while pos < wire.len() {
            let (n, ev) = decoder.decode(&mut wire[pos..]).unwrap();
            pos += n;
            if let Some(ws::Event::Binary { data, .. }) = ev {
                got.extend_from_slice(data);
                messages += 1;
            }
        }
        assert_eq!(messages, message_ranges(&original, MAX_MESSAGE).count());
        assert!(got == original);
    }

    #[test]
    fn empty_buffer_has_no_message() {
        assert_eq!(message_ranges(&[], 100).count(), 0);
    }

    #[test]
    fn masked_message_round_trips_through_a_server_decoder() {
        let frames = data_frames(&[3, 4]);
        let mut wire = Vec::new();
        push_frames(&mut wire, &frames);
        let mut dec = ws::Decoder::new(ws::Role::Server, ws::Limits::default());
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let (n, event) = dec.decode(&mut wire[pos..]).unwrap();
            if let Some(ws::Event::Binary { data, .. }) = event {
                got.extend_from_slice(data);
            }
            pos += n;
        }
        assert_eq!(got, frames);
    }
}
