//! The audit trail (PCI DSS 10): events go through the database outbox into an fsync'd local
//! journal of hash-chained records, grouped in segments sealed by signed checkpoints, which a
//! shipper copies to write-once storage. docs/audit-format.md specifies the format.
//!
//! The order of durability, for a payment: its audit event commits in the same database
//! transaction as the decision (outbox row); [`AuditLog::drain`] appends outbox rows to the
//! journal and fsyncs; only then is the receipt published. A crash anywhere in between loses
//! nothing (the row waits in the outbox) and repeats nothing (each journal record names its
//! outbox row, and the writer resumes after the highest one it holds).

pub mod archive;
mod clock;
pub mod keys;
pub mod shipper;
pub mod worm;

pub use keys::{load_or_make_key, open_store, outbox_key, public_jwk, public_jwk_path};

use crate::audit_outbox::OutboxChain;
use crate::config::{AuditSettings, Settings};
use crate::durable::{sync_dir, write_durably};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use paygate_core::audit::{
    checkpoint_name, parse_rfc3339_ms, rfc3339_ms, segment_name, sha256, AuditEvent, AuditOutcome,
    AuditRecord, CheckpointBody, EventType, Hash32, MerkleTree, FORMAT_VERSION, GENESIS_HASH,
};
use paygate_core::envelope::SigningKey;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{Mutex, Notify};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit journal io: {0}")]
    Io(#[from] std::io::Error),
    #[error("audit outbox: {0}")]
    Store(#[from] StoreError),
    #[error("audit journal is inconsistent: {0}")]
    Corrupt(String),
    #[error("audit signing key: {0}")]
    Key(String),
    #[error("clock check inconclusive: {0}")]
    ClockInconclusive(String),
    /// Another gateway (another process, or one still stopping in this one) writes this
    /// journal: two writers would give two records one place in the chain.
    #[error("the audit journal {0} is in use by another gateway on this data directory")]
    InUse(String),
}

/// The journal writer's state: the active segment and what the sealed ones add up to.
struct Journal {
    dir: PathBuf,
    log_id: String,
    /// The active (unsealed) segment's number.
    segment: u64,
    /// The active segment, opened for appending. Written with std's blocking calls on the
    /// blocking pool: tokio's `File` reports a failed background write only at the next
    /// operation, and its `sync_data` swallows it, so a short write (a full disk) would read as
    /// durable.
    file: Option<Arc<std::fs::File>>,
    file_len: u64,
    tree: MerkleTree,
    first_seq: u64,
    next_seq: u64,
    prev_record_hash: Hash32,
    /// When the active segment got its first record (0: empty).
    opened_at_ms: u64,
    log_tree: MerkleTree,
    prev_checkpoint_hash: Hash32,
    outbox_id_max: u64,
    /// When the last checkpoint was sealed, or the journal opened (heartbeats count from it).
    sealed_at_ms: u64,
    /// The outbox place expected next ([`crate::audit_outbox::OutboxChain`]).
    chain: OutboxChain,
    /// A row this process journaled that must still be in the outbox, with its MAC as read:
    /// the first journaled after the start, then the one each seal's pruning keeps. Gone or
    /// different, rows were removed and the outbox written again below the journal's place.
    anchor: Option<(u64, Option<Vec<u8>>)>,
    /// The last row journaled, with its MAC as read (the anchor after the next seal).
    last_row: Option<(u64, Option<Vec<u8>>)>,
    /// The latest time of a record journaled (or of a checkpoint): a record stamped earlier,
    /// by more than the clock tolerance, comes after a `clock_checked` failure.
    last_time_ms: u64,
}

/// The audit log of one gateway: the journal writer, shared by the pipeline and the tasks that
/// seal and ship.
pub struct AuditLog {
    journal: Mutex<Journal>,
    /// The log's id (its file `log-id` in the journal directory).
    log_id: String,
    /// The journal's exclusive lock, held while this log lives (the kernel lets go of it
    /// when the process ends, however it ends).
    _writer: std::fs::File,
    store: Store,
    key: SigningKey,
    pub(crate) settings: AuditSettings,
    pub(crate) metrics: Arc<Metrics>,
    /// Bytes of sealed segments still waiting for write-once storage.
    backlog_bytes: AtomicU64,
    /// Set once the outbox's journaled rows were found removed (recorded once per process).
    outbox_cut: AtomicBool,
    /// Set when a journal write failed; cleared by the next good one.
    journal_failed: AtomicBool,
    /// Set while the gateway's clock is off the database's by more than allowed.
    clock_skewed: AtomicBool,
    /// Set while the system clock is off the gateway's own time by more than allowed (it
    /// was stepped: [`crate::clock`]).
    clock_stepped: AtomicBool,
    /// When (gateway time) the system clock was first seen ahead by more than allowed; 0: not.
    ahead_since_ms: AtomicU64,
    /// Wakes the shipper when a segment is sealed.
    pub sealed: Notify,
}

/// Milliseconds since the Unix epoch, UTC.
fn now_ms() -> u64 {
    crate::clock::now_ms()
}

/// Whether a gateway holds this configuration's audit journal now (it serves on this data
/// directory): the CLI's local bootstrap mode refuses to write beside it.
pub fn journal_in_use(settings: &Settings) -> Result<bool, AuditError> {
    let dir = settings.resolve(&settings.audit.journal_dir);
    if !dir.exists() {
        return Ok(false);
    }
    match lock_journal(&dir) {
        Ok(_released_on_drop) => Ok(false),
        Err(AuditError::InUse(_)) => Ok(true),
        Err(other) => Err(other),
    }
}

/// One writer per journal: an exclusive lock on `<journal>/writer.lock`, taken before the
/// journal is read.
fn lock_journal(dir: &Path) -> Result<std::fs::File, AuditError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("writer.lock"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::InUse(dir.display().to_string())),
        Err(std::fs::TryLockError::Error(error)) => Err(error.into()),
    }
}

