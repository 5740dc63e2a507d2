//! Field encryption, blind indexes, the data-key cache and rotation.
//!
//! A field value is sealed with AES-256-GCM (ring) under a data key made for its table and field
//! (`field-encryption` context), with `paygate-field-v1|TABLE|FIELD|RECORD` as additional data,
//! so a ciphertext moved to another field or record does not open. Layout:
//! `PGF1 | data key id (36 bytes) | nonce (12) | ciphertext and tag`.
//!
//! A lookup by a sensitive value (phone, VPA) uses HMAC-SHA256 of its normalised form under a
//! `blind-index` data key of that field; the plaintext is never stored or compared.
//!
//! The cache keeps unwrapped keys: an encryption key per field for at most
//! `keys.data_key_age_max_ms` and `keys.data_key_uses_max` uses (then a new data key is made,
//! one provider call), decryption keys by id up to `keys.cache_entries_max` entries. At load the
//! provider is called about once per new data key, not per transaction.

use super::provider::KeyProvider;
use super::{DataKey, KeyContext, KeyError};
use crate::config::KeySettings;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

const FIELD_MAGIC: &[u8; 4] = b"PGF1";
const KEY_ID_BYTES: usize = 36;
pub const PURPOSE_FIELD: &str = "field-encryption";
pub const PURPOSE_INDEX: &str = "blind-index";

struct EncryptionKey {
    id: String,
    key: Arc<LessSafeKey>,
    made: Instant,
    uses: u64,
}

struct CachedKey {
    context: KeyContext,
    key: Arc<LessSafeKey>,
    loaded: Instant,
}

pub struct FieldCipher {
    provider: KeyProvider,
    pool: AnyPool,
    settings: KeySettings,
    encrypting: Mutex<HashMap<KeyContext, EncryptionKey>>,
    decrypting: Mutex<HashMap<String, CachedKey>>,
    indexing: Mutex<HashMap<KeyContext, hmac::Key>>,
    random: SystemRandom,
}

fn aead_key(key: &DataKey) -> Result<LessSafeKey, KeyError> {
    UnboundKey::new(&AES_256_GCM, key.bytes())
        .map(LessSafeKey::new)
        .map_err(|_| KeyError::Store("data key size".into()))
}

fn field_aad(table: &str, field: &str, record: &str) -> String {
    format!("paygate-field-v1|{table}|{field}|{record}")
}

fn store_error(error: sqlx::Error) -> KeyError {
    KeyError::Store(error.to_string())
}

impl FieldCipher {
    pub fn new(provider: KeyProvider, pool: AnyPool, settings: KeySettings) -> FieldCipher {
        FieldCipher {
            provider,
            pool,
            settings,
            encrypting: Mutex::new(HashMap::new()),
            decrypting: Mutex::new(HashMap::new()),
            indexing: Mutex::new(HashMap::new()),
            random: SystemRandom::new(),
        }
    }

    pub fn provider(&self) -> &KeyProvider {
        &self.provider
    }

    fn context(&self, purpose: &str, table: &str, field: &str) -> KeyContext {
        KeyContext::new(purpose, table, field, &self.settings.tenant)
    }

