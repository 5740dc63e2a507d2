//! The audit trail's format and its verification, with no IO. docs/audit-format.md is the
//! specification an auditor can implement on their own; this module is paygate's reading of it.
//!
//! - A **record** is one line of canonical JSON. Its hash is SHA-256 of the line's bytes (no
//!   newline). Each record names the hash of the one before it (`prev`), across segments, from
//!   a genesis of 32 zero bytes, and carries a `seq` that counts up from 0 without gaps.
//! - A **segment** is a file of records. Its root is the RFC 9162 Merkle tree hash over its
//!   lines (leaf = line bytes).
//! - A **checkpoint** seals one segment: a signed tree head (COSE_Sign1, the gateway's audit
//!   key) naming the segment's root, count, file hash and last record hash, the root of the
//!   **log tree** whose leaves are the segment roots so far, and the hash of the previous
//!   checkpoint. Inclusion of a record is proved by two RFC 9162 paths (record -> segment root
//!   -> log root); consistency between two checkpoints by an RFC 9162 consistency proof over
//!   the log tree.

use crate::envelope::{SigningKey, UnverifiedEnvelope, VerifyingKey};
use crate::strict_json::reject_duplicate_keys;
use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The version every record and checkpoint of this format carries in `v`.
pub const FORMAT_VERSION: u32 = 1;
/// The COSE content type of a checkpoint.
pub const CHECKPOINT_CONTENT_TYPE: &str = "application/vnd.paygate.audit-checkpoint.v1+json";
/// The `prev` of the first record ever written, and of the first checkpoint.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

pub type Hash32 = [u8; 32];

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> Hash32 {
    Sha256::digest(bytes).into()
}

/// What kind of event a record is. The PCI DSS clause each answers is in docs/audit-format.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A request decided and recorded: approved or declined (10.2.1.1: access to cardholder
    /// data and accounts).
    PaymentDecided,
    /// A request refused before any decision: bad envelope, signature, schema (10.2.1.4).
    RequestRejected,
    /// A device connection refused by the front: TLS, certificate, client id (10.2.1.4).
    AccessRefused,
    /// An MQTT packet refused by the guard after CONNECT (10.2.1.4).
    PacketRefused,
    /// Credentials: a device certificate issued or revoked, a key made (10.2.1.5).
    CredentialChanged,
    /// A device enrolled or re-keyed (10.2.1.5, 10.2.1.7).
    DeviceEnrolled,
    /// An account opened (10.2.1.7) or funded by an operator (10.2.1.2).
    AdminAction,
    /// The audit log started (10.2.1.6).
    AuditStarted,
    /// The audit log stopped (10.2.1.6).
    AuditStopped,
    /// Someone read the audit log through paygate's tools (10.2.1.3).
    AuditLogRead,
    /// Shipping to write-once storage failed or recovered (10.7.2).
    AuditShipping,
    /// The journal's torn tail (a write that never completed) was cut at start.
    JournalRepaired,
    /// Nothing else happened for a seal interval: this record is sealed on its own, so a
    /// checkpoint is made at least once per interval and an archive whose newest checkpoint
    /// is older than that is visibly cut short (10.5.2, 10.6).
    AuditHeartbeat,
    /// The gateway's clock compared with the database server's: off by more than
    /// `audit.clock_skew_max_ms` (failure: approvals stop) or back within it (success)
    /// (10.6: time synchronisation).
    ClockChecked,
    /// An audit outbox row failed its check on the way into the journal: its MAC does not
    /// match (inserted or altered in the database), rows are missing before it (removed), or
    /// it repeats an earlier row's place. The row's content is not journaled as an event;
    /// this record names the row and why (10.3.2: audit logs protected from modification).
    AuditOutboxTampered,
    /// Key management: a data key made, the KEK rotated, or a key provider failure
    /// (PCI DSS 3.6, 3.7, 10.2.1.5).
    KeyOperation,
    /// Someone read personal or cardholder data in clear through paygate's tools (10.2.1.1).
    DataAccessed,
    /// A step-up decision: challenge issued (which mechanisms, which rules), answered right or
    /// wrong, expired, mechanism locked (10.2.1.4 for failures).
    IdentityDecision,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentDecided => "payment_decided",
            EventType::RequestRejected => "request_rejected",
            EventType::AccessRefused => "access_refused",
            EventType::PacketRefused => "packet_refused",
            EventType::CredentialChanged => "credential_changed",
            EventType::DeviceEnrolled => "device_enrolled",
            EventType::AdminAction => "admin_action",
            EventType::AuditStarted => "audit_started",
            EventType::AuditStopped => "audit_stopped",
            EventType::AuditLogRead => "audit_log_read",
            EventType::AuditShipping => "audit_shipping",
            EventType::JournalRepaired => "journal_repaired",
            EventType::AuditHeartbeat => "audit_heartbeat",
            EventType::ClockChecked => "clock_checked",
            EventType::AuditOutboxTampered => "audit_outbox_tampered",
            EventType::KeyOperation => "key_operation",
            EventType::DataAccessed => "data_accessed",
            EventType::IdentityDecision => "identity_decision",
        }
    }

    pub fn parse(text: &str) -> Option<EventType> {
        serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
    }
}

