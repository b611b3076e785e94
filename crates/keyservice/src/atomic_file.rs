//! Replacing a file so that a crash leaves the old file or the new one: keys.json (the
//! CLI's edits) and keys.usage.json (the key service's usage) are written this way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A new file is readable by its owner only (owners, labels and usage are nobody else's
/// business); an existing file keeps whatever mode it was given.
#[cfg(unix)]
pub const NEW_FILE_MODE: u32 = 0o600;

/// The directory that holds `path` (`.` for a bare name).
pub fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `path` with `suffix` added to its file name (`keys.json` → `keys.json.lock`).
pub fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Temporary file in the same directory (a rename across file systems is not atomic),
/// synced before the rename, directory synced after it, so a crash leaves the old file or
/// the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = sidecar(path, &format!(".{}.tmp", std::process::id()));
    let result = (|| {
        let permissions = match std::fs::metadata(path) {
            Ok(meta) => Some(meta.permissions()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, NEW_FILE_MODE);
        let mut file = options.open(&tmp)?;
        // A leftover temporary file from a crashed run keeps its old mode: set it.
        match permissions {
            Some(permissions) => file.set_permissions(permissions)?,
            #[cfg(unix)]
            None => {
                file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(NEW_FILE_MODE))?
            }
            #[cfg(not(unix))]
            None => {}
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(unix)]
fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(directory_of(path))?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> io::Result<()> {
    Ok(())
}
