//! Durable store-and-forward storage for one channel of a sitrep node: a
//! segment log and its index.
//!
//! One [`ChannelStore`] per channel, each in its own directory (so the `secure`
//! store can live on its own encrypted volume). It holds:
//!
//! - **messages**: the custody copy of each envelope this node must still
//!   forward, with a reference count of the outbox copies that need it;
//! - **outboxes**: one per next hop, ordered by precedence (highest first)
//!   then by arrival sequence;
//! - **dedup**: every message id seen, kept until well after the message's
//!   expiry so a replay is refused also after a restart;
//! - **inbox**: envelopes delivered here, under a monotonic cursor (kept
//!   sealed: they are opened when read);
//! - **delivery states**: per (message, recipient), at the origin;
//! - **submission keys**: a client's idempotency key per message submitted
//!   here, kept as long as the message's dedup entry.
//!
//! Writes go through [`Storage::apply`] as a list of [`Op`]s that belong
//! together and are applied atomically. A single writer thread owns all
//! writes and does **group commit**: for every job waiting in its queue it
//! checks the job against the index (dedup, ...) and encodes it as one
//! record of the segment [`log`]; it appends the group's records with one
//! `fdatasync`, only then commits the group to the index in one
//! transaction, and only then answers each caller. So an `Ok` means the write is on disk
//! (custody), many messages share one fsync under load, and readers never
//! see a write that a power cut could still take back.
//!
//! The log is the single durability point (DESIGN.md §7): the index (a redb
//! table, see `index`) is only made durable now and then, never for an
//! answer; at open every log record after the index's `log.applied`
//! position is replayed into it, and a missing index is rebuilt from the
//! whole log. After a failed log write or sync the store refuses all writes
//! ([`StoreError::Failed`], [`ChannelStore::healthy`]).
//!
//! Reads see the index's last commit, from any thread.
//!
//! Not here: what to store and which delivery-state change is allowed
//! (routing, policy, `delivery::transition`: `sitrep-core`), networking.

pub mod audit;
mod index;
mod keys;
pub mod log;
pub mod private;
mod records;
mod store;

pub use records::{DeliveryRecord, DeliveryState, HopStats, InboxEntry, Queued};
pub use store::{ChannelStore, DEDUP_RETENTION_MS, free_bytes};

/// Locks `m`. A panic while holding one of the store's locks leaves plain
/// data behind, still consistent; go on rather than poison the node.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

use std::future::Future;
use std::pin::Pin;

use sitrep_core::{MessageId, NodeId, Precedence};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The message id was seen before (replay, or a retransmission of a
    /// message already in custody). Nothing was written.
    #[error("message {0} was seen before")]
    Duplicate(MessageId),
    /// The submission's idempotency key was used before, for message `id`.
    /// Nothing was written.
    #[error("this submission's key was used before, for message {id}")]
    Resubmitted {
        /// The message stored under the key the first time.
        id: MessageId,
        /// Whether the first request was the same as this one.
        same_request: bool,
    },
    /// The index failed (I/O, disk full, corruption). Nothing of the job
    /// is acknowledged; the caller must not ack upstream.
    #[error("store {path}: index: {source}")]
    Db {
        /// The store's directory.
        path: String,
        /// The index engine's error.
        #[source]
        source: redb::Error,
    },
    /// A stored record does not decode: the database is corrupt.
    #[error("store record {key} does not decode: {detail}")]
    Corrupt {
        /// Which key.
        key: String,
        /// Decoder message.
        detail: String,
    },
    /// The store's writer has stopped (the node is shutting down).
    #[error("store is closed")]
    Closed,
    /// A write or fdatasync of the segment log failed, or the index could
    /// not be updated after one succeeded. Nothing of the job is
    /// acknowledged, and the store refuses every later write: a failed
    /// fsync is never retried (its pages may be gone). Restart the node to
    /// recover what is durable from the log.
    #[error(
        "store {path} refuses writes after a storage failure: {reason}; \
         restart the node to recover from its log"
    )]
    Failed {
        /// The store's directory.
        path: String,
        /// The first failure.
        reason: String,
    },
    /// One job is larger than a log record can be. Nothing was written; the
    /// store keeps working.
    #[error("store job of {len} bytes is larger than the {max} bytes a log record can hold")]
    TooLarge {
        /// The encoded job.
        len: usize,
        /// The largest record payload.
        max: usize,
    },
    /// Taking the message in would go over a [`Quota`]: the disk is nearly
    /// full, or too much is queued. Nothing was written; the store keeps
    /// working, and settling, receipts and expiry (which free space) go on.
    /// Transient: retry later.
    #[error("store {path} is full: {reason}; nothing was stored, retry later")]
    Full {
        /// The store's directory.
        path: String,
        /// Which cap, and how full.
        reason: String,
    },
    /// The segment log could not be opened or replayed.
    #[error("store {path}: {source}")]
    Log {
        /// The store's directory.
        path: String,
        /// The log's error.
        #[source]
        source: log::LogError,
    },
}

/// Result of one storage call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a store takes in before it refuses new messages with
/// [`StoreError::Full`] (see [`ChannelStore::set_quota`]). Only ingests are
/// refused; everything that settles or expires messages goes on, using a
/// little of the space kept free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Space kept free on the filesystems of the log and the index.
    pub min_free_bytes: u64,
    /// Envelope bytes queued for all next hops together.
    pub max_queue_bytes: u64,
    /// Envelope bytes queued for any one next hop.
    pub max_hop_queue_bytes: u64,
}

