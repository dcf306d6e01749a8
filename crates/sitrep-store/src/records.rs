//! Stored records (prost-encoded) and the public views of them.

use sitrep_core::{MessageId, NodeId, Precedence};

use crate::StoreError;

/// `m` + id: a message this node must still forward. Its envelope is in
/// the segment log, in the record of the job that took it in.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MessageRecord {
    /// Outbox copies that still need it.
    #[prost(uint32, tag = "2")]
    pub(crate) refs: u32,
    #[prost(int64, tag = "3")]
    pub(crate) expires_ms: i64,
    #[prost(int32, tag = "4")]
    pub(crate) precedence: i32,
    #[prost(uint32, tag = "5")]
    pub(crate) hop_count: u32,
    /// Where the envelope is: the log record of the ingest job.
    #[prost(message, optional, tag = "6")]
    pub(crate) body: Option<BodyPb>,
    /// The copies still queued: next hop and outbox sequence, so that a
    /// copy's outbox key is found from the message.
    #[prost(message, repeated, tag = "7")]
    pub(crate) copies: Vec<CopySeqPb>,
}

/// One queued copy of a message: its next hop and outbox sequence.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(crate) struct CopySeqPb {
    #[prost(string, tag = "1")]
    pub(crate) hop: String,
    #[prost(uint64, tag = "2")]
    pub(crate) seq: u64,
}

/// A log position, in the index. `segment == u64::MAX` while the record's
/// group is being written (its position is filled in before the index is).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(crate) struct BodyPb {
    #[prost(uint64, tag = "1")]
    pub(crate) segment: u64,
    #[prost(uint32, tag = "2")]
    pub(crate) offset: u32,
}

/// `o` key's value: one queued copy.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OutboxRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) id: Vec<u8>,
    #[prost(string, repeated, tag = "2")]
    pub(crate) serves: Vec<String>,
    #[prost(int64, tag = "3")]
    pub(crate) queued_ms: i64,
    #[prost(uint64, tag = "4")]
    pub(crate) bytes: u64,
}

/// `n` + cursor. The envelope is in the segment log.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct InboxRecord {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) id: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub(crate) received_ms: i64,
    /// Where the envelope is: the log record of the ingest job.
    #[prost(message, optional, tag = "4")]
    pub(crate) body: Option<BodyPb>,
}

/// `s` + id + recipient.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeliveryPb {
    #[prost(int32, tag = "1")]
    pub(crate) state: i32,
    #[prost(string, tag = "2")]
    pub(crate) hop: String,
    #[prost(int64, tag = "3")]
    pub(crate) at_ms: i64,
    #[prost(string, tag = "4")]
    pub(crate) reason: String,
}

pub(crate) fn decode<M: prost::Message + Default>(key: &[u8], bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).escape_default().to_string(),
        detail: e.to_string(),
    })
}

/// A queued copy, ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Message id.
    pub id: MessageId,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
    /// Recipients this copy serves.
    pub serves: Vec<NodeId>,
    /// Hops taken to reach this node.
    pub hop_count: u32,
    /// Precedence.
    pub precedence: Precedence,
    /// When it was queued here.
    pub queued_ms: i64,
}

/// A message delivered to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// Monotonic cursor.
    pub cursor: u64,
    /// Message id.
    pub id: MessageId,
    /// The envelope, still sealed.
    pub envelope: Vec<u8>,
    /// When it was delivered here.
    pub received_ms: i64,
}

// The delivery states and their rules live in `sitrep-core`; re-exported
// here so the store's users keep their import.
pub use sitrep_core::delivery::DeliveryState;

/// Delivery of one message to one recipient, at the origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// The recipient.
    pub recipient: NodeId,
    /// Its state.
    pub state: DeliveryState,
    /// The hop that took custody (`FORWARDED`).
    pub hop: Option<NodeId>,
    /// When the state was reached (for `DELIVERED`, the recipient's time).
    pub at_ms: i64,
    /// Why (`REJECTED`).
    pub reason: String,
}

/// One outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HopStats {
    /// The next hop.
    pub next_hop: NodeId,
    /// Copies queued.
    pub depth: u64,
    /// Envelope bytes queued.
    pub bytes: u64,
    /// When the oldest copy was queued.
    pub oldest_queued_ms: Option<i64>,
}

/// One job as the segment log keeps it: the ops exactly as the caller gave
/// them, so that replaying the record against the index state it was first
/// applied to writes the same keys. One job is one log record, because a
/// record is the log's unit of atomicity.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct JobPb {
    #[prost(message, repeated, tag = "1")]
    pub(crate) ops: Vec<OpPb>,
}

/// [`OpPb::kind`] values.
pub(crate) mod op_kind {
    pub(crate) const INGEST: i32 = 1;
    pub(crate) const FORWARDED: i32 = 2;
    pub(crate) const REJECTED: i32 = 3;
    pub(crate) const DELIVERED: i32 = 4;
    pub(crate) const EXPIRE_DUE: i32 = 5;
}

/// One [`crate::Op`]; which fields are set depends on `kind`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct OpPb {
    #[prost(int32, tag = "1")]
    pub(crate) kind: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub(crate) envelope: Vec<u8>,
    #[prost(int32, tag = "4")]
    pub(crate) precedence: i32,
    #[prost(int64, tag = "5")]
    pub(crate) expires_ms: i64,
    /// `now_ms` of every kind, `delivered_ms` of `DELIVERED`.
    #[prost(int64, tag = "6")]
    pub(crate) now_ms: i64,
    #[prost(uint32, tag = "7")]
    pub(crate) hop_count: u32,
    #[prost(message, repeated, tag = "8")]
    pub(crate) copies: Vec<CopyPb>,
    #[prost(bool, tag = "9")]
    pub(crate) inbox: bool,
    #[prost(string, repeated, tag = "10")]
    pub(crate) track: Vec<String>,
    /// The next hop (`FORWARDED`, `REJECTED`) or the recipient (`DELIVERED`).
    #[prost(string, tag = "11")]
    pub(crate) node: String,
    #[prost(string, tag = "12")]
    pub(crate) reason: String,
    /// `INGEST` with `inbox`: the inbox cursor it was given, so that a
    /// rebuild from a log whose older segments were reclaimed gives every
    /// entry its cursor again (0 in records that predate the field).
    #[prost(uint64, tag = "13")]
    pub(crate) cursor: u64,
    /// `INGEST` at the origin: the submission's key and request digests
    /// (both 32 bytes), or empty.
    #[prost(bytes = "vec", tag = "14")]
    pub(crate) submission_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "15")]
    pub(crate) submission_request: Vec<u8>,
}

/// One [`crate::Copy`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CopyPb {
    #[prost(string, tag = "1")]
    pub(crate) next_hop: String,
    #[prost(string, repeated, tag = "2")]
    pub(crate) serves: Vec<String>,
}
