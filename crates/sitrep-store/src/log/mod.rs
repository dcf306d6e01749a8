//! The segment log: an append-only, checksummed log that is a channel store's single durability point.
//!
//! # Layout
//!
//! A directory of segment files, each named by the log position of its
//! first byte in 20 decimal digits (`00000000000000004036.seg`), each
//! preallocated to [`LogConfig::segment_bytes`] so that appends never change
//! a file's size. A segment holds records back to back, each
//! `[len: u32 LE][crc32: u32 LE][kind: u8][payload]` (the checksum covers
//! length, kind and payload), followed by zeros. A [`Position`] is (segment,
//! offset in it); a read by position is one map lookup and one or two
//! positional reads. The next segment starts at the log position where the
//! previous one's records end, so positions only grow.
//!
//! # Durability
//!
//! [`Log::append`] is the group commit: it encodes a whole batch into one
//! buffer, writes it with one `write_at`, calls `sync_data` (fdatasync) once,
//! and only then returns the positions. A batch that does not fit in the
//! active segment fills it, syncs it, and continues in a new segment: the new
//! file is created, preallocated and made durable in the directory (fsync of
//! the directory) only after every byte before it is synced. So every
//! segment but the last holds only synced, complete records, and a power cut
//! can damage only the tail of the last one.
//!
//! A **record** is the unit of atomicity: a power cut during an append may
//! leave any prefix of the batch's records, and never a part of a record.
//! Callers that need several changes to stand or fall together (one job of
//! the store) must put them in one record.
//!
//! After any failed write or sync the log is **poisoned**: every later
//! call returns [`LogError::Poisoned`]. A failed fsync may have dropped the
//! dirty pages it was about to write (PostgreSQL's "fsyncgate", 2018), so a
//! retry that succeeds proves nothing; the only way on is to reopen, which
//! reads back what the disk holds.
//!
//! # Recovery
//!
//! [`Log::open`] lists the segments and reads only the **last** one, so
//! that a start takes the same time whatever the log holds. Every segment
//! but the last was synced whole before its successor existed; its records
//! are checked when they are read or replayed, and [`Log::verify`] checks
//! them all (a bad record there is corruption of acknowledged data:
//! [`LogError::Corrupt`] naming the file and offset; nothing is dropped).
//! In the last segment the first record that is torn, damaged or zero is the
//! **tail**: whatever lies after it was never acknowledged, and is zeroed
//! and synced so that a later append is never followed by stale records
//! that could pass for its successors; [`Recovery::truncated`] reports it,
//! and so does a `tracing` warning. Open also syncs the last segment and the
//! directory, so what it read back (perhaps written by a process killed
//! before its own sync) is durable before anything is appended after it.
//!
//! # Reclamation
//!
//! The log never rewrites or moves a record. The caller (the store's
//! index) keeps a live count per segment and calls [`Log::remove_segment`]
//! when it reaches zero; the file is deleted whole and the directory synced.
//! The active (last) segment is never removed. The worst case is one live
//! record pinning a whole segment (a message waiting days for a peer that
//! is cut off): bounding that is the caller's compaction, which would append
//! the live record again (so rewriting each record at most once) and then
//! release the old segment. Removed segments leave gaps in the positions;
//! a segment that is missing for any other reason cannot be told from one
//! removed on purpose.
//!
//! # Concurrency
//!
//! All methods take `&self`: appends and removals are serialised by an
//! internal lock; reads and replays run from any thread without waiting for
//! an append's sync.
//!
//! # Open files
//!
//! The active segment's file stays open; it is closed when the segment is
//! sealed. A sealed segment's file is opened
//! when a read or replay needs it and closed again when more than
//! [`MAX_OPEN_SEALED`] sealed segments are open (the one opened longest ago
//! first), so a log of thousands of segments (a long backlog, an inbox kept
//! for months) holds a bounded number of file descriptors.

mod io;
mod record;
#[cfg(any(test, feature = "sim"))]
mod sim;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub use io::{Dir, File, OsDir};
#[cfg(any(test, feature = "sim"))]
pub use sim::SimDir;

use record::{Decoded, HEADER, Header};

/// 16 MiB: large enough that a segment roll (two extra syncs) is rare under
/// load (one per ≈ 3,500 reports of 4 KiB) and a job with a 4 MiB report
/// fits three times; small enough that one record pinning a segment wastes
/// little, and that a test network of many stores, each preallocating one
/// segment, fits on a small disk.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// 64 bytes: the smallest segment that still holds a header and a payload;
/// real logs use megabytes, tests a few hundred bytes to roll often.
const MIN_SEGMENT_BYTES: u64 = 64;
/// Offsets in a segment are `u32`.
const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;
/// 1 MiB reads when scanning a segment at open and in replay: few syscalls,
/// little memory.
const SCAN_CHUNK: usize = 1 << 20;
/// 8 KiB read first by [`Log::read`]: a typical record in one syscall (a
/// job carrying a 4 KiB report's envelope is about 4.6 KB; with 4 KiB,
/// nearly every read took two).
const READ_AHEAD: usize = 8192;
/// Segment file names: 20 decimal digits and this suffix.
const SEGMENT_SUFFIX: &str = ".seg";
/// 16 sealed segments open at most (256 MiB of log at the default size):
/// readers go through a backlog or an inbox in order, so they rarely come
/// back to a segment closed meanwhile, and a node's descriptors stay few.
pub const MAX_OPEN_SEALED: usize = 16;

/// How a log is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Size each new segment is preallocated to; a record's payload can be
    /// at most this minus a 9-byte header. Between 64 bytes and 4 GiB - 1.
    pub segment_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl LogConfig {
    /// The largest payload a record can carry.
    pub fn max_payload(&self) -> usize {
        usize::try_from(self.segment_bytes)
            .unwrap_or(usize::MAX)
            .saturating_sub(HEADER)
    }

    fn validate(&self) -> Result<(), LogError> {
        if (MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            Ok(())
        } else {
            Err(LogError::Config {
                segment_bytes: self.segment_bytes,
                min: MIN_SEGMENT_BYTES,
                max: MAX_SEGMENT_BYTES,
            })
        }
    }
}

/// Where a record starts. Ordered as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// The segment: the log position of its first byte.
    pub segment: u64,
    /// Byte offset of the record in the segment.
    pub offset: u32,
}

impl Position {
    /// The start of the log: replaying from here visits every record.
    pub const START: Position = Position {
        segment: 0,
        offset: 0,
    };

    /// The position as one number, bytes from the start of the log.
    pub fn log_offset(self) -> u64 {
        self.segment + u64::from(self.offset)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.segment, self.offset)
    }
}

/// What [`Log::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Segment files in the log.
    pub segments: usize,
    /// Valid records in the last segment (the others are not read at open).
    pub records: u64,
    /// Where the next append goes.
    pub tail: Position,
    /// Bytes found after the tail of the last segment and zeroed: the
    /// unacknowledged rest of a batch cut by a crash, or garbage.
    pub truncated: Option<Truncation>,
}

/// Bytes dropped from the end of the log at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncation {
    /// The tail: the first byte that was not part of a valid record.
    pub at: Position,
    /// From `at` to the last non-zero byte after it, inclusive.
    pub bytes: u64,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The file system failed. If it was a write or sync, the log is now
    /// poisoned.
    #[error("segment log {path}: {op} failed: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A record that was acknowledged does not check out.
    #[error(
        "segment log {path}: corrupt data at offset {offset} of segment {segment}: {detail}; \
         acknowledged records are damaged: restore this segment from a backup (do not delete it)"
    )]
    Corrupt {
        /// The segment file.
        path: String,
        /// The segment (its first log position).
        segment: u64,
        /// Byte offset in the segment.
        offset: u64,
        /// What is wrong.
        detail: String,
    },
    /// An earlier write or sync failed; nothing more is written or read.
    #[error(
        "segment log is poisoned by an earlier failed write or sync; \
         reopen it to recover what is durable"
    )]
    Poisoned,
    /// A record's payload is larger than a segment can hold. Nothing was
    /// written; the log is not poisoned.
    #[error("record of {len} bytes is larger than the {max} bytes a segment can hold; raise segment_bytes")]
    RecordTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload.
        max: usize,
    },
    /// No record starts there: its segment was removed, or it is past the tail.
    #[error("segment log has no record at {pos}: its segment was removed or it is past the end")]
    NoRecord {
        /// The position asked for.
        pos: Position,
    },
    /// The active segment cannot be removed.
    #[error("segment {segment} is the active segment of the log and cannot be removed")]
    ActiveSegment {
        /// The segment.
        segment: u64,
    },
    /// No such segment.
    #[error("segment {segment} is not in the log")]
    UnknownSegment {
        /// The segment.
        segment: u64,
    },
    /// The configuration is out of range.
    #[error("segment log config: segment_bytes = {segment_bytes} is outside {min}..={max}")]
    Config {
        /// The value given.
        segment_bytes: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
}

