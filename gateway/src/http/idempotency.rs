//! Writes through the HTTP API are idempotent: each takes an `Idempotency-Key` header, and
//! the first final answer to a (caller, key) is kept with the hash of what was asked (method,
//! path and body). The same key and request get that answer again, byte for byte; the same
//! key with another request is refused `IDEMPOTENCY_CONFLICT`. Answers the caller should
//! retry (5xx) are not kept.
//!
//! A write runs as: [`begin`] (a write transaction, and the kept answer if there is one), the
//! handler's changes in that transaction, then [`finish`], which keeps the answer and the
//! audit events in the same commit and returns only once the events are journaled.

use super::auth::Caller;
use super::error::ApiError;
use super::Api;
use crate::store::Batch;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use paygate_core::audit::AuditEvent;
use paygate_core::ErrorCode;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::Arc;

/// The request's `Idempotency-Key`: 1 to 64 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

#[axum::async_trait]
impl FromRequestParts<Arc<Api>> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Api>) -> Result<Self, ApiError> {
        parts
            .headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .filter(|key| {
                (1..=64).contains(&key.len())
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
            })
            .map(|key| IdempotencyKey(key.to_owned()))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::IdempotencyKeyMissing,
                    ErrorCode::IdempotencyKeyMissing.description(),
                )
            })
    }
}

/// One write in progress.
pub struct Write {
    /// The caller's kind and subject ([`Caller::actor`]): kept answers are per caller.
    caller: String,
    key: String,
    request_sha256: Vec<u8>,
    /// `http:<METHOD> <path>`, for the audit record of a refusal kept under the key.
    resource: String,
}

