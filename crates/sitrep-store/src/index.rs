//! The store's index: one redb table of prefixed keys (layout in `keys`), in
//! one file, `<store>/index/index.redb`.
//!
//! Written only by the store's writer thread, after the log's `fdatasync`,
//! mostly by commits that do not sync the file ([`redb::Durability::None`]):
//! the log is the durability point, and every commit carries the log
//! position it brings the index to, so that a start after a crash replays
//! the log from the last commit that did reach the disk. A commit is made
//! durable (with redb's quick-repair state, so a start after a crash needs
//! no walk of the file) at most every [`DURABLE_EVERY`], before log segments
//! are deleted, and at close. Readers on any thread see every committed
//! state, and only those.
//!
//! Why redb and not sled (DESIGN §7 names sled): measured on the store's own
//! key mix (`benches/README.md`, *The index engine*), sled 0.34 cost 62–92 µs
//! of CPU and 3.4–4.4 KB of written bytes per report and grew to 126–205 MiB
//! resident; redb costs 12–14 µs, ≈ 80–520 bytes and stays at 12–25 MiB.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase as _, ReadableTable as _, ReadableTableMetadata as _};

/// The one table: byte keys to byte values.
const TABLE: redb::TableDefinition<'static, &'static [u8], &'static [u8]> =
    redb::TableDefinition::new("index");
/// The index file in the index directory.
const FILE: &str = "index.redb";
/// 1 s: the longest a writer goes without a durable commit while it writes.
/// It bounds how much of the log a start after a power cut replays, and
/// lets redb reuse the pages that non-durable commits freed.
pub(crate) const DURABLE_EVERY: Duration = Duration::from_secs(1);
/// 2 s: how long open waits for the file's lock while a previous instance
/// in this process (a node restarted in place) is still closing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A changed key: its new value, or `None` to remove it.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>);
/// A key and its value, read from a [`Snapshot`].
pub(crate) type Entry = Result<(Vec<u8>, Vec<u8>), redb::Error>;

/// The index of one channel store.
pub(crate) struct Index {
    db: redb::Database,
    file: PathBuf,
    /// When the last durable commit was made (writer thread only, but the
    /// reclaimer also makes commits durable).
    last_durable: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (or creates) the index in `dir`, with a page cache of
    /// `cache_bytes`. A directory holding anything but our file (an index
    /// of an older version of the store, in another engine's files) is
    /// emptied first: the index is rebuilt from the log.
    ///
    /// # Errors
    /// redb's, or an I/O error of the directory.
    pub(crate) fn open(dir: &Path, cache_bytes: usize) -> Result<(Self, bool), redb::Error> {
        crate::private::create_dir_all(dir).map_err(redb::Error::Io)?;
        let file = dir.join(FILE);
        let mut replaced = false;
        if !file.exists() && std::fs::read_dir(dir).map_err(redb::Error::Io)?.next().is_some() {
            std::fs::remove_dir_all(dir).map_err(redb::Error::Io)?;
            crate::private::create_dir_all(dir).map_err(redb::Error::Io)?;
            replaced = true;
        }
        if !file.exists() {
            // Created here so it has the node's file mode whatever the umask.
            crate::private::file_options()
                .write(true)
                .create_new(true)
                .open(&file)
                .map_err(redb::Error::Io)?;
        }
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match redb::Builder::new().set_cache_size(cache_bytes).create(&file) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        // The table exists from the first open on, so readers can open it.
        let tx = db.begin_write()?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok((
            Self {
                db,
                file,
                last_durable: std::sync::Mutex::new(Instant::now()),
            },
            replaced,
        ))
    }

