//! The key-encryption key's two homes. An enum rather than a trait object: both are real,
//! both are used, and async methods on `dyn` traits would need boxing for no gain.
//!
//! - [`LocalKeyring`]: KEK files made on first run (mode 0600, never logged); wraps with
//!   AES-256-GCM, the context as additional data. Rotation adds a KEK; old ones stay to unwrap.
//! - [`AwsKms`]: GenerateDataKey / Decrypt / ReEncrypt through aws-sdk-kms, the standard AWS
//!   configuration chain (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`), the context as
//!   EncryptionContext on every call.
//!
//! Transient failures (unreachable, throttled) are retried with exponential backoff and full
//! jitter up to `keys.attempts_max`; the rest fail at once. Either way the caller fails closed.

use super::{DataKey, KeyContext, KeyError};
use crate::config::KeySettings;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

const LOCAL_WRAP_MAGIC: &[u8; 4] = b"PGL1";

/// Calls made to the provider, for the "KMS calls per 1,000 transactions" figure.
#[derive(Debug, Default)]
pub struct ProviderCalls {
    pub generate: AtomicU64,
    pub unwrap: AtomicU64,
    pub rewrap: AtomicU64,
    pub failures: AtomicU64,
    pub retries: AtomicU64,
}

impl ProviderCalls {
    pub fn total(&self) -> u64 {
        self.generate.load(Ordering::Relaxed)
            + self.unwrap.load(Ordering::Relaxed)
            + self.rewrap.load(Ordering::Relaxed)
    }
}

pub enum KeyProvider {
    Local(LocalKeyring),
    AwsKms(AwsKms),
}

impl KeyProvider {
    /// The provider the settings name.
    pub async fn from_settings(settings: &KeySettings, data_dir: &Path) -> Result<Self, KeyError> {
        match settings.provider {
            crate::config::KeyProviderKind::Local => {
                let dir = if settings.local_dir.is_absolute() {
                    settings.local_dir.clone()
                } else {
                    data_dir.join(&settings.local_dir)
                };
                Ok(KeyProvider::Local(LocalKeyring::open(&dir)?))
            }
            crate::config::KeyProviderKind::AwsKms => {
                Ok(KeyProvider::AwsKms(AwsKms::connect(settings).await))
            }
        }
    }

    /// False while AWS KMS is in its pause after a failed operation (`keys.unavailable_for_ms`);
    /// the local keyring is always available.
    pub fn available(&self) -> bool {
        match self {
            KeyProvider::Local(_) => true,
            KeyProvider::AwsKms(kms) => kms
                .unavailable_until
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_none_or(|until| std::time::Instant::now() >= until),
        }
    }

    pub fn calls(&self) -> &ProviderCalls {
        match self {
            KeyProvider::Local(p) => &p.calls,
            KeyProvider::AwsKms(p) => &p.calls,
        }
    }

    /// Which KEK new wraps use.
    pub fn active_kek_id(&self) -> String {
        match self {
            KeyProvider::Local(p) => p.active_id(),
            KeyProvider::AwsKms(p) => p.key_id.clone(),
        }
    }

    /// A new data key and its wrapped form.
    pub async fn generate(&self, context: &KeyContext) -> Result<(DataKey, Vec<u8>), KeyError> {
        self.calls().generate.fetch_add(1, Ordering::Relaxed);
        let result = match self {
            KeyProvider::Local(p) => p.generate(context),
            KeyProvider::AwsKms(p) => p.generate(context).await,
        };
        self.count_failure(&result);
        result
    }

    pub async fn unwrap(&self, wrapped: &[u8], context: &KeyContext) -> Result<DataKey, KeyError> {
        self.calls().unwrap.fetch_add(1, Ordering::Relaxed);
        let result = match self {
            KeyProvider::Local(p) => p.unwrap(wrapped, context),
            KeyProvider::AwsKms(p) => p.unwrap(wrapped, context).await,
        };
        self.count_failure(&result);
        result
    }