#[derive(Debug)]
struct Segment {
    start: u64,
    name: String,
    path: String,
    /// The open file; `None` for a sealed segment closed to bound the
    /// number open (it is opened again when read).
    file: Mutex<Option<Arc<dyn File>>>,
    /// The file's length: records never cross it.
    capacity: u64,
    /// Offset just past the last acknowledged record: reads and replays stop here.
    end: AtomicU64,
}

struct Writer {
    active: Arc<Segment>,
    /// Offset in `active` where the next record goes.
    tail: u64,
    /// The group-commit buffer, kept between appends.
    buf: Vec<u8>,
}

/// The counters, shared by open and the log it returns.
#[derive(Debug, Default)]
struct Counters {
    syncs: AtomicU64,
    bytes_written: AtomicU64,
}

/// An open segment log. See the [module documentation](self).
pub struct Log {
    dir: Arc<dyn Dir>,
    config: LogConfig,
    segments: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// Sealed segments whose file is open, oldest opened first.
    open_sealed: Mutex<std::collections::VecDeque<Arc<Segment>>>,
    writer: Mutex<Writer>,
    /// Log position just past the last acknowledged record.
    end: AtomicU64,
    poisoned: AtomicBool,
    counters: Counters,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .field("end", &self.end.load(Ordering::Relaxed))
            .field("poisoned", &self.poisoned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn segment_name(start: u64) -> String {
    format!("{start:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

fn io_error<'a>(path: &'a str, op: &'static str) -> impl FnOnce(std::io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

fn corrupt(seg: &Segment, offset: u64, detail: impl Into<String>) -> LogError {
    LogError::Corrupt {
        path: seg.path.clone(),
        segment: seg.start,
        offset,
        detail: detail.into(),
    }
}

/// Reads a file in large chunks and hands out slices of it.
struct Cursor<'a> {
    file: &'a dyn File,
    /// Never read at or past this offset.
    limit: u64,
    buf: Vec<u8>,
    at: u64,
}

impl<'a> Cursor<'a> {
    fn new(file: &'a dyn File, limit: u64) -> Self {
        Self {
            file,
            limit,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// `n` bytes from `offset`, or fewer if `limit` comes first.
    fn get(&mut self, offset: u64, n: usize) -> std::io::Result<&[u8]> {
        let avail = usize::try_from(self.limit.saturating_sub(offset)).unwrap_or(usize::MAX);
        let n = n.min(avail);
        let buffered_end = self.at + self.buf.len() as u64;
        if offset < self.at || offset + n as u64 > buffered_end {
            self.buf.resize(n.max(SCAN_CHUNK).min(avail), 0);
            self.file.read_at(offset, &mut self.buf)?;
            self.at = offset;
        }
        let from = usize::try_from(offset - self.at).unwrap_or(usize::MAX);
        Ok(&self.buf[from..from + n])
    }
}

/// How a scan of a segment's records stopped.
enum Stop {
    /// At zeros or at the limit.
    Clean,
    /// At something that is not a record.
    Bad { offset: u64, detail: &'static str },
}

struct Scan {
    records: u64,
    /// Offset just past the last valid record.
    end: u64,
    stop: Stop,
}

/// Walks the records of `file` from `from` until zeros, a bad record or `limit`.
fn scan(file: &dyn File, from: u64, limit: u64, mut f: impl FnMut(u64, u8, &[u8])) -> std::io::Result<Scan> {
    let mut cursor = Cursor::new(file, limit);
    let mut off = from;
    let mut records = 0;
    loop {
        if off >= limit {
            return Ok(Scan {
                records,
                end: off,
                stop: Stop::Clean,
            });
        }
        let head = cursor.get(off, HEADER)?;
        let want = match head.first_chunk::<HEADER>().map(record::parse_header) {
            Some(Header::Record { len, .. }) => HEADER.saturating_add(len as usize),
            Some(Header::Zero) | None => HEADER,
        };
        let decoded = record::decode(cursor.get(off, want)?);
        match decoded {
            Decoded::Record { kind, payload } => {
                f(off, kind, payload);
                records += 1;
                off += decoded.size() as u64;
            }
            Decoded::End => {
                return Ok(Scan {
                    records,
                    end: off,
                    stop: Stop::Clean,
                });
            }
            Decoded::Bad(detail) => {
                return Ok(Scan {
                    records,
                    end: off,
                    stop: Stop::Bad { offset: off, detail },
                });
            }
        }
    }
}

/// Finds the non-zero bytes of `file` in `from..limit` and, if `zero` is
/// set, overwrites them with zeros. Returns the offsets of the first
/// non-zero byte and one past the last, if any.
fn nonzero_after(
    file: &dyn File,
    from: u64,
    limit: u64,
    zero: bool,
    counters: &Counters,
) -> std::io::Result<Option<(u64, u64)>> {
    let mut found: Option<(u64, u64)> = None;
    let mut buf = Vec::new();
    let mut off = from;
    while off < limit {
        let n = usize::try_from(limit - off).unwrap_or(usize::MAX).min(SCAN_CHUNK);
        buf.resize(n, 0);
        file.read_at(off, &mut buf)?;
        if let (Some(first), Some(last)) = (
            buf.iter().position(|&b| b != 0),
            buf.iter().rposition(|&b| b != 0),
        ) {
            let (a, b) = (off + first as u64, off + last as u64 + 1);
            found = Some(found.map_or((a, b), |(a0, _)| (a0, b)));
            if zero {
                let zeros = vec![0; last + 1 - first];
                file.write_at(a, &zeros)?;
                counters
                    .bytes_written
                    .fetch_add(zeros.len() as u64, Ordering::Relaxed);
            }
        }
        off += n as u64;
    }
    Ok(found)
}

impl Log {
    /// Opens the log in `dir` (creating its first segment if there is
    /// none), checks every record, truncates a torn tail, and makes what it
    /// found durable. See the module documentation, *Recovery*.
    ///
    /// # Errors
    /// [`LogError::Config`] for a bad config; [`LogError::Corrupt`] if a
    /// segment other than the last holds a bad record, or segments overlap;
    /// [`LogError::Io`] if the file system fails.
    pub fn open(dir: Arc<dyn Dir>, config: LogConfig) -> Result<(Log, Recovery), LogError> {
        config.validate()?;
        let counters = Counters::default();
        let dir_path = dir.describe("");
        let mut found: Vec<(u64, String)> = dir
            .list()
            .map_err(io_error(&dir_path, "list"))?
            .into_iter()
            .filter_map(|name| parse_segment_name(&name).map(|start| (start, name)))
            .collect();
        found.sort_unstable();
        if found.is_empty() {
            let seg = create_segment(&*dir, 0, config.segment_bytes, &counters)?;
            found.push((seg.start, seg.name.clone()));
        }

        let mut segments = BTreeMap::new();
        let mut records = 0;
        let mut truncated = None;
        let last = found.len() - 1;
        let mut tail = Position::START;
        for (i, (start, name)) in found.into_iter().enumerate() {
            let path = dir.describe(&name);
            let file: Arc<dyn File> = Arc::from(dir.open(&name).map_err(io_error(&path, "open"))?);
            let mut len = file.len().map_err(io_error(&path, "stat"))?;
            if i == last && len < config.segment_bytes {
                // A crash can lose a new segment's preallocation.
                file.allocate(config.segment_bytes)
                    .map_err(io_error(&path, "allocate"))?;
                len = file.len().map_err(io_error(&path, "stat"))?;
            }
            let seg = Segment {
                start,
                name,
                path,
                // Sealed segments are opened again when read.
                file: Mutex::new((i == last).then(|| Arc::clone(&file))),
                capacity: len,
                end: AtomicU64::new(0),
            };
            if len > MAX_SEGMENT_BYTES {
                return Err(corrupt(
                    &seg,
                    0,
                    format!("{len} bytes is larger than a segment can be"),
                ));
            }
            if i < last {
                // Sealed: every byte was synced before the next segment
                // existed. Not read here, so that open takes the same time
                // whatever the log holds; each record is checked when it is
                // read or replayed, and `verify` checks them all.
                seg.end.store(len, Ordering::Release);
                segments.insert(start, Arc::new(seg));
                continue;
            }
            let scanned = scan(&*file, 0, len, |_, _, _| {}).map_err(io_error(&seg.path, "read"))?;
            {
                tail = Position {
                    segment: start,
                    offset: scanned.end as u32,
                };
                let dropped = nonzero_after(&*file, scanned.end, len, true, &counters)
                    .map_err(io_error(&seg.path, "zero the tail"))?;
                if let Some((_, last_end)) = dropped {
                    let t = Truncation {
                        at: tail,
                        bytes: last_end - scanned.end,
                    };
                    let reason = match scanned.stop {
                        Stop::Bad { detail, .. } => detail,
                        Stop::Clean => "stray bytes after zeros",
                    };
                    tracing::warn!(
                        segment = %seg.path,
                        offset = scanned.end,
                        bytes = t.bytes,
                        reason,
                        "segment log: torn tail truncated (an append that was never acknowledged)"
                    );
                    truncated = Some(t);
                }
                // Also flushes what a killed process wrote but did not sync:
                // it is read back as committed, so it must be durable.
                file.sync_data().map_err(io_error(&seg.path, "sync"))?;
                counters.syncs.fetch_add(1, Ordering::Relaxed);
            }
            records += scanned.records;
            seg.end.store(scanned.end, Ordering::Release);
            segments.insert(start, Arc::new(seg));
        }
        // Creates and removes a killed process did not sync are durable from here.
        dir.sync().map_err(io_error(&dir_path, "sync directory"))?;
        counters.syncs.fetch_add(1, Ordering::Relaxed);

        let active = segments
            .get(&tail.segment)
            .cloned()
            .ok_or(LogError::UnknownSegment {
                segment: tail.segment,
            })?;
        let recovery = Recovery {
            segments: segments.len(),
            records,
            tail,
            truncated,
        };
        let log = Log {
            dir,
            config,
            segments: RwLock::new(segments),
            open_sealed: Mutex::new(std::collections::VecDeque::new()),
            writer: Mutex::new(Writer {
                active,
                tail: u64::from(tail.offset),
                buf: Vec::new(),
            }),
            end: AtomicU64::new(tail.log_offset()),
            poisoned: AtomicBool::new(false),
            counters,
        };
        Ok((log, recovery))
    }

    fn check_poisoned(&self) -> Result<(), LogError> {
        if self.poisoned.load(Ordering::Acquire) {
            Err(LogError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Marks the log poisoned and passes the error on.
    fn poison(&self, e: LogError) -> LogError {
        self.poisoned.store(true, Ordering::Release);
        e
    }

    /// Appends `records` (kind, payload) as one group commit and returns
    /// their positions once they are durable. An empty batch does nothing.
    ///
    /// # Errors
    /// [`LogError::RecordTooLarge`] before anything is written;
    /// [`LogError::Io`] if a write or sync fails, after which the log is
    /// poisoned (some prefix of the batch may survive a crash, but it was
    /// never acknowledged); [`LogError::Poisoned`] after an earlier failure.
    pub fn append(&self, records: &[(u8, &[u8])]) -> Result<Vec<Position>, LogError> {
        self.check_poisoned()?;
        let max = self.config.max_payload();
        let mut lens = Vec::with_capacity(records.len());
        for (_, payload) in records {
            match u32::try_from(payload.len()) {
                Ok(len) if payload.len() <= max => lens.push(len),
                _ => {
                    return Err(LogError::RecordTooLarge {
                        len: payload.len(),
                        max,
                    });
                }
            }
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let mut w = self.writer.lock().map_err(|_| LogError::Poisoned)?;
        self.check_poisoned()?;
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let result = self.append_locked(&mut w, &mut buf, records, &lens);
        w.buf = buf;
        result.map_err(|e| self.poison(e))
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        buf: &mut Vec<u8>,
        records: &[(u8, &[u8])],
        lens: &[u32],
    ) -> Result<Vec<Position>, LogError> {
        let mut positions = Vec::with_capacity(records.len());
        // Segments filled by this batch, made readable only once all of it is durable.
        let mut sealed = Vec::new();
        // Where `buf` goes in the active segment, and where the next record would.
        let mut from = w.tail;
        let mut off = w.tail;
        for (&(kind, payload), &len) in records.iter().zip(lens) {
            let size = (HEADER + payload.len()) as u64;
            if off + size > w.active.capacity {
                if off == 0 {
                    // Cannot happen for a checked size; rolling an empty
                    // segment would reuse its name.
                    return Err(LogError::RecordTooLarge {
                        len: payload.len(),
                        max: self.config.max_payload(),
                    });
                }
                // Everything before the new segment is durable before it exists.
                self.write_and_sync(&w.active, from, buf)?;
                buf.clear();
                sealed.push((Arc::clone(&w.active), off));
                // Sealed: its file is closed, and opened again only if a
                // read needs it (a store that only appends, an inbox
                // nobody reads yet, keeps no descriptor for it).
                if let Ok(mut f) = w.active.file.lock() {
                    *f = None;
                }
                let next = w.active.start + off;
                let seg = Arc::new(create_segment(
                    &*self.dir,
                    next,
                    self.config.segment_bytes,
                    &self.counters,
                )?);
                self.segments
                    .write()
                    .map_err(|_| LogError::Poisoned)?
                    .insert(next, Arc::clone(&seg));
                w.active = seg;
                w.tail = 0;
                from = 0;
                off = 0;
            }
            record::encode_into(buf, kind, len, payload);
            positions.push(Position {
                segment: w.active.start,
                offset: off as u32,
            });
            off += size;
        }
        self.write_and_sync(&w.active, from, buf)?;
        for (seg, end) in sealed {
            seg.end.store(end, Ordering::Release);
        }
        w.active.end.store(off, Ordering::Release);
        w.tail = off;
        self.end.store(w.active.start + off, Ordering::Release);
        Ok(positions)
    }

    /// The open file of `seg`, opening it if it was closed (see *Open files*
    /// in the module documentation).
    fn file(&self, seg: &Arc<Segment>) -> Result<Arc<dyn File>, LogError> {
        let mut slot = seg.file.lock().map_err(|_| LogError::Poisoned)?;
        if let Some(f) = &*slot {
            return Ok(Arc::clone(f));
        }
        let file: Arc<dyn File> = Arc::from(self.dir.open(&seg.name).map_err(io_error(&seg.path, "open"))?);
        *slot = Some(Arc::clone(&file));
        drop(slot);
        self.note_open(Arc::clone(seg));
        Ok(file)
    }

    /// Counts `seg`'s file among the open sealed ones, closing the one
    /// opened longest ago when there are too many. A reader that still holds
    /// a closed file's handle finishes with it.
    fn note_open(&self, seg: Arc<Segment>) {
        let Ok(mut open) = self.open_sealed.lock() else {
            return;
        };
        open.push_back(seg);
        while open.len() > MAX_OPEN_SEALED {
            if let Some(old) = open.pop_front()
                && let Ok(mut f) = old.file.lock()
            {
                *f = None;
            }
        }
    }

    fn write_and_sync(&self, seg: &Arc<Segment>, offset: u64, buf: &[u8]) -> Result<(), LogError> {
        if buf.is_empty() {
            return Ok(());
        }
        let file = self.file(seg)?;
        file.write_at(offset, buf).map_err(io_error(&seg.path, "write"))?;
        self.counters
            .bytes_written
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        file.sync_data().map_err(io_error(&seg.path, "sync"))?;
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The record at `pos`: its kind and payload, checksum verified.
    ///
    /// # Errors
    /// [`LogError::NoRecord`] if its segment was removed or it is past the
    /// last acknowledged record; [`LogError::Corrupt`] if no valid record
    /// starts there; [`LogError::Io`] if the read fails. Reads go on after
    /// the log is poisoned: a position handed out by a successful append is
    /// still what was synced, so a store that refuses writes still serves
    /// what it holds.
    pub fn read(&self, pos: Position) -> Result<(u8, Vec<u8>), LogError> {
        let seg = self
            .segments
            .read()
            .map_err(|_| LogError::Poisoned)?
            .get(&pos.segment)
            .cloned()
            .ok_or(LogError::NoRecord { pos })?;
        let off = u64::from(pos.offset);
        let limit = seg.end.load(Ordering::Acquire);
        if off + HEADER as u64 > limit {
            return Err(LogError::NoRecord { pos });
        }
        let room = usize::try_from(limit - off).unwrap_or(usize::MAX);
        let file = match self.file(&seg) {
            // Removed since it was looked up.
            Err(LogError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(LogError::NoRecord { pos });
            }
            other => other?,
        };
        let mut buf = vec![0; room.min(HEADER + READ_AHEAD)];
        file.read_at(off, &mut buf).map_err(io_error(&seg.path, "read"))?;
        let want = match buf.first_chunk::<HEADER>().map(record::parse_header) {
            Some(Header::Record { len, .. }) => HEADER.saturating_add(len as usize),
            Some(Header::Zero) | None => return Err(corrupt(&seg, off, "no record starts here (zeros)")),
        };
        if want > room {
            return Err(corrupt(
                &seg,
                off,
                "its length runs past the segment's last record",
            ));
        }
        let have = buf.len();
        if want > have {
            buf.resize(want, 0);
            file.read_at(off + have as u64, &mut buf[have..])
                .map_err(io_error(&seg.path, "read"))?;
        }
        buf.truncate(want);
        let kind = match record::decode(&buf) {
            Decoded::Record { kind, .. } => kind,
            Decoded::End => return Err(corrupt(&seg, off, "no record starts here (zeros)")),
            Decoded::Bad(detail) => return Err(corrupt(&seg, off, detail)),
        };
        buf.drain(..HEADER);
        Ok((kind, buf))
    }

    /// Calls `f` with every acknowledged record at or after `from`, in log
    /// order, checking each. Returns how many it visited. `from` must be a
    /// record's position or the start of a segment (or [`Position::START`]);
    /// segments removed are skipped.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] at the first bad record (`f` has seen those
    /// before it); [`LogError::Io`]; [`LogError::Poisoned`].
    pub fn replay(&self, from: Position, mut f: impl FnMut(Position, u8, &[u8])) -> Result<u64, LogError> {
        self.check_poisoned()?;
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .map_err(|_| LogError::Poisoned)?
            .range(from.segment..)
            .map(|(_, s)| Arc::clone(s))
            .collect();
        let mut visited = 0;
        for seg in segments {
            let start = if seg.start == from.segment {
                u64::from(from.offset)
            } else {
                0
            };
            let limit = seg.end.load(Ordering::Acquire);
            if start >= limit {
                continue;
            }
            let file = self.file(&seg)?;
            let scanned = scan(&*file, start, limit, |off, kind, payload| {
                let pos = Position {
                    segment: seg.start,
                    offset: off as u32,
                };
                f(pos, kind, payload);
            })
            .map_err(io_error(&seg.path, "read"))?;
            visited += scanned.records;
            if let Stop::Bad { offset, detail } = scanned.stop {
                return Err(corrupt(&seg, offset, detail));
            }
        }
        Ok(visited)
    }

    /// Checks every record of every sealed segment, that nothing but zeros
    /// follows a segment's records (a zeroed header would hide the records
    /// after it) and that no segment starts inside the records of the one
    /// before. Returns how many records there are. Open does not do this
    /// (it reads only the last segment, so that a start takes the same time
    /// whatever the log holds); reads and replays check each record they
    /// touch.
    ///
    /// # Errors
    /// [`LogError::Corrupt`] at the first damage, naming the file and
    /// offset; [`LogError::Io`]; [`LogError::Poisoned`].
    pub fn verify(&self) -> Result<u64, LogError> {
        self.check_poisoned()?;
        let segments: Vec<Arc<Segment>> = self
            .segments
            .read()
            .map_err(|_| LogError::Poisoned)?
            .values()
            .cloned()
            .collect();
        let mut records = 0;
        let mut prev: Option<(u64, u64)> = None;
        for seg in segments {
            if let Some((prev_start, prev_end)) = prev.filter(|&(_, end)| seg.start < end) {
                return Err(corrupt(
                    &seg,
                    0,
                    format!("it starts inside segment {prev_start}, whose records end at {prev_end}"),
                ));
            }
            let limit = seg.end.load(Ordering::Acquire);
            let file = self.file(&seg)?;
            let scanned = scan(&*file, 0, limit, |_, _, _| {}).map_err(io_error(&seg.path, "read"))?;
            if let Stop::Bad { offset, detail } = scanned.stop {
                return Err(corrupt(&seg, offset, detail));
            }
            let stray = nonzero_after(&*file, scanned.end, limit, false, &self.counters)
                .map_err(io_error(&seg.path, "read"))?;
            if let Some((offset, _)) = stray {
                return Err(corrupt(
                    &seg,
                    offset,
                    format!("non-zero bytes after the end of its records at {}", scanned.end),
                ));
            }
            records += scanned.records;
            prev = Some((seg.start, seg.start + scanned.end));
        }
        Ok(records)
    }

    /// Deletes the segment starting at `segment`, whose records the caller
    /// no longer needs, and syncs the directory. Reads of its positions then
    /// fail with [`LogError::NoRecord`].
    ///
    /// # Errors
    /// [`LogError::ActiveSegment`] for the segment appends go to;
    /// [`LogError::UnknownSegment`]; [`LogError::Io`] if the delete or the
    /// directory sync fails (the log is then poisoned: the file may come
    /// back after a crash); [`LogError::Poisoned`].
    pub fn remove_segment(&self, segment: u64) -> Result<(), LogError> {
        self.check_poisoned()?;
        let w = self.writer.lock().map_err(|_| LogError::Poisoned)?;
        if w.active.start == segment {
            return Err(LogError::ActiveSegment { segment });
        }
        let seg = self
            .segments
            .write()
            .map_err(|_| LogError::Poisoned)?
            .remove(&segment)
            .ok_or(LogError::UnknownSegment { segment })?;
        // The unlink and the directory sync need not hold up appends: the
        // segment is out of the map, and names are never reused.
        drop(w);
        // Its descriptor goes too (an open one would keep the space in use).
        if let Ok(mut open) = self.open_sealed.lock() {
            open.retain(|s| s.start != segment);
        }
        if let Ok(mut f) = seg.file.lock() {
            *f = None;
        }
        let dir_path = self.dir.describe("");
        let result = self
            .dir
            .remove(&seg.name)
            .map_err(io_error(&seg.path, "remove"))
            .and_then(|()| self.dir.sync().map_err(io_error(&dir_path, "sync directory")));
        match result {
            Ok(()) => {
                self.counters.syncs.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }

    /// The segments, by first position, oldest first; the last is active.
    pub fn segments(&self) -> Vec<u64> {
        self.segments
            .read()
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The directory the log is in.
    pub fn dir(&self) -> Arc<dyn Dir> {
        Arc::clone(&self.dir)
    }

    /// Where the next record will go (unless it rolls to a new segment).
    pub fn tail(&self) -> Position {
        let end = self.end.load(Ordering::Acquire);
        let segment = self
            .segments
            .read()
            .ok()
            .and_then(|s| s.range(..=end).next_back().map(|(&start, _)| start))
            .unwrap_or(0);
        Position {
            segment,
            offset: (end - segment) as u32,
        }
    }

    /// Whether an earlier failure poisoned the log.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// `sync_data` and directory syncs done since open (open's own
    /// included): one per append that stays in its segment.
    pub fn syncs(&self) -> u64 {
        self.counters.syncs.load(Ordering::Relaxed)
    }

    /// Bytes handed to `write_at` since open: records, and zeros written
    /// over a torn tail.
    pub fn bytes_written(&self) -> u64 {
        self.counters.bytes_written.load(Ordering::Relaxed)
    }
}

/// Creates segment `start`, preallocated, and makes it durable in the directory.
fn create_segment(dir: &dyn Dir, start: u64, bytes: u64, counters: &Counters) -> Result<Segment, LogError> {
    let name = segment_name(start);
    let path = dir.describe(&name);
    let file = dir.create(&name).map_err(io_error(&path, "create"))?;
    file.allocate(bytes).map_err(io_error(&path, "allocate"))?;
    // The next sync_data of the file makes the length durable; the entry
    // needs the directory's.
    dir.sync()
        .map_err(io_error(&dir.describe(""), "sync directory"))?;
    counters.syncs.fetch_add(1, Ordering::Relaxed);
    Ok(Segment {
        start,
        name,
        path,
        file: Mutex::new(Some(Arc::from(file))),
        capacity: bytes,
        end: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use rand::rngs::StdRng;
    use rand::seq::SliceRandom as _;
    use rand::{Rng as _, RngCore as _, SeedableRng as _};

    use super::*;

    /// 4 KiB segments: a few records each, so tests roll often.
    const SMALL: u64 = 4096;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Rec {
        pos: Position,
        kind: u8,
        payload: Vec<u8>,
    }

    fn config(segment_bytes: u64) -> LogConfig {
        LogConfig { segment_bytes }
    }

    fn open(sim: &SimDir, segment_bytes: u64) -> (Log, Recovery) {
        Log::open(Arc::new(sim.clone()), config(segment_bytes)).expect("open over the simulator")
    }

    fn replay_all(log: &Log) -> Vec<Rec> {
        let mut out = Vec::new();
        log.replay(Position::START, |pos, kind, payload| {
            out.push(Rec {
                pos,
                kind,
                payload: payload.to_vec(),
            });
        })
        .expect("replay of an open log");
        out
    }

    fn refs(batch: &[(u8, Vec<u8>)]) -> Vec<(u8, &[u8])> {
        batch.iter().map(|(k, p)| (*k, p.as_slice())).collect()
    }

    /// Appends and returns the records as the log should now hold them.
    fn append(log: &Log, batch: &[(u8, Vec<u8>)]) -> Vec<Rec> {
        let positions = log.append(&refs(batch)).expect("append");
        assert_eq!(positions.len(), batch.len());
        positions
            .into_iter()
            .zip(batch)
            .map(|(pos, (kind, payload))| Rec {
                pos,
                kind: *kind,
                payload: payload.clone(),
            })
            .collect()
    }

    fn payload(len: usize, fill: u8) -> Vec<u8> {
        (0..len).map(|i| fill.wrapping_add(i as u8)).collect()
    }

    fn segment_file(sim: &SimDir, start: u64) -> Box<dyn File> {
        sim.open(&segment_name(start)).expect("segment file exists")
    }

    #[test]
    fn round_trip_read_by_position_and_replay_after_reopen() {
        let sim = SimDir::new();
        let (log, rec) = open(&sim, SMALL);
        assert_eq!(rec.records, 0);
        assert_eq!(rec.tail, Position::START);
        assert_eq!(rec.truncated, None);
        let mut want = append(&log, &[(1, b"first".to_vec()), (2, Vec::new()), (0, vec![0; 40])]);
        want.extend(append(&log, &[(7, payload(300, 3))]));
        assert_eq!(want[0].pos, Position::START);
        assert!(
            want.windows(2).all(|w| w[0].pos < w[1].pos),
            "positions only grow"
        );
        for r in &want {
            assert_eq!(log.read(r.pos).expect("read"), (r.kind, r.payload.clone()));
        }
        assert_eq!(replay_all(&log), want);
        // Replay from the middle.
        let mut tail = Vec::new();
        log.replay(want[2].pos, |pos, _, _| tail.push(pos))
            .expect("replay");
        assert_eq!(tail, [want[2].pos, want[3].pos]);
        assert_eq!(log.append(&[]).expect("empty batch"), []);
        drop(log);

        let (log, rec) = open(&sim.power_cut(1), SMALL);
        assert_eq!(rec.records, 4);
        assert_eq!(rec.truncated, None);
        assert_eq!(replay_all(&log), want);
        let more = append(&log, &[(9, b"after reopen".to_vec())]);
        assert_eq!(more[0].pos.log_offset(), want[3].pos.log_offset() + 9 + 300);
    }

    #[test]
    fn group_commit_is_one_write_and_one_sync() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, DEFAULT_SEGMENT_BYTES);
        let batch: Vec<(u8, Vec<u8>)> = (0..100).map(|i| (1, payload(100, i))).collect();
        let (syncs, ops, bytes) = (log.syncs(), sim.ops(), log.bytes_written());
        append(&log, &batch);
        assert_eq!(log.syncs() - syncs, 1);
        assert_eq!(sim.ops() - ops, 2, "one write_at and one sync_data");
        assert_eq!(log.bytes_written() - bytes, 100 * (9 + 100));
        assert!(!sim.has_unsynced());
    }

    #[test]
    fn rollover_across_segments() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, SMALL);
        // 4 records of 1009 bytes fill 4036 of 4096 bytes; the 5th rolls.
        let mut want = Vec::new();
        for i in 0..5 {
            want.extend(append(&log, &[(1, payload(1000, i))]));
        }
        assert_eq!(log.segments(), [0, 4036]);
        assert_eq!(
            want[4].pos,
            Position {
                segment: 4036,
                offset: 0
            }
        );
        // One batch that spans three segments: each filled segment is
        // synced before the next exists, plus a directory sync per segment.
        let syncs = log.syncs();
        let batch: Vec<(u8, Vec<u8>)> = (0..9).map(|i| (2, payload(1000, i))).collect();
        want.extend(append(&log, &batch));
        assert_eq!(log.segments(), [0, 4036, 8072, 12108]);
        assert_eq!(log.syncs() - syncs, 3 + 2);
        for r in &want {
            assert_eq!(log.read(r.pos).expect("read").1, r.payload);
        }
        assert_eq!(replay_all(&log), want);
        // Every file is preallocated to the segment size.
        for start in log.segments() {
            assert_eq!(segment_file(&sim, start).len().expect("len"), SMALL);
        }
        drop(log);
        let (log, rec) = open(&sim.power_cut(2), SMALL);
        assert_eq!((rec.segments, rec.truncated), (4, None));
        assert_eq!(
            rec.records,
            want.iter().filter(|r| r.pos.segment == 12108).count() as u64
        );
        assert_eq!(log.verify().expect("verify"), 14);
        assert_eq!(replay_all(&log), want);
        assert_eq!(
            rec.tail,
            Position {
                segment: 12108,
                offset: 2 * 1009
            }
        );
    }

    #[test]
    fn a_record_as_large_as_a_segment_fits_and_a_larger_one_is_refused() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, 256);
        let max = log.config().max_payload();
        assert_eq!(max, 247);
        let want = append(&log, &[(1, vec![1]), (2, payload(max, 0)), (3, payload(max, 1))]);
        assert_eq!(log.segments().len(), 3);
        match log.append(&[(1, &[0; 248][..])]) {
            Err(LogError::RecordTooLarge { len: 248, max: 247 }) => {}
            other => panic!("expected RecordTooLarge, got {other:?}"),
        }
        assert!(!log.is_poisoned(), "a refused record is not a failed write");
        let more = append(&log, &[(4, Vec::new())]);
        assert_eq!(replay_all(&log), [want, more].concat());
    }

    #[test]
    fn torn_tail_is_truncated_reported_and_appends_continue() {
        let mut truncated_seen = 0;
        for seed in 0..40 {
            let sim = SimDir::new();
            let (log, _) = open(&sim, SMALL);
            let acked = append(&log, &[(1, payload(100, 1)), (2, payload(50, 2))]);
            // The next batch is written but the machine dies before its sync.
            sim.fail_after(1);
            let batch = vec![(3, payload(700, 3)), (4, payload(700, 4)), (5, payload(700, 5))];
            assert!(matches!(
                log.append(&refs(&batch)),
                Err(LogError::Io { op: "sync", .. })
            ));
            drop(log);

            let after = sim.power_cut(seed);
            let (log, rec) = open(&after, SMALL);
            let got = replay_all(&log);
            assert_eq!(got[..2], acked[..], "seed {seed}");
            let extra = &got[2..];
            assert!(
                extra
                    .iter()
                    .zip(&batch)
                    .all(|(r, (k, p))| r.kind == *k && r.payload == *p),
                "seed {seed}: only a prefix of the unsynced batch may survive"
            );
            assert_eq!(
                rec.tail.log_offset(),
                109 + 59 + extra.len() as u64 * 709,
                "seed {seed}"
            );
            if let Some(t) = rec.truncated {
                truncated_seen += 1;
                assert_eq!(t.at, rec.tail, "seed {seed}");
                assert!(t.bytes > 0 && t.bytes <= 3 * 709, "seed {seed}: {t:?}");
            }
            // Appends go right after the tail, and survive another reopen.
            let more = append(&log, &[(6, b"next".to_vec())]);
            assert_eq!(more[0].pos, rec.tail, "seed {seed}");
            drop(log);
            let (log, rec) = open(&after.power_cut(seed), SMALL);
            assert_eq!(rec.truncated, None, "seed {seed}: the tail was zeroed and synced");
            assert_eq!(replay_all(&log), [got, more].concat(), "seed {seed}");
        }
        assert!(truncated_seen > 5, "torn tails seen: {truncated_seen}");
    }

    #[test]
    fn stale_records_after_the_tail_are_zeroed_before_appends_reach_them() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, SMALL);
        let acked = append(&log, &[(1, payload(10, 1))]);
        let tail = log.tail();
        drop(log);
        // Garbage at the tail, then, 100 bytes on, a record that checks out:
        // what a torn batch whose first sectors were lost would leave.
        let mut planted = Vec::new();
        record::encode_into(&mut planted, 9, 5, b"stale");
        let file = segment_file(&sim, 0);
        file.write_at(u64::from(tail.offset), &[0xAB; 20]).expect("write");
        file.write_at(u64::from(tail.offset) + 100, &planted)
            .expect("write");
        file.sync_data().expect("sync");

        let (log, rec) = open(&sim, SMALL);
        assert_eq!(
            rec.truncated,
            Some(Truncation {
                at: tail,
                bytes: 100 + planted.len() as u64
            })
        );
        assert_eq!(replay_all(&log), acked);
        // A record of exactly 100 bytes puts the next position where the
        // stale record was: it must not come back.
        let more = append(&log, &[(2, payload(91, 2))]);
        drop(log);
        let (log, rec) = open(&sim.power_cut(3), SMALL);
        assert_eq!(rec.truncated, None);
        assert_eq!(replay_all(&log), [acked, more].concat());
    }

    #[test]
    fn corruption_in_a_sealed_segment_is_an_error_naming_it() {
        let build = || {
            let sim = SimDir::new();
            let (log, _) = open(&sim, SMALL);
            for i in 0..6 {
                append(&log, &[(1, payload(1000, i))]);
            }
            assert_eq!(log.segments(), [0, 4036]);
            sim
        };
        // A flipped payload byte in record 2 of segment 0: open does not
        // read sealed segments; verify and replay find it.
        let sim = build();
        let file = segment_file(&sim, 0);
        file.write_at(1009 + 9 + 5, &[0xFF]).expect("write");
        file.sync_data().expect("sync");
        let (log, _) = open(&sim, SMALL);
        match log.verify() {
            Err(
                e @ LogError::Corrupt {
                    segment: 0,
                    offset: 1009,
                    ..
                },
            ) => {
                let msg = e.to_string();
                assert!(msg.contains("00000000000000000000.seg"), "{msg}");
                assert!(msg.contains("checksum"), "{msg}");
            }
            other => panic!("expected Corrupt at 0+1009, got {other:?}"),
        }
        assert!(matches!(
            log.replay(Position::START, |_, _, _| {}),
            Err(LogError::Corrupt {
                segment: 0,
                offset: 1009,
                ..
            })
        ));
        // A zeroed header would hide the records after it: also corruption.
        let sim = build();
        let file = segment_file(&sim, 0);
        file.write_at(1009, &[0; 9]).expect("write");
        file.sync_data().expect("sync");
        let (log, _) = open(&sim, SMALL);
        assert!(matches!(
            log.verify(),
            Err(LogError::Corrupt {
                segment: 0,
                offset: 1018,
                ..
            })
        ));
        // An undamaged log verifies.
        let sim = build();
        let (log, _) = open(&sim, SMALL);
        assert_eq!(log.verify().expect("verify"), 6);
        // The same damage in the last segment is a torn tail.
        let sim = build();
        let file = segment_file(&sim, 4036);
        file.write_at(1009 + 9 + 5, &[0xFF]).expect("write");
        file.sync_data().expect("sync");
        let (log, rec) = open(&sim, SMALL);
        assert_eq!(rec.records, 1);
        assert_eq!(
            rec.truncated.map(|t| t.at),
            Some(Position {
                segment: 4036,
                offset: 1009
            })
        );
        assert_eq!(replay_all(&log).len(), 5);
        // And a read that lands on damage says so instead of returning it.
        let file = segment_file(&sim, 0);
        file.write_at(9 + 1, &[0xEE]).expect("write");
        assert!(matches!(
            log.read(Position::START),
            Err(LogError::Corrupt {
                segment: 0,
                offset: 0,
                ..
            })
        ));
    }

    #[test]
    fn failed_sync_poisons_and_only_acknowledged_batches_count() {
        for seed in 0..50 {
            let sim = SimDir::new();
            let (log, _) = open(&sim, SMALL);
            let acked = append(&log, &[(1, payload(100, 1)), (2, payload(3000, 2))]);
            sim.fail_next_sync();
            let failed = vec![(3, payload(500, 3)), (4, payload(900, 4))];
            match log.append(&refs(&failed)) {
                Err(LogError::Io { op: "sync", .. }) => {}
                other => panic!("seed {seed}: expected a sync error, got {other:?}"),
            }
            assert!(log.is_poisoned());
            // No retry of the sync, no carrying on.
            assert!(matches!(log.append(&[(5, b"x")]), Err(LogError::Poisoned)));
            assert!(matches!(log.append(&[]), Err(LogError::Poisoned)));
            // What was acknowledged stays readable.
            assert_eq!(
                log.read(acked[0].pos).ok().map(|r| r.1),
                Some(acked[0].payload.clone())
            );
            assert!(matches!(
                log.replay(Position::START, |_, _, _| {}),
                Err(LogError::Poisoned)
            ));
            assert!(matches!(log.remove_segment(0), Err(LogError::Poisoned)));
            drop(log);

            let (log, _) = open(&sim.power_cut(seed), SMALL);
            let got = replay_all(&log);
            assert_eq!(got[..2], acked[..], "seed {seed}");
            assert!(got.len() <= 4, "seed {seed}");
            assert!(
                got[2..]
                    .iter()
                    .zip(&failed)
                    .all(|(r, (k, p))| r.kind == *k && r.payload == *p),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn removing_segments() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, SMALL);
        let mut recs = Vec::new();
        for i in 0..9 {
            recs.extend(append(&log, &[(1, payload(1000, i))]));
        }
        assert_eq!(log.segments(), [0, 4036, 8072]);
        assert!(matches!(
            log.remove_segment(8072),
            Err(LogError::ActiveSegment { segment: 8072 })
        ));
        assert!(matches!(
            log.remove_segment(5),
            Err(LogError::UnknownSegment { segment: 5 })
        ));
        let syncs = log.syncs();
        log.remove_segment(4036).expect("remove");
        assert_eq!(log.syncs() - syncs, 1, "the directory is synced");
        assert!(!sim.has_unsynced());
        assert_eq!(log.segments(), [0, 8072]);
        assert!(matches!(log.read(recs[4].pos), Err(LogError::NoRecord { .. })));
        let live: Vec<Rec> = recs.iter().filter(|r| r.pos.segment != 4036).cloned().collect();
        assert_eq!(replay_all(&log), live);
        // Replaying from a removed segment starts at the next one.
        let mut from_gap = 0;
        log.replay(recs[5].pos, |_, _, _| from_gap += 1).expect("replay");
        assert_eq!(from_gap, 1);
        // Past the last record, nothing.
        let past = Position {
            segment: 8072,
            offset: 1009,
        };
        assert!(matches!(log.read(past), Err(LogError::NoRecord { .. })));
        drop(log);
        let (log, rec) = open(&sim.power_cut(4), SMALL);
        assert_eq!(rec.segments, 2);
        assert_eq!(replay_all(&log), live);
    }

    #[test]
    fn bad_config_is_refused() {
        for segment_bytes in [0, 63, u64::from(u32::MAX) + 1] {
            assert!(matches!(
                Log::open(Arc::new(SimDir::new()), config(segment_bytes)),
                Err(LogError::Config { .. })
            ));
        }
    }

    #[test]
    fn readers_on_other_threads_while_appending() {
        let sim = SimDir::new();
        let (log, _) = open(&sim, SMALL);
        let first = append(&log, &[(1, payload(500, 1)), (2, payload(20, 2))]);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..200 {
                        for r in &first {
                            assert_eq!(log.read(r.pos).expect("read").1, r.payload);
                        }
                    }
                });
            }
            for i in 0..50 {
                append(&log, &[(3, payload(300, i))]);
            }
        });
        assert_eq!(replay_all(&log).len(), 52);
    }

    /// Descriptors open on files in `dir`, from `/proc/self/fd`.
    fn open_files_in(dir: &std::path::Path) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .expect("/proc/self/fd")
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir))
            .count()
    }

    #[test]
    fn a_log_of_many_segments_keeps_few_files_open() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("log");
        let dir = Arc::new(OsDir::open(&path).expect("create the directory"));
        let (log, _) = Log::open(dir.clone(), config(SMALL)).expect("open");
        let mut want = Vec::new();
        for i in 0..200 {
            want.extend(append(&log, &[(1, payload(1500, i))]));
        }
        let segments = log.segments();
        assert!(
            segments.len() > 3 * MAX_OPEN_SEALED,
            "{} segments",
            segments.len()
        );
        // Appending alone keeps only the active segment open: each sealed
        // one was closed when the next began.
        assert_eq!(open_files_in(&path), 1, "files open after appending only");
        // Reading every record opens every sealed segment once more.
        for r in &want {
            assert_eq!(log.read(r.pos).expect("read").1, r.payload);
        }
        let open = open_files_in(&path);
        assert!(
            open <= MAX_OPEN_SEALED + 1,
            "{open} files open for {} segments",
            segments.len()
        );
        // A removed segment's descriptor is closed with it.
        let newest_sealed = segments[segments.len() - 2];
        log.remove_segment(newest_sealed).expect("remove");
        assert!(
            open_files_in(&path) < open,
            "the removed segment's file is still open"
        );
        drop(log);
        assert_eq!(open_files_in(&path), 0);
        // After a reopen only the active segment is open, and a replay of
        // everything stays within the bound too.
        let (log, _) = Log::open(dir, config(SMALL)).expect("reopen");
        assert_eq!(open_files_in(&path), 1);
        let live: Vec<Rec> = want
            .into_iter()
            .filter(|r| r.pos.segment != newest_sealed)
            .collect();
        assert_eq!(replay_all(&log), live);
        assert!(open_files_in(&path) <= MAX_OPEN_SEALED + 1);
    }

