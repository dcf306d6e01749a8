//! The audit log: append-only, hash-chained, one line per accept, refuse,
//! forward, deliver, submit and expiry (DESIGN §5 property 10). Never payload.
//!
//! Each line is tab-separated:
//!
//! `seq  time_ms  event  message_id  peer  channel  class  reason  prev_hash  hash`
//!
//! where `hash = SHA-256("sitrep/v1/audit\0" || prev_hash || the first eight
//! fields joined by tabs)` and `prev_hash` is the previous line's `hash` (64
//! zeros for the first line). Changing, inserting, removing or reordering any
//! line breaks the chain at that line; [`verify`] names the first broken one.
//!
//! Writes go to a dedicated thread, so auditing does not wait on the disk
//! in the message path. While entries keep coming it collects them every
//! [`COLLECT_EVERY`] (an append does not wake it; only one into an idle
//! writer, a [`AuditLog::flush`] or a half-full queue does), writes each
//! batch, and `fdatasync`s at most every [`SYNC_EVERY`] (at once for a
//! flush, and at close), so that auditing costs neither a thread switch per
//! event nor a device flush per batch beside the store's log. An audit line
//! is therefore on stable storage within about [`SYNC_EVERY`] of its event;
//! a power cut can take the lines of the last such interval (auditing is
//! never acknowledged to anyone). The queue is bounded ([`QUEUE`] entries):
//! when the disk falls that far behind, `append` waits (back-pressure)
//! instead of holding an unbounded backlog in memory.
//!
//! **A failed write or sync stops the log**: the writer chains nothing more
//! (the in-memory chain never runs ahead of the file), every later entry is
//! dropped with an error, and [`AuditLog::failed`] and
//! [`AuditLog::failures`] say why, so that the node stops (an unaudited node
//! must not go on handling traffic).
//!
//! **Open** truncates a torn last line (an append cut by a crash: never
//! acknowledged to anyone, since auditing is not), then checks the chain
//! from the **checkpoint** (`<log>.checkpoint`: byte offset, sequence and
//! hash of a line known good, rewritten every [`CHECKPOINT_EVERY`] entries
//! and at close) instead of from the first line, so that a start does not
//! take longer as the log grows. A checkpoint that does not match the file
//! is ignored (the whole chain is checked). The full check of every line
//! stays in [`verify`] (`sitrep audit verify`).

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use sitrep_core::{MessageId, NodeId};

const DOMAIN: &[u8] = b"sitrep/v1/audit\0";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// 65,536 entries queued at most (≈ 10 MiB): seconds of a busy hub's
/// events, so a slow sync does not stall traffic, and a stalled disk holds
/// bounded memory.
pub const QUEUE: usize = 65_536;
/// The checkpoint is rewritten after this many entries (and at close).
pub const CHECKPOINT_EVERY: u64 = 10_000;
/// 50 ms: the longest written audit lines wait for their `fdatasync`; at
/// most 20 syncs a second however busy the node is.
pub const SYNC_EVERY: Duration = Duration::from_millis(50);
/// 10 ms: how often a busy writer collects what was appended.
pub const COLLECT_EVERY: Duration = Duration::from_millis(10);

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// `accept`, `refuse`, `forward`, `deliver`, `submit`, `expire`, `roster`.
    pub event: &'static str,
    /// The message, if known.
    pub id: Option<MessageId>,
    /// The peer it came from or went to, if any.
    pub peer: Option<NodeId>,
    /// The channel.
    pub channel: &'static str,
    /// The label's class, if known.
    pub class: Option<&'static str>,
    /// Why (refusals), or a short note.
    pub reason: String,
}

/// Why the audit log could not be opened, written or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// I/O on the log file.
    #[error("audit log {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The chain is broken.
    #[error("audit log {}: line {line}: {problem}", path.display())]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first broken line, counting from 1.
        line: u64,
        /// What is wrong with it.
        problem: String,
    },
}

fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '\t' || c == '\n' || c == '\r' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// Appends the first eight fields of entry `seq` to `out`.
fn write_body(out: &mut String, seq: u64, e: &AuditEntry) {
    use std::fmt::Write as _;
    // Writing into a String cannot fail.
    let _ = write!(out, "{seq}\t{}\t{}\t", e.time_ms, e.event);
    match e.id {
        Some(id) => {
            let _ = write!(out, "{id}");
        }
        None => out.push('-'),
    }
    out.push('\t');
    out.push_str(e.peer.as_ref().map_or("-", NodeId::as_str));
    out.push('\t');
    out.push_str(&clean(e.channel));
    out.push('\t');
    out.push_str(&e.class.map_or_else(|| "-".into(), clean));
    out.push('\t');
    out.push_str(&clean(&e.reason));
}

fn chain(prev: &str, body: &str) -> String {
    let mut input = Vec::with_capacity(DOMAIN.len() + prev.len() + body.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(prev.as_bytes());
    input.extend_from_slice(body.as_bytes());
    hex::encode(sitrep_crypto::sha256(&input))
}

/// Checks the whole chain. Returns the number of entries and the last hash.
///
/// # Errors
/// [`AuditError::Broken`] naming the first broken line, or [`AuditError::Io`].
pub fn verify(path: &Path) -> Result<(u64, String), AuditError> {
    verify_from(path, &Checkpoint::start()).map(|(n, prev, _)| (n, prev))
}

/// A line known good: where the next line starts, its sequence, its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Checkpoint {
    offset: u64,
    seq: u64,
    hash: String,
}

impl Checkpoint {
    fn start() -> Self {
        Self {
            offset: 0,
            seq: 0,
            hash: ZERO.to_owned(),
        }
    }

    fn path(log: &Path) -> PathBuf {
        let mut p = log.as_os_str().to_owned();
        p.push(".checkpoint");
        PathBuf::from(p)
    }

    fn read(log: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(Self::path(log)).ok()?;
        let mut f = text.trim_end().split('\t');
        let c = Self {
            offset: f.next()?.parse().ok()?,
            seq: f.next()?.parse().ok()?,
            hash: f.next()?.to_owned(),
        };
        (c.hash.len() == 64 && f.next().is_none()).then_some(c)
    }

    /// Written to a temporary file and renamed: a crash leaves the old one
    /// or the new one (or none, if the rename is lost: then the whole chain
    /// is checked once).
    fn write(&self, log: &Path) -> std::io::Result<()> {
        let path = Self::path(log);
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        crate::private::file_options()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?
            .write_all(format!("{}\t{}\t{}\n", self.offset, self.seq, self.hash).as_bytes())?;
        std::fs::rename(&tmp, &path)
    }

    /// Whether the line that ends at `offset` in `file` is the one this
    /// checkpoint names (its sequence and hash).
    fn matches(&self, file: &mut File) -> std::io::Result<bool> {
        if self.offset == 0 {
            return Ok(self.seq == 0 && self.hash == ZERO);
        }
        // A line is well under 4 KiB (ids, names, a reason).
        let back = self.offset.min(4096);
        let mut tail = vec![0; usize::try_from(back).unwrap_or(4096)];
        file.seek(SeekFrom::Start(self.offset - back))?;
        if file.read_exact(&mut tail).is_err() {
            return Ok(false);
        }
        let Some(body) = tail.strip_suffix(b"\n") else {
            return Ok(false);
        };
        let start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let Ok(line) = std::str::from_utf8(&body[start..]) else {
            return Ok(false);
        };
        let fields: Vec<&str> = line.split('\t').collect();
        Ok(fields.len() == 10 && fields[0] == self.seq.to_string() && fields[9] == self.hash)
    }
}

