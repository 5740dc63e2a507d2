//! Device enrolment and suspension.

use super::{account_id, authorize, device_id, operator_event, signing_key};
use crate::http::auth::{Caller, Role};
use crate::http::body::{Json, PathText};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::idempotency::{self, Begun, IdempotencyKey, Written};
use crate::http::{Api, Peer};
use crate::ledger::{self, AccountKind};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use paygate_core::audit::EventType;
use paygate_core::{DeviceId, ErrorCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolDevice {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub device_id: String,
    /// The wallet (or agent float) account the device pays from; it must exist.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub account_id: String,
    /// `ed25519` or `es256`.
    pub algorithm: String,
    /// Base64: Ed25519 32 bytes, ES256 the 65-byte uncompressed point.
    pub public_key: String,
}

/// A device's enrolment.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeviceView {
    pub device_id: String,
    pub account_id: String,
    pub algorithm: String,
    /// `active` or `suspended`.
    pub status: String,
    /// Revoked for good: suspended, and never active again under this id.
    pub revoked: bool,
}

/// Enrols a device's signing key on an existing account (role `operator`); a device
/// enrolled already is refused (suspend it, or re-key it through the CLI's bundle).
#[utoipa::path(post, path = "/v1/ops/devices", request_body = EnrolDevice,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "enrolled", body = DeviceView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn enrol_device(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<EnrolDevice>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/devices";
    authorize(&api, &caller, peer, Role::Operator, path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let asked = &body.value;
    let (mut owned, write) =
        match idempotency::begin(&api, &caller, &key, "POST", path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let batch = &mut owned;
    let written = async {
        let device = device_id(&asked.device_id)?;
        let account = account_id("account id", &asked.account_id)?;
        let (algorithm, public_key) = signing_key(&asked.algorithm, &asked.public_key)?;
        let holder = ledger::account(batch, &account)
            .await?
            .filter(|a| a.active && matches!(a.kind, AccountKind::Wallet | AccountKind::Agent))
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownWallet, "no wallet or agent account has this id"))?;
        let added = sqlx::query(
            "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, status, enrolled_at_ms)
             VALUES ($1, $2, $3, $4, 'active', $5) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(device.as_str())
        .bind(algorithm.name())
        .bind(&public_key)
        .bind(account.as_str())
        .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
        .execute(&mut **batch)
        .await
        .map_err(ApiError::internal)?
        .rows_affected();
        if added == 0 {
            return Err(ApiError::new(
                ErrorCode::AccountExists,
                "a device with this id is enrolled already",
            ));
        }
        let event = operator_event(
            &caller,
            peer,
            EventType::DeviceEnrolled,
            format!("device:{device}"),
            format!("enrolled on {} account {account} ({})", holder.kind.as_str(), algorithm.name()),
        );
        let view = DeviceView {
            device_id: device.as_str().to_owned(),
            account_id: account.as_str().to_owned(),
            algorithm: algorithm.name().to_owned(),
            status: "active".to_owned(),
            revoked: false,
        };
        Written::new(StatusCode::CREATED, &view, vec![event])
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetDeviceStatus {
    pub status: DeviceStatus,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Suspended,
}

/// Suspends a device or makes it active again (role `operator`). A suspension takes effect
/// at once: the device's open sessions are closed (it is told `DEVICE_NOT_ENROLLED`), it cannot
/// connect again, and its requests verified from then on are refused. A revoked device cannot
/// be made active (`DEVICE_REVOKED`).
#[utoipa::path(put, path = "/v1/ops/devices/{device_id}/status", request_body = SetDeviceStatus,
    params(("device_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "changed", body = DeviceView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn set_device_status(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(device): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<SetDeviceStatus>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = format!("/v1/ops/devices/{device}/status");
    authorize(&api, &caller, peer, Role::Operator, &path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let change = match body.value.status {
        DeviceStatus::Active => Change::Activate,
        DeviceStatus::Suspended => Change::Suspend,
    };
    let asked = Asked {
        caller,
        peer,
        key,
        method: "PUT",
        path,
        body: body.bytes.to_vec(),
    };
    apply(&api, asked, device, change, None).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Revoke {
    /// Why, for the audit trail (a stolen terminal, a decommissioned one).
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// Revokes a device for good (role `operator`): as a suspension, at once, and never active
/// again under this id (a replacement terminal enrols under a new one). Revoking a revoked
/// device changes nothing.
#[utoipa::path(post, path = "/v1/ops/devices/{device_id}/revoke", request_body = Revoke,
    params(("device_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "revoked", body = DeviceView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn revoke_device(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(device): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<Revoke>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = format!("/v1/ops/devices/{device}/revoke");
    authorize(&api, &caller, peer, Role::Operator, &path).await?;
    let (key, body) = (key?, body?);
    let reason = body.value.reason.clone().unwrap_or_default();
    if reason.chars().count() > 500 || reason.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "the reason is at most 500 printable characters",
        ));
    }
    let asked = Asked {
        caller,
        peer,
        key,
        method: "POST",
        path,
        body: body.bytes.to_vec(),
    };
    apply(&api, asked, device, Change::Revoke, Some(reason)).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Activate,
    Suspend,
    Revoke,
}

/// One operator write as asked.
struct Asked {
    caller: Caller,
    peer: Option<Peer>,
    key: IdempotencyKey,
    method: &'static str,
    path: String,
    body: Vec<u8>,
}

/// [`change_status`] in a task of its own: a request that times out or whose client goes
/// away after the commit still has the device's sessions closed.
async fn apply(
    api: &Arc<Api>,
    asked: Asked,
    device: String,
    change: Change,
    reason: Option<String>,
) -> Result<Response, ApiError> {
    let api = api.clone();
    let context = crate::http::error::REQUEST.try_with(Clone::clone).ok();
    let work = async move { change_status(&api, &asked, &device, change, reason).await };
    let task = tokio::spawn(async move {
        match context {
            Some(context) => crate::http::error::REQUEST.scope(context, work).await,
            None => work.await,
        }
    });
    task.await.map_err(ApiError::internal)?
}

/// Tells the pipeline's cache and the front: from the next request on, and its open sessions.
fn take_effect(api: &Api, device: &DeviceId, change: Change) {
    api.devices.forget(device);
    if change != Change::Activate {
        let _ = api.disconnects.send(device.clone());
    }
}

async fn change_status(
    api: &Api,
    asked: &Asked,
    device: &str,
    change: Change,
    reason: Option<String>,
) -> Result<Response, ApiError> {
    let parsed = device_id(device);
    let (mut owned, write) = match idempotency::begin(
        api,
        &asked.caller,
        &asked.key,
        asked.method,
        &asked.path,
        &asked.body,
    )
    .await?
    {
        Begun::Replay(response) => {
            // a retry of a change whose first answer was lost: its effect is made again
            if let Ok(device) = &parsed {
                take_effect(api, device, change);
            }
            return Ok(response);
        }
        Begun::New(batch, write) => (batch, write),
    };
    let batch = &mut owned;
    let written = async {
        let device = parsed.clone()?;
        let sql = match change {
            Change::Activate => {
                "UPDATE devices SET status = 'active' WHERE device_id = $1 AND revoked_at_ms IS NULL
                 RETURNING wallet_account_id, algorithm, status, revoked_at_ms"
            }
            Change::Suspend => {
                "UPDATE devices SET status = 'suspended' WHERE device_id = $1
                 RETURNING wallet_account_id, algorithm, status, revoked_at_ms"
            }
            Change::Revoke => {
                "UPDATE devices SET status = 'suspended', revoked_at_ms = COALESCE(revoked_at_ms, $2)
                 WHERE device_id = $1
                 RETURNING wallet_account_id, algorithm, status, revoked_at_ms"
            }
        };
        let mut query = sqlx::query(sql).bind(device.as_str());
        if change == Change::Revoke {
            query = query.bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX));
        }
        let Some(row) = query
            .fetch_optional(&mut **batch)
            .await
            .map_err(ApiError::internal)?
        else {
            let enrolled: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM devices WHERE device_id = $1")
                    .bind(device.as_str())
                    .fetch_optional(&mut **batch)
                    .await
                    .map_err(ApiError::internal)?;
            return Err(match enrolled {
                Some(_) => ApiError::new(
                    ErrorCode::DeviceRevoked,
                    "the device is revoked; a replacement enrols under a new device id",
                ),
                None => ApiError::new(ErrorCode::DeviceNotEnrolled, "no device has this id"),
            });
        };
        let revoked_at: Option<i64> = row.try_get("revoked_at_ms").map_err(ApiError::internal)?;
        let view = DeviceView {
            device_id: device.as_str().to_owned(),
            account_id: row
                .try_get("wallet_account_id")
                .map_err(ApiError::internal)?,
            algorithm: row.try_get("algorithm").map_err(ApiError::internal)?,
            status: row.try_get("status").map_err(ApiError::internal)?,
            revoked: revoked_at.is_some(),
        };
        let what = match (change, reason.as_deref()) {
            (Change::Revoke, Some(reason)) if !reason.is_empty() => {
                format!("device revoked ({reason})")
            }
            (Change::Revoke, _) => "device revoked".to_owned(),
            _ => format!("device status set to {}", view.status),
        };
        let event = operator_event(
            &asked.caller,
            asked.peer,
            EventType::CredentialChanged,
            format!("device:{device}"),
            what,
        );
        Written::new(StatusCode::OK, &view, vec![event])
    }
    .await;
    let answered = idempotency::finish_written(api, owned, write, written).await;
    // the pipeline's cache forgets the device (a lookup in flight does not cache what it
    // read), and the front closes its sessions
    if let Ok(device) = &parsed {
        take_effect(api, device, change);
    }
    answered
}
