//! The auditors' reads (`audit:read`, and nothing else may be done with that scope): search
//! and export, verification, a transaction's inclusion proofs, the audit public key.
//!
//! Every read is recorded in the audit trail, with the auditor's identity, before it is served
//! (PCI DSS 10.2.1.3). The reads work on the write-once store: a local copy of it
//! (`<data_dir>/http-audit-copy`) is brought up to date first, then verified whole, as
//! `paygate audit verify` does offline. What is still in the journal, not yet sealed and
//! shipped, is not in the answers.

use super::auth::{Caller, Scope};
use super::body::{Json, PathText};
use super::error::{ApiError, ErrorBody};
use super::{origin, Api, Peer};
use crate::audit::archive;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use paygate_core::audit::{parse_rfc3339_ms, AuditEvent, AuditOutcome, EventType, RecordProof};
use paygate_core::ErrorCode;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/audit/records", get(records))
        .route("/v1/audit/verify", post(verify))
        .route("/v1/audit/transactions/:tx_id/proofs", get(proofs))
        .route("/v1/audit/public-key", get(public_key))
}

/// Records the read, then brings the copy up to date. One read at a time: the copy is shared.
async fn audited_copy<'a>(
    api: &'a Api,
    caller: &Caller,
    peer: Option<Peer>,
    what: String,
) -> Result<(PathBuf, tokio::sync::MutexGuard<'a, ()>), ApiError> {
    caller.require(Scope::AuditRead)?;
    let mut event = AuditEvent::new(
        crate::clock::now_ms(),
        EventType::AuditLogRead,
        caller.actor(),
        origin(peer.map(|p| p.0)),
        AuditOutcome::Success,
        "http",
        "audit-log",
    );
    event.detail = Some(what);
    api.audit.record(event).await.map_err(|_| {
        ApiError::new(
            ErrorCode::AuditUnavailable,
            "this read cannot be recorded in the audit trail now, so it is not served",
        )
    })?;
    let guard = api.audit_copy_lock.lock().await;
    let dir = api.gateway_settings.data_dir.join("http-audit-copy");
    let worm = crate::audit::worm::AnyWorm::audit_store(&api.gateway_settings)
        .await
        .map_err(ApiError::internal)?;
    archive::sync(&worm, &dir).await.map_err(|error| {
        tracing::warn!(%error, "the audit store could not be read");
        ApiError::new(
            ErrorCode::AuditUnavailable,
            "the write-once audit store cannot be read now; retry later",
        )
    })?;
    Ok((dir, guard))
}

fn audit_key(api: &Api) -> (paygate_core::envelope::VerifyingKey, String) {
    let key = api.audit.signing_key();
    (key.verifying_key(), key.key_id().to_owned())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecordFilter {
    /// From this RFC 3339 time (inclusive).
    pub from: Option<String>,
    /// Until this RFC 3339 time (exclusive).
    pub to: Option<String>,
    pub device: Option<String>,
    pub wallet: Option<String>,
    pub merchant: Option<String>,
    pub tx: Option<String>,
    /// An event type, e.g. `payment_decided`, `access_refused`.
    pub event: Option<String>,
    /// `jsonl` (the records exactly as stored, the default) or `csv`.
    pub format: Option<String>,
}

fn bad_query(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::MalformedRequest, message)
}

impl RecordFilter {
    fn filter(&self) -> Result<archive::Filter, ApiError> {
        let time = |text: &Option<String>| -> Result<Option<u64>, ApiError> {
            text.as_deref()
                .map(|t| {
                    parse_rfc3339_ms(t)
                        .ok_or_else(|| bad_query(format!("{t:?} is not an RFC 3339 time")))
                })
                .transpose()
        };
        Ok(archive::Filter {
            from_ms: time(&self.from)?,
            to_ms: time(&self.to)?,
            device: self.device.clone(),
            wallet: self.wallet.clone(),
            merchant: self.merchant.clone(),
            tx: self.tx.clone(),
            event: self
                .event
                .as_deref()
                .map(|e| {
                    EventType::parse(e)
                        .ok_or_else(|| bad_query(format!("unknown event type {e:?}")))
                })
                .transpose()?,
        })
    }
}