/// Success or failure (PCI DSS 10.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    Failure,
}

/// An event as its producer describes it, before the log gives it a place (`seq`, `prev`).
/// Every field is safe to store: producers pass identifiers, never secrets, and free text is
/// scrubbed of anything that looks like a card number on the way in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When it happened, milliseconds since the Unix epoch, UTC.
    pub time_ms: u64,
    pub event: EventType,
    /// Who: `device:ID`, `operator:NAME`, `system:gateway`.
    pub actor: String,
    /// Where from: `mqtt:IP:PORT`, `cli:HOST`, `gateway`.
    pub origin: String,
    pub outcome: AuditOutcome,
    /// Which part of paygate saw it: `front`, `pipeline`, `cli`, `audit`.
    pub component: String,
    /// The affected data or object: `account:ID`, `device:ID`, `tx:ID`, `audit-log`.
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    /// Minor units and currency, e.g. `1250 INR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditEvent {
    /// A new event with the 10.2.2 fields; the optional ones start empty.
    pub fn new(
        time_ms: u64,
        event: EventType,
        actor: impl Into<String>,
        origin: impl Into<String>,
        outcome: AuditOutcome,
        component: impl Into<String>,
        resource: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            time_ms,
            event,
            actor: actor.into(),
            origin: origin.into(),
            outcome,
            component: component.into(),
            resource: resource.into(),
            code: None,
            tx_id: None,
            device_id: None,
            wallet_id: None,
            merchant_id: None,
            amount: None,
            detail: None,
        }
    }

    /// The event with every text field scrubbed (`scrub`): what a device sent can reach any
    /// field (a card number sent as a merchant id, a key, a VPA in a detail), so no field is
    /// trusted to be PAN-free. The one place events are recorded applies this.
    pub fn scrubbed(&self) -> AuditEvent {
        let optional = |field: &Option<String>| field.as_deref().map(scrub);
        AuditEvent {
            time_ms: self.time_ms,
            event: self.event,
            actor: scrub(&self.actor),
            origin: scrub(&self.origin),
            outcome: self.outcome,
            component: scrub(&self.component),
            resource: scrub(&self.resource),
            code: optional(&self.code),
            tx_id: optional(&self.tx_id),
            device_id: optional(&self.device_id),
            wallet_id: optional(&self.wallet_id),
            merchant_id: optional(&self.merchant_id),
            amount: optional(&self.amount),
            detail: optional(&self.detail),
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    pub v: u32,
    pub seq: u64,
    /// Lowercase hex SHA-256 of the previous record's line; 64 zeros for the first.
    pub prev: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-11-23T08:14:26.123Z`.
    pub time: String,
    /// The producer's outbox row, so a restart neither loses nor repeats an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_id: Option<u64>,
    pub event: EventType,
    pub actor: String,
    pub origin: String,
    pub outcome: AuditOutcome,
    pub component: String,
    pub resource: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wallet_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl AuditRecord {
    /// Places an event in the log after the record whose hash is `prev`.
    pub fn place(event: AuditEvent, seq: u64, prev: &Hash32, outbox_id: Option<u64>) -> Self {
        AuditRecord {
            v: FORMAT_VERSION,
            seq,
            prev: hex::encode(prev),
            time: rfc3339_ms(event.time_ms),
            outbox_id,
            event: event.event,
            actor: scrub(&event.actor),
            origin: scrub(&event.origin),
            outcome: event.outcome,
            component: scrub(&event.component),
            resource: scrub(&event.resource),
            code: event.code,
            tx_id: event.tx_id,
            device_id: event.device_id,
            wallet_id: event.wallet_id,
            merchant_id: event.merchant_id,
            amount: event.amount,
            detail: event.detail.as_deref().map(scrub),
        }
    }

    /// The line as written (no newline). serde_json writes fields in declaration order and
    /// escapes deterministically, so a record has one encoding.
    pub fn to_line(&self) -> Vec<u8> {
        // serialising a struct of strings and integers cannot fail
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a line strictly (unknown or duplicate keys refused).
    pub fn from_line(line: &[u8]) -> Result<AuditRecord, String> {
        reject_duplicate_keys(line).map_err(|e| e.to_string())?;
        serde_json::from_slice(line).map_err(|e| e.to_string())
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(time_ms: u64) -> String {
    let nanos = i128::from(time_ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(at) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.millisecond()
        ),
        Err(_) => "9999-12-31T23:59:59.999Z".to_owned(),
    }
}

/// Parses what [`rfc3339_ms`] writes (and any RFC 3339 time) into milliseconds.
pub fn parse_rfc3339_ms(text: &str) -> Option<u64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

// Masking of card numbers, UPI addresses and phones: `crate::redact`, used by every record.
pub use crate::redact::{mask_pan, mask_phone, mask_vpa, scrub};

// ---------------------------------------------------------------------------------------------
// Merkle trees (RFC 9162 section 2.1), through the ct-merkle crate

/// An RFC 9162 Merkle tree over byte-string leaves, with its proofs.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    tree: MemoryBackedTree<Sha256, Vec<u8>>,
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, leaf: &[u8]) {
        self.tree.push(leaf.to_vec());
    }

    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// MTH of all leaves (SHA-256 of nothing for an empty tree).
    pub fn root(&self) -> Hash32 {
        self.tree
            .root()
            .as_bytes()
            .as_slice()
            .try_into()
            .unwrap_or([0; 32])
    }

    /// The audit path of leaf `index`, or None when it is out of range.
    pub fn inclusion_path(&self, index: u64) -> Option<Vec<Hash32>> {
        let index = usize::try_from(index).ok()?;
        if index >= self.tree.len().try_into().unwrap_or(usize::MAX) {
            return None;
        }
        Some(split_hashes(self.tree.prove_inclusion(index).as_bytes()))
    }

    /// The consistency proof from the first `old_size` leaves to the whole tree, or None when
    /// `old_size` is 0 or not smaller than the tree.
    pub fn consistency_path(&self, old_size: u64) -> Option<Vec<Hash32>> {
        if old_size == 0 || old_size >= self.len() {
            return None;
        }
        let additions = usize::try_from(self.len() - old_size).ok()?;
        Some(split_hashes(
            self.tree.prove_consistency(additions).as_bytes(),
        ))
    }
}

fn split_hashes(bytes: &[u8]) -> Vec<Hash32> {
    bytes
        .chunks_exact(32)
        .filter_map(|chunk| chunk.try_into().ok())
        .collect()
}

fn join_hashes(path: &[Hash32]) -> Vec<u8> {
    path.iter().flat_map(|h| h.iter().copied()).collect()
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`.
pub fn verify_inclusion(
    root: &Hash32,
    size: u64,
    index: u64,
    leaf: &[u8],
    path: &[Hash32],
) -> Result<(), String> {
    let root = RootHash::<Sha256>::new((*root).into(), size);
    let proof = InclusionProof::<Sha256>::try_from_bytes(join_hashes(path))
        .map_err(|e| format!("inclusion proof: {e}"))?;
    root.verify_inclusion(&leaf, index, &proof)
        .map_err(|e| format!("inclusion proof: {e}"))
}

/// Checks that the tree (`old_size`, `old_root`) is a prefix of (`new_size`, `new_root`).
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash32,
    new_size: u64,
    new_root: &Hash32,
    path: &[Hash32],
) -> Result<(), String> {
    if old_size == new_size {
        return if old_root == new_root && path.is_empty() {
            Ok(())
        } else {
            Err("consistency proof: same size, different roots or a non-empty proof".into())
        };
    }
    if old_size == 0 {
        return Err("consistency proof: from an empty tree".into());
    }
    let old = RootHash::<Sha256>::new((*old_root).into(), old_size);
    let new = RootHash::<Sha256>::new((*new_root).into(), new_size);
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(join_hashes(path))
        .map_err(|e| format!("consistency proof: {e}"))?;
    new.verify_consistency(&old, &proof)
        .map_err(|e| format!("consistency proof: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

/// What a checkpoint signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointBody {
    pub v: u32,
    /// The log this checkpoint belongs to (one per gateway deployment).
    pub log_id: String,
    /// The segment this checkpoint seals, counted from 0.
    pub segment: u64,
    pub first_seq: u64,
    pub record_count: u64,
    /// Hex SHA-256 of the segment file's bytes.
    pub segment_sha256: String,
    /// Hex RFC 9162 root over the segment's lines.
    pub segment_root: String,
    /// Hex hash of the segment's last line (the chain head).
    pub last_record_hash: String,
    /// The log tree's size (segments sealed so far, this one included) and root.
    pub log_size: u64,
    pub log_root: String,
    /// Hex SHA-256 of the previous checkpoint's bytes; 64 zeros for the first.
    pub prev_checkpoint_sha256: String,
    /// The highest producer outbox row in this segment or before it.
    pub outbox_id_max: u64,
    pub sealed_at: String,
}

impl CheckpointBody {
    pub fn seal(&self, key: &SigningKey) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        key.seal(CHECKPOINT_CONTENT_TYPE, &body)
    }

    /// Verifies a checkpoint's signature under `key` (whose key id is `key_id`) and reads it.
    pub fn open(bytes: &[u8], key: &VerifyingKey, key_id: &str) -> Result<CheckpointBody, String> {
        let envelope = UnverifiedEnvelope::parse(bytes).map_err(|e| e.message)?;
        if envelope.key_id() != key_id {
            return Err(format!(
                "signed by key id {:?}, not by the trusted key {key_id:?}",
                envelope.key_id()
            ));
        }
        let payload = envelope
            .verify(key, key_id, CHECKPOINT_CONTENT_TYPE)
            .map_err(|e| format!("{}: {}", e.code, e.message))?;
        reject_duplicate_keys(payload).map_err(|e| e.to_string())?;
        let body: CheckpointBody = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        if body.v != FORMAT_VERSION {
            return Err(format!(
                "checkpoint version {} is not {FORMAT_VERSION}",
                body.v
            ));
        }
        Ok(body)
    }
}

// ---------------------------------------------------------------------------------------------
// The verifier

/// Where and how an archive is broken. `location` names the file and line or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditBreak {
    pub kind: BreakKind,
    pub location: String,
    pub message: String,
}

impl fmt::Display for AuditBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}: {}",
            self.kind.as_str(),
            self.location,
            self.message
        )
    }
}