    #[test]
    fn os_dir_preallocates_and_survives_reopen() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("open-store").join("log");
        let dir = Arc::new(OsDir::open(&path).expect("create the directory"));
        let bytes = 64 * 1024;
        let (log, rec) = Log::open(dir.clone(), config(bytes)).expect("open");
        assert_eq!(rec.segments, 1);
        let first = path.join(segment_name(0));
        assert_eq!(std::fs::metadata(&first).expect("segment 0").len(), bytes);
        let mut want = Vec::new();
        for i in 0..20 {
            let batch: Vec<(u8, Vec<u8>)> = (0..3).map(|j| (j, payload(4000, i + j))).collect();
            want.extend(append(&log, &batch));
        }
        let segments = log.segments();
        assert!(segments.len() > 1, "{segments:?}");
        for start in &segments {
            assert_eq!(
                std::fs::metadata(path.join(segment_name(*start)))
                    .expect("segment")
                    .len(),
                bytes
            );
        }
        log.remove_segment(0).expect("remove");
        assert!(!first.exists());
        let live: Vec<Rec> = want.into_iter().filter(|r| r.pos.segment != 0).collect();
        drop(log);

        let (log, rec) = Log::open(dir, config(bytes)).expect("reopen");
        assert_eq!(rec.truncated, None);
        assert_eq!(log.verify().expect("verify"), live.len() as u64);
        assert!(rec.records <= live.len() as u64);
        assert_eq!(replay_all(&log), live);
        for r in &live {
            assert_eq!(log.read(r.pos).expect("read").1, r.payload);
        }
        // Only segment files count; anything else in the directory is left alone.
        std::fs::write(path.join("README"), b"not a segment").expect("write");
        let more = append(&log, &[(7, b"still appending".to_vec())]);
        drop(log);
        let (log, _) = Log::open(Arc::new(OsDir::open(&path).expect("dir")), config(bytes)).expect("reopen");
        assert_eq!(replay_all(&log), [live, more].concat());
    }

    // ---- The randomized power-loss test -------------------------------------------------------

    /// What a reopened log must hold.
    #[derive(Debug, Default)]
    struct Expect {
        /// Every record of every acknowledged batch, minus removed segments, in order.
        model: Vec<Rec>,
        /// The batch whose append was cut: a prefix of it may survive.
        in_flight: Vec<(u8, Vec<u8>)>,
        /// The segment whose removal was cut: it may come back, whole.
        maybe_removed: Option<u64>,
    }

    /// How often each fault was met, so the test cannot quietly stop reaching them.
    #[derive(Debug, Default)]
    struct Coverage {
        appends_cut: u64,
        prefix_survived: u64,
        truncated: u64,
        rollovers: u64,
        removals: u64,
        removals_cut: u64,
        kills: u64,
        opens_cut: u64,
    }

    fn summary(recs: &[&Rec]) -> Vec<(Position, u8, usize)> {
        recs.iter().map(|r| (r.pos, r.kind, r.payload.len())).collect()
    }

    fn check(seed: u64, epoch: usize, got: &[Rec], want: &Expect, cov: &mut Coverage) {
        let in_maybe = |r: &&Rec| Some(r.pos.segment) == want.maybe_removed;
        let (got_maybe, got_rest): (Vec<&Rec>, Vec<&Rec>) = got.iter().partition(in_maybe);
        let (want_maybe, want_rest): (Vec<&Rec>, Vec<&Rec>) = want.model.iter().partition(in_maybe);
        assert!(
            got_maybe.is_empty() || got_maybe == want_maybe,
            "seed {seed} epoch {epoch}: segment {:?}, whose removal was cut, came back changed",
            want.maybe_removed
        );
        assert!(
            got_rest.len() >= want_rest.len() && got_rest[..want_rest.len()] == want_rest[..],
            "seed {seed} epoch {epoch}: acknowledged records lost, changed, duplicated or reordered\n\
             got  {:?}\nwant {:?}",
            summary(&got_rest),
            summary(&want_rest)
        );
        let extra = &got_rest[want_rest.len()..];
        assert!(
            extra.len() <= want.in_flight.len()
                && extra
                    .iter()
                    .zip(&want.in_flight)
                    .all(|(r, (k, p))| r.kind == *k && r.payload == *p),
            "seed {seed} epoch {epoch}: records that are not a prefix of the batch in flight: {:?}",
            summary(extra)
        );
        if !extra.is_empty() {
            cov.prefix_survived += 1;
        }
    }

    fn random_payload(rng: &mut StdRng, max: usize) -> Vec<u8> {
        let len = match rng.gen_range(0..20) {
            0..=2 => 0,
            3..=10 => rng.gen_range(1..=64),
            11..=15 => rng.gen_range(1..=max / 2),
            16..=18 => rng.gen_range(max - 16..=max),
            _ => max,
        };
        let mut p = vec![0; len];
        if rng.gen_bool(0.8) {
            rng.fill(&mut p[..]);
        }
        p
    }

    /// Random appends and removals until the simulator's budget cuts one.
    fn run(log: &Log, sim: &SimDir, rng: &mut StdRng, want: &mut Expect, cov: &mut Coverage, seed: u64) {
        let max = log.config().max_payload();
        for _ in 0..rng.gen_range(1..50) {
            if rng.gen_range(0..100) < 8 {
                let active = log.tail().segment;
                let candidates: Vec<u64> = log.segments().into_iter().filter(|&s| s != active).collect();
                let Some(&segment) = candidates.choose(rng) else {
                    continue;
                };
                // The test decides every record in it is dead.
                match log.remove_segment(segment) {
                    Ok(()) => {
                        cov.removals += 1;
                        want.model.retain(|r| r.pos.segment != segment);
                    }
                    Err(_) => {
                        cov.removals_cut += 1;
                        want.maybe_removed = Some(segment);
                        return;
                    }
                }
                continue;
            }
            if rng.gen_range(0..100) < 3 {
                sim.fail_next_sync();
            }
            let batch: Vec<(u8, Vec<u8>)> = (0..rng.gen_range(0..=6))
                .map(|_| (rng.gen_range(0..=255), random_payload(rng, max)))
                .collect();
            match log.append(&refs(&batch)) {
                Ok(positions) => {
                    assert_eq!(positions.len(), batch.len(), "seed {seed}");
                    if positions.iter().any(|p| p.offset == 0 && p.segment > 0) {
                        cov.rollovers += 1;
                    }
                    for (pos, (kind, payload)) in positions.into_iter().zip(batch) {
                        want.model.push(Rec { pos, kind, payload });
                    }
                    if let Some(r) = want.model.choose(rng) {
                        let (kind, payload) = log
                            .read(r.pos)
                            .unwrap_or_else(|e| panic!("seed {seed}: read {}: {e}", r.pos));
                        assert_eq!((kind, &payload), (r.kind, &r.payload), "seed {seed}");
                    }
                }
                Err(e) => {
                    assert!(!matches!(e, LogError::RecordTooLarge { .. }), "seed {seed}: {e}");
                    assert!(matches!(log.append(&[]), Err(LogError::Poisoned)), "seed {seed}");
                    cov.appends_cut += 1;
                    want.in_flight = batch;
                    return;
                }
            }
        }
    }

    /// One seed: a few lives of the log, each ended by a power cut (or a
    /// killed process) at a random I/O operation, each checked on reopen.
    fn power_loss_run(seed: u64, cov: &mut Coverage) {
        let mut rng = StdRng::seed_from_u64(seed);
        let segment_bytes = *[256, 1024, 4096].choose(&mut rng).expect("non-empty");
        let mut sim = SimDir::new();
        let mut want = Expect::default();
        for epoch in 0..rng.gen_range(1..=3) {
            let cut_in_open = rng.gen_bool(0.1);
            if cut_in_open {
                sim.fail_after(rng.gen_range(0..4));
            }
            match Log::open(Arc::new(sim.clone()), config(segment_bytes)) {
                Ok((log, rec)) => {
                    sim.resume();
                    cov.truncated += u64::from(rec.truncated.is_some());
                    let got = replay_all(&log);
                    check(seed, epoch, &got, &want, cov);
                    assert_eq!(
                        log.verify().ok(),
                        Some(got.len() as u64),
                        "seed {seed} epoch {epoch}: verify"
                    );
                    want = Expect {
                        model: got,
                        ..Expect::default()
                    };
                    if rng.gen_bool(0.9) {
                        sim.fail_after(rng.gen_range(0..100));
                    }
                    run(&log, &sim, &mut rng, &mut want, cov, seed);
                }
                Err(e) => {
                    assert!(cut_in_open, "seed {seed} epoch {epoch}: open failed: {e}");
                    cov.opens_cut += 1;
                }
            }
            if rng.gen_bool(0.75) {
                sim = sim.power_cut(rng.next_u64());
            } else {
                cov.kills += 1;
                sim.resume();
            }
        }
        let (log, rec) = Log::open(Arc::new(sim.clone()), config(segment_bytes))
            .unwrap_or_else(|e| panic!("seed {seed}: open after the last cut failed: {e}"));
        cov.truncated += u64::from(rec.truncated.is_some());
        let got = replay_all(&log);
        check(seed, 99, &got, &want, cov);
        assert_eq!(log.verify().ok(), Some(got.len() as u64), "seed {seed}: verify");
        let batch = vec![
            (1, b"after".to_vec()),
            (2, Vec::new()),
            (3, random_payload(&mut rng, 200)),
        ];
        let positions = log
            .append(&refs(&batch))
            .unwrap_or_else(|e| panic!("seed {seed}: append after recovery failed: {e}"));
        for (pos, (kind, payload)) in positions.iter().zip(&batch) {
            assert_eq!(log.read(*pos).ok(), Some((*kind, payload.clone())), "seed {seed}");
        }
        drop(log);
        let (log, rec) = Log::open(Arc::new(sim.power_cut(seed)), config(segment_bytes))
            .unwrap_or_else(|e| panic!("seed {seed}: final reopen failed: {e}"));
        assert_eq!(rec.truncated, None, "seed {seed}");
        let mut all = got;
        all.extend(
            positions
                .into_iter()
                .zip(batch)
                .map(|(pos, (kind, payload))| Rec { pos, kind, payload }),
        );
        assert_eq!(replay_all(&log), all, "seed {seed}: after the last reopen");
    }

    #[test]
    fn randomized_power_loss() {
        const SEEDS: u64 = 1000;
        let started = Instant::now();
        let mut cov = Coverage::default();
        for seed in 0..SEEDS {
            power_loss_run(seed, &mut cov);
        }
        println!("{SEEDS} power-loss seeds in {:?}: {cov:?}", started.elapsed());
        // Each fault must be met often enough for the seeds to mean something.
        let Coverage {
            appends_cut,
            prefix_survived,
            truncated,
            rollovers,
            removals,
            removals_cut,
            kills,
            opens_cut,
        } = cov;
        for (what, n, min) in [
            ("appends cut", appends_cut, 300),
            ("prefixes of a cut batch that survived", prefix_survived, 50),
            ("torn tails truncated", truncated, 50),
            ("batches that rolled to a new segment", rollovers, 1000),
            ("segments removed", removals, 300),
            ("removals cut", removals_cut, 5),
            ("killed processes", kills, 100),
            ("opens cut", opens_cut, 20),
        ] {
            assert!(n >= min, "{what}: {n}, fewer than {min}");
        }
    }
}
