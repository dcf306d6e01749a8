//! The implementation of [`Storage`]: a segment log for durability, a redb table as its index, one writer thread with group commit, reads from any thread.
//!
//! Envelope bodies live only in the log (in the record of the job that took
//! them in); the index holds their positions and a live count per segment,
//! and a sealed segment with no live entry is deleted.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prost::Message as _;
use sitrep_core::{MessageId, NodeId, Precedence};
use tokio::sync::{mpsc, oneshot};

use crate::index::{Change, Index, Snapshot};
use crate::keys;
use crate::log::{Dir, Log, LogConfig, LogError, OsDir, Position};
use crate::records::{
    BodyPb, CopyPb, CopySeqPb, DeliveryPb, InboxRecord, JobPb, MessageRecord, OpPb, OutboxRecord, decode,
    op_kind,
};
use crate::{
    BoxFuture, Copy, DeliveryRecord, DeliveryState, HopStats, InboxEntry, Ingest, Op, Outcome, Queued, Quota,
    Result, Storage, StoreError, SubmissionKey, lock,
};

/// 7 days past expiry: dedup entries must outlive a message so that a
/// replay is refused even if it arrives late; a week covers any outage we plan for.
pub const DEDUP_RETENTION_MS: i64 = 7 * 86_400_000;
/// 1024 jobs waiting: when the disk is slower than the network, callers
/// wait here and QUIC flow control pushes back on peers.
const QUEUE_DEPTH: usize = 1024;
/// 512 jobs per group commit at most, so one fsync never waits on an unbounded batch.
const MAX_GROUP: usize = 512;
/// 10,000 expiries per sweep, so one sweep never holds the writer for long.
const MAX_EXPIRE_PER_SWEEP: usize = 10_000;
/// 16 MiB of index pages cached: the index holds small keys (≈ 300 bytes
/// per message), so this covers the working set of a hub with a large
/// backlog while keeping a node's memory small.
const CACHE_BYTES: usize = 16 * 1024 * 1024;
/// 100,000 pending keys: replay commits what it has to the index and moves
/// `log.applied` on at this size, so rebuilding a large index needs bounded memory.
const REPLAY_CHUNK_KEYS: usize = 100_000;
/// 10 s between segment deletion rounds at most: a round flushes and
/// fsyncs the index, which competes with group commits for the disk; the
/// price is up to 10 s of traffic kept on disk a little longer.
const RECLAIM_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The log record kind of one job ([`JobPb`]).
const RECORD_JOB: u8 = 1;
/// The index key holding the log position just after the last record
/// applied to the index: replay starts there.
const APPLIED_KEY: &str = "log.applied";
/// The index key holding the index layout's version; an index without it
/// (or with another) is rebuilt from the log at open.
const VERSION_KEY: &str = "index.version";
/// 4: the index in redb (3 was the same layout in sled): envelopes in the
/// log only, positions and live counts in the index; each message record
/// lists its copies. An index of another version is rebuilt from the log at
/// open.
const INDEX_VERSION: u64 = 4;
/// A body position not known yet (its group is being written).
const PENDING_SEGMENT: u64 = u64::MAX;
/// Where the segment log lives in a store's directory.
const LOG_DIR: &str = "log";
/// Where the index lives in a store's directory; deleting it makes the
/// next open rebuild it from the log.
const INDEX_DIR: &str = "index";

struct Job {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<Vec<Outcome>>>,
}

#[derive(Default, Clone, Copy)]
struct Totals {
    depth: u64,
    bytes: u64,
}

struct Inner {
    index: Index,
    log: Log,
    path: String,
    index_dir: std::path::PathBuf,
    /// Whether sealed segments with nothing live are deleted.
    reclaim: std::sync::atomic::AtomicBool,
    /// Segments deleted since open.
    reclaimed: AtomicU64,
    /// Least time between deletion rounds, ms.
    reclaim_every_ms: AtomicU64,
    /// Segments before this one are sealed and their live counts applied.
    reclaim_upto: AtomicU64,
    /// Wakes the reclaimer thread; dropped at close to end it.
    reclaim_ping: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    reclaimer: Mutex<Option<JoinHandle<()>>>,
    /// The first storage failure; once set, every write is refused.
    failed: Mutex<Option<String>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    totals: Mutex<BTreeMap<NodeId, Totals>>,
    /// Caps on ingest.
    quota: Mutex<Quota>,
}

