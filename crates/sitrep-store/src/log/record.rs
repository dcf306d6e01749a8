//! The on-disk record: `[len: u32 LE][crc32: u32 LE][kind: u8][payload: len bytes]`.
//!
//! The checksum (CRC-32/IEEE, `crc32fast`) covers `len`, `kind` and the
//! payload, so a damaged length is caught as surely as a damaged payload.
//! An all-zero header is never a valid record (its checksum would have to be
//! zero, and the CRC of five zero bytes is not): it marks the end of the
//! records in a segment, whose unused rest is zeros (preallocated, or zeroed
//! by recovery).

/// Bytes before the payload: length, checksum, kind.
pub(crate) const HEADER: usize = 9;

/// The checksum stored in a record's header.
pub(crate) fn checksum(len: u32, kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends one record to `buf`. `len` is `payload.len()`, already checked
/// to fit a `u32` and a segment by the caller.
pub(crate) fn encode_into(buf: &mut Vec<u8>, kind: u8, len: u32, payload: &[u8]) {
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&checksum(len, kind, payload).to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// A parsed header, before the payload is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Header {
    /// Nine zero bytes: no record here.
    Zero,
    /// A record claims to start here.
    Record {
        /// Payload length.
        len: u32,
        /// Stored checksum.
        crc: u32,
        /// Record kind.
        kind: u8,
    },
}

pub(crate) fn parse_header(h: &[u8; HEADER]) -> Header {
    if h.iter().all(|&b| b == 0) {
        return Header::Zero;
    }
    let [l0, l1, l2, l3, c0, c1, c2, c3, kind] = *h;
    Header::Record {
        len: u32::from_le_bytes([l0, l1, l2, l3]),
        crc: u32::from_le_bytes([c0, c1, c2, c3]),
        kind,
    }
}

/// What the bytes at a record boundary hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A whole, checksummed record.
    Record {
        /// Record kind.
        kind: u8,
        /// Payload.
        payload: &'a [u8],
    },
    /// Zeros: the end of the records.
    End,
    /// Not a record: torn, overwritten or damaged.
    Bad(&'static str),
}

impl Decoded<'_> {
    /// Bytes the record takes, header included (0 unless a record).
    pub(crate) fn size(&self) -> usize {
        match self {
            Decoded::Record { payload, .. } => HEADER + payload.len(),
            Decoded::End | Decoded::Bad(_) => 0,
        }
    }
}

/// Decodes the record at the start of `room`, the bytes from a record
/// boundary to the end of the readable region. Never panics.
pub(crate) fn decode(room: &[u8]) -> Decoded<'_> {
    let Some(h) = room.first_chunk::<HEADER>() else {
        return if room.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Bad("a partial header at the end of the segment")
        };
    };
    match parse_header(h) {
        Header::Zero => Decoded::End,
        Header::Record { len, crc, kind } => {
            let Some(payload) = room.get(HEADER..HEADER.saturating_add(len as usize)) else {
                return Decoded::Bad("its length runs past the end of the segment");
            };
            if checksum(len, kind, payload) == crc {
                Decoded::Record { kind, payload }
            } else {
                Decoded::Bad("checksum mismatch")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encoded(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let len = u32::try_from(payload.len()).expect("test payloads are small");
        encode_into(&mut buf, kind, len, payload);
        buf
    }

    #[test]
    fn the_emptiest_record_is_not_an_end_marker() {
        let buf = encoded(0, &[]);
        assert_eq!(buf.len(), HEADER);
        assert_ne!(buf, [0u8; HEADER]);
        assert_eq!(
            decode(&buf),
            Decoded::Record {
                kind: 0,
                payload: &[]
            }
        );
    }

    #[test]
    fn zeros_and_short_tails() {
        assert_eq!(decode(&[]), Decoded::End);
        assert_eq!(decode(&[0; 5]), Decoded::End);
        assert_eq!(decode(&[0; 100]), Decoded::End);
        assert!(matches!(decode(&[0, 0, 1]), Decoded::Bad(_)));
    }

    proptest! {
        #[test]
        fn round_trip(kind: u8, payload in proptest::collection::vec(any::<u8>(), 0..300), tail in 0usize..20) {
            let mut buf = encoded(kind, &payload);
            let size = buf.len();
            buf.resize(size + tail, 0);
            let d = decode(&buf);
            prop_assert_eq!(d, Decoded::Record { kind, payload: &payload });
            prop_assert_eq!(d.size(), size);
            prop_assert_eq!(decode(&buf[size..]), Decoded::End);
        }

        #[test]
        fn any_changed_byte_is_caught(
            kind: u8,
            payload in proptest::collection::vec(any::<u8>(), 0..300),
            at: prop::sample::Index,
            xor in 1u8..=255,
        ) {
            let mut buf = encoded(kind, &payload);
            let i = at.index(buf.len());
            buf[i] ^= xor;
            // Room for a longer record than the original, so a grown length
            // is judged by the checksum and not only by running out of bytes.
            buf.resize(buf.len() + 64, 0);
            prop_assert!(!matches!(decode(&buf), Decoded::Record { .. }), "byte {} changed, still decodes", i);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&bytes);
        }
    }
}