/// Checks the chain from `from` (a line known good) to the end; returns
/// the last sequence, its hash and the checkpoint after it.
fn verify_from(path: &Path, from: &Checkpoint) -> Result<(u64, String, Checkpoint), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    file.seek(SeekFrom::Start(from.offset)).map_err(io)?;
    let mut prev = from.hash.clone();
    let mut n = from.seq;
    let mut offset = from.offset;
    let mut reader = BufReader::new(file);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw).map_err(io)? == 0 {
            break;
        }
        n += 1;
        let broken = |problem: &str| AuditError::Broken {
            path: path.to_path_buf(),
            line: n,
            problem: problem.to_owned(),
        };
        if raw.last() != Some(&b'\n') {
            return Err(broken("incomplete last line"));
        }
        let line = std::str::from_utf8(&raw[..raw.len() - 1]).map_err(|_| broken("not UTF-8"))?;
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() != 10 {
            return Err(broken(&format!("{} fields, want 10", fields.len())));
        }
        if fields[0] != n.to_string() {
            return Err(broken(&format!("sequence {} where {n} was expected", fields[0])));
        }
        if fields[8] != prev {
            return Err(broken("prev_hash does not match the previous line's hash"));
        }
        let body = fields[..8].join("\t");
        if chain(&prev, &body) != fields[9] {
            return Err(broken("hash does not match the line's content"));
        }
        prev = fields[9].to_owned();
        offset += raw.len() as u64;
    }
    Ok((
        n,
        prev.clone(),
        Checkpoint {
            offset,
            seq: n,
            hash: prev,
        },
    ))
}

/// Cuts a torn last line (no newline: an append cut by a crash) off the
/// file and syncs it; returns how many bytes were dropped.
fn truncate_torn_tail(path: &Path) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut keep = len;
    let mut chunk = vec![0; 4096];
    loop {
        let from = keep.saturating_sub(chunk.len() as u64);
        let n = usize::try_from(keep - from).unwrap_or(0);
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            keep = from + i as u64 + 1;
            break;
        }
        if from == 0 {
            keep = 0;
            break;
        }
        keep = from;
    }
    if keep == len {
        return Ok(0);
    }
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(len - keep)
}

enum Cmd {
    Entry(AuditEntry),
    Flush(mpsc::Sender<()>),
}

/// What appenders hand the writer thread.
#[derive(Default)]
struct Pending {
    cmds: Vec<Cmd>,
    /// Entries among `cmds` (flushes do not count against the bound).
    entries: usize,
    /// The writer waits for a wake-up (it has nothing to write or sync).
    idle: bool,
    /// No more appends: the writer writes what is left and ends.
    closed: bool,
}

