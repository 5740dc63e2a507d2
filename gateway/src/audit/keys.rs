//! The audit signing key (checkpoints), its public JWK for auditors, and the outbox key
//! derived from it, which every process that records audit events opens its store with.

use super::AuditError;
use crate::audit_outbox::OutboxKey;
use crate::config::Settings;
use crate::durable::write_durably;
use crate::store::Store;
use paygate_core::envelope::{SigningAlgorithm, SigningKey};
use std::path::{Path, PathBuf};

/// The key that authenticates audit outbox rows, derived from the audit signing key (made if
/// missing). Every process that writes audit events opens its store with it
/// ([`Store::with_audit_key`]).
pub fn outbox_key(settings: &Settings) -> Result<OutboxKey, AuditError> {
    let audit = &settings.audit;
    let path = settings.resolve(&audit.signing_key);
    load_or_make_key(&path, &audit.key_id)?;
    // the log this data directory's journal keeps (made on first use, like the journal)
    let journal = settings.resolve(&audit.journal_dir);
    std::fs::create_dir_all(&journal)?;
    let log_id = super::log_id(&journal)?;
    Ok(OutboxKey::derive(&std::fs::read(&path)?, &log_id))
}

/// Opens the settings' database as a process that records audit events: with the outbox key.
pub async fn open_store(settings: &Settings, connections: u32) -> Result<Store, AuditError> {
    let key = outbox_key(settings)?;
    Ok(Store::open(&settings.database_url(), connections)
        .await?
        .with_audit_key(key))
}

/// The checkpoint signing key, made on first start (mode 0600) with its public JWK beside it.
pub fn load_or_make_key(path: &Path, key_id: &str) -> Result<SigningKey, AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    if !path.exists() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let pkcs8 = SigningKey::generate_pkcs8(SigningAlgorithm::Ed25519)
            .map_err(|e| AuditError::Key(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut file, &pkcs8)?;
        file.sync_all()?;
    }
    let pkcs8 = std::fs::read(path)?;
    let key = SigningKey::from_pkcs8(SigningAlgorithm::Ed25519, key_id, &pkcs8)
        .map_err(|e| AuditError::Key(e.to_string()))?;
    let public = public_jwk_path(path);
    if !public.exists() {
        write_durably(&public, public_jwk(&key).as_bytes())?;
    }
    Ok(key)
}

/// Where the public key of a private key file is published.
pub fn public_jwk_path(private: &Path) -> PathBuf {
    let name = private
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit-signing");
    private.with_file_name(format!("{name}.pub.jwk.json"))
}

/// The public half as an RFC 8037 OKP JSON Web Key, with its key id.
pub fn public_jwk(key: &SigningKey) -> String {
    use base64::Engine;
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().public_key);
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": key.key_id(),
        "x": x,
    })
    .to_string()
}