impl AuditLog {
    /// Opens the journal, repairing a torn tail, and resumes after the last record it holds.
    pub async fn open(
        settings: &Settings,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let audit = settings.audit.clone();
        let key = load_or_make_key(&settings.resolve(&audit.signing_key), &audit.key_id)?;
        let dir = settings.resolve(&audit.journal_dir);
        std::fs::create_dir_all(dir.join("segments"))?;
        std::fs::create_dir_all(dir.join("checkpoints"))?;
        let writer = lock_journal(&dir)?;
        let log_id = log_id(&dir)?;
        let (mut journal, repaired) = recover(&dir, log_id, &key)?;
        if store.audit_key().is_none() {
            return Err(AuditError::Key(
                "the store was opened without the audit outbox key".into(),
            ));
        }
        // the last place journaled comes from the journal itself, never from the database;
        // this store's writers place new rows after it
        journal.chain = OutboxChain::after(Some(journal.outbox_id_max));
        store.raise_audit_floor(journal.outbox_id_max);
        let adopted = store
            .adopt_unlogged_audit_rows(journal.outbox_id_max)
            .await?;
        if adopted > 0 {
            tracing::info!(adopted, log_id = %journal.log_id, "audit outbox rows from before logs had ids taken into this log");
        }
        let log = Arc::new(AuditLog {
            log_id: journal.log_id.clone(),
            journal: Mutex::new(journal),
            _writer: writer,
            store,
            key,
            settings: audit,
            metrics,
            backlog_bytes: AtomicU64::new(0),
            journal_failed: AtomicBool::new(false),
            outbox_cut: AtomicBool::new(false),
            clock_skewed: AtomicBool::new(false),
            clock_stepped: AtomicBool::new(false),
            ahead_since_ms: AtomicU64::new(0),
            sealed: Notify::new(),
        });
        if let Some(bytes) = repaired {
            log.record(
                log.system_event(EventType::JournalRepaired, AuditOutcome::Success)
                    .with_detail(format!(
                        "a torn last record of {bytes} bytes (never acknowledged) was cut"
                    )),
            )
            .await?;
        }
        log.refresh_backlog().await;
        Ok(log)
    }

    /// The log's id, made once per data directory: each gateway replica has its own log.
    pub fn log_id(&self) -> &str {
        &self.log_id
    }

    /// The signing key's public half, for auditors.
    pub fn signing_key(&self) -> &SigningKey {
        &self.key
    }

    /// An event by the gateway itself.
    pub fn system_event(&self, event: EventType, outcome: AuditOutcome) -> AuditEvent {
        AuditEvent::new(
            now_ms(),
            event,
            "system:gateway",
            "gateway",
            outcome,
            "audit",
            "audit-log",
        )
    }

