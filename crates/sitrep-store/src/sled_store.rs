//! The sled implementation of [`Storage`]: one tree, one writer thread with
//! group commit, lock-free reads.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use prost::Message as _;
use sitrep_core::{MessageId, NodeId, Precedence};
use tokio::sync::{mpsc, oneshot};

use crate::keys;
use crate::records::{AgeRecord, DeliveryPb, InboxRecord, MessageRecord, OutboxRecord, decode};
use crate::{
    BoxFuture, DeliveryRecord, DeliveryState, HopStats, InboxEntry, Ingest, Op, Outcome, Queued, Result,
    Storage, StoreError,
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
/// 64 MiB of page cache: the memory budget of a hub holding a large backlog.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

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
    db: sled::Db,
    path: String,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    totals: Mutex<BTreeMap<NodeId, Totals>>,
}

/// A channel's store on sled. Cheap to clone.
#[derive(Clone)]
pub struct SledStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind,
    // still consistent; keep going rather than poison the node.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SledStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread.
    ///
    /// # Errors
    /// [`StoreError::Db`] if sled cannot open the directory, or
    /// [`StoreError::Corrupt`] if the outbox index does not decode.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.display().to_string();
        let db_err = |source| StoreError::Db {
            path: path.clone(),
            source,
        };
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_BYTES)
            .flush_every_ms(None)
            .open()
            .map_err(db_err)?;
        // Outbox totals per hop, from the age index: one pass at start-up.
        let mut totals: BTreeMap<NodeId, Totals> = BTreeMap::new();
        for item in db.scan_prefix(b"a") {
            let (k, v) = item.map_err(db_err)?;
            let rec: AgeRecord = decode(&k, &v)?;
            let hop = keys::hop_of_age(&k).ok_or_else(|| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).escape_default().to_string(),
                detail: "no hop id in age key".into(),
            })?;
            let t = totals.entry(hop).or_default();
            t.depth += 1;
            t.bytes += rec.bytes;
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let inner = Arc::new(Inner {
            db,
            path: path.clone(),
            jobs: Mutex::new(Some(tx)),
            writer: Mutex::new(None),
            totals: Mutex::new(totals),
        });
        let counters = Counters::load(&inner.db).map_err(db_err)?;
        let for_writer = Arc::clone(&inner);
        let handle = std::thread::Builder::new()
            .name("sitrep-store-writer".into())
            .spawn(move || writer(&for_writer, rx, counters))
            .map_err(|e| db_err(sled::Error::Io(e)))?;
        *lock(&inner.writer) = Some(handle);
        Ok(Self { inner })
    }

    fn db_err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.inner.path.clone(),
            source,
        }
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

