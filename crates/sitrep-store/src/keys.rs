//! Key layout of the single index table. One table, prefixed keys, so a job
//! is one atomic index transaction.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `m` | id | message record (envelope position, refs, expiry, its copies' hops and outbox sequences) |
//! | `o` | hop 0x00 (255 - precedence) seq | outbox copy (send order) |
//! | `d` | id | dedup: retain-until ms, then the submission key if any |
//! | `k` | submission key (32) | id (16), request digest (32) |
//! | `D` | retain-until id | () (dedup expiry index) |
//! | `x` | expires id | () (message expiry index) |
//! | `t` | expires id | () (deliveries tracked at the origin, still open at expiry) |
//! | `n` | cursor | inbox entry |
//! | `s` | id recipient | delivery record |
//! | `L` | segment (u64 BE) | u64 count of index entries whose envelope is in that log segment |
//! | `c` | name | u64 counter |

use sitrep_core::{MessageId, NodeId, Precedence};

pub(crate) fn message(id: &MessageId) -> Vec<u8> {
    [b"m", &id.as_bytes()[..]].concat()
}

pub(crate) fn outbox_prefix(hop: &NodeId) -> Vec<u8> {
    [b"o", hop.as_str().as_bytes(), b"\0"].concat()
}

pub(crate) fn outbox(hop: &NodeId, precedence: Precedence, seq: u64) -> Vec<u8> {
    [&outbox_rank(hop, precedence)[..], &seq.to_be_bytes()].concat()
}

/// The copies of one precedence for `hop`, in arrival order.
pub(crate) fn outbox_rank(hop: &NodeId, precedence: Precedence) -> Vec<u8> {
    let rank = 255 - precedence.to_proto() as u8;
    [&outbox_prefix(hop)[..], &[rank]].concat()
}

/// The hop id inside an `o` key.
pub(crate) fn hop_of_outbox(key: &[u8]) -> Option<NodeId> {
    let rest = key.strip_prefix(b"o")?;
    let end = rest.iter().position(|b| *b == 0)?;
    NodeId::new(std::str::from_utf8(&rest[..end]).ok()?).ok()
}

pub(crate) fn dedup(id: &MessageId) -> Vec<u8> {
    [b"d", &id.as_bytes()[..]].concat()
}

pub(crate) fn submission(key: &[u8; 32]) -> Vec<u8> {
    [&b"k"[..], &key[..]].concat()
}

pub(crate) fn dedup_expiry(retain_until_ms: i64, id: &MessageId) -> Vec<u8> {
    [b"D", &ms(retain_until_ms)[..], &id.as_bytes()[..]].concat()
}

pub(crate) fn expiry(expires_ms: i64, id: &MessageId) -> Vec<u8> {
    [b"x", &ms(expires_ms)[..], &id.as_bytes()[..]].concat()
}

pub(crate) fn inbox(cursor: u64) -> Vec<u8> {
    [b"n", &cursor.to_be_bytes()[..]].concat()
}

pub(crate) fn delivery_prefix(id: &MessageId) -> Vec<u8> {
    [b"s", &id.as_bytes()[..]].concat()
}

pub(crate) fn delivery(id: &MessageId, recipient: &NodeId) -> Vec<u8> {
    [&delivery_prefix(id)[..], recipient.as_str().as_bytes()].concat()
}

pub(crate) fn counter(name: &str) -> Vec<u8> {
    [b"c", name.as_bytes()].concat()
}

/// Milliseconds as big-endian bytes that sort like the numbers (negative
/// times clamp to 0: nothing we store predates 1970).
pub(crate) fn ms(v: i64) -> [u8; 8] {
    u64::try_from(v).unwrap_or(0).to_be_bytes()
}

/// The id at the end of an `x` or `D` key.
pub(crate) fn trailing_id(key: &[u8]) -> Option<MessageId> {
    key.len()
        .checked_sub(16)
        .and_then(|at| MessageId::from_slice(&key[at..]).ok())
}

/// The big-endian u64 at `at` of a key.
pub(crate) fn u64_at(key: &[u8], at: usize) -> Option<u64> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The live count of a log segment.
pub(crate) fn live(segment: u64) -> Vec<u8> {
    [&b"L"[..], &segment.to_be_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(s: &str) -> NodeId {
        NodeId::new(s).expect("valid")
    }

    #[test]
    fn outbox_keys_sort_by_precedence_then_sequence() {
        let h = hop("nspl-hub");
        let mut keys = vec![
            outbox(&h, Precedence::Routine, 1),
            outbox(&h, Precedence::Flash, 9),
            outbox(&h, Precedence::Routine, 0),
            outbox(&h, Precedence::Priority, 5),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                outbox(&h, Precedence::Flash, 9),
                outbox(&h, Precedence::Priority, 5),
                outbox(&h, Precedence::Routine, 0),
                outbox(&h, Precedence::Routine, 1),
            ]
        );
    }

    #[test]
    fn hop_prefixes_do_not_overlap() {
        // "a" must not be a prefix of "ab"'s keys.
        assert!(!outbox(&hop("ab"), Precedence::Routine, 0).starts_with(&outbox_prefix(&hop("a"))));
        assert_eq!(
            hop_of_outbox(&outbox(&hop("msb"), Precedence::Flash, 7)),
            Some(hop("msb"))
        );
        assert!(
            outbox(&hop("msb"), Precedence::Flash, 7)
                .starts_with(&outbox_rank(&hop("msb"), Precedence::Flash))
        );
    }
}