    /// The record before one stamped earlier than the journal's latest time.
    fn out_of_order_event(&self, event: &AuditEvent, latest_ms: u64) -> AuditEvent {
        let mut record = self.system_event(EventType::ClockChecked, AuditOutcome::Failure);
        // stamped with the latest time, so this record is itself in order
        record.time_ms = record.time_ms.max(latest_ms);
        record.with_detail(format!(
            "the next record ({} by {}) is stamped {} ms before the latest record journaled: the \
             clock of the process that wrote it went back, or differs from the gateway's",
            event.event.as_str(),
            event.actor,
            latest_ms - event.time_ms
        ))
    }

    /// The record that stands in the journal for an outbox row that failed its check.
    fn tampered_event(&self, why: String) -> AuditEvent {
        self.system_event(EventType::AuditOutboxTampered, AuditOutcome::Failure)
            .with_detail(why)
    }

    /// Records one event now: outbox row, then journal, then fsync.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.store.record_audit(&event).await?;
        self.drain().await
    }

    /// True when payments must not be approved: the journal cannot be written, too much
    /// is waiting for write-once storage, or the audit times cannot be trusted (the clock).
    pub fn blocked(&self) -> bool {
        self.journal_failed.load(Ordering::Acquire)
            || self.clock_skewed.load(Ordering::Acquire)
            || self.clock_stepped.load(Ordering::Acquire)
            || self.backlog_bytes.load(Ordering::Acquire) > self.settings.backlog_bytes_max
    }

    pub fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes.load(Ordering::Acquire)
    }

    /// Appends every outbox row not yet in the journal, fsyncs, and seals the segment when
    /// full. Returns once everything committed before the call is durable in the journal.
    pub async fn drain(&self) -> Result<(), AuditError> {
        let mut journal = self.journal.lock().await;
        let result = self.drain_locked(&mut journal).await;
        self.journal_failed
            .store(result.is_err(), Ordering::Release);
        if let Err(error) = &result {
            self.metrics.count_audit_failure();
            tracing::error!(%error, "audit journal write failed; payments are refused until it recovers");
        }
        result
    }

    async fn drain_locked(&self, journal: &mut Journal) -> Result<(), AuditError> {
        loop {
            let rows = self
                .store
                .audit_outbox_after(
                    journal.outbox_id_max,
                    self.settings.outbox_rows_per_write_max,
                )
                .await?;
            if rows.is_empty() {
                return Ok(());
            }
            // build the lines first; the state changes only once they are durable
            let mut bytes = Vec::with_capacity(rows.len() * 400);
            let mut lines = Vec::with_capacity(rows.len());
            let mut seq = journal.next_seq;
            let mut prev = journal.prev_record_hash;
            let mut outbox_id_max = journal.outbox_id_max;
            let mut chain = journal.chain;
            let key = self.store.audit_key().ok_or_else(|| {
                AuditError::Key("the store was opened without the audit outbox key".into())
            })?;
            let mut tampered = 0;
            let mut out_of_order = 0;
            let mut last_time_ms = journal.last_time_ms;
            let mut first_row = None;
            let mut last_row = None;
            for row in rows {
                let outbox_id = row.outbox_id;
                first_row.get_or_insert_with(|| (outbox_id, row.mac.clone()));
                last_row = Some((outbox_id, row.mac.clone()));
                let checked = chain.check(key, &row);
                let mut events = Vec::with_capacity(2);
                if let Some(why) = checked.out_of_place {
                    tampered += 1;
                    events.push((self.tampered_event(why), None));
                }
                let row_event = match checked.event {
                    Ok(event) => {
                        if event
                            .time_ms
                            .saturating_add(self.settings.clock_skew_max_ms)
                            < last_time_ms
                        {
                            out_of_order += 1;
                            events.push((self.out_of_order_event(&event, last_time_ms), None));
                        }
                        last_time_ms = last_time_ms.max(event.time_ms);
                        (event, Some(outbox_id))
                    }
                    Err(why) => {
                        tampered += 1;
                        (self.tampered_event(why), Some(outbox_id))
                    }
                };
                events.push(row_event);
                for (event, outbox_id) in events {
                    let line = AuditRecord::place(event, seq, &prev, outbox_id).to_line();
                    prev = sha256(&line);
                    seq += 1;
                    bytes.extend_from_slice(&line);
                    bytes.push(b'\n');
                    lines.push(line);
                }
                outbox_id_max = outbox_id;
            }
            self.append(journal, &bytes).await?;
            if journal.tree.is_empty() {
                journal.opened_at_ms = now_ms();
            }
            for line in &lines {
                journal.tree.push(line);
            }
            journal.next_seq = seq;
            journal.prev_record_hash = prev;
            journal.outbox_id_max = outbox_id_max;
            journal.chain = chain;
            journal.last_time_ms = last_time_ms;
            if journal.anchor.is_none() {
                journal.anchor = first_row;
            }
            journal.last_row = last_row;
            self.store.raise_audit_floor(outbox_id_max);
            if out_of_order > 0 {
                tracing::error!(
                    records = out_of_order,
                    "audit records stamped earlier than the one before them: recorded as clock_checked"
                );
            }
            self.metrics.count_audit_records(lines.len());
            if tampered > 0 {
                self.metrics.count_audit_outbox_tampered(tampered);
                tracing::error!(
                    tampered,
                    "audit outbox rows failed their check: recorded as audit_outbox_tampered"
                );
            }
            if journal.tree.len() >= self.settings.records_per_segment_max {
                self.seal_locked(journal).await?;
            }
        }
    }

    /// Writes and fsyncs; on failure cuts the file back so no half record stays behind.
    async fn append(&self, journal: &mut Journal, bytes: &[u8]) -> Result<(), AuditError> {
        if journal.file.is_none() {
            let path = journal.dir.join(segment_name(journal.segment));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            journal.file_len = file.metadata()?.len();
            journal.file = Some(Arc::new(file));
            sync_dir(&journal.dir.join("segments"))?;
        }
        let Some(file) = journal.file.clone() else {
            return Err(AuditError::Corrupt("the journal file is not open".into()));
        };
        let bytes = bytes.to_vec();
        let written_len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let keep = journal.file_len;
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let result = (&*file).write_all(&bytes).and_then(|()| file.sync_data());
            if result.is_err() {
                // a short write leaves part of a record: cut it, so the next append starts on
                // a line boundary (truncating needs no free space)
                let _ = file.set_len(keep);
            }
            result
        })
        .await
        .map_err(|e| AuditError::Io(std::io::Error::other(e)))?;
        match written {
            Ok(()) => {
                journal.file_len += written_len;
                Ok(())
            }
            Err(error) => {
                journal.file = None;
                Err(error.into())
            }
        }
    }

    /// Seals the active segment if it holds records and is old enough (or always, with
    /// `force`), after draining the outbox.
    ///
    /// When nothing at all was recorded for a whole seal interval, an `audit_heartbeat`
    /// record is written and sealed on its own: a checkpoint is made at least once per
    /// interval, busy or idle, so an auditor can tell an archive cut short (its newest
    /// checkpoint too old, [`paygate_core::audit::ArchiveVerifier::check_fresh`]) from a
    /// quiet gateway.
    pub async fn seal_if_due(&self, force: bool) -> Result<(), AuditError> {
        self.drain().await?;
        self.check_outbox_anchor().await?;
        let idle = {
            let journal = self.journal.lock().await;
            journal.tree.is_empty()
                && now_ms().saturating_sub(journal.sealed_at_ms) >= self.settings.seal_interval_ms
        };
        if idle {
            self.record(self.system_event(EventType::AuditHeartbeat, AuditOutcome::Success))
                .await?;
        }
        let mut journal = self.journal.lock().await;
        // counted from the last seal, not from the segment's first record: under steady traffic
        // a checkpoint still comes once per interval, not once per two
        let since_seal_ms = now_ms().saturating_sub(journal.sealed_at_ms);
        if !journal.tree.is_empty()
            && (force || idle || since_seal_ms >= self.settings.seal_interval_ms)
        {
            self.seal_locked(&mut journal).await?;
        }
        Ok(())
    }

    /// The anchor row ([`Journal::anchor`]) must still be in the outbox as it was journaled:
    /// if it is gone or changed, rows were removed and other processes may have written again
    /// below the journal's last place, where it does not read. Recorded once, as tampering.
    async fn check_outbox_anchor(&self) -> Result<(), AuditError> {
        let (anchor, last) = {
            let journal = self.journal.lock().await;
            (journal.anchor.clone(), journal.outbox_id_max)
        };
        let Some((id, mac)) = anchor else {
            return Ok(());
        };
        if self.outbox_cut.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = self.store.audit_outbox_mac(id).await?;
        if now.as_ref() == Some(&mac) {
            return Ok(());
        }
        self.outbox_cut.store(true, Ordering::Release);
        self.metrics.count_audit_outbox_tampered(1);
        tracing::error!(
            id,
            last,
            "audit outbox rows the journal holds were removed from the database"
        );
        let what = if now.is_some() { "replaced" } else { "removed" };
        self.record(self.tampered_event(format!(
            "outbox row {id}, journaled and kept as the anchor, was {what} in the database: \
             rows were removed and the outbox written again below the journal's last row \
             ({last}); rows other processes wrote there are not read into the journal"
        )))
        .await
    }

    async fn seal_locked(&self, journal: &mut Journal) -> Result<(), AuditError> {
        if journal.tree.is_empty() {
            return Ok(());
        }
        let segment_path = journal.dir.join(segment_name(journal.segment));
        let segment_bytes = tokio::fs::read(&segment_path).await?;
        let segment_root = journal.tree.root();
        let mut log_tree = journal.log_tree.clone();
        log_tree.push(&segment_root);
        let body = CheckpointBody {
            v: FORMAT_VERSION,
            log_id: journal.log_id.clone(),
            segment: journal.segment,
            first_seq: journal.first_seq,
            record_count: journal.tree.len(),
            segment_sha256: hex::encode(sha256(&segment_bytes)),
            segment_root: hex::encode(segment_root),
            last_record_hash: hex::encode(journal.prev_record_hash),
            log_size: log_tree.len(),
            log_root: hex::encode(log_tree.root()),
            prev_checkpoint_sha256: hex::encode(journal.prev_checkpoint_hash),
            outbox_id_max: journal.outbox_id_max,
            sealed_at: rfc3339_ms(now_ms()),
        };
        let checkpoint = body.seal(&self.key);
        crate::crash::point("seal.before_checkpoint");
        write_durably(
            &journal.dir.join(checkpoint_name(journal.segment)),
            &checkpoint,
        )?;
        crate::crash::point("seal.checkpoint_written");
        journal.log_tree = log_tree;
        journal.prev_checkpoint_hash = sha256(&checkpoint);
        journal.segment += 1;
        journal.file = None;
        journal.file_len = 0;
        journal.tree = MerkleTree::new();
        journal.first_seq = journal.next_seq;
        journal.opened_at_ms = 0;
        journal.sealed_at_ms = now_ms();
        self.backlog_bytes.fetch_add(
            u64::try_from(segment_bytes.len()).unwrap_or(u64::MAX),
            Ordering::AcqRel,
        );
        self.metrics.count_audit_segment_sealed();
        tracing::debug!(
            segment = body.segment,
            records = body.record_count,
            "audit segment sealed"
        );
        // the row pruning keeps is the anchor from now on
        if let Some(last) = journal.last_row.clone() {
            journal.anchor = Some(last);
        }
        // rows in sealed segments are safe to forget; failing to prune only keeps them longer
        if let Err(error) = self.store.prune_audit_outbox(journal.outbox_id_max).await {
            tracing::warn!(%error, "audit outbox not pruned");
        }
        self.sealed.notify_one();
        Ok(())
    }

    /// Recomputes the backlog from the journal directory (sealed segments still present).
    pub async fn refresh_backlog(&self) {
        let dir = self.journal.lock().await.dir.clone();
        let bytes = sealed_unshipped(&dir)
            .map(|list| list.iter().map(|(_, len)| *len).sum())
            .unwrap_or(0);
        self.backlog_bytes.store(bytes, Ordering::Release);
        self.metrics.set_audit_backlog_bytes(bytes);
    }

    pub async fn dir(&self) -> PathBuf {
        self.journal.lock().await.dir.clone()
    }

    /// Writes `audit_stopped`, then seals, for a clean stop.
    pub async fn stop(&self) -> Result<(), AuditError> {
        self.store
            .record_audit(&self.system_event(EventType::AuditStopped, AuditOutcome::Success))
            .await?;
        self.seal_if_due(true).await
    }
}