/// The records matching every filter given, after the whole archive verified; as JSON Lines
/// or CSV. At most `http.audit_records_max`; `X-Records-Truncated: true` says there were more.
#[utoipa::path(get, path = "/v1/audit/records", params(RecordFilter),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the records, one per line", content(
            (String = "application/x-ndjson"),
            (String = "text/csv"),
        )),
        (status = 409, description = "the archive does not verify (AUDIT_BROKEN); nothing is served from it", body = ErrorBody),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed", body = ErrorBody),
    ))]
pub async fn records(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    query: Result<Query<RecordFilter>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    caller.require(Scope::AuditRead)?;
    let Query(query) = query.map_err(|e| bad_query(format!("the query is not valid: {e}")))?;
    let filter = query.filter()?;
    let csv = match query.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(_) => return Err(bad_query("format is jsonl or csv")),
    };
    let what = format!("audit search via api ({})", describe(&query));
    let (dir, _guard) = audited_copy(&api, &caller, peer.as_deref().copied(), what).await?;
    let (key, key_id) = audit_key(&api);
    let max = api.settings.audit_records_max;
    let found = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let mut csv_writer = csv.then(|| {
            let mut writer = ::csv::Writer::from_writer(Vec::new());
            let _ = writer.write_record(archive::CSV_COLUMNS);
            writer
        });
        let mut count = 0usize;
        let mut truncated = false;
        let checked = archive::verify_archive(&dir, key, &key_id, None, false, |at| {
            if !filter.matches(at.record) {
                return;
            }
            if count >= max {
                truncated = true;
                return;
            }
            count += 1;
            match &mut csv_writer {
                Some(writer) => {
                    let _ = writer.write_record(archive::csv_row(at.record));
                }
                None => {
                    out.extend_from_slice(at.line);
                    out.push(b'\n');
                }
            }
        });
        if let Some(writer) = csv_writer {
            out = writer.into_inner().unwrap_or_default();
        }
        checked.map(|_| (out, truncated))
    })
    .await
    .map_err(ApiError::internal)?;
    let (body, truncated) = found.map_err(broken)?;
    let content_type = if csv {
        "text/csv"
    } else {
        "application/x-ndjson"
    };
    let mut response = ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
    if truncated {
        response.headers_mut().insert(
            "x-records-truncated",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

fn describe(query: &RecordFilter) -> String {
    let mut parts = Vec::new();
    for (name, value) in [
        ("from", &query.from),
        ("to", &query.to),
        ("device", &query.device),
        ("wallet", &query.wallet),
        ("merchant", &query.merchant),
        ("tx", &query.tx),
        ("event", &query.event),
    ] {
        if let Some(value) = value {
            parts.push(format!("{name}={value}"));
        }
    }
    if parts.is_empty() {
        "all records".to_owned()
    } else {
        parts.join(" ")
    }
}

fn broken(found: paygate_core::audit::AuditBreak) -> ApiError {
    ApiError::new(
        ErrorCode::AuditBroken,
        format!("the archive does not verify: {found}"),
    )
}

const MAX_AGE_SECONDS_MAX: u64 = 3_153_600_000;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyAsk {
    /// The newest checkpoint must be at most this old, in seconds (at most 100 years).
    #[schema(minimum = 0, maximum = 3_153_600_000_u64)]
    pub max_age_seconds: Option<u64>,
}

/// What a verification found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    /// `verified`, or `broken`.
    pub status: String,
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    /// The Merkle root over every record, hex.
    pub log_root: Option<String>,
    /// RFC 3339: when the newest checkpoint was sealed.
    pub newest_sealed_at: Option<String>,
    /// For `broken`: what broke, and where.
    pub break_kind: Option<String>,
    pub break_location: Option<String>,
    pub break_message: Option<String>,
}

/// Verifies the whole archive: every signature, hash chain, Merkle root, and the continuity
/// of segments and checkpoints, as `paygate audit verify` does.
#[utoipa::path(post, path = "/v1/audit/verify", request_body = VerifyAsk,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the verification ran; `status` says what it found", body = Verification),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed", body = ErrorBody),
    ))]
