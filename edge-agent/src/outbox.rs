//! The durable outbox: one file per signed request not yet answered with a final receipt, and
//! the device's request counter. Every write is fsync'd (file and directory) before the request
//! is published, so a request a cashier accepted survives a reboot.

use anyhow::{Context, Result};
use paygate_core::IdempotencyKey;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct Outbox {
    dir: PathBuf,
}

fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(name))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

impl Outbox {
    pub fn open(dir: &Path) -> Result<Outbox> {
        fs::create_dir_all(dir.join("pending"))
            .with_context(|| format!("creating outbox {}", dir.display()))?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
        })
    }

    /// The next request counter, persisted before it is returned (never reused after a crash).
    /// A new outbox (first start, or a terminal wiped by a factory reset) starts from the clock
    /// in microseconds, so it never reuses a counter the gateway has already seen.
    pub fn next_counter(&self) -> Result<u64> {
        let current = match fs::read_to_string(self.dir.join("counter")) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .context("outbox counter file is corrupt")?,
            Err(_) => crate::now_ms().saturating_mul(1_000),
        };
        let next = current
            .checked_add(1)
            .context("request counter exhausted")?;
        write_durably(&self.dir, "counter", next.to_string().as_bytes())?;
        Ok(next)
    }

    pub fn put(&self, key: &IdempotencyKey, envelope: &[u8]) -> Result<()> {
        write_durably(&self.dir.join("pending"), &format!("{key}.cose"), envelope)
    }

    pub fn remove(&self, key: &IdempotencyKey) -> Result<()> {
        let path = self.dir.join("pending").join(format!("{key}.cose"));
        match fs::remove_file(&path) {
            Ok(()) => Ok(File::open(self.dir.join("pending"))?.sync_all()?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Requests still waiting for a final receipt, oldest first by file time.
    pub fn pending(&self) -> Result<Vec<(IdempotencyKey, Vec<u8>)>> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(self.dir.join("pending"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".cose") else {
                continue;
            };
            let Ok(key) = IdempotencyKey::parse(key) else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            entries.push((modified, key, fs::read(entry.path())?));
        }
        entries.sort_by_key(|(modified, _, _)| *modified);
        Ok(entries
            .into_iter()
            .map(|(_, key, bytes)| (key, bytes))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_entries_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outbox = Outbox::open(dir.path()).expect("open");
        let first = outbox.next_counter().expect("counter");
        assert!(
            first > crate::now_ms(),
            "a new outbox starts from the clock, not from 1"
        );
        assert_eq!(outbox.next_counter().expect("counter"), first + 1);
        let key = IdempotencyKey::parse("k1").expect("valid");
        outbox.put(&key, b"signed").expect("put");
        let reopened = Outbox::open(dir.path()).expect("reopen");
        assert_eq!(reopened.next_counter().expect("counter"), first + 2);
        assert_eq!(
            reopened.pending().expect("pending"),
            vec![(key.clone(), b"signed".to_vec())]
        );
        reopened.remove(&key).expect("remove");
        assert!(reopened.pending().expect("pending").is_empty());
    }
}
