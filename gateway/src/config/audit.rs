//! The audit trail's settings (`[audit]`): the journal, sealing, shipping, the write-once
//! store and its witness, and the clock check.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSettings {
    /// The fsync'd local journal: the active segment, sealed segments not yet shipped, and
    /// every checkpoint.
    pub journal_dir: PathBuf,
    /// PKCS#8 Ed25519 key that signs checkpoints (made on first start, 0600).
    pub signing_key: PathBuf,
    /// The key id checkpoints carry; auditors verify with the matching public key.
    pub key_id: String,
    /// A segment is sealed when it holds this many records...
    pub records_per_segment_max: u64,
    /// ...or when its first record is this old.
    pub seal_interval_ms: u64,
    /// How often the journal writer picks up events from other processes and checks the age.
    pub seal_check_interval_ms: u64,
    /// Outbox rows appended per journal write.
    pub outbox_rows_per_write_max: u32,
    /// Sealed segments waiting for write-once storage, in bytes. Past this the gateway stops
    /// approving payments (PCI DSS 10.7.2: never approve what cannot be audited).
    pub backlog_bytes_max: u64,
    pub ship_interval_ms: u64,
    /// The shipper's retry delay doubles after each failure up to this (with jitter).
    pub ship_retry_delay_max_ms: u64,
    /// `local` (a write-once directory) or `s3` (S3 Object Lock, COMPLIANCE mode).
    pub store: AuditStoreKind,
    pub local: LocalWormSettings,
    pub s3: S3WormSettings,
    /// The gateway's clock may differ from the database server's by at most this; past it,
    /// approvals stop (`AUDIT_UNAVAILABLE`) until the clocks agree again, and the gateway does
    /// not start (PCI DSS 10.6: audit times from synchronised clocks).
    pub clock_skew_max_ms: u64,
    /// How often the two clocks are compared.
    pub clock_check_interval_ms: u64,
    /// A second write-once store that receives every checkpoint too (another account, another
    /// team's bucket): an archive cut short in the first store is shown by the witness's newer
    /// checkpoints (`paygate audit verify --witness`).
    pub witness: WitnessSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessSettings {
    /// `none`, `local` or `s3`.
    pub store: WitnessStoreKind,
    pub local: LocalWormSettings,
    pub s3: S3WormSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WitnessStoreKind {
    None,
    Local,
    S3,
}

impl Default for WitnessSettings {
    fn default() -> Self {
        WitnessSettings {
            store: WitnessStoreKind::None,
            local: LocalWormSettings {
                dir: PathBuf::from("audit/witness"),
                ..LocalWormSettings::default()
            },
            s3: S3WormSettings {
                prefix: "paygate-audit-witness/".to_owned(),
                ..S3WormSettings::default()
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStoreKind {
    Local,
    S3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalWormSettings {
    pub dir: PathBuf,
    /// Days each object is kept before paygate lets it be deleted (365 at least).
    pub retention_days: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3WormSettings {
    /// A versioned bucket with Object Lock enabled (checked at start).
    pub bucket: String,
    /// Key prefix, e.g. `paygate-audit/`.
    pub prefix: String,
    /// COMPLIANCE retention of every object, in days (365 at least).
    pub retention_days: u32,
    /// Empty: the standard AWS chain (AWS_REGION, profile, instance metadata).
    pub region: String,
    /// Empty: the standard AWS chain (AWS_ENDPOINT_URL). Set for S3-compatible endpoints.
    pub endpoint_url: String,
    /// Path-style addressing (needed by most S3-compatible endpoints).
    pub force_path_style: bool,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            journal_dir: PathBuf::from("audit/journal"),
            signing_key: PathBuf::from("pki/audit-signing.pk8"),
            key_id: "paygate-audit-1".to_owned(),
            records_per_segment_max: 10_000,
            seal_interval_ms: 60_000,
            seal_check_interval_ms: 1_000,
            outbox_rows_per_write_max: 1_000,
            backlog_bytes_max: 256 * 1024 * 1024,
            ship_interval_ms: 1_000,
            ship_retry_delay_max_ms: 60_000,
            store: AuditStoreKind::Local,
            local: LocalWormSettings::default(),
            s3: S3WormSettings::default(),
            clock_skew_max_ms: 2_000,
            clock_check_interval_ms: 60_000,
            witness: WitnessSettings::default(),
        }
    }
}

impl Default for LocalWormSettings {
    fn default() -> Self {
        LocalWormSettings {
            dir: PathBuf::from("audit/worm"),
            retention_days: 365,
        }
    }
}

impl Default for S3WormSettings {
    fn default() -> Self {
        S3WormSettings {
            bucket: String::new(),
            prefix: "paygate-audit/".to_owned(),
            retention_days: 365,
            region: String::new(),
            endpoint_url: String::new(),
            force_path_style: false,
        }
    }
}