/// The kinds of breaks, as the verifier reports them (stable, for scripts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// A checkpoint's signature does not verify under the trusted key, or names another key.
    CheckpointSignature,
    /// A checkpoint is readable and signed but disagrees with the data or the checkpoint chain.
    CheckpointMismatch,
    /// A segment (or its checkpoint) is missing from the sequence.
    SegmentMissing,
    /// A line is not a valid record.
    RecordMalformed,
    /// A record's `seq` is not the next one: a record was removed, added or reordered.
    SequenceGap,
    /// A record's `prev` is not the hash of the line before it: a record was changed,
    /// removed or reordered.
    ChainBroken,
    /// The segment ends early: fewer records than its checkpoint, or a cut last line.
    Truncated,
    /// The archive does not reach or does not agree with a checkpoint the auditor trusts.
    TrustedCheckpoint,
    /// The newest checkpoint is older than the auditor allows: the gateway seals at least one
    /// checkpoint per seal interval (heartbeats), so segments after it were removed, or the
    /// gateway stopped sealing.
    Stale,
}

impl BreakKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::CheckpointSignature => "CHECKPOINT_SIGNATURE",
            BreakKind::CheckpointMismatch => "CHECKPOINT_MISMATCH",
            BreakKind::SegmentMissing => "SEGMENT_MISSING",
            BreakKind::RecordMalformed => "RECORD_MALFORMED",
            BreakKind::SequenceGap => "SEQUENCE_GAP",
            BreakKind::ChainBroken => "CHAIN_BROKEN",
            BreakKind::Truncated => "TRUNCATED",
            BreakKind::TrustedCheckpoint => "TRUSTED_CHECKPOINT",
            BreakKind::Stale => "STALE",
        }
    }
}