trait WithDetail {
    fn with_detail(self, detail: String) -> Self;
}

impl WithDetail for AuditEvent {
    fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// Sealed segments still in the journal (not yet shipped), with their sizes, in order.
pub(crate) fn sealed_unshipped(dir: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir.join("segments"))? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jsonl"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if dir.join(checkpoint_name(number)).exists() {
            out.push((number, entry.metadata()?.len()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the checkpoints and the active segment back; cuts a torn last line.
fn recover(
    dir: &Path,
    log_id: String,
    key: &SigningKey,
) -> Result<(Journal, Option<usize>), AuditError> {
    let verifying = key.verifying_key();
    let mut journal = Journal {
        dir: dir.to_path_buf(),
        log_id,
        segment: 0,
        file: None,
        file_len: 0,
        tree: MerkleTree::new(),
        first_seq: 0,
        next_seq: 0,
        prev_record_hash: GENESIS_HASH,
        opened_at_ms: 0,
        log_tree: MerkleTree::new(),
        prev_checkpoint_hash: GENESIS_HASH,
        outbox_id_max: 0,
        // a restart counts as a fresh start for heartbeats: the downtime shows in the
        // audit_stopped / audit_started records and in the checkpoints' times
        sealed_at_ms: now_ms(),
        chain: OutboxChain::after(None),
        last_time_ms: 0,
        anchor: None,
        last_row: None,
    };
    loop {
        let path = dir.join(checkpoint_name(journal.segment));
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
            Err(e) => return Err(e.into()),
        };
        let body = CheckpointBody::open(&bytes, &verifying, key.key_id())
            .map_err(|m| AuditError::Corrupt(format!("{}: {m}", path.display())))?;
        let root = hex::decode(&body.segment_root)
            .map_err(|_| AuditError::Corrupt(format!("{}: bad segment root", path.display())))?;
        journal.log_tree.push(&root);
        journal.prev_checkpoint_hash = sha256(&bytes);
        journal.next_seq = body.first_seq + body.record_count;
        journal.prev_record_hash = hex::decode(&body.last_record_hash)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| AuditError::Corrupt(format!("{}: bad record hash", path.display())))?;
        journal.outbox_id_max = body.outbox_id_max;
        journal.last_time_ms = journal
            .last_time_ms
            .max(parse_rfc3339_ms(&body.sealed_at).unwrap_or(0));
        journal.segment += 1;
    }
    journal.first_seq = journal.next_seq;
    // the active segment: keep every whole, chained record; cut from the first that is not
    let path = dir.join(segment_name(journal.segment));
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut good = 0usize;
    let mut rest = &bytes[..];
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        let line = &rest[..end];
        let Ok(record) = AuditRecord::from_line(line) else {
            break;
        };
        if record.seq != journal.next_seq || record.prev != hex::encode(journal.prev_record_hash) {
            break;
        }
        if journal.tree.is_empty() {
            journal.opened_at_ms = now_ms();
        }
        journal.tree.push(line);
        journal.prev_record_hash = sha256(line);
        journal.next_seq += 1;
        journal.last_time_ms = journal
            .last_time_ms
            .max(parse_rfc3339_ms(&record.time).unwrap_or(0));
        if let Some(id) = record.outbox_id {
            journal.outbox_id_max = journal.outbox_id_max.max(id);
        }
        good += end + 1;
        rest = &rest[end + 1..];
    }
    let repaired = (good < bytes.len()).then(|| bytes.len() - good);
    if repaired.is_some() {
        let file = std::fs::OpenOptions::new().write(true).open(&path)?;
        file.set_len(u64::try_from(good).unwrap_or(u64::MAX))?;
        file.sync_all()?;
        tracing::warn!(path = %path.display(), "audit journal: torn tail cut");
    }
    Ok((journal, repaired))
}

/// The log's id, made once per data directory.
pub(crate) fn log_id(dir: &Path) -> Result<String, AuditError> {
    let path = dir.join("log-id");
    match std::fs::read_to_string(&path) {
        Ok(id) => Ok(id.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("paygate-{}", uuid::Uuid::new_v4());
            write_durably(&path, id.as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e.into()),
    }
}

/// Seals on age and picks up events other processes left in the outbox.
pub async fn run_sealer(log: Arc<AuditLog>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = std::time::Duration::from_millis(log.settings.seal_check_interval_ms);
    let clock_interval = std::time::Duration::from_millis(log.settings.clock_check_interval_ms);
    let mut clock_checked = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        // cheap (two clock reads): every tick, so a step stops approvals within one
        if let Err(error) = log.check_system_clock().await {
            tracing::error!(%error, "system clock check failed");
        }
        if clock_checked.elapsed() >= clock_interval {
            clock_checked = tokio::time::Instant::now();
            if let Err(error) = log.check_clock().await {
                tracing::error!(%error, "clock check failed");
            }
        }
        if let Err(error) = log.seal_if_due(false).await {
            tracing::error!(%error, "audit sealer failed");
        }
    }
}
