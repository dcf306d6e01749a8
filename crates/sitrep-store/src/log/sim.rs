//! An in-memory [`Dir`] that remembers what was synced, and can lose the rest as a power cut would.
//!
//! The model, per file: the *durable* bytes (as of its last successful
//! `sync_data`) and, in order, the writes and extensions made since. Reads
//! see everything (the page cache). Per directory: the durable set of names
//! (as of its last `sync`) and the creates and removes made since.
//!
//! [`SimDir::power_cut`] returns the directory as the next boot finds it:
//! every durable byte and name is kept; each unsynced write independently is
//! dropped, kept, or torn (a random prefix kept); each unsynced extension is
//! kept or dropped; each unsynced create or remove is kept or lost. That
//! covers reordering too: a later write may survive an earlier one.
//!
//! To stop the world at an exact point, [`SimDir::fail_after`] lets `n` more
//! mutating operations through, then fails every one after it without
//! effect, as if the machine had died (the caller is in the state a crash at
//! that point leaves). [`SimDir::resume`] models a killed process instead:
//! the page cache stays, I/O works again. [`SimDir::fail_next_sync`] injects
//! an `EIO` into one `sync_data`. [`SimDir::hold_syncs`] makes every
//! `sync_data` wait until [`SimDir::release_syncs`], to look at what others
//! see while a group commit is waiting on the disk.
//!
//! Deterministic: the same operations and seed give the same outcome.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use super::io::{Dir, File};

/// An in-memory directory for power-loss tests. Clones share the same state.
#[derive(Clone, Default)]
pub struct SimDir {
    state: Arc<Mutex<State>>,
    gate: Arc<Gate>,
}

/// Holds `sync_data` calls while closed.
#[derive(Default)]
struct Gate {
    /// (held, syncs waiting)
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

impl Gate {
    fn lock(&self) -> MutexGuard<'_, (bool, usize)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pass(&self) {
        let mut g = self.lock();
        if !g.0 {
            return;
        }
        g.1 += 1;
        self.changed.notify_all();
        while g.0 {
            g = self.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
        g.1 -= 1;
        self.changed.notify_all();
    }
}

impl fmt::Debug for SimDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("SimDir")
            .field("names", &st.names.keys().collect::<Vec<_>>())
            .field("ops", &st.ops)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    files: BTreeMap<u64, FileState>,
    names: BTreeMap<String, u64>,
    durable_names: BTreeMap<String, u64>,
    pending_dir: Vec<DirOp>,
    next_id: u64,
    fail_next_sync: bool,
    /// Mutating operations still allowed; `None`: no limit.
    ops_left: Option<u64>,
    ops: u64,
}

#[derive(Default, Clone)]
struct FileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    pending: Vec<Pending>,
}

#[derive(Clone)]
enum Pending {
    Write { offset: usize, data: Vec<u8> },
    Extend { len: usize },
}

enum DirOp {
    Create { name: String, id: u64 },
    Remove { name: String },
}

fn write_into(content: &mut Vec<u8>, offset: usize, data: &[u8]) {
    let end = offset + data.len();
    if content.len() < end {
        content.resize(end, 0);
    }
    content[offset..end].copy_from_slice(data);
}

fn to_usize(n: u64) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond memory"))
}

impl State {
    /// Counts a mutating operation, or refuses it once the budget is spent.
    fn mutate(&mut self) -> io::Result<()> {
        match &mut self.ops_left {
            Some(0) => return Err(io::Error::other("simulated power cut: the device is gone")),
            Some(n) => *n -= 1,
            None => {}
        }
        self.ops += 1;
        Ok(())
    }

    fn file(&mut self, id: u64) -> io::Result<&mut FileState> {
        self.files
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "simulated file is gone"))
    }
}

