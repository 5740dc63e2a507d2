//! Files that survive power loss: written under a temporary name, fsync'd, renamed into place,
//! and the directory fsync'd. Imports nothing from the rest of the crate.

use std::path::Path;

/// Writes a new file via a temporary name, fsyncs it and its directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Fsyncs a directory, so a file created or renamed in it stays.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
