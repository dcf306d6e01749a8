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
//! Writes go to a dedicated thread that appends batches and `fdatasync`s
//! each batch, so auditing never waits on the disk in the message path.

use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use sitrep_core::{MessageId, NodeId};

const DOMAIN: &[u8] = b"sitrep/v1/audit\0";
const ZERO: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
    pub channel: String,
    /// The label's class, if known.
    pub class: Option<String>,
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

fn body(seq: u64, e: &AuditEntry) -> String {
    format!(
        "{seq}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        e.time_ms,
        e.event,
        e.id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        e.peer.as_ref().map_or_else(|| "-".into(), ToString::to_string),
        clean(&e.channel),
        e.class.as_deref().map_or_else(|| "-".into(), clean),
        clean(&e.reason),
    )
}

fn chain(prev: &str, body: &str) -> String {
    let mut input = Vec::with_capacity(DOMAIN.len() + prev.len() + body.len());
    input.extend_from_slice(DOMAIN);
    input.extend_from_slice(prev.as_bytes());
    input.extend_from_slice(body.as_bytes());
    sitrep_crypto::sha256(&input)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the whole chain. Returns the number of entries and the last hash.
///
/// # Errors
/// [`AuditError::Broken`] naming the first broken line, or [`AuditError::Io`].
pub fn verify(path: &Path) -> Result<(u64, String), AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut prev = ZERO.to_owned();
    let mut n = 0u64;
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
    }
    Ok((n, prev))
}

enum Cmd {
    Entry(AuditEntry),
    Flush(mpsc::Sender<()>),
}

/// An open audit log. Appends from any thread; a writer thread chains,
/// writes and syncs.
#[derive(Debug)]
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    path: PathBuf,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, verifying the existing chain.
    ///
    /// # Errors
    /// [`AuditError::Broken`] if the existing chain is broken: the node
    /// refuses to start rather than extend a log it cannot vouch for.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        let (mut seq, mut prev) = if path.exists() {
            verify(path)?
        } else {
            (0, ZERO.to_owned())
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let p = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("sitrep-audit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut buf = String::new();
                    let mut flushes = Vec::new();
                    for cmd in std::iter::once(first).chain(rx.try_iter()) {
                        match cmd {
                            Cmd::Entry(e) => {
                                seq += 1;
                                let body = body(seq, &e);
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
                    if let Err(e) = file.write_all(buf.as_bytes()).and_then(|()| file.sync_data()) {
                        tracing::error!(path = %p.display(), error = %e, "audit log write failed");
                    }
                    for f in flushes {
                        let _ = f.send(());
                    }
                }
            })
            .map_err(io)?;
        Ok(Self {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            path: path.to_path_buf(),
        })
    }

    /// The log's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends an entry (written and synced by the writer thread shortly).
    pub fn append(&self, entry: AuditEntry) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = tx.send(Cmd::Entry(entry));
        }
    }

    /// Waits until everything appended so far is on disk.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|tx| tx.send(Cmd::Flush(done)).is_ok());
        if sent {
            let _ = wait.recv();
        }
    }

    /// Flushes and stops the writer.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
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
            channel: "open".into(),
            class: Some("SENSITIVE".into()),
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