    /// The same data key wrapped under the active KEK (for AWS KMS: `to_key_id`, or the
    /// configured key), without the data key ever reaching paygate for KMS (ReEncrypt).
    pub async fn rewrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext,
        to_key_id: Option<&str>,
    ) -> Result<Vec<u8>, KeyError> {
        self.calls().rewrap.fetch_add(1, Ordering::Relaxed);
        let result = match self {
            KeyProvider::Local(p) => p.rewrap(wrapped, context),
            KeyProvider::AwsKms(p) => p.rewrap(wrapped, context, to_key_id).await,
        };
        self.count_failure(&result);
        result
    }

    fn count_failure<T>(&self, result: &Result<T, KeyError>) {
        if result.is_err() {
            self.calls().failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// KEK files in a directory: `kek-ID.bin` (32 random bytes, 0600) and `active` naming one.
pub struct LocalKeyring {
    dir: PathBuf,
    keks: RwLock<HashMap<String, LessSafeKey>>,
    active: RwLock<String>,
    random: SystemRandom,
    calls: ProviderCalls,
}

fn kek_id_of(bytes: &[u8]) -> String {
    format!(
        "local-{}",
        &hex::encode(paygate_core::audit::sha256(bytes))[..16]
    )
}

impl LocalKeyring {
    /// Opens the keyring, making the first KEK if there is none.
    pub fn open(dir: &Path) -> Result<LocalKeyring, KeyError> {
        std::fs::create_dir_all(dir)?;
        let keyring = LocalKeyring {
            dir: dir.to_path_buf(),
            keks: RwLock::new(HashMap::new()),
            active: RwLock::new(String::new()),
            random: SystemRandom::new(),
            calls: ProviderCalls::default(),
        };
        keyring.reload()?;
        if keyring.active_id().is_empty() {
            keyring.rotate()?;
        }
        Ok(keyring)
    }

    /// Loads KEK files another process (`paygate keys rotate`) added since start.
    fn reload(&self) -> Result<(), KeyError> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let is_kek = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kek-") && n.ends_with(".bin"));
            if is_kek {
                let bytes = zeroize::Zeroizing::new(std::fs::read(&path)?);
                self.insert(&bytes)?;
            }
        }
        if let Ok(id) = std::fs::read_to_string(self.dir.join("active")) {
            if self.has(id.trim()) {
                *self.active.write().unwrap_or_else(|p| p.into_inner()) = id.trim().to_owned();
            }
        }
        Ok(())
    }

    fn has(&self, id: &str) -> bool {
        self.keks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    }

    fn insert(&self, bytes: &[u8]) -> Result<String, KeyError> {
        let key = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| KeyError::Store("a KEK file is not 32 bytes".into()))?;
        let id = kek_id_of(bytes);
        self.keks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), LessSafeKey::new(key));
        Ok(id)
    }

    pub fn active_id(&self) -> String {
        self.active
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes a new KEK and makes it the active one. Old KEKs stay, so old wraps still open.
    pub fn rotate(&self) -> Result<String, KeyError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        self.random
            .fill(bytes.as_mut())
            .map_err(|_| KeyError::Store("the system random generator failed".into()))?;
        let id = kek_id_of(bytes.as_ref());
        let path = self.dir.join(format!("kek-{id}.bin"));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        std::io::Write::write_all(&mut file, bytes.as_ref())?;
        file.sync_all()?;
        self.insert(bytes.as_ref())?;
        crate::durable::write_durably(&self.dir.join("active"), id.as_bytes())?;
        *self.active.write().unwrap_or_else(|p| p.into_inner()) = id.clone();
        Ok(id)
    }

    fn wrap_with(
        &self,
        kek_id: &str,
        key: &DataKey,
        context: &KeyContext,
    ) -> Result<Vec<u8>, KeyError> {
        let keks = self.keks.read().unwrap_or_else(|p| p.into_inner());
        let kek = keks
            .get(kek_id)
            .ok_or_else(|| KeyError::KeyUnusable(format!("no local KEK {kek_id}")))?;
        let mut nonce = [0u8; 12];
        self.random
            .fill(&mut nonce)
            .map_err(|_| KeyError::Store("the system random generator failed".into()))?;
        let mut sealed = key.bytes().to_vec();
        kek.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context.canonical().as_bytes()),
            &mut sealed,
        )
        .map_err(|_| KeyError::Store("wrapping failed".into()))?;
        let id = kek_id.as_bytes();
        let mut blob = Vec::with_capacity(4 + 1 + id.len() + 12 + sealed.len());
        blob.extend_from_slice(LOCAL_WRAP_MAGIC);
        blob.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        blob.extend_from_slice(id);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        Ok(blob)
    }

    fn generate(&self, context: &KeyContext) -> Result<(DataKey, Vec<u8>), KeyError> {
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        self.random
            .fill(bytes.as_mut())
            .map_err(|_| KeyError::Store("the system random generator failed".into()))?;
        let key = DataKey::from_bytes(bytes.as_ref())
            .ok_or_else(|| KeyError::Store("data key size".into()))?;
        let wrapped = self.wrap_with(&self.active_id(), &key, context)?;
        Ok((key, wrapped))
    }

    fn unwrap(&self, wrapped: &[u8], context: &KeyContext) -> Result<DataKey, KeyError> {
        let refused =
            || KeyError::Refused("the wrapped key does not open under this context".into());
        let rest = wrapped.strip_prefix(LOCAL_WRAP_MAGIC).ok_or_else(refused)?;
        let (&id_len, rest) = rest.split_first().ok_or_else(refused)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + 12 + 32 + 16 {
            return Err(refused());
        }
        let id = std::str::from_utf8(&rest[..id_len]).map_err(|_| refused())?;
        let nonce: [u8; 12] = rest[id_len..id_len + 12]
            .try_into()
            .map_err(|_| refused())?;
        let mut sealed = zeroize::Zeroizing::new(rest[id_len + 12..].to_vec());
        if !self.has(id) {
            self.reload()?;
        }
        let keks = self.keks.read().unwrap_or_else(|p| p.into_inner());
        let kek = keks
            .get(id)
            .ok_or_else(|| KeyError::KeyUnusable(format!("no local KEK {id}")))?;
        let plain = kek
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.canonical().as_bytes()),
                &mut sealed,
            )
            .map_err(|_| refused())?;
        DataKey::from_bytes(plain).ok_or_else(refused)
    }

    fn rewrap(&self, wrapped: &[u8], context: &KeyContext) -> Result<Vec<u8>, KeyError> {
        let key = self.unwrap(wrapped, context)?;
        self.wrap_with(&self.active_id(), &key, context)
    }
}