/// A channel's store: the segment log and its index. Cheap to clone.
#[derive(Clone)]
pub struct ChannelStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChannelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl ChannelStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread:
    /// the segment log in `dir/log/`, the index in `dir/index/`.
    /// Replays every log record the index has not applied yet (all of them
    /// if the index is missing).
    ///
    /// # Errors
    /// [`StoreError::Log`] if the log cannot be opened or a record is
    /// corrupt, [`StoreError::Db`] if the index cannot be opened, or
    /// [`StoreError::Corrupt`] if the index does not decode.
    pub fn open(dir: &Path) -> Result<Self> {
        let log_dir = OsDir::open(dir.join(LOG_DIR)).map_err(|e| StoreError::Db {
            path: dir.display().to_string(),
            source: redb::Error::Io(e),
        })?;
        Self::open_with(dir, Arc::new(log_dir), LogConfig::default())
    }

    /// As [`ChannelStore::open`], with the log on `log_dir` (a `log::SimDir` in
    /// power-loss tests) and the index in `dir/index/`.
    ///
    /// # Errors
    /// As [`ChannelStore::open`].
    #[doc(hidden)]
    pub fn open_with(dir: &Path, log_dir: Arc<dyn Dir>, config: LogConfig) -> Result<Self> {
        let path = dir.display().to_string();
        let db_err = |source: redb::Error| StoreError::Db {
            path: path.clone(),
            source,
        };
        if dir.join("conf").is_file() && dir.join("db").is_file() {
            // sled's own files at the top: a store from before the log,
            // which this version would silently start empty beside.
            return Err(db_err(redb::Error::Io(std::io::Error::other(format!(
                "{path} holds a store in the old layout (sled files at the top, no log/); \
                 drain it with the previous version or move it aside, then start again"
            )))));
        }
        let (log, recovery) = Log::open(log_dir, config).map_err(|source| StoreError::Log {
            path: path.clone(),
            source,
        })?;
        let (index, replaced) = Index::open(&dir.join(INDEX_DIR), CACHE_BYTES).map_err(db_err)?;
        if replaced {
            tracing::warn!(store = %path, "index in another engine's files: rebuilding it from the log");
        }
        let snap = index.read().map_err(db_err)?;
        let version = snap
            .get(&keys::counter(VERSION_KEY))
            .map_err(db_err)?
            .as_deref()
            .map(read_u64);
        if version != Some(INDEX_VERSION) {
            if !snap.is_empty().map_err(db_err)? {
                tracing::warn!(
                    store = %path,
                    found = version.unwrap_or(1),
                    want = INDEX_VERSION,
                    "index in another layout: rebuilding it from the log"
                );
                index.clear().map_err(db_err)?;
            }
            index
                .commit(
                    [(
                        keys::counter(VERSION_KEY),
                        Some(INDEX_VERSION.to_be_bytes().to_vec()),
                    )],
                    true,
                )
                .map_err(db_err)?;
        }
        drop(snap);
        let applied = read_applied(&index.read().map_err(db_err)?, &path)?;
        let replayed = replay(&index, &log, &path, applied)?;
        tracing::info!(
            store = %path,
            from = %applied,
            replayed,
            tail_records = recovery.records,
            segments = recovery.segments,
            truncated_at = recovery.truncated.map(|t| t.at.to_string()),
            truncated_bytes = recovery.truncated.map(|t| t.bytes),
            "store opened: log records replayed into the index"
        );
        // Outbox totals per hop: one pass over the outboxes at start-up.
        let mut totals: BTreeMap<NodeId, Totals> = BTreeMap::new();
        let snap = index.read().map_err(db_err)?;
        for item in snap.prefix(b"o").map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let rec: OutboxRecord = decode(&k, &v)?;
            let hop = keys::hop_of_outbox(&k).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).escape_default().to_string(),
                detail: "no hop id in outbox key".into(),
            })?;
            let t = totals.entry(hop).or_default();
            t.depth += 1;
            t.bytes += rec.bytes;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let counters = Counters::load(&snap).map_err(db_err)?;
        drop(snap);
        let log_active = log.tail().segment;
        let inner = Arc::new(Inner {
            index,
            log,
            path: path.clone(),
            index_dir: dir.join(INDEX_DIR),
            reclaim: std::sync::atomic::AtomicBool::new(true),
            reclaimed: AtomicU64::new(0),
            reclaim_every_ms: AtomicU64::new(u64::try_from(RECLAIM_EVERY.as_millis()).unwrap_or(u64::MAX)),
            reclaim_upto: AtomicU64::new(log_active),
            reclaim_ping: Mutex::new(None),
            reclaimer: Mutex::new(None),
            failed: Mutex::new(None),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            totals: Mutex::new(totals),
            quota: Mutex::new(Quota::UNLIMITED),
        });
        let reclaimed = reclaim(&inner).map_err(|reason| failed(&inner, &reason))?;
        if reclaimed > 0 {
            tracing::info!(store = %path, segments = reclaimed, "log segments reclaimed at open");
        }
        let (ping, pings) = std::sync::mpsc::sync_channel(1);
        let for_reclaimer = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("sitrep-store-reclaim".into())
            .spawn(move || reclaimer(&for_reclaimer, &pings))
            .map_err(|e| db_err(redb::Error::Io(e)))?;
        *lock(&inner.reclaim_ping) = Some(ping);
        *lock(&inner.reclaimer) = Some(handle);
        let for_writer = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("sitrep-store-writer".into())
            .spawn(move || writer(&for_writer, rx, counters))
            .map_err(|e| db_err(redb::Error::Io(e)))?;
        *lock(&inner.writer) = Some(handle);
        Ok(Self { inner })
    }

    /// Whether the store still takes writes: `Err` with the first storage
    /// failure (a failed log write or fdatasync) once it refuses them. For
    /// the node's readiness check.
    ///
    /// # Errors
    /// The failure, as a message for an operator.
    pub fn healthy(&self) -> std::result::Result<(), String> {
        match &*lock(&self.inner.failed) {
            None => Ok(()),
            Some(reason) => Err(format!(
                "store {} refuses writes after a storage failure: {reason}",
                self.inner.path
            )),
        }
    }

    fn db_err(&self, source: impl Into<redb::Error>) -> StoreError {
        StoreError::Db {
            path: self.inner.path.clone(),
            source: source.into(),
        }
    }

    /// A view of the index as last committed.
    fn snapshot(&self) -> Result<Snapshot> {
        self.inner.index.read().map_err(|e| self.db_err(e))
    }

    /// The envelope of `id` at `body`, from the log; `None` if its segment
    /// was reclaimed (the entry was removed after the caller read it).
    fn body(&self, key: &[u8], id: &MessageId, body: Option<BodyPb>) -> Result<Option<Vec<u8>>> {
        let Some(b) = body.filter(|b| b.segment != PENDING_SEGMENT) else {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(key).escape_default().to_string(),
                detail: "no envelope position".into(),
            });
        };
        let pos = Position {
            segment: b.segment,
            offset: b.offset,
        };
        match self.inner.log.read(pos) {
            Ok((_, payload)) => envelope_in(pos, &payload, id).map(Some),
            Err(LogError::NoRecord { .. }) => Ok(None),
            Err(source) => Err(StoreError::Log {
                path: self.inner.path.clone(),
                source,
            }),
        }
    }

    /// Sets the caps on what the store takes in (default: none).
    pub fn set_quota(&self, quota: Quota) {
        *lock(&self.inner.quota) = quota;
    }

    /// The caps on what the store takes in.
    pub fn quota(&self) -> Quota {
        *lock(&self.inner.quota)
    }

    /// Free bytes on the disk of the log or the index, whichever has less;
    /// `None` if it cannot be read.
    pub fn free_bytes(&self) -> Option<u64> {
        let index = free_bytes(&self.inner.index_dir).ok()?;
        match self.inner.log.dir().free_bytes() {
            Ok(Some(log)) => Some(log.min(index)),
            Ok(None) => Some(index),
            Err(_) => None,
        }
    }

    /// Stops (`false`) or restarts the deletion of log segments that
    /// nothing needs; for tests that keep an old copy of the index.
    #[doc(hidden)]
    pub fn set_reclaim(&self, on: bool) {
        self.inner.reclaim.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets the least time between segment deletion rounds (tests use zero).
    #[doc(hidden)]
    pub fn set_reclaim_every(&self, every: std::time::Duration) {
        let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .reclaim_every_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Log segments on disk now (the last is the one appends go to).
    pub fn log_segments(&self) -> usize {
        self.inner.log.segments().len()
    }

    /// Log segments deleted since open because nothing in them was live.
    pub fn reclaimed_segments(&self) -> u64 {
        self.inner.reclaimed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counters of the log since open: bytes handed to `write`, syncs
    /// (`fdatasync` per group commit, directory syncs at segment changes).
    pub fn log_io(&self) -> (u64, u64) {
        (self.inner.log.bytes_written(), self.inner.log.syncs())
    }

    /// Applies `ops` and waits for durability, from a thread that is not
    /// inside the async runtime (tests, tools).
    ///
    /// # Errors
    /// As [`Storage::apply`].
    pub fn apply_blocking(&self, ops: Vec<Op>) -> Result<Vec<Outcome>> {
        let (reply, rx) = oneshot::channel();
        let tx = lock(&self.inner.jobs).clone().ok_or(StoreError::Closed)?;
        tx.blocking_send(Job { ops, reply })
            .map_err(|_| StoreError::Closed)?;
        rx.blocking_recv().map_err(|_| StoreError::Closed)?
    }
}

impl Storage for ChannelStore {
    fn apply(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Vec<Outcome>>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            let tx = lock(&self.inner.jobs).clone().ok_or(StoreError::Closed)?;
            tx.send(Job { ops, reply })
                .await
                .map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn outbox_peek(
        &self,
        next_hop: &NodeId,
        limit: usize,
        skip: &dyn Fn(&MessageId) -> bool,
    ) -> Result<Vec<Queued>> {
        let mut out = Vec::new();
        let snap = self.snapshot()?;
        let prefix = keys::outbox_prefix(next_hop);
        for item in snap.prefix(&prefix).map_err(|e| self.db_err(e))? {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let rec: OutboxRecord = decode(&k, &v)?;
            let id = parse_id(&k, &rec.id)?;
            if skip(&id) {
                continue;
            }
            let mk = keys::message(&id);
            let Some(m) = snap.get(&mk).map_err(|e| self.db_err(e))? else {
                // Raced with a writer that just removed it: it is gone.
                continue;
            };
            let m: MessageRecord = decode(&mk, &m)?;
            let Some(envelope) = self.body(&mk, &id, m.body)? else {
                // Raced with a writer that removed it and reclaimed its segment.
                continue;
            };
            out.push(Queued {
                id,
                envelope,
                serves: rec.serves.iter().filter_map(|s| NodeId::new(s).ok()).collect(),
                hop_count: m.hop_count,
                precedence: Precedence::from_proto(m.precedence).unwrap_or(Precedence::Routine),
                queued_ms: rec.queued_ms,
            });
        }
        Ok(out)
    }

    fn seen(&self, id: &MessageId) -> Result<bool> {
        self.snapshot()?
            .contains(&keys::dedup(id))
            .map_err(|e| self.db_err(e))
    }

    fn inbox_after(&self, after: u64, limit: usize) -> Result<Vec<InboxEntry>> {
        let start = keys::inbox(after.saturating_add(1));
        let mut out = Vec::new();
        let snap = self.snapshot()?;
        for item in snap
            .prefix_from(&start, b"n")
            .map_err(|e| self.db_err(e))?
            .take(limit)
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let rec: InboxRecord = decode(&k, &v)?;
            let id = parse_id(&k, &rec.id)?;
            let envelope = self.body(&k, &id, rec.body)?.ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).escape_default().to_string(),
                detail: "the log segment holding its envelope is gone".into(),
            })?;
            out.push(InboxEntry {
                cursor: keys::u64_at(&k, 1).unwrap_or(0),
                id,
                envelope,
                received_ms: rec.received_ms,
            });
        }
        Ok(out)
    }

    fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>> {
        let prefix = keys::delivery_prefix(id);
        let mut out = Vec::new();
        let snap = self.snapshot()?;
        for item in snap.prefix(&prefix).map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let rec: DeliveryPb = decode(&k, &v)?;
            let recipient = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|s| NodeId::new(s).ok())
                .ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).escape_default().to_string(),
                    detail: "bad recipient in delivery key".into(),
                })?;
            out.push(DeliveryRecord {
                recipient,
                state: DeliveryState::from_i32(rec.state).ok_or_else(|| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).escape_default().to_string(),
                    detail: format!("delivery state {}", rec.state),
                })?,
                hop: NodeId::new(&rec.hop).ok(),
                at_ms: rec.at_ms,
                reason: rec.reason,
            });
        }
        Ok(out)
    }

    fn outbox_stats(&self) -> Vec<HopStats> {
        let totals = lock(&self.inner.totals).clone();
        let snap = self.snapshot().ok();
        totals
            .into_iter()
            .map(|(hop, t)| {
                // The first copy of each precedence is its oldest.
                let oldest = Precedence::ALL
                    .iter()
                    .filter_map(|p| {
                        let rank = keys::outbox_rank(&hop, *p);
                        let (k, v) = snap.as_ref()?.prefix(&rank).ok()?.next()?.ok()?;
                        decode::<OutboxRecord>(&k, &v).ok().map(|r| r.queued_ms)
                    })
                    .min();
                HopStats {
                    next_hop: hop,
                    depth: t.depth,
                    bytes: t.bytes,
                    oldest_queued_ms: oldest,
                }
            })
            .collect()
    }

    fn disk_bytes(&self) -> u64 {
        let log = self.inner.log.segments().len() as u64 * self.inner.log.config().segment_bytes;
        self.inner.index.disk_bytes().saturating_add(log)
    }

    fn close(&self) {
        // Dropping the sender ends the writer after it drains and flushes.
        drop(lock(&self.inner.jobs).take());
        if let Some(h) = lock(&self.inner.writer).take()
            && h.join().is_err()
        {
            tracing::error!(path = %self.inner.path, "store writer panicked");
        }
        drop(lock(&self.inner.reclaim_ping).take());
        if let Some(h) = lock(&self.inner.reclaimer).take()
            && h.join().is_err()
        {
            tracing::error!(path = %self.inner.path, "store reclaimer panicked");
        }
    }
}