impl SimDir {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The directory as the next boot after a power cut now finds it (see
    /// the module doc). `self` is left as it was; the result shares nothing
    /// with it, has no pending writes, no injected faults and no budget.
    pub fn power_cut(&self, seed: u64) -> SimDir {
        let mut rng = StdRng::seed_from_u64(seed);
        let st = self.lock();
        let mut names = st.durable_names.clone();
        for op in &st.pending_dir {
            if rng.gen_bool(0.5) {
                match op {
                    DirOp::Create { name, id } => {
                        names.insert(name.clone(), *id);
                    }
                    DirOp::Remove { name } => {
                        names.remove(name);
                    }
                }
            }
        }
        let mut files = BTreeMap::new();
        for (id, f) in &st.files {
            let mut content = f.durable.clone();
            for p in &f.pending {
                match p {
                    Pending::Write { offset, data } => match rng.gen_range(0..3) {
                        0 => {}
                        1 => write_into(&mut content, *offset, data),
                        _ => {
                            let keep = rng.gen_range(0..data.len().max(1));
                            write_into(&mut content, *offset, &data[..keep.min(data.len())]);
                        }
                    },
                    Pending::Extend { len } => {
                        if rng.gen_bool(0.5) && content.len() < *len {
                            content.resize(*len, 0);
                        }
                    }
                }
            }
            if names.values().any(|v| v == id) {
                files.insert(
                    *id,
                    FileState {
                        durable: content.clone(),
                        current: content,
                        pending: Vec::new(),
                    },
                );
            }
        }
        SimDir {
            state: Arc::new(Mutex::new(State {
                files,
                durable_names: names.clone(),
                names,
                pending_dir: Vec::new(),
                next_id: st.next_id,
                fail_next_sync: false,
                ops_left: None,
                ops: 0,
            })),
            gate: Arc::default(),
        }
    }

    /// The next `sync_data` on any file fails with an injected I/O error
    /// (and makes nothing durable).
    pub fn fail_next_sync(&self) {
        self.lock().fail_next_sync = true;
    }

    /// Lets `ops` more mutating operations (create, remove, directory sync,
    /// write, sync, allocate) through; every later one fails and changes
    /// nothing, as if the machine had lost power at that point. Reads keep
    /// working. Follow with [`SimDir::power_cut`] or [`SimDir::resume`].
    pub fn fail_after(&self, ops: u64) {
        self.lock().ops_left = Some(ops);
    }

    /// The process died but the machine did not: unsynced writes stay
    /// visible (the page cache), and I/O works again (no budget, no injected
    /// sync failure).
    pub fn resume(&self) {
        let mut st = self.lock();
        st.ops_left = None;
        st.fail_next_sync = false;
    }

    /// From now on every `sync_data` waits (before doing anything) until
    /// [`SimDir::release_syncs`].
    pub fn hold_syncs(&self) {
        self.gate.lock().0 = true;
    }

    /// Lets held and later `sync_data` calls through.
    pub fn release_syncs(&self) {
        self.gate.lock().0 = false;
        self.gate.changed.notify_all();
    }

    /// Blocks until a `sync_data` is waiting at the gate closed by
    /// [`SimDir::hold_syncs`].
    pub fn wait_for_held_sync(&self) {
        let mut g = self.gate.lock();
        while g.1 == 0 {
            g = self.gate.changed.wait(g).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Mutating operations done so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether anything written or created is not yet durable.
    pub fn has_unsynced(&self) -> bool {
        let st = self.lock();
        !st.pending_dir.is_empty() || st.files.values().any(|f| !f.pending.is_empty())
    }
}

impl Dir for SimDir {
    fn create(&self, name: &str) -> io::Result<Box<dyn File>> {
        let mut st = self.lock();
        st.mutate()?;
        if st.names.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("sim:{name} exists"),
            ));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.files.insert(id, FileState::default());
        st.names.insert(name.to_owned(), id);
        st.pending_dir.push(DirOp::Create {
            name: name.to_owned(),
            id,
        });
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            gate: Arc::clone(&self.gate),
            id,
            name: name.to_owned(),
        }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn File>> {
        let st = self.lock();
        let id = *st
            .names
            .get(name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("sim:{name} not found")))?;
        Ok(Box::new(SimFile {
            state: Arc::clone(&self.state),
            gate: Arc::clone(&self.gate),
            id,
            name: name.to_owned(),
        }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let mut st = self.lock();
        st.mutate()?;
        if st.names.remove(name).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("sim:{name} not found"),
            ));
        }
        st.pending_dir.push(DirOp::Remove {
            name: name.to_owned(),
        });
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().names.keys().cloned().collect())
    }

    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        st.mutate()?;
        st.durable_names = st.names.clone();
        st.pending_dir.clear();
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("sim:{name}")
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    gate: Arc<Gate>,
    id: u64,
    name: String,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimFile")
            .field("name", &self.name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl SimFile {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl File for SimFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let offset = to_usize(offset)?;
        let mut st = self.lock();
        st.mutate()?;
        let f = st.file(self.id)?;
        write_into(&mut f.current, offset, buf);
        f.pending.push(Pending::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = to_usize(offset)?;
        let mut st = self.lock();
        let f = st.file(self.id)?;
        let src = f
            .current
            .get(offset..offset + buf.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.gate.pass();
        let mut st = self.lock();
        st.mutate()?;
        if std::mem::take(&mut st.fail_next_sync) {
            return Err(io::Error::other("injected EIO on fdatasync"));
        }
        let f = st.file(self.id)?;
        f.durable = f.current.clone();
        f.pending.clear();
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let len = to_usize(len)?;
        let mut st = self.lock();
        st.mutate()?;
        let f = st.file(self.id)?;
        if f.current.len() < len {
            f.current.resize(len, 0);
            f.pending.push(Pending::Extend { len });
        }
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let mut st = self.lock();
        Ok(st.file(self.id)?.current.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(dir: &SimDir, name: &str) -> Option<Vec<u8>> {
        let f = dir.open(name).ok()?;
        let mut buf = vec![0; usize::try_from(f.len().expect("sim len")).expect("small")];
        f.read_at(0, &mut buf).expect("sim read within len");
        Some(buf)
    }

    #[test]
    fn synced_survives_every_cut_and_unsynced_takes_every_shape() {
        let dir = SimDir::new();
        let f = dir.create("a").expect("create");
        dir.sync().expect("dir sync");
        f.write_at(0, b"durable").expect("write");
        f.sync_data().expect("sync");
        f.write_at(7, b"-pending").expect("write");
        assert_eq!(content(&dir, "a").as_deref(), Some(&b"durable-pending"[..]));
        assert!(dir.has_unsynced());

        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let after = content(&dir.power_cut(seed), "a").expect("a synced create survives");
            assert!(after.starts_with(b"durable"), "seed {seed}: {after:?}");
            assert!(b"durable-pending".starts_with(&after), "seed {seed}: {after:?}");
            seen.insert(after.len());
        }
        // Dropped, kept, and torn at some byte in between.
        assert!(
            seen.contains(&7) && seen.contains(&15) && seen.len() > 2,
            "{seen:?}"
        );
    }

    #[test]
    fn unsynced_creates_and_removes_may_be_lost() {
        let dir = SimDir::new();
        drop(dir.create("old").expect("create"));
        dir.sync().expect("dir sync");
        drop(dir.create("new").expect("create"));
        dir.remove("old").expect("remove");
        let outcomes: std::collections::BTreeSet<Vec<String>> = (0..64)
            .map(|seed| dir.power_cut(seed).list().expect("list"))
            .collect();
        assert_eq!(outcomes.len(), 4, "{outcomes:?}");
        dir.sync().expect("dir sync");
        for seed in 0..16 {
            assert_eq!(dir.power_cut(seed).list().expect("list"), ["new"]);
        }
    }

    #[test]
    fn budget_and_injected_failures() {
        let dir = SimDir::new();
        let f = dir.create("a").expect("create");
        dir.fail_next_sync();
        f.write_at(0, b"x").expect("write");
        assert!(f.sync_data().is_err());
        f.sync_data().expect("only the next sync fails");

        dir.fail_after(1);
        f.write_at(1, b"y").expect("within budget");
        assert!(f.sync_data().is_err());
        assert!(f.write_at(2, b"z").is_err());
        assert!(dir.create("b").is_err());
        assert_eq!(
            content(&dir, "a").as_deref(),
            Some(&b"xy"[..]),
            "reads still work"
        );
        dir.resume();
        f.sync_data().expect("I/O works again after resume");
    }

    #[test]
    fn power_cut_is_deterministic() {
        let dir = SimDir::new();
        let f = dir.create("a").expect("create");
        for i in 0..20u8 {
            f.write_at(u64::from(i) * 10, &[i + 1; 10]).expect("write");
        }
        assert_eq!(content(&dir.power_cut(7), "a"), content(&dir.power_cut(7), "a"));
    }
}
