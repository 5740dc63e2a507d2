//! Write-once storage for sealed audit segments and their checkpoints. Two implementations
//! behind [`WormStore`]: a local directory (the embedded default) and S3 Object Lock in
//! COMPLIANCE mode. Both store an object under a key at most once: a second put of the same
//! bytes is a no-op (so a shipper that crashed after a put and retries duplicates nothing),
//! a second put of other bytes is refused.

use crate::config::{LocalWormSettings, S3WormSettings};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, ChecksumMode, ObjectLockEnabled, ObjectLockMode,
};
use base64::Engine;
use paygate_core::audit::sha256;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum WormError {
    #[error("{key} already holds other bytes; write-once storage never overwrites")]
    Conflict { key: String },
    #[error("{key} is retained until {until}; it cannot be deleted before")]
    Retained { key: String, until: String },
    #[error("write-once storage unavailable: {0}")]
    Unavailable(String),
    #[error("write-once storage misconfigured: {0}")]
    Misconfigured(String),
    #[error("write-once storage io: {0}")]
    Io(#[from] std::io::Error),
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Stored,
    /// The same bytes were already there (a retry after a crash).
    AlreadyStored,
}

pub trait WormStore: Send + Sync + 'static {
    /// Stores `bytes` under `key` with the configured retention, once.
    fn put_once(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> impl Future<Output = Result<PutOutcome, WormError>> + Send;
    /// The object's bytes, if present.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Vec<u8>>, WormError>> + Send;
    /// Keys under a prefix (`segments/`, `checkpoints/`), sorted.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, WormError>> + Send;
}

// ---------------------------------------------------------------------------------------------

/// A directory of read-only files, each with its retention recorded beside it in
/// `retention/KEY.json`. paygate refuses to delete before the retention date; the directory
/// should also sit on storage the gateway's operators cannot rewrite (a WORM mount, or a copy
/// synchronised promptly to one): file modes alone do not stop root.
pub struct LocalWorm {
    root: PathBuf,
    retention_days: u32,
}

impl LocalWorm {
    pub fn new(root: PathBuf, settings: &LocalWormSettings) -> Result<LocalWorm, WormError> {
        std::fs::create_dir_all(&root).map_err(|e| {
            WormError::Misconfigured(format!("cannot make {}: {e}", root.display()))
        })?;
        Ok(LocalWorm {
            root,
            retention_days: settings.retention_days,
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, WormError> {
        if key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        {
            return Err(WormError::Misconfigured(format!("bad key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn retention_path(&self, key: &str) -> Result<PathBuf, WormError> {
        self.path(&format!("retention/{key}.json"))
    }

    /// Deletes an object whose retention has passed; refuses before.
    pub fn delete(&self, key: &str, now_ms: u64) -> Result<(), WormError> {
        let retention = std::fs::read(self.retention_path(key)?)?;
        let until_ms = serde_json::from_slice::<serde_json::Value>(&retention)
            .ok()
            .and_then(|v| v.get("retain_until_ms").and_then(|v| v.as_u64()))
            .unwrap_or(u64::MAX);
        if now_ms < until_ms {
            return Err(WormError::Retained {
                key: key.to_owned(),
                until: paygate_core::audit::rfc3339_ms(until_ms),
            });
        }
        std::fs::remove_file(self.path(key)?)?;
        Ok(())
    }
}

fn put_local(
    path: &Path,
    retention_path: &Path,
    bytes: &[u8],
    retain_until_ms: u64,
) -> Result<PutOutcome, WormError> {
    use std::os::unix::fs::PermissionsExt;
    if path.exists() {
        let held = std::fs::read(path)?;
        return if held == bytes {
            Ok(PutOutcome::AlreadyStored)
        } else {
            Err(WormError::Conflict {
                key: path.display().to_string(),
            })
        };
    }
    for dir in [path.parent(), retention_path.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::create_dir_all(dir)?;
    }
    let retention = serde_json::json!({
        "retain_until_ms": retain_until_ms,
        "retain_until": paygate_core::audit::rfc3339_ms(retain_until_ms),
        "sha256": hex::encode(sha256(bytes)),
    });
    crate::durable::write_durably(retention_path, retention.to_string().as_bytes())?;
    let tmp = path.with_extension("part");
    {
        let mut file = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        file.set_permissions(std::fs::Permissions::from_mode(0o444))?;
    }
    // the final name appears only with complete, synced, read-only content
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        super::sync_dir(dir)?;
    }
    Ok(PutOutcome::Stored)
}

impl WormStore for LocalWorm {
    async fn put_once(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, WormError> {
        let path = self.path(key)?;
        let retention_path = self.retention_path(key)?;
        let bytes = bytes.to_vec();
        let until =
            crate::clock::now_ms().saturating_add(u64::from(self.retention_days) * 86_400_000);
        tokio::task::spawn_blocking(move || put_local(&path, &retention_path, &bytes, until))
            .await
            .map_err(|e| WormError::Unavailable(e.to_string()))?
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, WormError> {
        match tokio::fs::read(self.path(key)?).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, WormError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let mut keys = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(keys),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            if let Some(name) = entry.file_name().to_str() {
                if !name.ends_with(".part") && !name.ends_with(".tmp") {
                    keys.push(format!("{}/{name}", prefix.trim_end_matches('/')));
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

// ---------------------------------------------------------------------------------------------

/// S3 with Object Lock: every object is written in COMPLIANCE mode with a retain-until date
/// `retention_days` ahead, and a SHA-256 checksum S3 verifies on receipt.
pub struct S3Worm {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    retention_days: u32,
}

fn sdk_error<E: std::error::Error + 'static>(error: aws_sdk_s3::error::SdkError<E>) -> WormError {
    use aws_sdk_s3::error::DisplayErrorContext;
    WormError::Unavailable(format!("{}", DisplayErrorContext(&error)))
}

impl S3Worm {
    /// Builds the client from the standard AWS chain plus the settings' overrides, then checks
    /// that the bucket is versioned and has Object Lock enabled.
    pub async fn connect(settings: &S3WormSettings) -> Result<S3Worm, WormError> {
        let mut loader = crate::aws::defaults().timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(30))
                .build(),
        );
        if !settings.region.is_empty() {
            loader = loader.region(aws_config::Region::new(settings.region.clone()));
        }
        if !settings.endpoint_url.is_empty() {
            loader = loader.endpoint_url(&settings.endpoint_url);
        }
        let shared = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
            .build();
        let store = S3Worm {
            client: aws_sdk_s3::Client::from_conf(config),
            bucket: settings.bucket.clone(),
            prefix: settings.prefix.clone(),
            retention_days: settings.retention_days,
        };
        store.check_bucket().await?;
        Ok(store)
    }

    /// Object Lock needs a versioned bucket with Object Lock enabled at creation.
    pub async fn check_bucket(&self) -> Result<(), WormError> {
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(sdk_error)?;
        if versioning.status() != Some(&BucketVersioningStatus::Enabled) {
            return Err(WormError::Misconfigured(format!(
                "bucket {} is not versioned (Object Lock needs versioning enabled)",
                self.bucket
            )));
        }
        let lock = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| {
                WormError::Misconfigured(format!(
                    "bucket {} has no Object Lock configuration: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))
            })?;
        let enabled = lock
            .object_lock_configuration()
            .and_then(|c| c.object_lock_enabled())
            == Some(&ObjectLockEnabled::Enabled);
        if !enabled {
            return Err(WormError::Misconfigured(format!(
                "bucket {} does not have Object Lock enabled",
                self.bucket
            )));
        }
        Ok(())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn full_key(&self, key: &str) -> String {
        self.key(key)
    }
}

impl WormStore for S3Worm {
    async fn put_once(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, WormError> {
        let full_key = self.key(key);
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256(bytes));
        // a versioned bucket keeps every PUT as a new version: look first, so a retry after a
        // crash does not store the segment twice
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(head) => {
                return if head.checksum_sha256() == Some(checksum.as_str()) {
                    Ok(PutOutcome::AlreadyStored)
                } else {
                    Err(WormError::Conflict { key: full_key })
                };
            }
            Err(error) => {
                let not_found = error
                    .as_service_error()
                    .map(|e| e.is_not_found())
                    .unwrap_or(false);
                if !not_found {
                    return Err(sdk_error(error));
                }
            }
        }
        let retain_until_secs =
            i64::try_from(crate::clock::now_ms() / 1000 + u64::from(self.retention_days) * 86_400)
                .unwrap_or(i64::MAX);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&full_key)
            .body(ByteStream::from(bytes.to_vec()))
            // Object Lock PUTs need an integrity header; S3 checks the SHA-256 we computed
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .checksum_sha256(checksum)
            .object_lock_mode(ObjectLockMode::Compliance)
            .object_lock_retain_until_date(DateTime::from_secs(retain_until_secs))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(PutOutcome::Stored)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, WormError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(object) => {
                let bytes = object
                    .body
                    .collect()
                    .await
                    .map_err(|e| WormError::Unavailable(e.to_string()))?;
                Ok(Some(bytes.into_bytes().to_vec()))
            }
            Err(error) => {
                if error
                    .as_service_error()
                    .map(|e| e.is_no_such_key())
                    .unwrap_or(false)
                {
                    Ok(None)
                } else {
                    Err(sdk_error(error))
                }
            }
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, WormError> {
        let full_prefix = self.key(prefix);
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(sdk_error)?;
            for object in page.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    keys.push(key.to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }
}

// ---------------------------------------------------------------------------------------------

/// The store the settings name: the audit store itself, or its witness.
pub enum AnyWorm {
    Local(LocalWorm),
    S3(S3Worm),
}

impl AnyWorm {
    /// The audit store (`audit.store`), checked: an S3 bucket without versioning or Object
    /// Lock is refused.
    pub async fn audit_store(settings: &crate::config::Settings) -> Result<AnyWorm, WormError> {
        use crate::config::AuditStoreKind;
        let audit = &settings.audit;
        Ok(match audit.store {
            AuditStoreKind::Local => AnyWorm::Local(LocalWorm::new(
                settings.resolve(&audit.local.dir),
                &audit.local,
            )?),
            AuditStoreKind::S3 => AnyWorm::S3(S3Worm::connect(&audit.s3).await?),
        })
    }

    /// The witness store (`audit.witness.store`), checked the same way; `None` when off.
    pub async fn witness(settings: &crate::config::Settings) -> Result<Option<AnyWorm>, WormError> {
        use crate::config::WitnessStoreKind;
        let witness = &settings.audit.witness;
        Ok(match witness.store {
            WitnessStoreKind::None => None,
            WitnessStoreKind::Local => Some(AnyWorm::Local(LocalWorm::new(
                settings.resolve(&witness.local.dir),
                &witness.local,
            )?)),
            WitnessStoreKind::S3 => Some(AnyWorm::S3(S3Worm::connect(&witness.s3).await?)),
        })
    }
}

impl WormStore for AnyWorm {
    async fn put_once(&self, key: &str, bytes: &[u8]) -> Result<PutOutcome, WormError> {
        match self {
            AnyWorm::Local(store) => store.put_once(key, bytes).await,
            AnyWorm::S3(store) => store.put_once(key, bytes).await,
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, WormError> {
        match self {
            AnyWorm::Local(store) => store.get(key).await,
            AnyWorm::S3(store) => store.get(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, WormError> {
        match self {
            AnyWorm::Local(store) => store.list(prefix).await,
            AnyWorm::S3(store) => store.list(prefix).await,
        }
    }
}