fn parse_id(key: &[u8], bytes: &[u8]) -> Result<MessageId> {
    MessageId::from_slice(bytes).map_err(|len| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).escape_default().to_string(),
        detail: format!("message id of {len} bytes"),
    })
}

/// Persistent counters, owned by the writer.
struct Counters {
    seq: u64,
    cursor: u64,
}

impl Counters {
    fn load(snap: &Snapshot) -> std::result::Result<Self, redb::Error> {
        let read = |name: &str| -> std::result::Result<u64, redb::Error> {
            Ok(snap
                .get(&keys::counter(name))?
                .and_then(|v| v.as_slice().try_into().ok())
                .map_or(0, u64::from_be_bytes))
        };
        Ok(Self {
            seq: read("seq")?,
            cursor: read("cursor")?,
        })
    }
}

fn writer(inner: &Inner, mut rx: mpsc::Receiver<Job>, mut counters: Counters) {
    let mut last_active = inner.log.tail().segment;
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        if let Some(reason) = lock(&inner.failed).clone() {
            for job in jobs {
                let _ = job.reply.send(Err(failed(inner, &reason)));
            }
            continue;
        }
        // Each job is checked against the index plus the writes of the
        // jobs before it in this group, none of which readers can see yet.
        let mut group = Group::default();
        let mut records = Vec::with_capacity(jobs.len());
        let mut results = Vec::with_capacity(jobs.len());
        let committed = match inner.index.read() {
            Ok(snap) => {
                let mut room = Room::new(inner, &jobs);
                for job in &mut jobs {
                    if let Err(reason) = room.admit(&group, &job.ops) {
                        results.push(Err(StoreError::Full {
                            path: inner.path.clone(),
                            reason,
                        }));
                        continue;
                    }
                    // The ops move into the job's log record (envelopes not copied).
                    let ops = std::mem::take(&mut job.ops);
                    let r = eval_job(inner, &snap, &mut group, ops, &mut counters, records.len());
                    results.push(r.map(|(outcomes, record)| {
                        records.push(record);
                        outcomes
                    }));
                }
                // Durable first (one fdatasync), visible second, answered last.
                commit(inner, &snap, group, &records)
            }
            Err(e) => Err(format!("index read failed: {e}")),
        };
        // The group is durable and applied whatever happens next; a failed
        // reclamation stops only the writes after it.
        if let Ok(emptied) = &committed {
            // A segment may have emptied (an entry released) or been sealed:
            // the reclaimer looks, off this thread. Every segment before the
            // active one is sealed and its live counts are in the index now.
            let active = inner.log.tail().segment;
            if *emptied || active != last_active {
                last_active = active;
                inner
                    .reclaim_upto
                    .fetch_max(active, std::sync::atomic::Ordering::Release);
                if let Some(ping) = lock(&inner.reclaim_ping).as_ref() {
                    // Full: a look is already due, and it reads the newest bound.
                    let _ = ping.try_send(());
                }
            }
        }
        if let Err(reason) = &committed {
            tracing::error!(store = %inner.path, error = %reason, "store refuses writes from now on");
            let mut f = lock(&inner.failed);
            if f.is_none() {
                *f = Some(reason.clone());
            }
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let answer = match &committed {
                Ok(_) => result,
                Err(reason) => Err(failed(inner, reason)),
            };
            // The caller may have gone away (shutdown); its data is durable anyway.
            let _ = job.reply.send(answer);
        }
    }
    if let Err(e) = inner.index.make_durable() {
        tracing::warn!(path = %inner.path, error = %e, "final index commit failed; the next open replays more of the log");
    }
}