    /// A consistent view of the last commit.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn read(&self) -> Result<Snapshot, redb::Error> {
        let tx = self.db.begin_read()?;
        Ok(Snapshot {
            table: tx.open_table(TABLE)?,
        })
    }

    /// Commits `changes` in one transaction, durable if `durable` or if the
    /// last durable commit is [`DURABLE_EVERY`] old. Returns whether it was.
    ///
    /// # Errors
    /// redb's; nothing of the transaction is then committed.
    pub(crate) fn commit(
        &self,
        changes: impl IntoIterator<Item = Change>,
        durable: bool,
    ) -> Result<bool, redb::Error> {
        let durable = durable || crate::lock(&self.last_durable).elapsed() >= DURABLE_EVERY;
        let mut tx = self.db.begin_write()?;
        if durable {
            tx.set_quick_repair(true);
        } else {
            tx.set_durability(redb::Durability::None)?;
        }
        {
            let mut table = tx.open_table(TABLE)?;
            for (k, v) in changes {
                match v {
                    Some(v) => {
                        table.insert(k.as_slice(), v.as_slice())?;
                    }
                    None => {
                        table.remove(k.as_slice())?;
                    }
                }
            }
        }
        tx.commit()?;
        if durable {
            *crate::lock(&self.last_durable) = Instant::now();
        }
        Ok(durable)
    }

    /// Makes every commit so far durable.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn make_durable(&self) -> Result<(), redb::Error> {
        self.commit(std::iter::empty(), true).map(|_| ())
    }

    /// Removes every key, durably.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn clear(&self) -> Result<(), redb::Error> {
        let mut tx = self.db.begin_write()?;
        tx.set_quick_repair(true);
        tx.delete_table(TABLE)?;
        tx.open_table(TABLE)?;
        tx.commit()?;
        Ok(())
    }

    /// Bytes of the index file on disk.
    pub(crate) fn disk_bytes(&self) -> u64 {
        std::fs::metadata(&self.file).map_or(0, |m| m.len())
    }

    /// The index file.
    pub(crate) fn file(&self) -> &Path {
        &self.file
    }
}

/// A read-only view of one committed state of the index.
pub(crate) struct Snapshot {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl Snapshot {
    /// The value of `key`.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, redb::Error> {
        Ok(self.table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Whether `key` is there.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn contains(&self, key: &[u8]) -> Result<bool, redb::Error> {
        Ok(self.table.get(key)?.is_some())
    }

    /// Whether the index holds no key at all.
    ///
    /// # Errors
    /// redb's.
    pub(crate) fn is_empty(&self) -> Result<bool, redb::Error> {
        Ok(self.table.is_empty()?)
    }

    /// Keys and values from `from` on, in key order, while `keep` holds for the key.
    ///
    /// # Errors
    /// redb's, from the iterator.
    pub(crate) fn from<'a>(
        &'a self,
        from: &[u8],
        keep: impl Fn(&[u8]) -> bool + 'a,
    ) -> Result<impl Iterator<Item = Entry> + 'a, redb::Error> {
        let range = self.table.range(from..)?;
        Ok(range
            .map(|item| {
                item.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .map_err(redb::Error::from)
            })
            .take_while(move |item| item.as_ref().map_or(true, |(k, _)| keep(k))))
    }

    /// Keys and values under `prefix`, in key order.
    ///
    /// # Errors
    /// redb's, from the iterator.
    pub(crate) fn prefix<'a>(
        &'a self,
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Entry> + 'a, redb::Error> {
        self.prefix_from(prefix, prefix)
    }

    /// Keys and values under `prefix` from `from` on, in key order.
    ///
    /// # Errors
    /// redb's, from the iterator.
    pub(crate) fn prefix_from<'a>(
        &'a self,
        from: &[u8],
        prefix: &'a [u8],
    ) -> Result<impl Iterator<Item = Entry> + 'a, redb::Error> {
        self.from(from, move |k| k.starts_with(prefix))
    }

    /// Keys and values in `lo..=hi`, in key order.
    ///
    /// # Errors
    /// redb's, from the iterator.
    pub(crate) fn range<'a>(
        &'a self,
        lo: &[u8],
        hi: &'a [u8],
    ) -> Result<impl Iterator<Item = Entry> + 'a, redb::Error> {
        self.from(lo, move |k| k <= hi)
    }
}
