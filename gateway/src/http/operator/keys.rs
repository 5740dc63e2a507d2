//! Key rotation, and the limits in force.

use super::{authorize, operator_event};
use crate::http::auth::{Caller, Role};
use crate::http::body::Json;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::idempotency::{self, Begun, IdempotencyKey};
use crate::http::{Api, Peer};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use paygate_core::audit::EventType;
use paygate_core::ErrorCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeys {
    /// With `keys.provider = "aws_kms"`: the new KMS key to rewrap under. Local keys: absent.
    #[schema(max_length = 2048)]
    pub to_kms_key: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Rotated {
    /// Data keys rewrapped under the new key-encryption key; no field was decrypted.
    pub rewrapped: u64,
    /// The new local key-encryption key's id, or the KMS key named.
    pub key_encryption_key: String,
}

/// Rotates the key-encryption key and rewraps every data key under it (role `security`):
/// local keys get a new active key; AWS KMS rewraps under `to_kms_key`.
#[utoipa::path(post, path = "/v1/ops/keys/rotate", request_body = RotateKeys,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "rotated", body = Rotated),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn rotate_keys(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: IdempotencyKey,
    body: Json<RotateKeys>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/keys/rotate";
    authorize(&api, &caller, peer, Role::Security, path).await?;
    // rewrapping writes through the pool, so it runs outside the write's transaction: a
    // retry under the same key finds the first answer; two at once both rotate (harmless)
    let (batch, write) =
        match idempotency::begin(&api, &caller, &key, "POST", path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    batch.rollback().await.map_err(ApiError::internal)?;
    let to_kms_key = body.value.to_kms_key.as_deref();
    let rotated = async {
        let new_key = match (api.cipher.provider(), to_kms_key) {
            (crate::keys::provider::KeyProvider::Local(keyring), None) => keyring
                .rotate()
                .map_err(|e| ApiError::new(ErrorCode::KeyUnavailable, e.to_string()))?,
            (crate::keys::provider::KeyProvider::Local(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::MalformedRequest,
                    "keys.provider is local: to_kms_key is for aws_kms",
                ))
            }
            (_, Some(kms_key)) => kms_key.to_owned(),
            (_, None) => {
                return Err(ApiError::new(
                    ErrorCode::MalformedRequest,
                    "keys.provider is aws_kms: name the new key in to_kms_key",
                ))
            }
        };
        let rewrapped = api
            .cipher
            .rewrap_all(to_kms_key)
            .await
            .map_err(|e| ApiError::new(ErrorCode::KeyUnavailable, e.to_string()))?;
        Ok(Rotated {
            rewrapped,
            key_encryption_key: new_key,
        })
    }
    .await;
    let batch = api.store.begin_batch().await?;
    let (answer, events) = match rotated {
        Ok(rotated) => {
            let event = operator_event(
                &caller,
                peer,
                EventType::KeyOperation,
                "data_keys".to_owned(),
                format!(
                    "key-encryption key rotated to {}; {} data keys rewrapped",
                    rotated.key_encryption_key, rotated.rewrapped
                ),
            );
            let json = serde_json::to_string(&rotated).map_err(ApiError::internal)?;
            (Ok((StatusCode::OK, json)), vec![event])
        }
        Err(refused) => (Err(refused), Vec::new()),
    };
    idempotency::finish(&api, batch, write, answer, events).await
}

/// The limits in force, as configured: wallet (per-tier balance, load and velocity), step-up
/// rules, UPI, and the per-device admission limits.
#[derive(Debug, Serialize, ToSchema)]
pub struct Limits {
    #[schema(value_type = Object)]
    pub wallet: serde_json::Value,
    #[schema(value_type = Object)]
    pub identity: serde_json::Value,
    #[schema(value_type = Object)]
    pub upi: serde_json::Value,
    #[schema(value_type = Object)]
    pub admission: serde_json::Value,
    /// Fundings at or above this many minor units wait for a second approver.
    pub funding_approval_min_minor: i64,
}

/// The limits and rules in force (role `operator`).
#[utoipa::path(get, path = "/v1/ops/limits",
    security(("bearer" = [])),
    responses((status = 200, description = "the limits", body = Limits), (status = "4XX", description = "refused", body = ErrorBody)))]
pub async fn limits(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
) -> Result<axum::Json<Limits>, ApiError> {
    authorize(
        &api,
        &caller,
        peer.as_deref().copied(),
        Role::Operator,
        "/v1/ops/limits",
    )
    .await?;
    let settings = &api.gateway_settings;
    Ok(axum::Json(Limits {
        wallet: section(&settings.wallet)?,
        identity: section(&settings.identity)?,
        upi: section(&settings.upi)?,
        admission: serde_json::json!({
            "device_requests_per_s": settings.mqtt.device_requests_per_s,
            "device_requests_burst": settings.mqtt.device_requests_burst,
            "device_inflight_max": settings.mqtt.device_inflight_max,
        }),
        funding_approval_min_minor: settings.http.operator.funding_approval_min_minor,
    }))
}

fn section(settings: &impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(settings).map_err(ApiError::internal)
}