impl Quota {
    /// No caps.
    pub const UNLIMITED: Self = Self {
        min_free_bytes: 0,
        max_queue_bytes: u64::MAX,
        max_hop_queue_bytes: u64::MAX,
    };
}

impl Default for Quota {
    fn default() -> Self {
        Self::UNLIMITED
    }
}

/// One copy of a message queued for one next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The next hop.
    pub next_hop: NodeId,
    /// Recipients this copy serves.
    pub serves: Vec<NodeId>,
}

impl Copy {
    /// One copy per next hop of a routing plan (next hop → the recipients
    /// that copy serves, as `sitrep_core::routing::Plan::copies`).
    pub fn per_hop(copies: impl IntoIterator<Item = (NodeId, Vec<NodeId>)>) -> Vec<Self> {
        copies
            .into_iter()
            .map(|(next_hop, serves)| Self { next_hop, serves })
            .collect()
    }
}

/// Take custody of a message: check it was never seen, record its id for
/// dedup, keep the envelope, queue copies and/or deliver it to the inbox,
/// and start delivery tracking at the origin. All or nothing.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// Message id.
    pub id: MessageId,
    /// The encoded envelope, exactly as received or sealed.
    pub envelope: Vec<u8>,
    /// Precedence, for outbox order.
    pub precedence: Precedence,
    /// Expiry, ms since the epoch.
    pub expires_ms: i64,
    /// Now, ms since the epoch.
    pub now_ms: i64,
    /// Hops taken to reach here (0 at the origin).
    pub hop_count: u32,
    /// Copies to queue, one per next hop.
    pub copies: Vec<Copy>,
    /// Deliver to this node's inbox.
    pub inbox: bool,
    /// Track delivery per recipient (at the origin): each starts `QUEUED`.
    pub track: Vec<NodeId>,
    /// At the origin, the client's idempotency key for this submission: a
    /// later ingest with the same key stores nothing and fails with
    /// [`StoreError::Resubmitted`] naming this message. Kept as long as the
    /// message's dedup entry.
    pub submission: Option<SubmissionKey>,
}

/// A client's idempotency key for one submission, as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmissionKey {
    /// A digest of the key as the client sent it (and whatever scopes it).
    pub key: [u8; 32],
    /// A digest of the request it came with, to tell a retry of the same
    /// request from a different request reusing the key.
    pub request: [u8; 32],
}

/// A write. A job is a list of these, applied atomically.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Op {
    /// See [`Ingest`].
    Ingest(Ingest),
    /// The next hop took custody (answered `Accepted`, or said it already
    /// had the message): drop our copy for it; at the origin, the recipients
    /// it serves become `FORWARDED`.
    Forwarded {
        /// Message.
        id: MessageId,
        /// The hop that took it.
        next_hop: NodeId,
        /// Now.
        now_ms: i64,
    },
    /// The next hop refused permanently: drop our copy; the recipients it
    /// serves become `REJECTED` with the reason.
    Rejected {
        /// Message.
        id: MessageId,
        /// The hop that refused.
        next_hop: NodeId,
        /// Why.
        reason: String,
        /// Now.
        now_ms: i64,
    },
    /// A signed receipt came back: `recipient` delivered message `id`.
    Delivered {
        /// Message.
        id: MessageId,
        /// Recipient that delivered it.
        recipient: NodeId,
        /// When, by the recipient's clock.
        delivered_ms: i64,
    },
    /// Drop everything that expired by `now_ms`: copies become `EXPIRED` at
    /// the origin. Also forgets dedup entries past their retention.
    ExpireDue {
        /// Now.
        now_ms: i64,
    },
}

/// What a job did, one entry per op.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Stored.
    Done,
    /// The op referred to something no longer there (already forwarded,
    /// expired, unknown): nothing to do.
    Gone,
    /// Ids that expired, with the next hops whose copies were dropped.
    Expired(Vec<(MessageId, Vec<NodeId>)>),
}

/// A boxed future, for the object-safe trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The seam between the node and its storage: routing and delivery use
/// only this, so another engine could replace the log and its index.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Applies `ops` atomically and resolves once they are durable.
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Outcome>>>;
    /// Up to `limit` queued copies for `next_hop`, in send order
    /// (precedence desc, sequence asc), skipping ids for which `skip` is true.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    fn outbox_peek(
        &self,
        next_hop: &NodeId,
        limit: usize,
        skip: &dyn Fn(&MessageId) -> bool,
    ) -> Result<Vec<Queued>>;
    /// Whether `id` was ever taken into custody here.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    fn seen(&self, id: &MessageId) -> Result<bool>;
    /// Inbox entries with cursor greater than `after`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    fn inbox_after(&self, after: u64, limit: usize) -> Result<Vec<InboxEntry>>;
    /// Delivery state per recipient of a message originated here.
    ///
    /// # Errors
    /// [`StoreError::Db`] or [`StoreError::Corrupt`].
    fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>>;
    /// Depth, bytes and oldest queued time per next hop.
    fn outbox_stats(&self) -> Vec<HopStats>;
    /// Bytes the database takes on disk.
    fn disk_bytes(&self) -> u64;
    /// Flushes and stops the writer. Later `apply` calls fail with `Closed`.
    fn close(&self);
}