pub async fn verify(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    ask: Json<VerifyAsk>,
) -> Result<axum::Json<Verification>, ApiError> {
    caller.require(Scope::AuditRead)?;
    if ask
        .value
        .max_age_seconds
        .is_some_and(|s| s > MAX_AGE_SECONDS_MAX)
    {
        return Err(bad_query(
            "max_age_seconds is at most 3153600000 (100 years)",
        ));
    }
    let (dir, _guard) = audited_copy(
        &api,
        &caller,
        peer.as_deref().copied(),
        "audit verify via api".into(),
    )
    .await?;
    let (key, key_id) = audit_key(&api);
    let max_age_ms = ask.value.max_age_seconds.map(|s| s.saturating_mul(1_000));
    let now = crate::clock::now_ms();
    let checked = tokio::task::spawn_blocking(move || {
        archive::verify_archive(&dir, key, &key_id, None, false, |_| {}).and_then(
            |(verifier, summary)| {
                if let Some(max_age_ms) = max_age_ms {
                    verifier.check_fresh(now, max_age_ms)?;
                }
                Ok((verifier.newest_sealed_at_ms(), summary))
            },
        )
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(axum::Json(match checked {
        Ok((sealed_at, summary)) => Verification {
            status: "verified".into(),
            segments: summary.segments,
            records: summary.records,
            bytes: summary.bytes,
            log_root: Some(hex::encode(summary.log_root)),
            newest_sealed_at: sealed_at.map(paygate_core::audit::rfc3339_ms),
            break_kind: None,
            break_location: None,
            break_message: None,
        },
        Err(found) => Verification {
            status: "broken".into(),
            segments: 0,
            records: 0,
            bytes: 0,
            log_root: None,
            newest_sealed_at: None,
            break_kind: Some(found.kind.as_str().to_owned()),
            break_location: Some(found.location),
            break_message: Some(found.message),
        },
    }))
}

/// Inclusion proofs for every record of a transaction, each checkable offline with the
/// audit public key alone (`paygate audit verify-proof`).
#[utoipa::path(get, path = "/v1/audit/transactions/{tx_id}/proofs", params(("tx_id" = String, Path, max_length = 128, min_length = 1)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the proofs, as `paygate audit prove` writes them", body = Object),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed", body = ErrorBody),
    ))]
pub async fn proofs(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(tx_id): PathText,
    peer: Option<Extension<Peer>>,
) -> Result<axum::Json<Vec<RecordProof>>, ApiError> {
    caller.require(Scope::AuditRead)?;
    if tx_id.is_empty() || tx_id.len() > 128 {
        return Err(bad_query("the transaction id is 1 to 128 characters"));
    }
    let what = format!("audit prove via api tx {tx_id}");
    let (dir, _guard) = audited_copy(&api, &caller, peer.as_deref().copied(), what).await?;
    let (key, key_id) = audit_key(&api);
    let proofs = tokio::task::spawn_blocking(move || archive::prove_tx(&dir, key, &key_id, &tx_id))
        .await
        .map_err(ApiError::internal)?
        .map_err(broken)?;
    if proofs.is_empty() {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "no shipped audit record names this transaction",
        ));
    }
    Ok(axum::Json(proofs))
}

/// The audit signing key's public half (RFC 8037 JWK). Compare it with the one obtained out of
/// band before trusting a verification made with it.
#[utoipa::path(get, path = "/v1/audit/public-key",
    security(("bearer" = [])),
    responses((status = 200, description = "the JWK", body = Object), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn public_key(State(api): State<Arc<Api>>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::AuditRead)?;
    let jwk = crate::audit::keys::public_jwk(api.audit.signing_key());
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        jwk,
    )
        .into_response())
}
