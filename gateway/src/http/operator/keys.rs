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
use paygate_core::audit::{AuditOutcome, EventType};
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
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<RotateKeys>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/keys/rotate";
    authorize(&api, &caller, peer, Role::Security, path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    // Rewrapping writes through the pool, so it runs outside the write's transaction. One
    // rotation at a time, each in its own task: a request timing out does not cut it short,
    // and a second request under the same key waits and gets the first one's answer.
    let api = api.clone();
    let context = crate::http::error::REQUEST.try_with(Clone::clone).ok();
    let work = async move {
        let _one_at_a_time = api.rotation.lock().await;
        let (batch, write) =
            match idempotency::begin(&api, &caller, &key, "POST", path, &body.bytes).await? {
                Begun::Replay(response) => return Ok(response),
                Begun::New(batch, write) => (batch, write),
            };
        batch.rollback().await.map_err(ApiError::internal)?;
        let record = async |outcome: AuditOutcome, code: Option<ErrorCode>, what: String| {
            let mut event = operator_event(
                &caller,
                peer,
                EventType::KeyOperation,
                "data_keys".to_owned(),
                what,
            );
            event.outcome = outcome;
            event.code = code.map(|c| c.as_str().to_owned());
            api.audit.record(event).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the rotation could not be audited; nothing was rotated",
                )
            })
        };
        let to_kms_key = body.value.to_kms_key.as_deref();
        if let Err(refused) = fits_provider(&api, to_kms_key) {
            let batch = api.store.begin_batch().await?;
            return idempotency::finish(&api, batch, write, Err(refused), Vec::new()).await;
        }
        // recorded before any key changes, so a rotation cut short by a crash is still seen
        record(
            AuditOutcome::Success,
            None,
            "key-encryption key rotation begun".to_owned(),
        )
        .await?;
        let rotated = rotate(&api, to_kms_key).await;
        let batch = api.store.begin_batch().await?;
        match rotated {
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
                idempotency::finish(&api, batch, write, Ok((StatusCode::OK, json)), vec![event])
                    .await
            }
            Err(refused) => {
                if refused.code.http_status() >= 500 {
                    // not kept (a retry may succeed), but seen
                    record(
                        AuditOutcome::Failure,
                        Some(refused.code),
                        format!("key-encryption key rotation failed: {}", refused.message),
                    )
                    .await?;
                }
                idempotency::finish(&api, batch, write, Err(refused), Vec::new()).await
            }
        }
    };
    // the task answers with this request's id, as the handler would
    let rotation = tokio::spawn(async move {
        match context {
            Some(context) => crate::http::error::REQUEST.scope(context, work).await,
            None => work.await,
        }
    });
    rotation.await.map_err(ApiError::internal)?
}

/// Whether the request names a KMS key exactly when the provider is KMS.
fn fits_provider(api: &Api, to_kms_key: Option<&str>) -> Result<(), ApiError> {
    let local = matches!(
        api.cipher.provider(),
        crate::keys::provider::KeyProvider::Local(_)
    );
    match (local, to_kms_key) {
        (true, Some(_)) => Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "keys.provider is local: to_kms_key is for aws_kms",
        )),
        (false, None) => Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "keys.provider is aws_kms: name the new key in to_kms_key",
        )),
        _ => Ok(()),
    }
}

/// A new key-encryption key, and every data key rewrapped under it.
async fn rotate(api: &Api, to_kms_key: Option<&str>) -> Result<Rotated, ApiError> {
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
    responses((status = 200, description = "the limits", body = Limits), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
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