/// File names inside an archive (and in the write-once stores).
pub fn segment_name(segment: u64) -> String {
    format!("segments/{segment:012}.jsonl")
}

pub fn checkpoint_name(segment: u64) -> String {
    format!("checkpoints/{segment:012}.cose")
}

/// Walks an archive segment by segment, in order, checking everything docs/audit-format.md
/// lists; keeps the log tree so it can prove inclusion and consistency afterwards.
pub struct ArchiveVerifier {
    key: VerifyingKey,
    key_id: String,
    log_id: Option<String>,
    next_segment: u64,
    next_seq: u64,
    prev_record_hash: Hash32,
    prev_checkpoint_hash: Hash32,
    log_tree: MerkleTree,
    /// Each segment's root and record count, by segment number.
    segments: Vec<(Hash32, u64)>,
    checkpoints: Vec<Vec<u8>>,
    bodies: Vec<CheckpointBody>,
}

/// What a clean archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSummary {
    pub segments: u64,
    pub records: u64,
    pub log_root: Hash32,
    pub bytes: u64,
}

impl ArchiveVerifier {
    /// The id of the log verified (none before its first checkpoint).
    pub fn log_id(&self) -> Option<&str> {
        self.log_id.as_deref()
    }

    pub fn new(key: VerifyingKey, key_id: &str) -> Self {
        ArchiveVerifier {
            key,
            key_id: key_id.to_owned(),
            log_id: None,
            next_segment: 0,
            next_seq: 0,
            prev_record_hash: GENESIS_HASH,
            prev_checkpoint_hash: GENESIS_HASH,
            log_tree: MerkleTree::new(),
            segments: Vec::new(),
            checkpoints: Vec::new(),
            bodies: Vec::new(),
        }
    }

    /// The segment number expected next.
    pub fn next_segment(&self) -> u64 {
        self.next_segment
    }

