//! Crash-safe file writes.
//!
//! Every file this crate persists (CA keys and certificates, JWT keys, the CA state file) goes
//! through [`atomic_write`]: a reader, or the process after a crash, sees either the old content
//! or the new content, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Mode for files that hold secrets: read and write for the owner only.
pub const SECRET_MODE: u32 = 0o600;

/// Mode for files that hold only public material (certificates, state without secrets).
pub const PUBLIC_MODE: u32 = 0o644;

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// The target path has no parent directory or no file name.
    #[error("`{0}` is not a path to a file in a directory")]
    NotAFilePath(PathBuf),
    /// An IO step failed.
    #[error("{step} `{path}` failed: {source}")]
    Io {
        /// What was being done, e.g. "creating temporary file".
        step: &'static str,
        /// The file or directory the step worked on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Replaces the content of `path` with `bytes`, atomically and durably.
///
/// Writes a temporary file in the same directory, created with permission bits `mode` (so a
/// secret is never readable by others, not even for a moment), flushes it to disk, renames it
/// over `path` and flushes the directory so the rename itself survives a crash. The process
/// umask can only remove permission bits from `mode`, never add any.
///
/// # Errors
///
/// Returns [`FsError`] naming the step and the path that failed; the temporary file is removed
/// on failure and `path` keeps its old content.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .ok_or_else(|| FsError::NotAFilePath(path.to_owned()))?;
    let name = path
        .file_name()
        .ok_or_else(|| FsError::NotAFilePath(path.to_owned()))?;

    let mut suffix = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut suffix);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(suffix)));
    let tmp = dir.join(tmp_name);

    let result = write_synced(&tmp, bytes, mode).and_then(|()| {
        fs::rename(&tmp, path).map_err(|source| FsError::Io {
            step: "renaming temporary file over",
            path: path.to_owned(),
            source,
        })
    });
    if result.is_err() {
        // Best effort: the temporary file is useless now and may not even exist.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir)
}

/// Flushes a directory's entries (creations, renames, removals) to disk.
///
/// # Errors
///
/// Returns [`FsError::Io`] naming the directory.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| FsError::Io {
            step: "syncing directory",
            path: dir.to_owned(),
            source,
        })
}

/// Creates `dir` (and its parents) with mode 0700 if it does not exist.
///
/// # Errors
///
/// Returns [`FsError::Io`] naming the directory.
pub fn create_private_dir(dir: &Path) -> Result<(), FsError> {
    use std::os::unix::fs::DirBuilderExt;

    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FsError::Io {
            step: "creating directory",
            path: dir.to_owned(),
            source,
        })
}

fn write_synced(tmp: &Path, bytes: &[u8], mode: u32) -> Result<(), FsError> {
    let io_err = |step| {
        move |source| FsError::Io {
            step,
            path: tmp.to_owned(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err("creating temporary file"))?;
    file.write_all(bytes)
        .map_err(io_err("writing temporary file"))?;
    file.sync_all().map_err(io_err("syncing temporary file"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        atomic_write(&path, b"one", PUBLIC_MODE).unwrap();
        atomic_write(&path, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn secret_files_are_created_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        atomic_write(&path, b"secret", SECRET_MODE).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn failure_names_the_path_and_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("file");
        let err = atomic_write(&missing, b"x", PUBLIC_MODE).unwrap_err();
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }
}