impl Storage for SledStore {
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
        for item in self.inner.db.scan_prefix(keys::outbox_prefix(next_hop)) {
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
            let Some(m) = self.inner.db.get(&mk).map_err(|e| self.db_err(e))? else {
                // Raced with a writer that just removed it: it is gone.
                continue;
            };
            let m: MessageRecord = decode(&mk, &m)?;
            out.push(Queued {
                id,
                envelope: m.envelope,
                serves: rec.serves.iter().filter_map(|s| NodeId::new(s).ok()).collect(),
                hop_count: m.hop_count,
                precedence: Precedence::from_proto(m.precedence).unwrap_or(Precedence::Routine),
                queued_ms: rec.queued_ms,
            });
        }
        Ok(out)
    }

    fn seen(&self, id: &MessageId) -> Result<bool> {
        self.inner
            .db
            .contains_key(keys::dedup(id))
            .map_err(|e| self.db_err(e))
    }

    fn inbox_after(&self, after: u64, limit: usize) -> Result<Vec<InboxEntry>> {
        let start = keys::inbox(after.saturating_add(1));
        let mut out = Vec::new();
        for item in self.inner.db.range(start..).take(limit) {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if !k.starts_with(b"n") {
                break;
            }
            let rec: InboxRecord = decode(&k, &v)?;
            out.push(InboxEntry {
                cursor: keys::u64_at(&k, 1).unwrap_or(0),
                id: parse_id(&k, &rec.id)?,
                envelope: rec.envelope,
                received_ms: rec.received_ms,
            });
        }
        Ok(out)
    }

    fn delivery(&self, id: &MessageId) -> Result<Vec<DeliveryRecord>> {
        let prefix = keys::delivery_prefix(id);
        let mut out = Vec::new();
        for item in self.inner.db.scan_prefix(&prefix) {
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
        totals
            .into_iter()
            .map(|(hop, t)| {
                let oldest = self
                    .inner
                    .db
                    .scan_prefix(keys::age_prefix(&hop))
                    .next()
                    .and_then(std::result::Result::ok)
                    .and_then(|(k, v)| decode::<AgeRecord>(&k, &v).ok())
                    .map(|a| a.queued_ms);
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
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    fn close(&self) {
        // Dropping the sender ends the writer after it drains and flushes.
        drop(lock(&self.inner.jobs).take());
        if let Some(h) = lock(&self.inner.writer).take()
            && h.join().is_err()
        {
            tracing::error!(path = %self.inner.path, "store writer panicked");
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
    fn load(db: &sled::Db) -> std::result::Result<Self, sled::Error> {
        let read = |name: &str| -> std::result::Result<u64, sled::Error> {
            Ok(db
                .get(keys::counter(name))?
                .and_then(|v| v.as_ref().try_into().ok())
                .map_or(0, u64::from_be_bytes))
        };
        Ok(Self {
            seq: read("seq")?,
            cursor: read("cursor")?,
        })
    }
}

fn writer(inner: &Inner, mut rx: mpsc::Receiver<Job>, mut counters: Counters) {
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(group.len());
        for job in &group {
            results.push(apply_job(inner, &job.ops, &mut counters));
        }
        // One fsync for the whole group; nobody hears Ok before it.
        let flushed = inner.db.flush();
        for (job, result) in group.into_iter().zip(results) {
            let answer = match (&flushed, result) {
                (Ok(_), r) => r,
                (Err(e), _) => Err(StoreError::Db {
                    path: inner.path.clone(),
                    source: e.clone(),
                }),
            };
            // The caller may have gone away (shutdown); its data is durable anyway.
            let _ = job.reply.send(answer);
        }
    }
    if let Err(e) = inner.db.flush() {
        tracing::error!(path = %inner.path, error = %e, "final store flush failed");
    }
}

/// Pending writes of one job over the tree: reads see earlier writes of the
/// same job; the whole job becomes one atomic sled batch.
struct Tx<'a> {
    db: &'a sled::Db,
    path: &'a str,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    deltas: Vec<(NodeId, i64, i64)>,
}

impl<'a> Tx<'a> {
    fn err(&self, source: sled::Error) -> StoreError {
        StoreError::Db {
            path: self.path.to_owned(),
            source,
        }
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.db.get(key).map_err(|e| self.err(e))?.map(|v| v.to_vec()))
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    fn del(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Keys and values under `prefix`, earlier writes of this job included.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut merged = BTreeMap::new();
        for item in self.db.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            merged.insert(k.to_vec(), Some(v.to_vec()));
        }
        for (k, v) in self.pending.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect())
    }
}

fn apply_job(inner: &Inner, ops: &[Op], counters: &mut Counters) -> Result<Vec<Outcome>> {
    let mut tx = Tx {
        db: &inner.db,
        path: &inner.path,
        pending: BTreeMap::new(),
        deltas: Vec::new(),
    };
    let start = Counters {
        seq: counters.seq,
        cursor: counters.cursor,
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    let result = (|| {
        for op in ops {
            outcomes.push(match op {
                Op::Ingest(i) => ingest(&mut tx, i, counters)?,
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
    let mut batch = sled::Batch::default();
    for (k, v) in tx.pending {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    if let Err(e) = inner.db.apply_batch(batch) {
        *counters = start;
        return Err(StoreError::Db {
            path: inner.path.clone(),
            source: e,
        });
    }
    let mut totals = lock(&inner.totals);
    for (hop, depth, bytes) in tx.deltas {
        let t = totals.entry(hop.clone()).or_default();
        t.depth = t.depth.saturating_add_signed(depth);
        t.bytes = t.bytes.saturating_add_signed(bytes);
        if t.depth == 0 {
            totals.remove(&hop);
        }
    }
    Ok(outcomes)
}

fn ingest(tx: &mut Tx<'_>, i: &Ingest, counters: &mut Counters) -> Result<Outcome> {
    let dk = keys::dedup(&i.id);
    if tx.get(&dk)?.is_some() {
        return Err(StoreError::Duplicate(i.id));
    }
    let retain_until = i.expires_ms.saturating_add(DEDUP_RETENTION_MS);
    tx.put(dk, retain_until.to_be_bytes().to_vec());
    tx.put(keys::dedup_expiry(retain_until, &i.id), Vec::new());
    let bytes = i.envelope.len() as u64;
    if !i.copies.is_empty() {
        let record = MessageRecord {
            envelope: i.envelope.clone(),
            refs: u32::try_from(i.copies.len()).unwrap_or(u32::MAX),
            expires_ms: i.expires_ms,
            precedence: i.precedence.to_proto() as i32,
            hop_count: i.hop_count,
        };
        tx.put(keys::message(&i.id), record.encode_to_vec());
        tx.put(keys::expiry(i.expires_ms, &i.id), Vec::new());
        for copy in &i.copies {
            counters.seq += 1;
            let ok = keys::outbox(&copy.next_hop, i.precedence, counters.seq);
            let ak = keys::age(&copy.next_hop, counters.seq);
            let rec = OutboxRecord {
                id: i.id.as_bytes().to_vec(),
                serves: copy.serves.iter().map(ToString::to_string).collect(),
                queued_ms: i.now_ms,
                bytes,
                age_key: ak.clone(),
            };
            tx.put(
                ak,
                AgeRecord {
                    outbox_key: ok.clone(),
                    queued_ms: i.now_ms,
                    bytes,
                }
                .encode_to_vec(),
            );
            tx.put(keys::copy_index(&i.id, &copy.next_hop), ok.clone());
            tx.put(ok, rec.encode_to_vec());
            tx.deltas.push((copy.next_hop.clone(), 1, bytes as i64));
        }
    }
    if i.inbox {
        counters.cursor += 1;
        let rec = InboxRecord {
            id: i.id.as_bytes().to_vec(),
            envelope: i.envelope.clone(),
            received_ms: i.now_ms,
        };
        tx.put(keys::inbox(counters.cursor), rec.encode_to_vec());
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
    let qk = keys::copy_index(id, hop);
    let Some(ok) = tx.get(&qk)? else {
        return Ok(None);
    };
    let Some(raw) = tx.get(&ok)? else {
        tx.del(qk);
        return Ok(None);
    };
    let rec: OutboxRecord = decode(&ok, &raw)?;
    tx.del(qk);
    tx.del(ok);
    tx.del(rec.age_key.clone());
    tx.deltas.push((hop.clone(), -1, -(rec.bytes as i64)));
    let mk = keys::message(id);
    if let Some(raw) = tx.get(&mk)? {
        let mut m: MessageRecord = decode(&mk, &raw)?;
        m.refs = m.refs.saturating_sub(1);
        if m.refs == 0 {
            tx.del(keys::expiry(m.expires_ms, id));
            tx.del(mk);
        } else {
            tx.put(mk, m.encode_to_vec());
        }
    }
    Ok(Some(
        rec.serves.iter().filter_map(|s| NodeId::new(s).ok()).collect(),
    ))
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
    let due: Vec<Vec<u8>> = tx
        .db
        .range(b"x".to_vec()..=upto)
        .take(MAX_EXPIRE_PER_SWEEP)
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tx.err(e))?;
    for xk in due {
        let Some(id) = keys::trailing_id(&xk) else {
            continue;
        };
        let mut hops = Vec::new();
        for (qk, _) in tx.scan_prefix(&keys::copy_index_prefix(&id))? {
            let prefix_len = 1 + 16;
            let Some(hop) = std::str::from_utf8(&qk[prefix_len..])
                .ok()
                .and_then(|s| NodeId::new(s).ok())
            else {
                continue;
            };
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
        tx.del(keys::message(&id));
        expired.push((id, hops));
    }
    // Tracked deliveries still open at expiry.
    let upto = [b"t", &keys::ms(now_ms)[..], &[0xff; 16][..]].concat();
    let due: Vec<Vec<u8>> = tx
        .db
        .range(b"t".to_vec()..=upto)
        .take(MAX_EXPIRE_PER_SWEEP)
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tx.err(e))?;
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
    let due: Vec<Vec<u8>> = tx
        .db
        .range(b"D".to_vec()..=upto)
        .take(MAX_EXPIRE_PER_SWEEP)
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| tx.err(e))?;
    for dk in due {
        if let Some(id) = keys::trailing_id(&dk) {
            tx.del(keys::dedup(&id));
        }
        tx.del(dk);
    }
    Ok(Outcome::Expired(expired))
}