    /// Checks one segment and its checkpoint. `on_record` sees each valid record with its
    /// index in the segment (for search and proofs).
    pub fn add_segment(
        &mut self,
        segment: u64,
        segment_bytes: &[u8],
        checkpoint_bytes: &[u8],
        mut on_record: impl FnMut(u64, &AuditRecord, &[u8]),
    ) -> Result<(), AuditBreak> {
        let seg_name = segment_name(segment);
        let cp_name = checkpoint_name(segment);
        let brk = |kind, location: &str, message: String| AuditBreak {
            kind,
            location: location.to_owned(),
            message,
        };
        if segment != self.next_segment {
            return Err(brk(
                BreakKind::SegmentMissing,
                &segment_name(self.next_segment),
                format!(
                    "segment {} is missing (the next one present is {segment})",
                    self.next_segment
                ),
            ));
        }
        let body = CheckpointBody::open(checkpoint_bytes, &self.key, &self.key_id)
            .map_err(|m| brk(BreakKind::CheckpointSignature, &cp_name, m))?;
        let mismatch = |m: String| brk(BreakKind::CheckpointMismatch, &cp_name, m);
        if body.segment != segment {
            return Err(mismatch(format!(
                "checkpoint names segment {}, found as segment {segment}",
                body.segment
            )));
        }
        if let Some(log_id) = &self.log_id {
            if &body.log_id != log_id {
                return Err(mismatch(format!("log id {} is not {log_id}", body.log_id)));
            }
        }
        if body.prev_checkpoint_sha256 != hex::encode(self.prev_checkpoint_hash) {
            return Err(mismatch(
                "prev_checkpoint_sha256 is not the hash of the previous checkpoint: a checkpoint was removed or replaced".into(),
            ));
        }

        // the records, line by line
        let mut tree = MerkleTree::new();
        let mut rest = segment_bytes;
        let mut line_number = 0u64;
        while !rest.is_empty() {
            line_number += 1;
            let location = format!("{seg_name} line {line_number}");
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                return Err(brk(
                    BreakKind::Truncated,
                    &location,
                    "the last line is cut (no newline)".into(),
                ));
            };
            let line = &rest[..end];
            rest = &rest[end + 1..];
            let record = AuditRecord::from_line(line)
                .map_err(|m| brk(BreakKind::RecordMalformed, &location, m))?;
            if record.seq != self.next_seq {
                return Err(brk(
                    BreakKind::SequenceGap,
                    &location,
                    format!(
                        "record seq {} where {} was expected: a record was removed, added or reordered",
                        record.seq, self.next_seq
                    ),
                ));
            }
            if record.prev != hex::encode(self.prev_record_hash) {
                return Err(brk(
                    BreakKind::ChainBroken,
                    &location,
                    format!(
                        "record seq {} names prev {} but the record before it hashes to {}: the record before it was changed",
                        record.seq,
                        record.prev,
                        hex::encode(self.prev_record_hash)
                    ),
                ));
            }
            on_record(tree.len(), &record, line);
            tree.push(line);
            self.prev_record_hash = sha256(line);
            self.next_seq += 1;
        }
        let count = tree.len();
        if count < body.record_count {
            return Err(brk(
                BreakKind::Truncated,
                &seg_name,
                format!(
                    "{count} records where the checkpoint says {}",
                    body.record_count
                ),
            ));
        }
        if count != body.record_count || self.next_seq.checked_sub(count) != Some(body.first_seq) {
            return Err(mismatch(format!(
                "the checkpoint says {} records from seq {}; the segment has {count} from seq {}",
                body.record_count,
                body.first_seq,
                self.next_seq.saturating_sub(count)
            )));
        }
        let segment_root = tree.root();
        if body.segment_root != hex::encode(segment_root)
            || body.last_record_hash != hex::encode(self.prev_record_hash)
        {
            return Err(mismatch(
                "the segment's Merkle root or last record hash is not the one signed".into(),
            ));
        }
        if body.segment_sha256 != hex::encode(sha256(segment_bytes)) {
            return Err(mismatch(
                "the segment file's SHA-256 is not the one signed".into(),
            ));
        }
        self.log_tree.push(&segment_root);
        if body.log_size != self.log_tree.len()
            || body.log_root != hex::encode(self.log_tree.root())
        {
            return Err(mismatch(
                "the log tree's size or root is not the one signed".into(),
            ));
        }
        self.log_id = Some(body.log_id.clone());
        self.prev_checkpoint_hash = sha256(checkpoint_bytes);
        self.segments.push((segment_root, count));
        self.checkpoints.push(checkpoint_bytes.to_vec());
        self.bodies.push(body);
        self.next_segment += 1;
        Ok(())
    }

    /// Checks that the archive reaches and agrees with a checkpoint the auditor kept from
    /// earlier (signature, then an RFC 9162 consistency proof from it to the newest one).
    pub fn check_trusted(&self, trusted_bytes: &[u8]) -> Result<(), AuditBreak> {
        let brk = |m: String| AuditBreak {
            kind: BreakKind::TrustedCheckpoint,
            location: "trusted checkpoint".into(),
            message: m,
        };
        let trusted = CheckpointBody::open(trusted_bytes, &self.key, &self.key_id).map_err(brk)?;
        if let Some(log_id) = &self.log_id {
            if &trusted.log_id != log_id {
                return Err(brk(format!(
                    "it belongs to log {:?}, the archive to log {log_id:?}",
                    trusted.log_id
                )));
            }
        }
        if trusted.log_size > self.log_tree.len() {
            return Err(brk(format!(
                "the archive holds {} segments but the trusted checkpoint covers {}: segments were removed from the end",
                self.log_tree.len(),
                trusted.log_size
            )));
        }
        let old_root = parse_hash(&trusted.log_root).map_err(brk)?;
        let path = self
            .log_tree
            .consistency_path(trusted.log_size)
            .unwrap_or_default();
        verify_consistency(
            trusted.log_size,
            &old_root,
            self.log_tree.len(),
            &self.log_tree.root(),
            &path,
        )
        .map_err(|m| brk(format!("the archive is not an extension of it: {m}")))
    }

    /// When the newest checkpoint was sealed (milliseconds since the Unix epoch).
    pub fn newest_sealed_at_ms(&self) -> Option<u64> {
        self.bodies
            .last()
            .and_then(|body| parse_rfc3339_ms(&body.sealed_at))
    }

    /// Checks that the newest checkpoint was sealed within `max_age_ms` before `as_of_ms`.
    /// The gateway seals at least once per seal interval, so an auditor who allows about two
    /// intervals plus the shipping delay sees an archive whose last segments were removed.
    pub fn check_fresh(&self, as_of_ms: u64, max_age_ms: u64) -> Result<(), AuditBreak> {
        let stale = |message: String| AuditBreak {
            kind: BreakKind::Stale,
            location: self
                .bodies
                .last()
                .map_or_else(|| "checkpoints/".to_owned(), |b| checkpoint_name(b.segment)),
            message,
        };
        let Some(sealed_at) = self.newest_sealed_at_ms() else {
            return Err(stale("the archive holds no checkpoint".into()));
        };
        let age = as_of_ms.saturating_sub(sealed_at);
        if age > max_age_ms {
            return Err(stale(format!(
                "the newest checkpoint was sealed at {} ({} s before {}), more than the {} s allowed: \
                 later segments were removed, or the gateway stopped sealing",
                rfc3339_ms(sealed_at),
                age / 1_000,
                rfc3339_ms(as_of_ms),
                max_age_ms / 1_000
            )));
        }
        Ok(())
    }

    pub fn summary(&self, bytes: u64) -> ArchiveSummary {
        ArchiveSummary {
            segments: self.log_tree.len(),
            records: self.next_seq,
            log_root: self.log_tree.root(),
            bytes,
        }
    }

    /// An inclusion proof of a record (given by its segment and index in that segment, and the
    /// segment's lines) against the newest checkpoint.
    pub fn prove(&self, segment: u64, index: u64, segment_lines: &[&[u8]]) -> Option<RecordProof> {
        let newest = self.checkpoints.last()?;
        let mut tree = MerkleTree::new();
        for line in segment_lines {
            tree.push(line);
        }
        let (root, count) = *self.segments.get(usize::try_from(segment).ok()?)?;
        if tree.root() != root || count != tree.len() {
            return None;
        }
        let record = segment_lines.get(usize::try_from(index).ok()?)?;
        Some(RecordProof {
            v: FORMAT_VERSION,
            record: String::from_utf8_lossy(record).into_owned(),
            segment,
            index,
            segment_size: count,
            segment_root: hex::encode(root),
            segment_path: tree
                .inclusion_path(index)?
                .iter()
                .map(hex::encode)
                .collect(),
            log_size: self.log_tree.len(),
            log_path: self
                .log_tree
                .inclusion_path(segment)?
                .iter()
                .map(hex::encode)
                .collect(),
            checkpoint: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, newest),
        })
    }
}

