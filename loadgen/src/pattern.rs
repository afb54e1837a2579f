//! The deterministic byte pattern that every scenario writes and checks.
//!
//! The byte at stream offset `i` is `i % 251`. The period is prime so that it never lines up
//! with buffer or frame sizes (a frame dropped, repeated or reordered by a power-of-two amount
//! shows up as a mismatch), and the pattern is served from a precomputed table, so writing it
//! costs a slice and checking it costs a `memcmp`.

use std::sync::OnceLock;

/// The pattern's period in bytes.
pub(crate) const PERIOD: usize = 251;

/// The largest slice [`slice()`] hands out at once.
pub(crate) const MAX_SLICE: usize = 64 * 1024;

/// The expected byte at stream offset `offset`.
pub(crate) fn byte_at(offset: u64) -> u8 {
    (offset % PERIOD as u64) as u8
}

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| (0..(MAX_SLICE + PERIOD) as u64).map(byte_at).collect())
}

/// The pattern bytes for stream offsets `offset .. offset + len`.
///
/// # Panics
///
/// When `len` exceeds [`MAX_SLICE`].
pub(crate) fn slice(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_SLICE, "pattern slice of {len} bytes is too long");
    let start = (offset % PERIOD as u64) as usize;
    &table()[start..start + len]
}

/// A byte that differs from the pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// Stream offset of the first wrong byte.
    pub(crate) offset: u64,
    /// The byte the pattern has there.
    pub(crate) expected: u8,
    /// The byte that arrived.
    pub(crate) got: u8,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "data corrupted at stream offset {}: expected byte {}, got {}",
            self.offset, self.expected, self.got
        )
    }
}

/// Checks that `data` holds the pattern starting at stream offset `offset`.
pub(crate) fn check(offset: u64, data: &[u8]) -> Result<(), Mismatch> {
    let mut pos = 0usize;
    while pos < data.len() {
        let len = (data.len() - pos).min(MAX_SLICE);
        let at = offset + pos as u64;
        let got = &data[pos..pos + len];
        let want = slice(at, len);
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(Mismatch {
                offset: at + i as u64,
                expected: want[i],
                got: got[i],
            });
        }
        pos += len;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_follow_the_byte_formula_across_offsets() {
        for offset in [0u64, 1, 250, 251, 252, 1_000_003, u64::MAX / 2] {
            let s = slice(offset, 600);
            for (i, b) in s.iter().enumerate() {
                assert_eq!(*b, byte_at(offset + i as u64), "offset {offset} + {i}");
            }
        }
        assert_eq!(slice(0, MAX_SLICE).len(), MAX_SLICE);
        assert_eq!(slice(250, MAX_SLICE).len(), MAX_SLICE);
    }

    #[test]
    fn consecutive_slices_join_into_one_stream() {
        let mut stream = Vec::new();
        let mut off = 0u64;
        for len in [1usize, 7, 251, 4096, 3, 65_536, 10] {
            stream.extend_from_slice(slice(off, len));
            off += len as u64;
        }
        assert_eq!(check(0, &stream), Ok(()));
        // Any suffix checks against its own offset.
        assert_eq!(check(4000, &stream[4000..]), Ok(()));
        // Longer than one table slice.
        assert!(stream.len() > MAX_SLICE);
    }

    #[test]
    fn check_reports_the_first_wrong_byte() {
        let mut data = slice(100, 5000).to_vec();
        data[4321] ^= 0xff;
        data[4400] ^= 0x01;
        let m = check(100, &data).unwrap_err();
        assert_eq!(m.offset, 100 + 4321);
        assert_eq!(m.expected, byte_at(100 + 4321));
        assert_eq!(m.got, byte_at(100 + 4321) ^ 0xff);
        assert!(m.to_string().contains("offset 4421"));
    }

    #[test]
    fn check_catches_a_shifted_stream() {
        // A lost byte: the data is the pattern from one offset later.
        let data = slice(11, 1000);
        assert!(check(10, data).is_err());
        // A whole lost period is invisible by construction; anything shorter is not.
        for lost in 1..PERIOD as u64 {
            assert!(check(0, slice(lost, 300)).is_err(), "lost {lost}");
        }
    }

    #[test]
    fn check_spans_more_than_one_table_slice() {
        let mut data = Vec::new();
        data.extend_from_slice(slice(5, MAX_SLICE));
        data.extend_from_slice(slice(5 + MAX_SLICE as u64, 1000));
        assert_eq!(check(5, &data), Ok(()));
        let last = data.len() - 1;
        data[last] = data[last].wrapping_add(1);
        assert_eq!(check(5, &data).unwrap_err().offset, 5 + last as u64);
    }
}
