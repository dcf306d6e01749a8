//! Files and directories that only the node's user may read: directories
//! `0700`, files `0600`, whatever the process umask (a mode given at creation
//! is narrowed by the umask, never widened, so these are upper bounds that
//! the usual `022` leaves as they are).
//!
//! Files that libraries create on their own get the umask's mode,
//! inside a directory made here that no one else can enter.

use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

/// Mode of every directory the node creates.
pub const DIR_MODE: u32 = 0o700;

/// Mode of every file the node creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `path` and any missing parents with [`DIR_MODE`]; a directory
/// that is already there keeps its mode.
///
/// # Errors
/// Any I/O error of creating a directory.
pub fn create_dir_all(path: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(path)
}

/// Options that create a file with [`FILE_MODE`] (the caller sets read,
/// write, append, create and truncate as it needs).
#[must_use]
pub fn file_options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    opts.mode(FILE_MODE);
    opts
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn directories_and_files_are_private_under_a_permissive_umask() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("a/b");
        create_dir_all(&dir).expect("create");
        let file = dir.join("f");
        file_options()
            .write(true)
            .create_new(true)
            .open(&file)
            .expect("create file");
        // The test process's umask is whatever the runner has (often 022):
        // the modes asked for are already private, so any umask keeps them.
        for (p, want) in [
            (tmp.path().join("a"), DIR_MODE),
            (dir, DIR_MODE),
            (file, FILE_MODE),
        ] {
            let mode = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o777;
            assert_eq!(mode & 0o077, 0, "{} is {mode:o}", p.display());
            assert_eq!(mode & !want, 0, "{} is {mode:o}, at most {want:o}", p.display());
        }
    }
}