/// What [`begin`] found.
pub enum Begun {
    /// Nothing kept for this key: the handler makes its changes in the transaction.
    New(Batch<'static>, Write),
    /// The answer kept for this key and request.
    Replay(Response),
}

fn request_hash(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in [method.as_bytes(), path.as_bytes()] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.update(body);
    hash.finalize().to_vec()
}

fn replay(status: i64, json: String) -> Response {
    let status = u16::try_from(status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response();
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    response
}

async fn kept(batch: &mut Batch<'_>, write: &Write) -> Result<Option<Response>, ApiError> {
    let row = sqlx::query(
        "SELECT request_sha256, status, response_json FROM http_idempotency
         WHERE caller = $1 AND idempotency_key = $2",
    )
    .bind(&write.caller)
    .bind(&write.key)
    .fetch_optional(&mut **batch)
    .await
    .map_err(ApiError::internal)?;
    let Some(row) = row else { return Ok(None) };
    let hash: Vec<u8> = row.try_get("request_sha256").map_err(ApiError::internal)?;
    if hash != write.request_sha256 {
        return Err(ApiError::new(
            ErrorCode::IdempotencyConflict,
            "this Idempotency-Key was used with another request; use a new key for a new request",
        ));
    }
    let status: i64 = row.try_get("status").map_err(ApiError::internal)?;
    let json: String = row.try_get("response_json").map_err(ApiError::internal)?;
    Ok(Some(replay(status, json)))
}

/// Opens the write's transaction, or finds the answer kept for it.
pub async fn begin(
    api: &Api,
    caller: &Caller,
    key: &IdempotencyKey,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<Begun, ApiError> {
    let write = Write {
        caller: caller.actor(),
        key: key.0.clone(),
        request_sha256: request_hash(method, path, body),
        resource: format!("http:{method} {path}"),
    };
    let mut batch = api.store.begin_batch().await?;
    match kept(&mut batch, &write).await? {
        Some(response) => Ok(Begun::Replay(response)),
        None => Ok(Begun::New(batch, write)),
    }
}

/// Ends a write: keeps its answer (a success, or a refusal that a retry would get again) with
/// its audit events in one commit, journals the events, and answers. A refusal's changes are
/// rolled back first. A retryable failure keeps nothing.
pub async fn finish(
    api: &Api,
    batch: Batch<'static>,
    write: Write,
    answer: Result<(StatusCode, String), ApiError>,
    events: Vec<AuditEvent>,
) -> Result<Response, ApiError> {
    let mut refusal_events = Vec::new();
    let (mut batch, status, json) = match answer {
        Ok((status, json)) => (batch, status, json),
        Err(refused) if refused.code.http_status() >= 500 => return Err(refused),
        Err(refused) => {
            batch.rollback().await.map_err(ApiError::internal)?;
            let status =
                StatusCode::from_u16(refused.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            let json = refused.body_json()?;
            let mut batch = api.store.begin_batch().await?;
            // another request with this key may have finished meanwhile
            if let Some(response) = kept(&mut batch, &write).await? {
                return Ok(response);
            }
            // the refusal is recorded with the answer kept for it (PCI DSS 10.2.1.4, 10.2.1.2)
            api.metrics.count_refusal(refused.code);
            let mut event = AuditEvent::new(
                crate::clock::now_ms(),
                paygate_core::audit::EventType::RequestRejected,
                write.caller.clone(),
                super::origin(super::error::current_peer()),
                paygate_core::audit::AuditOutcome::Failure,
                "http",
                write.resource.clone(),
            );
            event.code = Some(refused.code.as_str().to_owned());
            event.detail = Some(refused.message.clone());
            refusal_events = vec![event];
            (batch, status, json)
        }
    };
    let stored = async {
        sqlx::query(
            "INSERT INTO http_idempotency
                 (caller, idempotency_key, request_sha256, status, response_json, created_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&write.caller)
        .bind(&write.key)
        .bind(&write.request_sha256)
        .bind(i64::from(status.as_u16()))
        .bind(&json)
        .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
        .execute(&mut *batch)
        .await?;
        api.store.add_audit_events(&mut batch, &events).await?;
        api.store
            .add_audit_events(&mut batch, &refusal_events)
            .await?;
        batch.commit().await?;
        Ok::<(), crate::store::StoreError>(())
    }
    .await;
    if let Err(error) = stored {
        // two requests with one key at once: the other kept its answer first; it stands
        let mut again = api.store.begin_snapshot().await?;
        if let Some(response) = kept(&mut again, &write).await? {
            return Ok(response);
        }
        return Err(error.into());
    }
    // audit before answer: the events are in the journal before the caller hears of them
    api.audit
        .drain()
        .await
        .map_err(|_| ApiError::new(ErrorCode::AuditUnavailable, "the change is made; the audit journal is behind: retry with the same Idempotency-Key to get the answer"))?;
    Ok(replay_fresh(status, json))
}

/// What a write made: its answer and the audit events kept with it.
pub struct Written {
    pub status: StatusCode,
    pub json: String,
    pub events: Vec<AuditEvent>,
}

impl Written {
    pub fn new(
        status: StatusCode,
        answer: &impl serde::Serialize,
        events: Vec<AuditEvent>,
    ) -> Result<Written, ApiError> {
        Ok(Written {
            status,
            json: serde_json::to_string(answer).map_err(ApiError::internal)?,
            events,
        })
    }
}

/// [`finish`] for a handler's [`Written`] answer.
pub async fn finish_written(
    api: &Api,
    batch: Batch<'static>,
    write: Write,
    written: Result<Written, ApiError>,
) -> Result<Response, ApiError> {
    let (answer, events) = match written {
        Ok(written) => (Ok((written.status, written.json)), written.events),
        Err(refused) => (Err(refused), Vec::new()),
    };
    finish(api, batch, write, answer, events).await
}

fn replay_fresh(status: StatusCode, json: String) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json,
    )
        .into_response()
}

pub fn routes() -> axum::Router<Arc<Api>> {
    axum::Router::new().route("/v1/requests/:idempotency_key", axum::routing::get(status))
}

/// The first answer to one of the caller's writes, found by its key.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RequestStatus {
    pub idempotency_key: String,
    /// The HTTP status the write was answered with.
    pub status: u16,
    /// The body it was answered with: the resource, or the refusal (`{"error": ...}`).
    #[schema(value_type = Object)]
    pub answer: serde_json::Value,
    /// RFC 3339, UTC.
    pub answered_at: String,
}

/// What became of one of the caller's writes (any token; its own keys only): the answer it
/// got, or `REQUEST_UNKNOWN` (never received, or it failed and may be retried under the same
/// key).
#[utoipa::path(get, path = "/v1/requests/{idempotency_key}",
    params(("idempotency_key" = String, Path, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses((status = 200, description = "the first answer", body = RequestStatus), (status = "4XX", description = "refused", body = super::error::ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = super::error::ErrorBody)))]
pub async fn status(
    axum::extract::State(api): axum::extract::State<Arc<Api>>,
    caller: Caller,
    super::body::PathText(key): super::body::PathText,
) -> Result<axum::Json<RequestStatus>, ApiError> {
    let mut batch = api.store.begin_snapshot().await?;
    let row = sqlx::query(
        "SELECT status, response_json, created_at_ms FROM http_idempotency
         WHERE caller = $1 AND idempotency_key = $2",
    )
    .bind(caller.actor())
    .bind(&key)
    .fetch_optional(&mut *batch)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| {
        ApiError::new(
            ErrorCode::RequestUnknown,
            "no write of yours with this Idempotency-Key is recorded: never received, or failed; send it again under the same key",
        )
    })?;
    let status: i64 = row.try_get("status").map_err(ApiError::internal)?;
    let json: String = row.try_get("response_json").map_err(ApiError::internal)?;
    let at: i64 = row.try_get("created_at_ms").map_err(ApiError::internal)?;
    Ok(axum::Json(RequestStatus {
        idempotency_key: key,
        status: u16::try_from(status).map_err(ApiError::internal)?,
        answer: serde_json::from_str(&json).map_err(ApiError::internal)?,
        answered_at: paygate_core::audit::rfc3339_ms(u64::try_from(at).unwrap_or(0)),
    }))
}
