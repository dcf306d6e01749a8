//! The file layer under the segment log: a directory of files with positional I/O, and its std impl.
//!
//! The seam exists so that the power-loss tests can run the real log over
//! `SimDir` (feature `sim`), which remembers what was synced. All methods
//! take `&self`: the log's writer and its readers share one handle per
//! segment, and positional reads and writes (`pread`/`pwrite`) need no
//! cursor.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// A directory of files: where a log keeps its segments.
pub trait Dir: fmt::Debug + Send + Sync {
    /// Creates `name`, empty. Fails if it exists. Not durable until [`Dir::sync`].
    ///
    /// # Errors
    /// Any I/O error, `AlreadyExists` if the name is taken.
    fn create(&self, name: &str) -> io::Result<Box<dyn File>>;
    /// Opens `name` for reading and writing.
    ///
    /// # Errors
    /// Any I/O error, `NotFound` if there is no such file.
    fn open(&self, name: &str) -> io::Result<Box<dyn File>>;
    /// Removes `name`. Not durable until [`Dir::sync`].
    ///
    /// # Errors
    /// Any I/O error.
    fn remove(&self, name: &str) -> io::Result<()>;
    /// The names of the files in the directory, in no particular order.
    ///
    /// # Errors
    /// Any I/O error.
    fn list(&self) -> io::Result<Vec<String>>;
    /// Makes earlier creates and removes durable (fsync of the directory).
    ///
    /// # Errors
    /// Any I/O error: the caller must then treat those creates and removes
    /// as undecided.
    fn sync(&self) -> io::Result<()>;
    /// How to name `name` in an error message (the full path).
    fn describe(&self, name: &str) -> String;
    /// Free bytes on the directory's filesystem, if known.
    ///
    /// # Errors
    /// Any I/O error.
    fn free_bytes(&self) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// A file with positional I/O.
pub trait File: fmt::Debug + Send + Sync {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    /// Not durable until [`File::sync_data`].
    ///
    /// # Errors
    /// Any I/O error.
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Fills `buf` from `offset`.
    ///
    /// # Errors
    /// Any I/O error; `UnexpectedEof` if the file ends first.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Makes every earlier write (and the length) durable: `fdatasync`.
    ///
    /// # Errors
    /// Any I/O error. After one, nothing written since the last successful
    /// sync may be assumed durable, and retrying does not make it so.
    fn sync_data(&self) -> io::Result<()>;
    /// Grows the file to at least `len` bytes, reserving the blocks (the new
    /// bytes read as zeros). Never shrinks it.
    ///
    /// # Errors
    /// Any I/O error, `ENOSPC` in particular.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// The file's length in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    ///
    /// # Errors
    /// Any I/O error.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// A real directory, through `std::fs`.
#[derive(Debug, Clone)]
pub struct OsDir {
    path: PathBuf,
}

impl OsDir {
    /// Opens the directory `path`, creating it if missing (and then syncing
    /// its parent, so the directory itself survives a power cut).
    ///
    /// # Errors
    /// Any I/O error of creating or syncing.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if !path.is_dir() {
            crate::private::create_dir_all(&path)?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::File::open(parent)?.sync_all()?;
            }
        }
        Ok(Self { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Dir for OsDir {
    fn create(&self, name: &str) -> io::Result<Box<dyn File>> {
        let file = crate::private::file_options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path.join(name))?;
        Ok(Box::new(OsFile { file }))
    }

    fn open(&self, name: &str) -> io::Result<Box<dyn File>> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        Ok(Box::new(OsFile { file }))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            // A name that is not UTF-8 is not one of ours.
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn sync(&self) -> io::Result<()> {
        fs::File::open(&self.path)?.sync_all()
    }

    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }

    fn free_bytes(&self) -> io::Result<Option<u64>> {
        crate::free_bytes(&self.path).map(Some)
    }
}

#[derive(Debug)]
struct OsFile {
    file: fs::File,
}

impl File for OsFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.file.metadata()?.len() >= len {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // Some file systems cannot preallocate. A sparse file of the same
            // length still reads as zeros and keeps appends from changing the
            // size; but the blocks are only allocated on write, so a full
            // disk shows up at the first append (whose error poisons the
            // log) instead of at segment creation.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                self.file.set_len(len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}