/// A self-contained proof that a record is in the log under a signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordProof {
    pub v: u32,
    /// The record's line, exactly as stored.
    pub record: String,
    pub segment: u64,
    /// The record's index in its segment.
    pub index: u64,
    pub segment_size: u64,
    pub segment_root: String,
    /// RFC 9162 audit path: record -> segment root.
    pub segment_path: Vec<String>,
    /// The log tree's size at the checkpoint.
    pub log_size: u64,
    /// RFC 9162 audit path: segment root -> log root.
    pub log_path: Vec<String>,
    /// The checkpoint (COSE_Sign1), base64.
    pub checkpoint: String,
}

fn parse_hash(text: &str) -> Result<Hash32, String> {
    let bytes = hex::decode(text).map_err(|_| format!("{text:?} is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("{text:?} is not 32 bytes"))
}

impl RecordProof {
    /// Checks the proof with the audit public key alone; returns the record and checkpoint.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        key_id: &str,
    ) -> Result<(AuditRecord, CheckpointBody), String> {
        let checkpoint =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &self.checkpoint)
                .map_err(|_| "the checkpoint is not base64".to_owned())?;
        let body = CheckpointBody::open(&checkpoint, key, key_id)?;
        if body.log_size != self.log_size {
            return Err("the proof's log size is not the checkpoint's".into());
        }
        let segment_root = parse_hash(&self.segment_root)?;
        let segment_path = self
            .segment_path
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Result<Vec<_>, _>>()?;
        let log_path = self
            .log_path
            .iter()
            .map(|h| parse_hash(h))
            .collect::<Result<Vec<_>, _>>()?;
        verify_inclusion(
            &segment_root,
            self.segment_size,
            self.index,
            self.record.as_bytes(),
            &segment_path,
        )?;
        verify_inclusion(
            &parse_hash(&body.log_root)?,
            body.log_size,
            self.segment,
            &segment_root,
            &log_path,
        )?;
        let record = AuditRecord::from_line(self.record.as_bytes())?;
        Ok((record, body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(text: &str) -> Hash32 {
        parse_hash(text).expect("test hash")
    }

    /// transparency-dev/merkle testonly/constants.go: leaves, and roots for sizes 0 to 8.
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaf(i: usize) -> Vec<u8> {
        hex::decode(LEAVES[i]).expect("test leaf")
    }

    fn tree_of(size: usize) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for i in 0..size {
            tree.push(&leaf(i));
        }
        tree
    }

    #[test]
    fn rfc9162_roots_for_every_size_from_0_to_8() {
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(hex::encode(tree_of(size).root()), *root, "size {size}");
        }
    }

    /// index, size, leaf, root, path
    type InclusionProbe = (u64, u64, Vec<u8>, Hash32, Vec<Hash32>);

    /// (leaf index 0-based, tree size, path) from transparency-dev/merkle proof/verify_test.go.
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<&'static str>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                vec![
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                vec!["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                vec![
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ]
    }

    #[test]
    fn rfc9162_inclusion_proofs_match_the_vectors_and_corrupted_ones_are_refused() {
        for (index, size, path) in inclusion_vectors() {
            let path: Vec<Hash32> = path.iter().map(|p| h(p)).collect();
            let tree = tree_of(usize::try_from(size).expect("small"));
            assert_eq!(
                tree.inclusion_path(index),
                Some(path.clone()),
                "{index}/{size}"
            );
            let root = h(ROOTS[usize::try_from(size).expect("small")]);
            let data = leaf(usize::try_from(index).expect("small"));
            assert!(verify_inclusion(&root, size, index, &data, &path).is_ok());
            // wrong index, wrong size, wrong leaf, wrong root, extra and missing hashes,
            // and every single-bit change in the path
            let mut probes: Vec<InclusionProbe> = vec![
                (index + 1, size, data.clone(), root, path.clone()),
                (index ^ 2, size, data.clone(), root, path.clone()),
                (index, size * 2, data.clone(), root, path.clone()),
                (index, size, b"WrongLeaf".to_vec(), root, path.clone()),
                (index, size, data.clone(), h(ROOTS[0]), path.clone()),
                (
                    index,
                    size,
                    data.clone(),
                    root,
                    [path.clone(), vec![root]].concat(),
                ),
                (
                    index,
                    size,
                    data.clone(),
                    root,
                    [vec![root], path.clone()].concat(),
                ),
            ];
            if index > 0 {
                probes.push((index - 1, size, data.clone(), root, path.clone()));
            }
            if size > 1 {
                probes.push((index, size / 2, data.clone(), root, path.clone()));
            }
            if !path.is_empty() {
                probes.push((
                    index,
                    size,
                    data.clone(),
                    root,
                    path[..path.len() - 1].to_vec(),
                ));
            }
            for i in 0..path.len() {
                let mut bad = path.clone();
                bad[i][0] ^= 8;
                probes.push((index, size, data.clone(), root, bad));
            }
            for (i, (pi, ps, pl, pr, pp)) in probes.into_iter().enumerate() {
                if pi == index && ps == size && pl == data && pr == root && pp == path {
                    continue;
                }
                assert!(
                    verify_inclusion(&pr, ps, pi, &pl, &pp).is_err(),
                    "corrupted probe {i} of {index}/{size} verified"
                );
            }
        }
    }

    #[test]
    fn rfc9162_consistency_proofs_match_the_vectors_and_corrupted_ones_are_refused() {
        let vectors: Vec<(u64, u64, Vec<&str>)> = vec![
            (1, 1, vec![]),
            (
                1,
                8,
                vec![
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                vec![
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                vec![
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old, new, path) in vectors {
            let path: Vec<Hash32> = path.iter().map(|p| h(p)).collect();
            let tree = tree_of(usize::try_from(new).expect("small"));
            assert_eq!(
                tree.consistency_path(old).unwrap_or_default(),
                path,
                "{old}->{new}"
            );
            let old_root = h(ROOTS[usize::try_from(old).expect("small")]);
            let new_root = h(ROOTS[usize::try_from(new).expect("small")]);
            assert!(verify_consistency(old, &old_root, new, &new_root, &path).is_ok());
            if path.is_empty() {
                continue;
            }
            let mut probes = vec![
                (old - 1, new, old_root, new_root, path.clone()),
                (old + 1, new, old_root, new_root, path.clone()),
                (old, new * 2, old_root, new_root, path.clone()),
                (old, new, new_root, old_root, path.clone()),
                (old, new, h(ROOTS[0]), new_root, path.clone()),
                (old, new, old_root, h(ROOTS[0]), path.clone()),
                (old, new, old_root, new_root, vec![]),
                (
                    old,
                    new,
                    old_root,
                    new_root,
                    path[..path.len() - 1].to_vec(),
                ),
                (
                    old,
                    new,
                    old_root,
                    new_root,
                    [path.clone(), vec![old_root]].concat(),
                ),
                (
                    old,
                    new,
                    old_root,
                    new_root,
                    [vec![path[0]], path.clone()].concat(),
                ),
            ];
            for i in 0..path.len() {
                let mut bad = path.clone();
                bad[i][0] ^= 16;
                probes.push((old, new, old_root, new_root, bad));
            }
            for (i, (o, n, or, nr, p)) in probes.into_iter().enumerate() {
                assert!(
                    verify_consistency(o, &or, n, &nr, &p).is_err(),
                    "corrupted consistency probe {i} of {old}->{new} verified"
                );
            }
        }
    }

    #[test]
    fn masking_shows_at_most_first_six_and_last_four() {
        assert_eq!(mask_pan("4111 1111 1111 1111"), "411111******1111");
        assert_eq!(mask_pan("12345"), "*****");
        assert_eq!(mask_vpa("ramesh@okbank"), "r****h@okbank");
        assert_eq!(mask_phone("+91 98765 43210"), "**********10");
        assert_eq!(
            scrub("card 4111111111111111 ref 12345"),
            "card 411111******1111 ref 12345"
        );
        // digits inside a longer token are not a card number when too short or failing the
        // Luhn check (a long Luhn-valid run inside a hex key is masked: over-masking is the
        // safe side)
        let key = "idempotency_key a8523db20677c0770084470ed050c8a4";
        assert_eq!(scrub(key), key);
        // nor inside a hexadecimal token, Luhn or not (keys, hashes, transaction ids)
        for hex in [
            "6db13a08253018133669bb608b1510e7",
            "a8523db2067730770084470ed050c8a4",
        ] {
            assert_eq!(scrub(hex), hex);
        }
        // unless they pass the Luhn check: grouped, or joined to letters
        for hidden in [
            "m4111111111111111",
            "4111-1111-1111-1111",
            "4111 1111 1111 1111",
            "pan_4111.1111.1111.1111_x",
            "key-5500005555555559-1",
        ] {
            let scrubbed = scrub(hidden);
            assert!(
                !scrubbed.contains("1111111111") && !scrubbed.contains("1111-1111"),
                "{scrubbed}"
            );
            assert!(!scrubbed.contains("5500005555555559"), "{scrubbed}");
        }
        assert_eq!(scrub("m4111111111111111"), "m411111******1111");
        // dates, amounts and short numbers are left alone
        let plain = "2026-12-02 paid 1250 INR counter 42";
        assert_eq!(scrub(plain), plain);
    }

    proptest::proptest! {
        /// A Luhn-valid card number, put anywhere in a text with any of the usual separators,
        /// never comes out in full.
        #[test]
        fn no_card_number_survives_scrubbing(
            // any context but hexadecimal letters glued to the number (a hex token's digits
            // are left alone by design)
            prefix in "([g-z0-9]{0,6}[ _.:-])?",
            suffix in "([ _.:-][a-z0-9]{0,6})?",
            body in proptest::collection::vec(0u8..10, 12..18),
            separator in proptest::sample::select(vec!["", "-", " ", ".", "_"]),
        ) {
            let mut digits: String = body.iter().map(|d| char::from(b'0' + d)).collect();
            let check = (0..10u8)
                .map(|d| format!("{digits}{d}"))
                .find(|candidate| crate::payer::luhn_ok(candidate))
                .expect("one check digit of ten makes any number Luhn-valid");
            digits = check;
            let grouped: Vec<String> = digits
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            let text = format!("{prefix}{}{suffix}", grouped.join(separator));
            let scrubbed = scrub(&text);
            proptest::prop_assert!(!scrubbed.replace(['-', ' ', '.', '_'], "").contains(&digits),
                "{text:?} -> {scrubbed:?}");
        }
    }

    #[test]
    fn a_record_line_round_trips_strictly_and_times_are_utc() {
        let mut event = AuditEvent::new(
            1_700_000_000_123,
            EventType::PaymentDecided,
            "device:pos-1",
            "mqtt:127.0.0.1:5000",
            AuditOutcome::Success,
            "pipeline",
            "tx:abc",
        );
        event.detail = Some("pan 4111111111111111".into());
        let record = AuditRecord::place(event, 7, &GENESIS_HASH, Some(3));
        assert_eq!(record.time, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_rfc3339_ms(&record.time), Some(1_700_000_000_123));
        assert_eq!(record.detail.as_deref(), Some("pan 411111******1111"));
        let line = record.to_line();
        assert_eq!(AuditRecord::from_line(&line), Ok(record));
        let mut extra = line[..line.len() - 1].to_vec();
        extra.extend_from_slice(b",\"extra\":1}");
        assert!(AuditRecord::from_line(&extra).is_err());
        assert_eq!(
            EventType::parse("audit_log_read"),
            Some(EventType::AuditLogRead)
        );
    }
}