// ---------------------------------------------------------------------------------------------

/// AWS KMS with a symmetric KEK (`keys.kms_key_id`: key id, ARN or alias).
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
    attempts_max: u32,
    retry_delay_max: Duration,
    calls: ProviderCalls,
    /// `keys.unavailable_for_ms`, and until when operations fail at once after one failed
    /// for want of KMS.
    unavailable_for: Duration,
    unavailable_until: std::sync::Mutex<Option<std::time::Instant>>,
}

fn classify<E>(error: aws_sdk_kms::error::SdkError<E>) -> KeyError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_kms::error::SdkError;
    let text = aws_sdk_kms::error::DisplayErrorContext(&error).to_string();
    match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => KeyError::Unreachable(text),
        SdkError::ResponseError(_) => KeyError::Unreachable(text),
        _ => match error.code() {
            Some(
                "ThrottlingException"
                | "LimitExceededException"
                | "KMSInternalException"
                | "ServiceUnavailable",
            ) => KeyError::Throttled(text),
            Some(
                "DisabledException"
                | "KMSInvalidStateException"
                | "NotFoundException"
                | "KeyUnavailableException",
            ) => KeyError::KeyUnusable(text),
            Some(
                "InvalidCiphertextException" | "IncorrectKeyException" | "ValidationException",
            ) => KeyError::Refused(text),
            _ => match error.raw_response().map(|r| r.status().as_u16()) {
                Some(429 | 500..=599) => KeyError::Throttled(text),
                _ => KeyError::Refused(text),
            },
        },
    }
}