/// The bounded queue between appenders and the writer thread.
#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    /// Signalled when the writer should look (see [`Pending::idle`]).
    wake: Condvar,
    /// Signalled when the writer took entries out.
    not_full: Condvar,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").finish_non_exhaustive()
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `cmd`, waiting while [`QUEUE`] entries wait; `false` once closed.
    fn push(&self, cmd: Cmd) -> bool {
        let mut p = self.lock();
        let entry = matches!(cmd, Cmd::Entry(_));
        while entry && p.entries >= QUEUE && !p.closed {
            p = self.not_full.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        if p.closed {
            return false;
        }
        p.entries += usize::from(entry);
        p.cmds.push(cmd);
        if p.idle || !entry || p.entries >= QUEUE / 2 {
            p.idle = false;
            self.wake.notify_one();
        }
        true
    }

    /// The next batch: waits until there is one (at most `timeout` when
    /// given: then it may be empty); `None` once closed and drained.
    fn take(&self, timeout: Option<Duration>, batch: &mut Vec<Cmd>) -> Option<()> {
        let mut p = self.lock();
        match timeout {
            None => {
                while p.cmds.is_empty() && !p.closed {
                    p.idle = true;
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
            }
            Some(t) if p.cmds.is_empty() && !p.closed && !t.is_zero() => {
                p = self
                    .wake
                    .wait_timeout(p, t)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            Some(_) => {}
        }
        p.idle = false;
        if p.cmds.is_empty() && p.closed {
            return None;
        }
        std::mem::swap(&mut p.cmds, batch);
        p.entries = 0;
        self.not_full.notify_all();
        Some(())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        self.not_full.notify_all();
    }
}

/// An open audit log. Appends from any thread; a writer thread chains,
/// writes and syncs.
#[derive(Debug)]
pub struct AuditLog {
    queue: Arc<Queue>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
    failed: Arc<watch::Sender<Option<String>>>,
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

/// The writer thread's state.
struct Writer {
    file: File,
    path: PathBuf,
    seq: u64,
    prev: String,
    offset: u64,
    since_checkpoint: u64,
    failed: Arc<watch::Sender<Option<String>>>,
    fail_next: Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    fn run(mut self, queue: &Queue) {
        let mut buf = String::new();
        let mut body = String::new();
        let mut batch = Vec::new();
        // Written but not yet synced since this instant.
        let mut unsynced: Option<Instant> = None;
        // Whether the last look found entries: then collect again shortly
        // instead of waiting to be woken.
        let mut busy = false;
        loop {
            let timeout = match (busy, unsynced) {
                (false, None) => None,
                (true, None) => Some(COLLECT_EVERY),
                (busy, Some(since)) => {
                    let sync_in = SYNC_EVERY.saturating_sub(since.elapsed());
                    Some(if busy { sync_in.min(COLLECT_EVERY) } else { sync_in })
                }
            };
            if queue.take(timeout, &mut batch).is_none() {
                break;
            }
            busy = !batch.is_empty();
            if batch.is_empty() {
                if unsynced.is_some_and(|since| since.elapsed() >= SYNC_EVERY) {
                    self.sync(&mut unsynced);
                }
                continue;
            }
            buf.clear();
            let mut flushes = Vec::new();
            let (mut seq, mut prev) = (self.seq, self.prev.clone());
            for cmd in batch.drain(..) {
                match cmd {
                    Cmd::Entry(e) => {
                        seq += 1;
                        body.clear();
                        write_body(&mut body, seq, &e);
                        let hash = chain(&prev, &body);
                        buf.push_str(&body);
                        buf.push('\t');
                        buf.push_str(&prev);
                        buf.push('\t');
                        buf.push_str(&hash);
                        buf.push('\n');
                        prev = hash;
                    }
                    Cmd::Flush(done) => flushes.push(done),
                }
            }
            if self.failed.borrow().is_some() {
                // Stopped: chain nothing more.
                drop(flushes);
                continue;
            }
            if !buf.is_empty() {
                let injected = self.fail_next.swap(false, std::sync::atomic::Ordering::Relaxed);
                let written = if injected {
                    Err(std::io::Error::other("injected write error"))
                } else {
                    self.file.write_all(buf.as_bytes())
                };
                match written {
                    Ok(()) => {
                        self.since_checkpoint += seq - self.seq;
                        (self.seq, self.prev) = (seq, prev);
                        self.offset += buf.len() as u64;
                        unsynced.get_or_insert_with(Instant::now);
                    }
                    Err(e) => {
                        self.fail(&e);
                        drop(flushes);
                        continue;
                    }
                }
            }
            let due = unsynced.is_some_and(|since| since.elapsed() >= SYNC_EVERY);
            if !flushes.is_empty() || due {
                self.sync(&mut unsynced);
            }
            if self.failed.borrow().is_some() {
                drop(flushes);
                continue;
            }
            for f in flushes {
                let _ = f.send(());
            }
        }
        self.sync(&mut unsynced);
        if self.failed.borrow().is_none() {
            self.checkpoint();
        }
    }

    /// `fdatasync`s what was written, if anything; a failure stops the log.
    fn sync(&mut self, unsynced: &mut Option<Instant>) {
        if unsynced.take().is_none() || self.failed.borrow().is_some() {
            return;
        }
        match self.file.sync_data() {
            // The checkpoint names only lines that are on disk.
            Ok(()) if self.since_checkpoint >= CHECKPOINT_EVERY => self.checkpoint(),
            Ok(()) => {}
            Err(e) => self.fail(&e),
        }
    }

    /// Stops the log after a failed write or sync: nothing is chained after it.
    fn fail(&self, e: &std::io::Error) {
        let why = format!("audit log {} write failed: {e}", self.path.display());
        tracing::error!(path = %self.path.display(), error = %e, "audit log write failed; the node stops");
        self.failed.send_replace(Some(why));
    }

    fn checkpoint(&mut self) {
        let c = Checkpoint {
            offset: self.offset,
            seq: self.seq,
            hash: self.prev.clone(),
        };
        // Advisory: a lost checkpoint only makes the next start check more.
        if let Err(e) = c.write(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "audit checkpoint not written");
        }
        self.since_checkpoint = 0;
    }
}

impl AuditLog {
    /// Opens (or creates) the log at `path`: truncates a torn last line,
    /// then checks the chain from the last checkpoint (the whole chain if
    /// there is none or it does not match).
    ///
    /// # Errors
    /// [`AuditError::Broken`] if the chain is broken: the node refuses to
    /// start rather than extend a log it cannot vouch for.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (seq, prev, at) = if path.exists() {
            let dropped = truncate_torn_tail(path).map_err(io)?;
            if dropped > 0 {
                tracing::warn!(path = %path.display(), bytes = dropped, "audit log: torn last line truncated");
            }
            let start = match Checkpoint::read(path) {
                Some(c) => {
                    let mut f = File::open(path).map_err(io)?;
                    if c.matches(&mut f).map_err(io)? {
                        c
                    } else {
                        tracing::warn!(path = %path.display(), "audit checkpoint does not match the log; checking the whole chain");
                        Checkpoint::start()
                    }
                }
                None => Checkpoint::start(),
            };
            verify_from(path, &start)?
        } else {
            (0, ZERO.to_owned(), Checkpoint::start())
        };
        let file = crate::private::file_options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let queue = Arc::new(Queue::default());
        let (failed, _) = watch::channel(None);
        let failed = Arc::new(failed);
        let fail_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = Writer {
            file,
            path: path.to_path_buf(),
            seq,
            prev,
            offset: at.offset,
            since_checkpoint: 0,
            failed: Arc::clone(&failed),
            fail_next: Arc::clone(&fail_next),
        };
        let for_writer = Arc::clone(&queue);
        let writer = std::thread::Builder::new()
            .name("sitrep-audit".into())
            .spawn(move || writer.run(&for_writer))
            .map_err(io)?;
        Ok(Self {
            queue,
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
            failed,
            fail_next,
        })
    }

    /// Makes the writer's next write fail, as a full or broken disk would.
    #[doc(hidden)]
    pub fn fail_next_write(&self) {
        self.fail_next.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Why the log stopped, if a write or sync failed.
    #[must_use]
    pub fn failed(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Changes to [`AuditLog::failed`], for a task that stops the node.
    #[must_use]
    pub fn failures(&self) -> watch::Receiver<Option<String>> {
        self.failed.subscribe()
    }

    /// The log's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry (written by the writer thread at once, synced
    /// within [`SYNC_EVERY`]);
    /// waits if [`QUEUE`] entries are already waiting for the disk. After a
    /// failure the entry is dropped (the log has stopped; see
    /// [`AuditLog::failed`]).
    pub fn append(&self, entry: AuditEntry) {
        if self.failed.borrow().is_some() {
            return;
        }
        self.queue.push(Cmd::Entry(entry));
    }

    /// Waits until everything appended so far is on disk.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        if self.queue.push(Cmd::Flush(done)) {
            let _ = wait.recv();
        }
    }

    /// Flushes and stops the writer.
    pub fn close(&self) {
        self.queue.close();
        if let Some(h) = self.writer.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8) -> AuditEntry {
        AuditEntry {
            time_ms: 1_790_000_000_000 + i64::from(i),
            event: if i.is_multiple_of(2) { "accept" } else { "refuse" },
            id: Some(MessageId::new_v7(1_790_000_000_000, [i; 10])),
            peer: NodeId::new("nspl-hub").ok(),
            channel: "open",
            class: Some("SENSITIVE"),
            reason: if i.is_multiple_of(2) {
                String::new()
            } else {
                "bad_signature\twith a tab".into()
            },
        }
    }

    #[test]
    fn a_written_chain_verifies_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..10 {
            log.append(entry(i));
        }
        log.close();
        assert_eq!(verify(&path).expect("intact").0, 10);
        let log = AuditLog::open(&path).expect("reopen");
        log.append(entry(10));
        log.close();
        assert_eq!(verify(&path).expect("intact").0, 11);
    }

    #[test]
    fn a_torn_last_line_is_truncated_on_open_and_the_chain_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..3 {
            log.append(entry(i));
        }
        log.close();
        let whole = std::fs::read(&path).expect("read");
        // A crash in the middle of the next append.
        let mut torn = whole.clone();
        torn.extend_from_slice(b"4\t1790000000004\tacc");
        std::fs::write(&path, &torn).expect("write");
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 4, .. })));
        let log = AuditLog::open(&path).expect("opens after truncating");
        assert_eq!(std::fs::read(&path).expect("read"), whole);
        log.append(entry(4));
        log.close();
        assert_eq!(verify(&path).expect("intact").0, 4);
    }

    #[test]
    fn open_checks_from_the_checkpoint_and_verify_checks_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..6 {
            log.append(entry(i));
        }
        log.close();
        let cp = Checkpoint::read(&path).expect("a checkpoint at close");
        assert_eq!(cp.seq, 6);
        assert_eq!(cp.offset, std::fs::metadata(&path).expect("len").len());
        let log = AuditLog::open(&path).expect("reopen");
        log.append(entry(6));
        log.close();
        let good = std::fs::read(&path).expect("read");
        // Damage before the checkpoint: open does not read it (so a start
        // takes the same time however long the log is) ...
        let first_line_end = good.iter().position(|b| *b == b'\n').expect("a line");
        let mut bad = good.clone();
        bad[first_line_end - 70] ^= 0x01;
        std::fs::write(&path, &bad).expect("write");
        let log = AuditLog::open(&path).expect("opens from the checkpoint");
        log.close();
        // ... and the full check finds it.
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 1, .. })));
        // Damage after the checkpoint stops the open.
        let mut bad = std::fs::read(&path).expect("read");
        let cp = Checkpoint::read(&path).expect("checkpoint");
        let at = usize::try_from(cp.offset).expect("offset") - 10;
        bad[at] ^= 0x01;
        // (A checkpoint after line 1, so that the damage is after it.)
        let after_first = Checkpoint {
            offset: first_line_end as u64 + 1,
            seq: 1,
            hash: String::from_utf8(good[first_line_end - 64..first_line_end].to_vec()).expect("hash"),
        };
        after_first.write(&path).expect("write checkpoint");
        std::fs::write(&path, &bad).expect("write");
        assert!(matches!(AuditLog::open(&path), Err(AuditError::Broken { .. })));
        // A checkpoint that does not match the file is ignored: the whole
        // chain is checked (and here it is broken at line 1).
        std::fs::write(&path, &good).expect("write");
        let wrong = Checkpoint {
            offset: 5,
            seq: 3,
            hash: ZERO.to_owned(),
        };
        wrong.write(&path).expect("write checkpoint");
        let log = AuditLog::open(&path).expect("good log opens with a wrong checkpoint");
        log.close();
    }

    #[test]
    fn a_failed_write_stops_the_log_and_chains_nothing_more() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        let mut failures = log.failures();
        log.append(entry(0));
        log.flush();
        assert_eq!(log.failed(), None);
        log.fail_next_write();
        log.append(entry(1));
        log.flush();
        let why = log.failed().expect("failed");
        assert!(why.contains("injected write error"), "{why}");
        assert!(failures.has_changed().expect("sender alive"));
        assert!(failures.borrow_and_update().is_some());
        // Later entries are not chained or written.
        log.append(entry(2));
        log.flush();
        log.close();
        assert_eq!(verify(&path).expect("intact").0, 1);
    }

    #[test]
    fn tampering_with_any_single_byte_is_found_at_its_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).expect("open");
        for i in 0..5 {
            log.append(entry(i));
        }
        log.close();
        let good = std::fs::read(&path).expect("read");
        let line_of = |at: usize| 1 + good[..at].iter().filter(|b| **b == b'\n').count() as u64;
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad).expect("write");
            match verify(&path) {
                Err(AuditError::Broken { line, .. }) => {
                    // A flipped newline merges or splits lines; elsewhere the line is exact.
                    if good[at] != b'\n' && bad[at] != b'\n' {
                        assert_eq!(line, line_of(at), "byte {at}");
                    }
                }
                other => panic!("byte {at}: tampering not found: {other:?}"),
            }
        }
        // A removed line is found too.
        let text = String::from_utf8(good).expect("utf-8");
        let without: String = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, l)| format!("{l}\n"))
            .collect();
        std::fs::write(&path, without).expect("write");
        assert!(matches!(verify(&path), Err(AuditError::Broken { line: 3, .. })));
        // And a broken log refuses to be extended.
        assert!(AuditLog::open(&path).is_err());
    }
}