/// Free bytes for unprivileged writers on the filesystem holding `path`.
///
/// # Errors
/// The `statvfs` call's.
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The quota check of one group: what is queued per hop (committed, plus
/// the group's jobs so far) against the caps, and the free space (looked
/// up once per group, only when a job takes something in).
struct Room {
    quota: Quota,
    path: String,
    /// Committed envelope bytes queued per hop, and in all.
    hops: BTreeMap<NodeId, u64>,
    total: u64,
    log_dir: Arc<dyn Dir>,
    index_dir: std::path::PathBuf,
    free: Option<std::result::Result<u64, String>>,
}

impl Room {
    fn new(inner: &Inner, jobs: &[Job]) -> Self {
        let quota = *lock(&inner.quota);
        let ingests = jobs
            .iter()
            .any(|j| j.ops.iter().any(|op| matches!(op, Op::Ingest(_))));
        let (hops, total) = if ingests && quota != Quota::UNLIMITED {
            let totals = lock(&inner.totals);
            (
                totals.iter().map(|(h, t)| (h.clone(), t.bytes)).collect(),
                totals.values().map(|t| t.bytes).sum(),
            )
        } else {
            (BTreeMap::new(), 0)
        };
        Self {
            quota,
            path: inner.path.clone(),
            hops,
            total,
            log_dir: inner.log.dir(),
            index_dir: inner.index_dir.clone(),
            free: None,
        }
    }

    /// `Err(why)` if the job takes a message in and that would go over a cap.
    fn admit(&mut self, group: &Group, ops: &[Op]) -> std::result::Result<(), String> {
        let ingests: Vec<&Ingest> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Ingest(i) => Some(i),
                _ => None,
            })
            .collect();
        if ingests.is_empty() || self.quota == Quota::UNLIMITED {
            return Ok(());
        }
        if self.quota.min_free_bytes > 0 {
            let free = self.free.get_or_insert_with(|| {
                let log = self.log_dir.free_bytes().map_err(|e| e.to_string())?;
                let index = free_bytes(&self.index_dir).map_err(|e| e.to_string())?;
                Ok(log.map_or(index, |l| l.min(index)))
            });
            match free {
                Ok(free) if *free < self.quota.min_free_bytes => {
                    return Err(format!(
                        "the disk has {} free, below the {} kept free ([limits] min_free_bytes)",
                        mib(*free),
                        mib(self.quota.min_free_bytes)
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(store = %self.path, error = %e, "cannot read the free space; taking the message");
                }
            }
        }
        // Queued bytes: committed, plus this group's jobs before this one.
        let mut hops = self.hops.clone();
        let mut total = self.total;
        for (hop, _, bytes) in &group.deltas {
            let b = hops.entry(hop.clone()).or_default();
            *b = b.saturating_add_signed(*bytes);
            total = total.saturating_add_signed(*bytes);
        }
        for i in ingests {
            let len = i.envelope.len() as u64;
            for c in &i.copies {
                let b = hops.entry(c.next_hop.clone()).or_default();
                if b.saturating_add(len) > self.quota.max_hop_queue_bytes {
                    return Err(format!(
                        "the queue for {} holds {}, and this message would take it over its cap of {} ([limits] max_peer_queue_bytes)",
                        c.next_hop,
                        mib(*b),
                        mib(self.quota.max_hop_queue_bytes)
                    ));
                }
                *b += len;
                total = total.saturating_add(len);
            }
            if total > self.quota.max_queue_bytes {
                return Err(format!(
                    "the channel's queues would hold {}, over their cap of {} ([limits] max_queue_bytes)",
                    mib(total),
                    mib(self.quota.max_queue_bytes)
                ));
            }
        }
        Ok(())
    }
}

/// Bytes as MiB for a message.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1_048_576.0)
}

fn failed(inner: &Inner, reason: &str) -> StoreError {
    StoreError::Failed {
        path: inner.path.clone(),
        reason: reason.to_owned(),
    }
}

/// Appends the group's records to the log (one fdatasync), then commits
/// its writes to the index in one transaction with the new `log.applied`, and says
/// whether a segment's live count went to zero. `Err` means the store must
/// refuse writes from now on: the log is poisoned, or the index no longer
/// matches it until a reopen replays.
fn commit(
    inner: &Inner,
    snap: &Snapshot,
    mut group: Group,
    records: &[Vec<u8>],
) -> std::result::Result<bool, String> {
    if records.is_empty() {
        // Every job failed on its own (duplicates, ...): nothing to write.
        return Ok(false);
    }
    let batch: Vec<(u8, &[u8])> = records.iter().map(|r| (RECORD_JOB, r.as_slice())).collect();
    let positions = inner.log.append(&batch).map_err(|e| e.to_string())?;
    group.fill_positions(snap, &positions)?;
    let emptied = group
        .pending
        .iter()
        .any(|(k, v)| v.is_none() && k.first() == Some(&b'L'));
    let applied = inner.log.tail();
    apply_group(&inner.index, group.pending, applied).map_err(|e| format!("index update failed: {e}"))?;
    let mut totals = lock(&inner.totals);
    for (hop, depth, bytes) in group.deltas {
        let t = totals.entry(hop.clone()).or_default();
        t.depth = t.depth.saturating_add_signed(depth);
        t.bytes = t.bytes.saturating_add_signed(bytes);
        if t.depth == 0 {
            totals.remove(&hop);
        }
    }
    Ok(emptied)
}

/// Deletes every sealed log segment that no index entry points into, and
/// returns how many. Before the first removal it makes the index durable
/// (a durable commit, which also covers every earlier one), so
/// that no state of the index a power cut can bring back points into a
/// removed segment or replays from before one. `Err` means the store must
/// refuse writes from now on.
fn reclaim(inner: &Inner) -> std::result::Result<usize, String> {
    if !inner.reclaim.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(0);
    }
    // Only segments whose live counts the writer has applied.
    let upto = inner.reclaim_upto.load(std::sync::atomic::Ordering::Acquire);
    let sealed: Vec<u64> = inner.log.segments().into_iter().filter(|s| *s < upto).collect();
    let mut dead = Vec::new();
    let snap = inner
        .index
        .read()
        .map_err(|e| format!("index read failed: {e}"))?;
    for &segment in &sealed {
        if !snap
            .contains(&keys::live(segment))
            .map_err(|e| format!("index read failed: {e}"))?
        {
            dead.push(segment);
        }
    }
    drop(snap);
    if dead.is_empty() {
        return Ok(0);
    }
    inner.index.make_durable().map_err(|e| {
        format!(
            "durable commit of the index {} before reclaiming log segments failed: {e}",
            inner.index.file().display()
        )
    })?;
    for &segment in &dead {
        inner.log.remove_segment(segment).map_err(|e| e.to_string())?;
        inner.reclaimed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    tracing::debug!(store = %inner.path, segments = dead.len(), "log segments reclaimed");
    Ok(dead.len())
}

/// The reclaimer thread: looks for dead segments whenever the writer pings,
/// so that the deletions and their fsyncs are not done by the writer
/// thread. A failure makes the store refuse writes.
fn reclaimer(inner: &Inner, ping: &std::sync::mpsc::Receiver<()>) {
    let mut last: Option<std::time::Instant> = None;
    while ping.recv().is_ok() {
        if lock(&inner.failed).is_some() {
            continue;
        }
        // At most one deletion round per RECLAIM_EVERY: its durable index
        // commit and fsyncs compete with group commits for the disk. Pings meanwhile
        // coalesce; close ends the wait.
        let every = std::time::Duration::from_millis(
            inner.reclaim_every_ms.load(std::sync::atomic::Ordering::Relaxed),
        );
        if let Some(until) = last.map(|t| t + every) {
            // Pings until then only say "look again": wait the time out.
            while let Some(wait) = until.checked_duration_since(std::time::Instant::now()) {
                if matches!(
                    ping.recv_timeout(wait),
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                ) {
                    return;
                }
            }
        }
        let result = reclaim(inner);
        if matches!(result, Ok(n) if n > 0) {
            last = Some(std::time::Instant::now());
        }
        if let Err(reason) = result {
            tracing::error!(store = %inner.path, error = %reason, "store refuses writes from now on");
            let mut f = lock(&inner.failed);
            if f.is_none() {
                *f = Some(reason);
            }
        }
    }
}

/// Commits the group's writes to the index with the log position they
/// bring it to, in one transaction (durable every [`crate::index::DURABLE_EVERY`]).
fn apply_group(
    index: &Index,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    applied: Position,
) -> std::result::Result<(), redb::Error> {
    let position: Change = (
        keys::counter(APPLIED_KEY),
        Some(encode_position(applied).to_vec()),
    );
    index
        .commit(pending.into_iter().chain(std::iter::once(position)), false)
        .map(|_| ())
}