    /// Makes a data key for `context`, wraps it, and records the wrapped form.
    async fn new_data_key(&self, context: &KeyContext) -> Result<(String, DataKey), KeyError> {
        let (key, wrapped) = self.provider.generate(context).await?;
        let id = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO data_keys (data_key_id, purpose, context_json, wrapped, kek_id, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(&context.purpose)
        .bind(context.to_json())
        .bind(&wrapped)
        .bind(self.provider.active_kek_id())
        .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok((id, key))
    }

    /// Seals `plaintext` for one field of one record.
    pub async fn encrypt(
        &self,
        table: &str,
        field: &str,
        record: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyError> {
        let context = self.context(PURPOSE_FIELD, table, field);
        let (id, key) = {
            let mut cache = self.encrypting.lock().await;
            let fresh = cache.get(&context).is_some_and(|k| {
                k.uses < self.settings.data_key_uses_max
                    && k.made.elapsed().as_millis() < u128::from(self.settings.data_key_age_max_ms)
            });
            if !fresh {
                let (id, data_key) = self.new_data_key(&context).await?;
                let key = Arc::new(aead_key(&data_key)?);
                self.remember(&id, &context, key.clone()).await;
                cache.insert(
                    context.clone(),
                    EncryptionKey {
                        id,
                        key,
                        made: Instant::now(),
                        uses: 0,
                    },
                );
            }
            let entry = cache
                .get_mut(&context)
                .ok_or_else(|| KeyError::Store("encryption key cache".into()))?;
            entry.uses += 1;
            (entry.id.clone(), entry.key.clone())
        };
        let mut nonce = [0u8; 12];
        self.random
            .fill(&mut nonce)
            .map_err(|_| KeyError::Store("the system random generator failed".into()))?;
        let mut sealed = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(field_aad(table, field, record).as_bytes()),
            &mut sealed,
        )
        .map_err(|_| KeyError::Store("sealing failed".into()))?;
        let mut out = Vec::with_capacity(4 + KEY_ID_BYTES + 12 + sealed.len());
        out.extend_from_slice(FIELD_MAGIC);
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a field sealed by [`FieldCipher::encrypt`] for the same table, field and record.
    pub async fn decrypt(
        &self,
        table: &str,
        field: &str,
        record: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyError> {
        let refused = |why: &str| KeyError::Refused(why.to_owned());
        let rest = sealed
            .strip_prefix(FIELD_MAGIC)
            .ok_or_else(|| refused("not a paygate field ciphertext"))?;
        if rest.len() < KEY_ID_BYTES + 12 + 16 {
            return Err(refused("field ciphertext too short"));
        }
        let id = std::str::from_utf8(&rest[..KEY_ID_BYTES]).map_err(|_| refused("bad key id"))?;
        let nonce: [u8; 12] = rest[KEY_ID_BYTES..KEY_ID_BYTES + 12]
            .try_into()
            .map_err(|_| refused("bad nonce"))?;
        let expected = self.context(PURPOSE_FIELD, table, field);
        let key = self.decryption_key(id, &expected).await?;
        let mut buffer = zeroize::Zeroizing::new(rest[KEY_ID_BYTES + 12..].to_vec());
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field_aad(table, field, record).as_bytes()),
                &mut buffer,
            )
            .map_err(|_| refused("the field does not open for this table, field and record"))?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }

    async fn remember(&self, id: &str, context: &KeyContext, key: Arc<LessSafeKey>) {
        let mut cache = self.decrypting.lock().await;
        if cache.len() >= self.settings.cache_entries_max {
            let oldest = cache
                .iter()
                .min_by_key(|(_, k)| k.loaded)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            id.to_owned(),
            CachedKey {
                context: context.clone(),
                key,
                loaded: Instant::now(),
            },
        );
    }

    async fn decryption_key(
        &self,
        id: &str,
        expected: &KeyContext,
    ) -> Result<Arc<LessSafeKey>, KeyError> {
        {
            let cache = self.decrypting.lock().await;
            if let Some(hit) = cache.get(id) {
                let young = hit.loaded.elapsed().as_millis()
                    < u128::from(self.settings.data_key_age_max_ms);
                if young {
                    if &hit.context != expected {
                        return Err(KeyError::Refused(
                            "the ciphertext belongs to another field".into(),
                        ));
                    }
                    return Ok(hit.key.clone());
                }
            }
        }
        let row = sqlx::query("SELECT context_json, wrapped FROM data_keys WHERE data_key_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?
            .ok_or_else(|| KeyError::Refused("unknown data key".into()))?;
        let context_json: String = row.try_get("context_json").map_err(store_error)?;
        let wrapped: Vec<u8> = row.try_get("wrapped").map_err(store_error)?;
        let context = KeyContext::from_json(&context_json)
            .ok_or_else(|| KeyError::Store("a data key row has a bad context".into()))?;
        if &context != expected {
            return Err(KeyError::Refused(
                "the ciphertext belongs to another field".into(),
            ));
        }
        let data_key = self.provider.unwrap(&wrapped, &context).await?;
        let key = Arc::new(aead_key(&data_key)?);
        self.remember(id, &context, key.clone()).await;
        Ok(key)
    }

    /// The keyed blind index of a normalised value of one field.
    pub async fn blind_index(
        &self,
        table: &str,
        field: &str,
        normalised: &str,
    ) -> Result<[u8; 32], KeyError> {
        let context = self.context(PURPOSE_INDEX, table, field);
        let mut cache = self.indexing.lock().await;
        if !cache.contains_key(&context) {
            let row = sqlx::query(
                "SELECT wrapped FROM data_keys WHERE purpose = $1 AND context_json = $2
                 ORDER BY created_at_ms LIMIT 1",
            )
            .bind(PURPOSE_INDEX)
            .bind(context.to_json())
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
            let data_key = match row {
                Some(row) => {
                    let wrapped: Vec<u8> = row.try_get("wrapped").map_err(store_error)?;
                    self.provider.unwrap(&wrapped, &context).await?
                }
                None => self.new_data_key(&context).await?.1,
            };
            cache.insert(
                context.clone(),
                hmac::Key::new(hmac::HMAC_SHA256, data_key.bytes()),
            );
        }
        let key = cache
            .get(&context)
            .ok_or_else(|| KeyError::Store("index key cache".into()))?;
        let tag = hmac::sign(key, normalised.as_bytes());
        tag.as_ref()
            .try_into()
            .map_err(|_| KeyError::Store("hmac size".into()))
    }

    /// Rotation: rewraps every data key under the active KEK (or `to_key_id` for KMS). The
    /// fields are not touched and keep decrypting; a running gateway keeps its cached keys.
    /// Returns how many data keys were rewrapped.
    pub async fn rewrap_all(&self, to_key_id: Option<&str>) -> Result<u64, KeyError> {
        let rows = sqlx::query("SELECT data_key_id, context_json, wrapped FROM data_keys")
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        let kek_id = to_key_id
            .map(str::to_owned)
            .unwrap_or_else(|| self.provider.active_kek_id());
        let mut count = 0;
        for row in rows {
            let id: String = row.try_get("data_key_id").map_err(store_error)?;
            let context_json: String = row.try_get("context_json").map_err(store_error)?;
            let wrapped: Vec<u8> = row.try_get("wrapped").map_err(store_error)?;
            let context = KeyContext::from_json(&context_json)
                .ok_or_else(|| KeyError::Store(format!("data key {id} has a bad context")))?;
            let rewrapped = self.provider.rewrap(&wrapped, &context, to_key_id).await?;
            sqlx::query(
                "UPDATE data_keys SET wrapped = $1, kek_id = $2, rewrapped_at_ms = $3 WHERE data_key_id = $4",
            )
            .bind(&rewrapped)
            .bind(&kek_id)
            .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
            .bind(&id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
            count += 1;
        }
        Ok(count)
    }
}