impl AwsKms {
    pub async fn connect(settings: &KeySettings) -> AwsKms {
        let mut loader = crate::aws::defaults()
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_millis(settings.attempt_timeout_ms))
                    .operation_attempt_timeout(Duration::from_millis(settings.attempt_timeout_ms))
                    .build(),
            )
            // paygate's own retry loop (below) does backoff with jitter and counts retries
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if !settings.kms_region.is_empty() {
            loader = loader.region(aws_config::Region::new(settings.kms_region.clone()));
        }
        if !settings.kms_endpoint_url.is_empty() {
            loader = loader.endpoint_url(&settings.kms_endpoint_url);
        }
        let shared = loader.load().await;
        AwsKms {
            client: aws_sdk_kms::Client::new(&shared),
            key_id: settings.kms_key_id.clone(),
            attempts_max: settings.attempts_max,
            retry_delay_max: Duration::from_millis(settings.retry_delay_max_ms),
            calls: ProviderCalls::default(),
            unavailable_for: Duration::from_millis(settings.unavailable_for_ms),
            unavailable_until: std::sync::Mutex::new(None),
        }
    }

    fn context(context: &KeyContext) -> HashMap<String, String> {
        context
            .pairs()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    async fn with_retry<T, F, Fut>(&self, call: F) -> Result<T, KeyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KeyError>>,
    {
        let now = std::time::Instant::now();
        if let Some(until) = *self
            .unavailable_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            if now < until {
                return Err(KeyError::Unreachable(format!(
                    "KMS failed moments ago; not called again for {} ms (keys.unavailable_for_ms)",
                    until.duration_since(now).as_millis()
                )));
            }
        }
        let result = self.with_retry_now(call).await;
        let mut until = self
            .unavailable_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *until = match &result {
            Err(error) if error.is_transient() && !self.unavailable_for.is_zero() => {
                tracing::warn!(%error, for_ms = self.unavailable_for.as_millis(), "KMS unavailable; key operations fail at once for a while");
                Some(std::time::Instant::now() + self.unavailable_for)
            }
            _ => None,
        };
        result
    }

    async fn with_retry_now<T, F, Fut>(&self, mut call: F) -> Result<T, KeyError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KeyError>>,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match call().await {
                Err(error) if error.is_transient() && attempt < self.attempts_max => {
                    self.calls.retries.fetch_add(1, Ordering::Relaxed);
                    let ceiling = Duration::from_millis(25)
                        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
                        .min(self.retry_delay_max);
                    // full jitter
                    let delay = ceiling.mul_f64(rand::thread_rng().gen_range(0.0..=1.0));
                    tracing::warn!(%error, attempt, "key provider call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    async fn generate(&self, context: &KeyContext) -> Result<(DataKey, Vec<u8>), KeyError> {
        let ctx = Self::context(context);
        self.with_retry(|| async {
            let out = self
                .client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(ctx.clone()))
                .send()
                .await
                .map_err(classify)?;
            let plain = out
                .plaintext()
                .and_then(|b| DataKey::from_bytes(b.as_ref()))
                .ok_or_else(|| {
                    KeyError::Refused("GenerateDataKey returned no 32-byte key".into())
                })?;
            let wrapped = out
                .ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or_else(|| KeyError::Refused("GenerateDataKey returned no blob".into()))?;
            Ok((plain, wrapped))
        })
        .await
    }

    async fn unwrap(&self, wrapped: &[u8], context: &KeyContext) -> Result<DataKey, KeyError> {
        let ctx = Self::context(context);
        self.with_retry(|| async {
            let out = self
                .client
                .decrypt()
                .ciphertext_blob(Blob::new(wrapped.to_vec()))
                .set_encryption_context(Some(ctx.clone()))
                .send()
                .await
                .map_err(classify)?;
            out.plaintext()
                .and_then(|b| DataKey::from_bytes(b.as_ref()))
                .ok_or_else(|| KeyError::Refused("Decrypt returned no 32-byte key".into()))
        })
        .await
    }

    async fn rewrap(
        &self,
        wrapped: &[u8],
        context: &KeyContext,
        to_key_id: Option<&str>,
    ) -> Result<Vec<u8>, KeyError> {
        let ctx = Self::context(context);
        let destination = to_key_id.unwrap_or(&self.key_id).to_owned();
        self.with_retry(|| async {
            let out = self
                .client
                .re_encrypt()
                .ciphertext_blob(Blob::new(wrapped.to_vec()))
                .set_source_encryption_context(Some(ctx.clone()))
                .destination_key_id(&destination)
                .set_destination_encryption_context(Some(ctx.clone()))
                .send()
                .await
                .map_err(classify)?;
            out.ciphertext_blob()
                .map(|b| b.as_ref().to_vec())
                .ok_or_else(|| KeyError::Refused("ReEncrypt returned no blob".into()))
        })
        .await
    }
}