fn encode_position(p: Position) -> [u8; 12] {
    let mut out = [0; 12];
    out[..8].copy_from_slice(&p.segment.to_be_bytes());
    out[8..].copy_from_slice(&p.offset.to_be_bytes());
    out
}

fn read_applied(snap: &Snapshot, path: &str) -> Result<Position> {
    let key = keys::counter(APPLIED_KEY);
    let Some(v) = snap.get(&key).map_err(|source| StoreError::Db {
        path: path.to_owned(),
        source,
    })?
    else {
        return Ok(Position::START);
    };
    let bad = || StoreError::Corrupt {
        key: APPLIED_KEY.into(),
        detail: format!("{} bytes, expected 12", v.len()),
    };
    let segment: [u8; 8] = v.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    let offset: [u8; 4] = v.get(8..).and_then(|b| b.try_into().ok()).ok_or_else(bad)?;
    Ok(Position {
        segment: u64::from_be_bytes(segment),
        offset: u32::from_be_bytes(offset),
    })
}

/// Applies every log record from `from` on to the index, through the same
/// code as the writer, and returns how many there were.
fn replay(index: &Index, log: &Log, path: &str, from: Position) -> Result<u64> {
    let db_err = |source| StoreError::Db {
        path: path.to_owned(),
        source,
    };
    let mut snap = index.read().map_err(db_err)?;
    let mut counters = Counters::load(&snap).map_err(db_err)?;
    let mut group = Group::default();
    let mut failure = None;
    let mut replayed = 0;
    log.replay(from, |pos, kind, payload| {
        if failure.is_some() {
            return;
        }
        let step = (|| -> Result<()> {
            if group.pending.len() >= REPLAY_CHUNK_KEYS {
                // Everything before this record is in `group`.
                apply_group(index, std::mem::take(&mut group).pending, pos).map_err(db_err)?;
                snap = index.read().map_err(db_err)?;
            }
            if kind != RECORD_JOB {
                return Err(StoreError::Corrupt {
                    key: format!("log record {pos}"),
                    detail: format!("unknown record kind {kind}"),
                });
            }
            let (ops, cursors) = decode_job(pos, payload)?;
            match eval_job_in(
                &snap,
                path,
                &group.pending,
                &ops,
                &cursors,
                &mut counters,
                BodyAt::Known(pos),
            ) {
                Ok(ev) => {
                    group.merge(ev, 0);
                    Ok(())
                }
                // Only jobs that passed were logged, against this same
                // state: a duplicate means the index already has it.
                Err(StoreError::Duplicate(id)) => {
                    tracing::warn!(store = %path, %pos, %id, "log record already in the index; skipped");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        })();
        replayed += 1;
        if let Err(e) = step {
            failure = Some(e);
        }
    })
    .map_err(|source| StoreError::Log {
        path: path.to_owned(),
        source,
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if replayed > 0 || from != log.tail() {
        apply_group(index, group.pending, log.tail()).map_err(db_err)?;
    }
    Ok(replayed)
}

/// One job as a log record; `cursors` holds, per op, the inbox cursor it
/// was given (0: none; missing entries count as 0).
fn encode_job(ops: Vec<Op>, cursors: &[u64]) -> Vec<u8> {
    let strings = |v: &[NodeId]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let ops = ops
        .into_iter()
        .enumerate()
        .map(|(n, op)| match op {
            Op::Ingest(i) => OpPb {
                kind: op_kind::INGEST,
                id: i.id.as_bytes().to_vec(),
                envelope: i.envelope,
                precedence: i.precedence.to_proto() as i32,
                expires_ms: i.expires_ms,
                now_ms: i.now_ms,
                hop_count: i.hop_count,
                copies: i
                    .copies
                    .iter()
                    .map(|c| CopyPb {
                        next_hop: c.next_hop.to_string(),
                        serves: strings(&c.serves),
                    })
                    .collect(),
                inbox: i.inbox,
                track: strings(&i.track),
                cursor: cursors.get(n).copied().unwrap_or(0),
                submission_key: i.submission.map(|s| s.key.to_vec()).unwrap_or_default(),
                submission_request: i.submission.map(|s| s.request.to_vec()).unwrap_or_default(),
                ..OpPb::default()
            },
            Op::Forwarded { id, next_hop, now_ms } => OpPb {
                kind: op_kind::FORWARDED,
                id: id.as_bytes().to_vec(),
                node: next_hop.to_string(),
                now_ms,
                ..OpPb::default()
            },
            Op::Rejected {
                id,
                next_hop,
                reason,
                now_ms,
            } => OpPb {
                kind: op_kind::REJECTED,
                id: id.as_bytes().to_vec(),
                node: next_hop.to_string(),
                reason,
                now_ms,
                ..OpPb::default()
            },
            Op::Delivered {
                id,
                recipient,
                delivered_ms,
            } => OpPb {
                kind: op_kind::DELIVERED,
                id: id.as_bytes().to_vec(),
                node: recipient.to_string(),
                now_ms: delivered_ms,
                ..OpPb::default()
            },
            Op::ExpireDue { now_ms } => OpPb {
                kind: op_kind::EXPIRE_DUE,
                now_ms,
                ..OpPb::default()
            },
        })
        .collect();
    JobPb { ops }.encode_to_vec()
}

/// A log record back as a job, with the inbox cursor each op was given.
fn decode_job(pos: Position, payload: &[u8]) -> Result<(Vec<Op>, Vec<u64>)> {
    let key = format!("log record {pos}");
    let corrupt = |detail: String| StoreError::Corrupt {
        key: key.clone(),
        detail,
    };
    let job: JobPb = decode(key.as_bytes(), payload)?;
    let node = |s: &str| NodeId::new(s).map_err(|e| corrupt(format!("node id {s:?}: {e}")));
    let nodes = |v: &[String]| v.iter().map(|s| node(s)).collect::<Result<Vec<_>>>();
    let id = |b: &[u8]| MessageId::from_slice(b).map_err(|len| corrupt(format!("message id of {len} bytes")));
    let cursors = job.ops.iter().map(|op| op.cursor).collect();
    let ops = job
        .ops
        .into_iter()
        .map(|op| {
            Ok(match op.kind {
                op_kind::INGEST => Op::Ingest(Ingest {
                    id: id(&op.id)?,
                    precedence: Precedence::from_proto(op.precedence)
                        .ok_or_else(|| corrupt(format!("precedence {}", op.precedence)))?,
                    expires_ms: op.expires_ms,
                    now_ms: op.now_ms,
                    hop_count: op.hop_count,
                    copies: op
                        .copies
                        .iter()
                        .map(|c| {
                            Ok(Copy {
                                next_hop: node(&c.next_hop)?,
                                serves: nodes(&c.serves)?,
                            })
                        })
                        .collect::<Result<_>>()?,
                    inbox: op.inbox,
                    track: nodes(&op.track)?,
                    submission: submission_of(&op.submission_key, &op.submission_request)
                        .map_err(|()| corrupt("a submission key that is not two digests".into()))?,
                    envelope: op.envelope,
                }),
                op_kind::FORWARDED => Op::Forwarded {
                    id: id(&op.id)?,
                    next_hop: node(&op.node)?,
                    now_ms: op.now_ms,
                },
                op_kind::REJECTED => Op::Rejected {
                    id: id(&op.id)?,
                    next_hop: node(&op.node)?,
                    reason: op.reason,
                    now_ms: op.now_ms,
                },
                op_kind::DELIVERED => Op::Delivered {
                    id: id(&op.id)?,
                    recipient: node(&op.node)?,
                    delivered_ms: op.now_ms,
                },
                op_kind::EXPIRE_DUE => Op::ExpireDue { now_ms: op.now_ms },
                k => return Err(corrupt(format!("unknown op kind {k}"))),
            })
        })
        .collect::<Result<_>>()?;
    Ok((ops, cursors))
}

/// A submission key from its stored digests (both empty: none).
fn submission_of(key: &[u8], request: &[u8]) -> std::result::Result<Option<SubmissionKey>, ()> {
    if key.is_empty() && request.is_empty() {
        return Ok(None);
    }
    Ok(Some(SubmissionKey {
        key: key.try_into().map_err(|_| ())?,
        request: request.try_into().map_err(|_| ())?,
    }))
}

/// The envelope of message `id` in the job record `payload`.
fn envelope_in(pos: Position, payload: &[u8], id: &MessageId) -> Result<Vec<u8>> {
    let key = format!("log record {pos}");
    let job: JobPb = decode(key.as_bytes(), payload)?;
    job.ops
        .into_iter()
        .find(|op| op.kind == op_kind::INGEST && op.id == id.as_bytes())
        .map(|op| op.envelope)
        .ok_or_else(|| StoreError::Corrupt {
            key,
            detail: format!(
                "the index points here for the envelope of {id}, but the record does not take it in"
            ),
        })
}

/// The writes of a group's jobs that passed, not yet in the index.
#[derive(Default)]
struct Group {
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    deltas: Vec<(NodeId, i64, i64)>,
    /// (record slot in the batch, index key) whose envelope position is
    /// that record's, filled in once the batch is appended.
    patches: Vec<(usize, Vec<u8>)>,
}

impl Group {
    fn merge(&mut self, ev: Evaluated, slot: usize) -> Vec<Outcome> {
        self.pending.extend(ev.pending);
        self.deltas.extend(ev.deltas);
        self.patches.extend(ev.patches.into_iter().map(|k| (slot, k)));
        ev.outcomes
    }

    /// Writes the positions the append gave into the entries that point at
    /// them, and counts each live in its segment. An entry that a later
    /// job of the group already removed needs neither.
    fn fill_positions(&mut self, snap: &Snapshot, positions: &[Position]) -> std::result::Result<(), String> {
        for (slot, key) in std::mem::take(&mut self.patches) {
            let pos = *positions
                .get(slot)
                .ok_or_else(|| format!("no log position for record {slot} of the group"))?;
            let body = Some(BodyPb {
                segment: pos.segment,
                offset: pos.offset,
            });
            let Some(Some(value)) = self.pending.get_mut(&key) else {
                continue;
            };
            let bad = |e: StoreError| e.to_string();
            *value = match key.first() {
                Some(b'm') => {
                    let mut m: MessageRecord = decode(&key, value).map_err(bad)?;
                    m.body = body;
                    m.encode_to_vec()
                }
                Some(b'n') => {
                    let mut n: InboxRecord = decode(&key, value).map_err(bad)?;
                    n.body = body;
                    n.encode_to_vec()
                }
                _ => return Err(format!("no envelope position in index key {key:?}")),
            };
            let lk = keys::live(pos.segment);
            let count = match self.pending.get(&lk) {
                Some(Some(v)) => read_u64(v),
                Some(None) => 0,
                None => snap
                    .get(&lk)
                    .map_err(|e| e.to_string())?
                    .as_deref()
                    .map_or(0, read_u64),
            };
            self.pending.insert(lk, Some((count + 1).to_be_bytes().to_vec()));
        }
        Ok(())
    }
}

/// A big-endian u64 value (0 if it is not 8 bytes).
fn read_u64(v: &[u8]) -> u64 {
    v.try_into().map_or(0, u64::from_be_bytes)
}

/// Pending writes of one job over the index and its group: reads see
/// earlier writes of the same job and of the jobs before it in the group.
struct Tx<'a> {
    snap: &'a Snapshot,
    path: &'a str,
    group: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    deltas: Vec<(NodeId, i64, i64)>,
    body: BodyAt,
    patches: Vec<Vec<u8>>,
}

/// Where the log record of the job being evaluated is.
#[derive(Debug, Clone, Copy)]
enum BodyAt {
    /// Replay: its position.
    Known(Position),
    /// The writer: not appended yet; positions are filled in after.
    Pending,
}

impl<'a> Tx<'a> {
    fn err(&self, source: redb::Error) -> StoreError {
        StoreError::Db {
            path: self.path.to_owned(),
            source,
        }
    }

    fn overlay(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.pending.get(key).or_else(|| self.group.get(key))
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.overlay(key) {
            return Ok(v.clone());
        }
        self.snap.get(key).map_err(|e| self.err(e))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn del(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// The envelope position for index entry `key`: the job's record. In
    /// the writer a placeholder, noted to be filled in (and counted live)
    /// after the append; in replay, counted live at once.
    fn body_of(&mut self, key: &[u8]) -> Result<BodyPb> {
        Ok(match self.body {
            BodyAt::Known(pos) => {
                self.live_add(pos.segment, 1)?;
                BodyPb {
                    segment: pos.segment,
                    offset: pos.offset,
                }
            }
            BodyAt::Pending => {
                self.patches.push(key.to_vec());
                BodyPb {
                    segment: PENDING_SEGMENT,
                    offset: 0,
                }
            }
        })
    }

    /// An index entry that pointed at `body` is gone.
    fn release_body(&mut self, body: Option<BodyPb>) -> Result<()> {
        match body {
            // Taken in by this same group: never counted.
            Some(b) if b.segment != PENDING_SEGMENT => self.live_add(b.segment, -1),
            _ => Ok(()),
        }
    }

    fn live_add(&mut self, segment: u64, delta: i64) -> Result<()> {
        let key = keys::live(segment);
        let count = self
            .get(&key)?
            .as_deref()
            .map_or(0, read_u64)
            .saturating_add_signed(delta);
        if count == 0 {
            self.del(key);
        } else {
            self.put(key, count.to_be_bytes().to_vec());
        }
        Ok(())
    }

    /// Keys and values under `prefix`, earlier writes of the group and this job included.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut merged = BTreeMap::new();
        for item in self.snap.prefix(prefix).map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            merged.insert(k, Some(v));
        }
        for layer in [self.group, &self.pending] {
            for (k, v) in layer.range(prefix.to_vec()..) {
                if !k.starts_with(prefix) {
                    break;
                }
                merged.insert(k.clone(), v.clone());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }

    /// The first `limit` keys in `lo..=hi`, as the index will hold them once
    /// the group is applied. Exact whatever the grouping, so that replay
    /// (which groups records differently) writes the same keys.
    fn range_keys(&self, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut merged: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        let mut from_db = 0;
        for item in self.snap.range(lo, hi).map_err(|e| self.err(e))? {
            if from_db >= limit {
                break;
            }
            let (k, _) = item.map_err(|e| self.err(e))?;
            if matches!(self.overlay(&k), Some(None)) {
                continue;
            }
            from_db += 1;
            merged.insert(k, true);
        }
        for layer in [self.group, &self.pending] {
            for (k, v) in layer.range(lo.to_vec()..=hi.to_vec()) {
                merged.insert(k.clone(), v.is_some());
            }
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, live)| live.then_some(k))
            .take(limit)
            .collect())
    }
}

/// Checks one job against the index and its group and, if it passes, adds
/// its writes to the group and returns its outcomes and its log record.
/// `slot` is the job's place in the group's batch of records: its envelope
/// positions are filled in from it once the batch is appended.
fn eval_job(
    inner: &Inner,
    snap: &Snapshot,
    group: &mut Group,
    ops: Vec<Op>,
    counters: &mut Counters,
    slot: usize,
) -> Result<(Vec<Outcome>, Vec<u8>)> {
    let start = Counters {
        seq: counters.seq,
        cursor: counters.cursor,
    };
    let ev = eval_job_in(
        snap,
        &inner.path,
        &group.pending,
        &ops,
        &[],
        counters,
        BodyAt::Pending,
    )?;
    let record = encode_job(ops, &ev.assigned);
    let max = inner.log.config().max_payload();
    if record.len() > max {
        *counters = start;
        return Err(StoreError::TooLarge {
            len: record.len(),
            max,
        });
    }
    Ok((group.merge(ev, slot), record))
}

/// The writes and answers of one job that passed, not yet in its group.
struct Evaluated {
    outcomes: Vec<Outcome>,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    deltas: Vec<(NodeId, i64, i64)>,
    /// Keys whose envelope position is the job's record (writer only).
    patches: Vec<Vec<u8>>,
    /// Per op, the inbox cursor it was given (0: none).
    assigned: Vec<u64>,
}

/// Evaluates `ops` over the index and `group`; `recorded` holds, per op,
/// the inbox cursor a log record says it was given (replay), or is empty.
fn eval_job_in(
    snap: &Snapshot,
    path: &str,
    group: &BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    ops: &[Op],
    recorded: &[u64],
    counters: &mut Counters,
    body: BodyAt,
) -> Result<Evaluated> {
    let mut tx = Tx {
        snap,
        path,
        group,
        pending: BTreeMap::new(),
        deltas: Vec::new(),
        body,
        patches: Vec::new(),
    };
    let start = Counters {
        seq: counters.seq,
        cursor: counters.cursor,
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut assigned = Vec::with_capacity(ops.len());
    let result = (|| {
        for (n, op) in ops.iter().enumerate() {
            let cursor_before = counters.cursor;
            outcomes.push(match op {
                Op::Ingest(i) => ingest(&mut tx, i, counters, recorded.get(n).copied().unwrap_or(0))?,
                Op::Forwarded { id, next_hop, now_ms } => {
                    settle(&mut tx, id, next_hop, DeliveryState::Forwarded, "", *now_ms)?
                }
                Op::Rejected {
                    id,
                    next_hop,
                    reason,
                    now_ms,
                } => settle(&mut tx, id, next_hop, DeliveryState::Rejected, reason, *now_ms)?,
                Op::Delivered {
                    id,
                    recipient,
                    delivered_ms,
                } => delivered(&mut tx, id, recipient, *delivered_ms)?,
                Op::ExpireDue { now_ms } => expire_due(&mut tx, *now_ms)?,
            });
            assigned.push(if counters.cursor == cursor_before {
                0
            } else {
                counters.cursor
            });
        }
        Ok(())
    })();
    if let Err(e) = result {
        // Nothing of a failed job is written; counters go back too.
        *counters = start;
        return Err(e);
    }
    if counters.seq != start.seq {
        tx.put(keys::counter("seq"), counters.seq.to_be_bytes().to_vec());
    }
    if counters.cursor != start.cursor {
        tx.put(keys::counter("cursor"), counters.cursor.to_be_bytes().to_vec());
    }
    let Tx {
        pending,
        deltas,
        patches,
        ..
    } = tx;
    Ok(Evaluated {
        outcomes,
        pending,
        deltas,
        patches,
        assigned,
    })
}

fn ingest(tx: &mut Tx<'_>, i: &Ingest, counters: &mut Counters, recorded_cursor: u64) -> Result<Outcome> {
    let dk = keys::dedup(&i.id);
    if tx.get(&dk)?.is_some() {
        return Err(StoreError::Duplicate(i.id));
    }
    let retain_until = i.expires_ms.saturating_add(DEDUP_RETENTION_MS);
    let mut dedup = retain_until.to_be_bytes().to_vec();
    if let Some(s) = &i.submission {
        let sk = keys::submission(&s.key);
        if let Some(v) = tx.get(&sk)? {
            let first = v.get(..16).and_then(|b| MessageId::from_slice(b).ok());
            let (Some(id), Some(request)) = (first, v.get(16..48)) else {
                return Err(StoreError::Corrupt {
                    key: String::from_utf8_lossy(&sk).escape_default().to_string(),
                    detail: format!("a submission key record of {} bytes", v.len()),
                });
            };
            return Err(StoreError::Resubmitted {
                id,
                same_request: request == s.request,
            });
        }
        tx.put(sk, [&i.id.as_bytes()[..], &s.request[..]].concat());
        dedup.extend_from_slice(&s.key);
    }
    tx.put(dk, dedup);
    tx.put(keys::dedup_expiry(retain_until, &i.id), Vec::new());
    let bytes = i.envelope.len() as u64;
    if !i.copies.is_empty() {
        let mut seqs = Vec::with_capacity(i.copies.len());
        for copy in &i.copies {
            counters.seq += 1;
            let ok = keys::outbox(&copy.next_hop, i.precedence, counters.seq);
            let rec = OutboxRecord {
                id: i.id.as_bytes().to_vec(),
                serves: copy.serves.iter().map(ToString::to_string).collect(),
                queued_ms: i.now_ms,
                bytes,
            };
            tx.put(ok, rec.encode_to_vec());
            tx.deltas.push((copy.next_hop.clone(), 1, bytes as i64));
            seqs.push(CopySeqPb {
                hop: copy.next_hop.to_string(),
                seq: counters.seq,
            });
        }
        let mk = keys::message(&i.id);
        let record = MessageRecord {
            refs: u32::try_from(i.copies.len()).unwrap_or(u32::MAX),
            expires_ms: i.expires_ms,
            precedence: i.precedence.to_proto() as i32,
            hop_count: i.hop_count,
            body: Some(tx.body_of(&mk)?),
            copies: seqs,
        };
        tx.put(mk, record.encode_to_vec());
        tx.put(keys::expiry(i.expires_ms, &i.id), Vec::new());
    }
    if i.inbox {
        // The cursor the record says it was given (a rebuild after older
        // segments were reclaimed), never one handed out before.
        counters.cursor = recorded_cursor.max(counters.cursor + 1);
        let nk = keys::inbox(counters.cursor);
        let rec = InboxRecord {
            id: i.id.as_bytes().to_vec(),
            received_ms: i.now_ms,
            body: Some(tx.body_of(&nk)?),
        };
        tx.put(nk, rec.encode_to_vec());
    }
    if !i.track.is_empty() {
        for r in &i.track {
            let rec = DeliveryPb {
                state: DeliveryState::Queued.to_i32(),
                hop: String::new(),
                at_ms: i.now_ms,
                reason: String::new(),
            };
            tx.put(keys::delivery(&i.id, r), rec.encode_to_vec());
        }
        // Tracked deliveries still open at expiry become EXPIRED.
        tx.put(
            [b"t", &keys::ms(i.expires_ms)[..], &i.id.as_bytes()[..]].concat(),
            Vec::new(),
        );
    }
    Ok(Outcome::Done)
}

/// Removes the copy of `id` queued for `hop`; returns the recipients it served.
fn remove_copy(tx: &mut Tx<'_>, id: &MessageId, hop: &NodeId) -> Result<Option<Vec<NodeId>>> {
    let mk = keys::message(id);
    let Some(raw) = tx.get(&mk)? else {
        return Ok(None);
    };
    let mut m: MessageRecord = decode(&mk, &raw)?;
    // No copy for this hop: already settled.
    let Some(at) = m.copies.iter().position(|c| c.hop == hop.as_str()) else {
        return Ok(None);
    };
    let c = m.copies.remove(at);
    let precedence = Precedence::from_proto(m.precedence).unwrap_or(Precedence::Routine);
    let ok = keys::outbox(hop, precedence, c.seq);
    let Some(raw) = tx.get(&ok)? else {
        return Ok(None);
    };
    let rec: OutboxRecord = decode(&ok, &raw)?;
    tx.del(ok);
    tx.deltas.push((hop.clone(), -1, -(rec.bytes as i64)));
    m.refs = m.refs.saturating_sub(1);
    if m.refs == 0 {
        tx.release_body(m.body)?;
        tx.del(keys::expiry(m.expires_ms, id));
        tx.del(mk);
    } else {
        tx.put(mk, m.encode_to_vec());
    }
    Ok(Some(
        rec.serves.iter().filter_map(|s| NodeId::new(s).ok()).collect(),
    ))
}

/// The next hops `id` still has copies queued for.
fn copy_hops(tx: &Tx<'_>, id: &MessageId) -> Result<Vec<NodeId>> {
    let mk = keys::message(id);
    let Some(raw) = tx.get(&mk)? else {
        return Ok(Vec::new());
    };
    let m: MessageRecord = decode(&mk, &raw)?;
    Ok(m.copies.iter().filter_map(|c| NodeId::new(&c.hop).ok()).collect())
}

fn set_state(
    tx: &mut Tx<'_>,
    id: &MessageId,
    recipient: &NodeId,
    state: DeliveryState,
    hop: Option<&NodeId>,
    reason: &str,
    at_ms: i64,
) -> Result<bool> {
    let k = keys::delivery(id, recipient);
    let Some(raw) = tx.get(&k)? else {
        return Ok(false);
    };
    let cur: DeliveryPb = decode(&k, &raw)?;
    let cur_state = DeliveryState::from_i32(cur.state);
    let allowed = sitrep_core::delivery::transition(cur_state, state);
    if allowed {
        let rec = DeliveryPb {
            state: state.to_i32(),
            hop: hop.map(ToString::to_string).unwrap_or(cur.hop),
            at_ms,
            reason: reason.to_owned(),
        };
        tx.put(k, rec.encode_to_vec());
    }
    Ok(allowed)
}

fn settle(
    tx: &mut Tx<'_>,
    id: &MessageId,
    hop: &NodeId,
    state: DeliveryState,
    reason: &str,
    now_ms: i64,
) -> Result<Outcome> {
    let Some(serves) = remove_copy(tx, id, hop)? else {
        return Ok(Outcome::Gone);
    };
    for r in &serves {
        set_state(tx, id, r, state, Some(hop), reason, now_ms)?;
    }
    Ok(Outcome::Done)
}

fn delivered(tx: &mut Tx<'_>, id: &MessageId, recipient: &NodeId, at_ms: i64) -> Result<Outcome> {
    Ok(
        if set_state(tx, id, recipient, DeliveryState::Delivered, None, "", at_ms)? {
            Outcome::Done
        } else {
            Outcome::Gone
        },
    )
}

fn expire_due(tx: &mut Tx<'_>, now_ms: i64) -> Result<Outcome> {
    let mut expired = Vec::new();
    // Messages: drop every queued copy.
    let upto = [b"x", &keys::ms(now_ms)[..], &[0xff; 16][..]].concat();
    let due = tx.range_keys(b"x", &upto, MAX_EXPIRE_PER_SWEEP)?;
    for xk in due {
        let Some(id) = keys::trailing_id(&xk) else {
            continue;
        };
        let mut hops = Vec::new();
        for hop in copy_hops(tx, &id)? {
            if let Some(serves) = remove_copy(tx, &id, &hop)? {
                for r in &serves {
                    set_state(
                        tx,
                        &id,
                        r,
                        DeliveryState::Expired,
                        None,
                        "expired before delivery",
                        now_ms,
                    )?;
                }
                hops.push(hop);
            }
        }
        tx.del(xk);
        let mk = keys::message(&id);
        if let Some(raw) = tx.get(&mk)? {
            let m: MessageRecord = decode(&mk, &raw)?;
            tx.release_body(m.body)?;
            tx.del(mk);
        }
        expired.push((id, hops));
    }
    // Tracked deliveries still open at expiry.
    let upto = [b"t", &keys::ms(now_ms)[..], &[0xff; 16][..]].concat();
    let due = tx.range_keys(b"t", &upto, MAX_EXPIRE_PER_SWEEP)?;
    for tk in due {
        let Some(id) = keys::trailing_id(&tk) else {
            continue;
        };
        let prefix = keys::delivery_prefix(&id);
        for (k, _) in tx.scan_prefix(&prefix)? {
            if let Some(r) = std::str::from_utf8(&k[prefix.len()..])
                .ok()
                .and_then(|s| NodeId::new(s).ok())
            {
                set_state(
                    tx,
                    &id,
                    &r,
                    DeliveryState::Expired,
                    None,
                    "no receipt before expiry",
                    now_ms,
                )?;
            }
        }
        tx.del(tk);
    }
    // Dedup entries past their retention.
    let upto = [b"D", &keys::ms(now_ms)[..], &[0xff; 16][..]].concat();
    let due = tx.range_keys(b"D", &upto, MAX_EXPIRE_PER_SWEEP)?;
    for dk in due {
        if let Some(id) = keys::trailing_id(&dk) {
            let d = keys::dedup(&id);
            // The submission key goes with the dedup entry.
            if let Some(key) = tx.get(&d)?.and_then(|v| v.get(8..40).map(<[u8]>::to_vec))
                && let Ok(key) = <[u8; 32]>::try_from(key.as_slice())
            {
                tx.del(keys::submission(&key));
            }
            tx.del(d);
        }
        tx.del(dk);
    }
    Ok(Outcome::Expired(expired))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn node() -> impl Strategy<Value = NodeId> {
        "[a-z]{1,8}-[a-z0-9]{1,8}".prop_map(|s| NodeId::new(&s).expect("valid by construction"))
    }

    fn id() -> impl Strategy<Value = MessageId> {
        (any::<u32>(), any::<[u8; 10]>()).prop_map(|(t, r)| MessageId::new_v7(i64::from(t), r))
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                id(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<i64>(),
                any::<i64>(),
                any::<u32>(),
                proptest::collection::vec((node(), proptest::collection::vec(node(), 0..3)), 0..3),
                any::<bool>(),
                proptest::collection::vec(node(), 0..3),
                proptest::option::of((any::<[u8; 32]>(), any::<[u8; 32]>())),
            )
                .prop_map(
                    |(id, envelope, expires_ms, now_ms, hop_count, copies, inbox, track, submission)| {
                        Op::Ingest(Ingest {
                            id,
                            envelope,
                            precedence: Precedence::Flash,
                            expires_ms,
                            now_ms,
                            hop_count,
                            copies: copies
                                .into_iter()
                                .map(|(next_hop, serves)| Copy { next_hop, serves })
                                .collect(),
                            inbox,
                            track,
                            submission: submission.map(|(key, request)| SubmissionKey { key, request }),
                        })
                    }
                ),
            (id(), node(), any::<i64>()).prop_map(|(id, next_hop, now_ms)| Op::Forwarded {
                id,
                next_hop,
                now_ms
            }),
            (id(), node(), ".{0,20}", any::<i64>()).prop_map(|(id, next_hop, reason, now_ms)| Op::Rejected {
                id,
                next_hop,
                reason,
                now_ms
            }),
            (id(), node(), any::<i64>()).prop_map(|(id, recipient, delivered_ms)| Op::Delivered {
                id,
                recipient,
                delivered_ms
            }),
            any::<i64>().prop_map(|now_ms| Op::ExpireDue { now_ms }),
        ]
    }

    proptest! {
        #[test]
        fn a_job_record_decodes_to_the_same_job(ops in proptest::collection::vec(op(), 0..5)) {
            let cursors: Vec<u64> = (0..ops.len() as u64).map(|n| n * 7).collect();
            let bytes = encode_job(ops.clone(), &cursors);
            let (back, back_cursors) = decode_job(Position::START, &bytes).expect("own encoding decodes");
            // `Op` has no `PartialEq`: compare the debug forms and the re-encoding.
            prop_assert_eq!(format!("{ops:?}"), format!("{back:?}"));
            let want: Vec<u64> = ops
                .iter()
                .zip(&cursors)
                .map(|(op, c)| if matches!(op, Op::Ingest(_)) { *c } else { 0 })
                .collect();
            prop_assert_eq!(&back_cursors, &want);
            prop_assert_eq!(encode_job(back, &back_cursors), bytes);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_job(Position::START, &bytes);
        }
    }
}
