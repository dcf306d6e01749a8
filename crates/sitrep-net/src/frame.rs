//! Length-prefixed frames: a 4-byte big-endian length, then the protobuf `Frame`.
//!
//! The length is checked against the limit before anything is allocated for the body,
//! so a peer that announces 4 GiB costs us four bytes of reading.

use std::sync::Arc;

use prost::Message as _;
use sitrep_proto::v1::Frame;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::NetError;

/// Bytes of the length prefix.
pub const PREFIX_LEN: usize = 4;

/// Encodes `frame` as it goes on the wire: length prefix, then the protobuf bytes.
///
/// # Errors
/// [`NetError::FrameTooLarge`] if the encoding is longer than a 4-byte prefix can
/// announce (4 GiB), which no frame within any sane limit is.
pub fn encode_frame(frame: &Frame) -> Result<Vec<u8>, NetError> {
    let len = frame.encoded_len();
    let prefix = u32::try_from(len).map_err(|_| NetError::FrameTooLarge {
        len,
        limit: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(PREFIX_LEN + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    frame
        .encode(&mut out)
        .map_err(|e| NetError::Decode(format!("encoding a frame of {len} bytes: {e}")))?;
    Ok(out)
}

/// The body length a prefix announces, if it is within `limit`.
///
/// # Errors
/// [`NetError::FrameTooLarge`] if the announced length is over `limit`.
pub fn decode_len(prefix: [u8; 4], limit: usize) -> Result<usize, NetError> {
    // A u32 always fits in usize on the 32- and 64-bit targets we build for; if it
    // did not, saturating makes it "too large", which is the safe answer.
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > limit {
        return Err(NetError::FrameTooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame body (the bytes after the prefix).
///
/// # Errors
/// [`NetError::Decode`] if the bytes are not a `Frame`.
pub fn decode_body(body: &[u8]) -> Result<Frame, NetError> {
    Frame::decode(body).map_err(|e| NetError::Decode(format!("frame of {} bytes: {e}", body.len())))
}

/// Writes one length-prefixed frame.
///
/// # Errors
/// [`NetError::Stream`] or a connection error if the stream fails.
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), NetError> {
    let wire = encode_frame(frame)?;
    write_wire(send, &wire).await
}

/// Reads one length-prefixed frame of at most `limit` body bytes.
///
/// # Errors
/// [`NetError::FrameTooLarge`] before allocating if the prefix announces more than
/// `limit`; [`NetError::Decode`] if the body is not a `Frame`; [`NetError::Stream`] or a
/// connection error if the stream fails or ends inside the frame.
pub async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Frame, NetError> {
    let wire = read_wire(recv, limit).await?;
    decode_body(wire.get(PREFIX_LEN..).unwrap_or_default())
}

pub(crate) async fn write_wire(send: &mut quinn::SendStream, wire: &[u8]) -> Result<(), NetError> {
    send.write_all(wire).await.map_err(NetError::from_write)
}

/// Reads the wire bytes of one frame (prefix included, for the recorder).
/// Reads one frame: the prefix, then the body as it arrives. The buffer grows with the
/// bytes received (from at most [`FIRST_ALLOCATION`]), never to the announced length up
/// front, so a peer that announces a large frame and sends slowly holds only what it sent.
pub(crate) async fn read_wire(recv: &mut quinn::RecvStream, limit: usize) -> Result<Vec<u8>, NetError> {
    read_wire_within(recv, limit, None, None)
        .await
        .map(|(wire, _)| wire)
}

/// How long a frame of `len` bytes may take to arrive whole: `idle` plus
/// `idle` per MiB, so a large frame on a slow link still makes it while a
/// stream that crawls is cut off.
#[must_use]
pub(crate) fn frame_deadline(idle: std::time::Duration, len: usize) -> std::time::Duration {
    let mib = u32::try_from(len >> 20).unwrap_or(u32::MAX);
    idle.saturating_add(idle.saturating_mul(mib))
}

/// One read that must bring bytes within `idle` and end by `deadline`, if given.
async fn within<T>(
    idle: Option<std::time::Duration>,
    deadline: Option<tokio::time::Instant>,
    read: impl Future<Output = Result<T, NetError>>,
) -> Result<T, NetError> {
    let Some(idle) = idle else {
        return read.await;
    };
    let limit = tokio::time::Instant::now() + idle;
    let limit = deadline.map_or(limit, |d| limit.min(d));
    match tokio::time::timeout_at(limit, read).await {
        Ok(r) => r,
        Err(_) => Err(NetError::Stream(format!(
            "no bytes for {idle:?}, or the frame took longer than its deadline; stream stopped"
        ))),
    }
}

/// As [`read_wire`], first taking the frame's length in bytes from `budget` (bytes the
/// connection may hold in frames being read or handled), waiting while it is spent;
/// the permit is returned with the frame, to keep until the frame is dropped.
/// With `idle`, each read must bring bytes within `idle`, and the whole
/// frame must arrive within [`frame_deadline`] of its prefix (the wait for
/// the budget not counted).
pub(crate) async fn read_wire_within(
    recv: &mut quinn::RecvStream,
    limit: usize,
    budget: Option<&Arc<Semaphore>>,
    idle: Option<std::time::Duration>,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), NetError> {
    let mut prefix = [0u8; PREFIX_LEN];
    within(idle, None, async {
        recv.read_exact(&mut prefix).await.map_err(NetError::from_read)
    })
    .await?;
    let len = decode_len(prefix, limit)?;
    let total = PREFIX_LEN + len;
    let permit = match budget {
        Some(b) => Some(
            Arc::clone(b)
                .acquire_many_owned(u32::try_from(total).unwrap_or(u32::MAX))
                .await
                .map_err(|_| NetError::Stream("connection closing".into()))?,
        ),
        None => None,
    };
    let deadline = idle.map(|i| tokio::time::Instant::now() + frame_deadline(i, total));
    let mut wire = Vec::with_capacity(total.min(FIRST_ALLOCATION));
    wire.extend_from_slice(&prefix);
    while wire.len() < total {
        let want = total - wire.len();
        match within(idle, deadline, async {
            recv.read_chunk(want, true)
                .await
                .map_err(NetError::from_read_error)
        })
        .await?
        {
            Some(chunk) => wire.extend_from_slice(&chunk.bytes),
            None => {
                return Err(NetError::Stream(format!(
                    "stream ended after {} of {len} bytes, inside a frame",
                    wire.len() - PREFIX_LEN
                )));
            }
        }
    }
    Ok((wire, permit))
}

/// 64 KiB: the buffer a frame starts with (a report's frame fits); larger frames grow it
/// as their bytes arrive.
pub(crate) const FIRST_ALLOCATION: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;
    use sitrep_proto::v1::{Accepted, RejectCode, Rejected, Transfer, frame::Kind};

    fn body_of(wire: &[u8]) -> &[u8] {
        wire.get(PREFIX_LEN..).expect("an encoded frame has a prefix")
    }

    #[test]
    fn prefix_is_big_endian_body_length() {
        let frame = Frame {
            kind: Some(Kind::Accepted(Accepted {
                message_id: vec![7; 16],
            })),
        };
        let wire = encode_frame(&frame).expect("a small frame encodes");
        let prefix: [u8; 4] = wire[..4].try_into().expect("4 bytes");
        assert_eq!(u32::from_be_bytes(prefix) as usize, wire.len() - PREFIX_LEN);
        assert_eq!(u32::from_be_bytes(prefix) as usize, frame.encoded_len());
        assert_eq!(decode_body(body_of(&wire)).expect("round trip"), frame);
    }

    #[test]
    fn a_frame_may_take_the_idle_time_plus_that_per_mib() {
        let idle = std::time::Duration::from_secs(30);
        assert_eq!(frame_deadline(idle, 0), idle);
        assert_eq!(frame_deadline(idle, (1 << 20) - 1), idle);
        assert_eq!(frame_deadline(idle, 4 << 20), idle * 5);
    }

    #[test]
    fn empty_frame_is_a_zero_prefix() {
        let wire = encode_frame(&Frame::default()).expect("empty frame encodes");
        assert_eq!(wire, vec![0, 0, 0, 0]);
        assert_eq!(decode_len([0, 0, 0, 0], 0).expect("zero fits any limit"), 0);
    }

    #[test]
    fn decode_len_accepts_up_to_the_limit() {
        assert_eq!(
            decode_len(1024u32.to_be_bytes(), 1024).expect("at the limit"),
            1024
        );
        assert_eq!(decode_len(1u32.to_be_bytes(), 1024).expect("under the limit"), 1);
    }

    #[test]
    fn decode_len_refuses_over_the_limit() {
        match decode_len(1025u32.to_be_bytes(), 1024) {
            Err(NetError::FrameTooLarge { len, limit }) => assert_eq!((len, limit), (1025, 1024)),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        match decode_len([0xff; 4], 4 << 20) {
            Err(NetError::FrameTooLarge { len, .. }) => assert_eq!(len, u32::MAX as usize),
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        // Field 1, wire type 2 (length-delimited), announcing 100 bytes that are not there.
        assert!(matches!(
            decode_body(&[0x0a, 100, 1, 2]),
            Err(NetError::Decode(_))
        ));
    }

    #[test]
    fn transfer_and_rejected_round_trip() {
        for frame in [
            Frame {
                kind: Some(Kind::Transfer(Transfer {
                    envelope: vec![7; 40],
                    hop_count: 3,
                    serves: vec!["region-uppsala".into(), "msb".into()],
                })),
            },
            Frame {
                kind: Some(Kind::Rejected(Rejected {
                    code: RejectCode::FrameTooLarge as i32,
                    reason: "too big".into(),
                    permanent: true,
                })),
            },
        ] {
            let wire = encode_frame(&frame).expect("encodes");
            let prefix: [u8; 4] = wire[..4].try_into().expect("4 bytes");
            let len = decode_len(prefix, 1 << 20).expect("small frame");
            assert_eq!(len, wire.len() - PREFIX_LEN);
            assert_eq!(decode_body(body_of(&wire)).expect("decodes"), frame);
        }
    }

    proptest::proptest! {
        #[test]
        fn decode_len_agrees_with_the_limit(n in proptest::num::u32::ANY, limit in 0usize..(8 << 20)) {
            match decode_len(n.to_be_bytes(), limit) {
                Ok(len) => proptest::prop_assert!(len == n as usize && len <= limit),
                Err(NetError::FrameTooLarge { len, limit: l }) => {
                    proptest::prop_assert!(len == n as usize && len > limit && l == limit);
                }
                Err(other) => proptest::prop_assert!(false, "unexpected {other:?}"),
            }
        }

        #[test]
        fn frames_round_trip(
            id in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            reason in ".{0,64}",
            code in 0i32..12,
            hop_count in proptest::num::u32::ANY,
            serves in proptest::collection::vec("[a-z0-9-]{1,20}", 0..6),
        ) {
            for frame in [
                Frame { kind: Some(Kind::Accepted(Accepted { message_id: id.clone() })) },
                Frame { kind: Some(Kind::Rejected(Rejected { code, reason: reason.clone(), permanent: code % 2 == 0 })) },
                Frame { kind: Some(Kind::Transfer(Transfer { envelope: id.clone(), hop_count, serves: serves.clone() })) },
            ] {
                let wire = encode_frame(&frame).expect("a small frame encodes");
                let prefix: [u8; 4] = wire[..4].try_into().expect("4 bytes");
                let len = decode_len(prefix, wire.len()).expect("within its own length");
                proptest::prop_assert_eq!(len, wire.len() - PREFIX_LEN);
                proptest::prop_assert_eq!(decode_body(body_of(&wire)).expect("decodes"), frame);
            }
        }

        #[test]
        fn decode_body_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = decode_body(&bytes);
        }
    }
}
