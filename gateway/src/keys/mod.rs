//! Envelope encryption (PCI DSS 3.5-3.7): data keys that encrypt sensitive fields are wrapped
//! by a key-encryption key (KEK) that never leaves its provider: a local key file (the
//! embedded default) or AWS KMS. Every wrap and unwrap names an encryption context (purpose,
//! table, field, tenant), so key use is attributable (CloudTrail logs the context) and a wrapped
//! key made for one field cannot be unwrapped for another.
//!
//! - [`provider`]: the two providers behind one enum, with retry, backoff and jitter.
//! - [`cipher`]: field encryption (AES-256-GCM, the field and record as additional data), keyed
//!   blind indexes (HMAC-SHA256) for lookups, the data-key cache, and rotation (rewrap).

pub mod cipher;
pub mod provider;

use std::collections::BTreeMap;

/// What a data key is for. Becomes the KMS EncryptionContext and the local wrap's AAD.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyContext {
    /// `field-encryption` or `blind-index`.
    pub purpose: String,
    pub table: String,
    pub field: String,
    pub tenant: String,
}

impl KeyContext {
    pub fn new(purpose: &str, table: &str, field: &str, tenant: &str) -> KeyContext {
        KeyContext {
            purpose: purpose.to_owned(),
            table: table.to_owned(),
            field: field.to_owned(),
            tenant: tenant.to_owned(),
        }
    }

    /// The pairs, sorted by key (KMS compares contexts as maps; the local wrap hashes this).
    pub fn pairs(&self) -> BTreeMap<&'static str, &str> {
        BTreeMap::from([
            ("purpose", self.purpose.as_str()),
            ("table", self.table.as_str()),
            ("field", self.field.as_str()),
            ("tenant", self.tenant.as_str()),
            ("app", "paygate"),
        ])
    }

    /// One canonical line: `app=paygate;field=...;purpose=...;table=...;tenant=...`.
    pub fn canonical(&self) -> String {
        self.pairs()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "purpose": self.purpose, "table": self.table, "field": self.field, "tenant": self.tenant,
        })
        .to_string()
    }

    pub fn from_json(text: &str) -> Option<KeyContext> {
        let value: serde_json::Value = serde_json::from_str(text).ok()?;
        let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Some(KeyContext {
            purpose: get("purpose")?,
            table: get("table")?,
            field: get("field")?,
            tenant: get("tenant")?,
        })
    }
}

/// A plaintext data key: 32 bytes, wiped on drop, never printed.
pub struct DataKey(zeroize::Zeroizing<[u8; 32]>);

impl DataKey {
    pub fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        let array: [u8; 32] = bytes.try_into().ok()?;
        Some(DataKey(zeroize::Zeroizing::new(array)))
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(***)")
    }
}

/// Why a key operation failed. Every variant fails closed: nothing is written in plaintext.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The provider did not answer (network, timeout) after the retries.
    #[error("key provider unreachable: {0}")]
    Unreachable(String),
    /// The provider refused for rate after the retries.
    #[error("key provider throttled: {0}")]
    Throttled(String),
    /// The KEK is disabled, pending deletion or missing.
    #[error("key-encryption key unusable: {0}")]
    KeyUnusable(String),
    /// The wrapped key or ciphertext does not open under this context: tampered, or made for
    /// another field or record.
    #[error("ciphertext refused: {0}")]
    Refused(String),
    #[error("key store: {0}")]
    Store(String),
    #[error("key file: {0}")]
    Io(#[from] std::io::Error),
}

impl KeyError {
    /// Worth retrying: the same call may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, KeyError::Unreachable(_) | KeyError::Throttled(_))
    }

    /// The stable code a client sees when a request needed this key and could not get it.
    pub fn code(&self) -> paygate_core::ErrorCode {
        paygate_core::ErrorCode::KeyUnavailable
    }
}
