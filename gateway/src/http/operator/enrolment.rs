//! Enrolment with a one-time token: an operator issues a token for a device id and the account
//! it will pay from (shown once; only its SHA-256 is kept); the device, which made its own
//! signing key, enrols that key with the token at `POST /v1/enrolments`. The gateway never
//! sees a device's private key. A token is single use, expires, and is bound to its device id.

use super::{account_id, authorize, device_id, operator_event, signing_key};
use crate::http::auth::{Caller, Role};
use crate::http::body::Json;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::idempotency::{self, Begun, IdempotencyKey, Written};
use crate::http::{origin, Api, Peer};
use crate::ledger::{self, AccountKind};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use base64::Engine;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::ErrorCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueToken {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub device_id: String,
    /// The wallet or agent account the device will pay from; it must exist.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub account_id: String,
    /// How long the token is good for, 60 s to a day (default an hour).
    #[schema(minimum = 60, maximum = 86400)]
    pub lifetime_s: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedToken {
    /// Shown once: give it to the device (its installer); only its hash is kept.
    pub token: String,
    pub device_id: String,
    pub account_id: String,
    /// RFC 3339, UTC.
    pub expires_at: String,
}

fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Issues a one-time enrolment token for a device id and its account (role `operator`).
#[utoipa::path(post, path = "/v1/ops/enrolment-tokens", request_body = IssueToken,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "issued", body = IssuedToken),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn issue_token(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<IssueToken>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/enrolment-tokens";
    authorize(&api, &caller, peer, Role::Operator, path).await?;
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
        let lifetime_s = asked.lifetime_s.unwrap_or(3_600);
        if !(60..=86_400).contains(&lifetime_s) {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                "lifetime_s is 60 to 86400",
            ));
        }
        ledger::account(batch, &account)
            .await?
            .filter(|a| a.active && matches!(a.kind, AccountKind::Wallet | AccountKind::Agent))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownWallet,
                    "no active wallet or agent account has this id",
                )
            })?;
        let enrolled: Option<i64> = sqlx::query_scalar("SELECT 1 FROM devices WHERE device_id = $1")
            .bind(device.as_str())
            .fetch_optional(&mut **batch)
            .await
            .map_err(ApiError::internal)?;
        if enrolled.is_some() {
            return Err(ApiError::new(
                ErrorCode::AccountExists,
                "a device with this id is enrolled already",
            ));
        }
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(rand::random::<[u8; 32]>());
        let now = crate::clock::now_ms();
        let expires = now + lifetime_s * 1_000;
        sqlx::query(
            "INSERT INTO enrolment_tokens (token_sha256, device_id, account_id, issued_by, issued_at_ms, expires_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash(&token))
        .bind(device.as_str())
        .bind(account.as_str())
        .bind(caller.actor())
        .bind(i64::try_from(now).unwrap_or(i64::MAX))
        .bind(i64::try_from(expires).unwrap_or(i64::MAX))
        .execute(&mut **batch)
        .await
        .map_err(ApiError::internal)?;
        let mut event = operator_event(
            &caller,
            peer,
            EventType::CredentialChanged,
            format!("device:{device}"),
            format!("one-time enrolment token issued for account {account}, good for {lifetime_s} s"),
        );
        event.device_id = Some(device.as_str().to_owned());
        let issued = IssuedToken {
            token,
            device_id: device.as_str().to_owned(),
            account_id: account.as_str().to_owned(),
            expires_at: paygate_core::audit::rfc3339_ms(expires),
        };
        Written::new(StatusCode::CREATED, &issued, vec![event])
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrol {
    /// The one-time token the operator issued for this device.
    #[schema(max_length = 128)]
    pub token: String,
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub device_id: String,
    /// `ed25519` or `es256`.
    pub algorithm: String,
    /// Base64 of the public key the device made: Ed25519 32 bytes, ES256 the 65-byte point.
    #[schema(max_length = 128)]
    pub public_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Enrolled {
    pub device_id: String,
    pub account_id: String,
    pub algorithm: String,
}

/// A device enrols the signing key it made, with its one-time token (no bearer token: the
/// enrolment token is the credential). The same device and key again with the same token get
/// the first answer; anything else with a used, expired, unknown or another device's token is
/// refused and changes nothing.
#[utoipa::path(post, path = "/v1/enrolments", request_body = Enrol,
    responses(
        (status = 201, description = "enrolled", body = Enrolled),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same token", body = ErrorBody),
    ))]
