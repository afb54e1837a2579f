//! RFC 6455 §5.3 payload masking, applied in place a machine word at a time.
//!
//! Masking is an XOR with a 4-byte key repeated over the payload, so the same call masks and
//! unmasks. Payloads arrive in pieces; the caller passes how many payload bytes came before the
//! piece so the key lines up.

/// XORs the RFC 6455 masking key into `buf` in place. `offset` is how many payload bytes precede
/// `buf` in the frame, so a payload may be unmasked in pieces as it arrives.
///
/// Works eight bytes at a time and allocates nothing. Applying the same key and offset twice
/// restores the input.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Rotate the key so that index 0 of `rotated` applies to buf[0].
    let r = offset % 4;
    let rotated = [key[r], key[(r + 1) % 4], key[(r + 2) % 4], key[(r + 3) % 4]];
    let word = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for chunk in words {
        *chunk = (u64::from_ne_bytes(*chunk) ^ word).to_ne_bytes();
    }
    // The words covered a multiple of 4 bytes, so the tail starts at key phase 0 again.
    for (b, k) in tail.iter_mut().zip(rotated.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::apply_mask;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + 7) as u8).collect()
    }

    #[test]
    fn matches_naive_for_many_lengths_and_offsets() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in 0..70 {
            for offset in 0..12 {
                let mut fast = pattern(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, key, offset);
                naive(&mut slow, key, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn unaligned_subslices_match_naive() {
        let key = [0xde, 0xad, 0xbe, 0xef];
        let base = pattern(100);
        for start in 0..9 {
            let mut fast = base.clone();
            let mut slow = base.clone();
            apply_mask(&mut fast[start..], key, start);
            naive(&mut slow[start..], key, start);
            assert_eq!(fast, slow);
        }
    }

    #[test]
    fn pieces_equal_whole() {
        let key = [1, 2, 3, 4];
        let mut whole = pattern(37);
        let mut pieces = whole.clone();
        apply_mask(&mut whole, key, 0);
        let (a, rest) = pieces.split_at_mut(5);
        let (b, c) = rest.split_at_mut(13);
        apply_mask(a, key, 0);
        apply_mask(b, key, 5);
        apply_mask(c, key, 18);
        assert_eq!(whole, pieces);
    }

    proptest! {
        #[test]
        fn prop_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..300),
                              key in any::<[u8; 4]>(), offset in 0usize..1000) {
            let mut fast = data.clone();
            let mut slow = data.clone();
            apply_mask(&mut fast, key, offset);
            naive(&mut slow, key, offset);
            prop_assert_eq!(&fast, &slow);
        }

        #[test]
        fn prop_twice_restores(data in proptest::collection::vec(any::<u8>(), 0..300),
                               key in any::<[u8; 4]>(), offset in any::<usize>()) {
            let mut buf = data.clone();
            apply_mask(&mut buf, key, offset);
            apply_mask(&mut buf, key, offset);
            prop_assert_eq!(&buf, &data);
        }
    }
}