pub async fn enrol(
    State(api): State<Arc<Api>>,
    peer: Option<Extension<Peer>>,
    body: Json<Enrol>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let asked = &body.value;
    let answer = enrol_with_token(&api, asked).await;
    if let Err(refused) = &answer {
        if refused.code.http_status() < 500 {
            api.metrics.count_refusal(refused.code);
            let mut event = AuditEvent::new(
                crate::clock::now_ms(),
                EventType::AccessRefused,
                "unauthenticated",
                origin(peer.map(|p| p.0)),
                AuditOutcome::Failure,
                "http",
                "http:/v1/enrolments",
            );
            event.code = Some(refused.code.as_str().to_owned());
            event.detail = Some(refused.message.clone());
            api.audit.record(event).await.map_err(|_| {
                ApiError::new(
                    ErrorCode::AuditUnavailable,
                    "the refusal could not be audited; nothing was enrolled",
                )
            })?;
        }
    }
    let (status, enrolled, fresh) = answer?;
    if fresh {
        // the enrolment is committed with its outbox record; the journal takes it before the
        // device hears of it
        api.audit.drain().await.map_err(|_| {
            ApiError::new(
                ErrorCode::AuditUnavailable,
                "the device is enrolled; the audit journal is behind: retry with the same token to get the answer",
            )
        })?;
    }
    Ok((status, axum::Json(enrolled)).into_response())
}

/// The answer, and whether this call enrolled the device (not a retry's replay).
type EnrolAnswer = (StatusCode, Enrolled, bool);

async fn enrol_with_token(api: &Api, asked: &Enrol) -> Result<EnrolAnswer, ApiError> {
    let invalid = |why: &str| ApiError::new(ErrorCode::TokenInvalid, why.to_owned());
    let device = device_id(&asked.device_id)?;
    let (algorithm, public_key) = signing_key(&asked.algorithm, &asked.public_key)?;
    let mut batch = api.store.begin_batch().await?;
    let row = sqlx::query(
        "SELECT device_id, account_id, issued_by, expires_at_ms, used_at_ms, public_key
         FROM enrolment_tokens WHERE token_sha256 = $1",
    )
    .bind(token_hash(&asked.token))
    .fetch_optional(&mut *batch)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| invalid("the enrolment token is not one an operator issued"))?;
    let bound: String = row.try_get("device_id").map_err(ApiError::internal)?;
    let account: String = row.try_get("account_id").map_err(ApiError::internal)?;
    let issued_by: String = row.try_get("issued_by").map_err(ApiError::internal)?;
    let expires: i64 = row.try_get("expires_at_ms").map_err(ApiError::internal)?;
    let used: Option<i64> = row.try_get("used_at_ms").map_err(ApiError::internal)?;
    let used_key: Option<Vec<u8>> = row.try_get("public_key").map_err(ApiError::internal)?;
    if bound != device.as_str() {
        return Err(invalid("the enrolment token is for another device"));
    }
    let enrolled = Enrolled {
        device_id: bound,
        account_id: account.clone(),
        algorithm: algorithm.name().to_owned(),
    };
    if used.is_some() {
        // a retry whose answer was lost gets it again; any other use of a used token is refused
        if used_key.as_deref() == Some(public_key.as_slice()) {
            return Ok((StatusCode::CREATED, enrolled, false));
        }
        return Err(invalid("the enrolment token was used already"));
    }
    let now = crate::clock::now_ms();
    if i64::try_from(now).unwrap_or(i64::MAX) >= expires {
        return Err(ApiError::new(
            ErrorCode::TokenExpired,
            "the enrolment token has expired; ask the operator for a new one",
        ));
    }
    let added = sqlx::query(
        "INSERT INTO devices (device_id, algorithm, public_key, wallet_account_id, status, enrolled_at_ms)
         VALUES ($1, $2, $3, $4, 'active', $5) ON CONFLICT (device_id) DO NOTHING",
    )
    .bind(device.as_str())
    .bind(algorithm.name())
    .bind(&public_key)
    .bind(&account)
    .bind(i64::try_from(now).unwrap_or(i64::MAX))
    .execute(&mut *batch)
    .await
    .map_err(ApiError::internal)?
    .rows_affected();
    if added == 0 {
        return Err(ApiError::new(
            ErrorCode::AccountExists,
            "a device with this id is enrolled already",
        ));
    }
    sqlx::query(
        "UPDATE enrolment_tokens SET used_at_ms = $1, public_key = $2 WHERE token_sha256 = $3",
    )
    .bind(i64::try_from(now).unwrap_or(i64::MAX))
    .bind(&public_key)
    .bind(token_hash(&asked.token))
    .execute(&mut *batch)
    .await
    .map_err(ApiError::internal)?;
    let mut event = AuditEvent::new(
        now,
        EventType::DeviceEnrolled,
        format!("device:{device}"),
        origin(crate::http::error::current_peer()),
        AuditOutcome::Success,
        "http",
        format!("device:{device}"),
    );
    event.device_id = Some(device.as_str().to_owned());
    event.detail = Some(format!(
        "enrolled its own {} key on account {account} with a one-time token issued by {issued_by}",
        algorithm.name()
    ));
    api.store.add_audit_events(&mut batch, &[event]).await?;
    batch.commit().await.map_err(ApiError::internal)?;
    api.devices.forget(&device);
    Ok((StatusCode::CREATED, enrolled, true))
}
