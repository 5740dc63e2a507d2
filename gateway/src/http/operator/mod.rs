//! The operators' calls (`/v1/ops/...`): merchant and agent accounts, KYC tiers, device
//! enrolment and suspension, wallet funding with a second approver above
//! `http.operator.funding_approval_min_minor`, key rotation, and the limits in force.
//!
//! Every call needs a token with the call's role (`roles`: `operator`, `finance`, `security`)
//! and a sign-in with a second factor (`amr`) at most `http.operator.second_factor_max_age_s`
//! ago (`auth_time`) (PCI DSS 8.4.2). A refused call is audited as an access refusal; every
//! change is audited with the operator's identity (`operator:<sub>`) in the same commit as the
//! change (PCI DSS 10.2.1.2, 10.2.1.5, 10.2.2).

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::{origin, Api, Peer};
use axum::routing::{get, post, put};
use axum::Router;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::money::Currency;
use paygate_core::{AccountId, ErrorCode};
use std::sync::Arc;

pub mod accounts;
pub mod devices;
pub mod enrolment;
pub mod fundings;
pub mod keys;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/ops/merchants", post(accounts::open_merchant))
        .route("/v1/ops/agents", post(accounts::open_agent))
        .route(
            "/v1/ops/wallets/:wallet_id/kyc-tier",
            put(accounts::set_tier),
        )
        .route("/v1/ops/devices", post(devices::enrol_device))
        .route("/v1/ops/enrolment-tokens", post(enrolment::issue_token))
        .route("/v1/enrolments", post(enrolment::enrol))
        .route(
            "/v1/ops/devices/:device_id/status",
            put(devices::set_device_status),
        )
        .route(
            "/v1/ops/devices/:device_id/revoke",
            post(devices::revoke_device),
        )
        .route("/v1/ops/fundings", post(fundings::request_funding))
        .route("/v1/ops/fundings/:funding_id", get(fundings::funding))
        .route(
            "/v1/ops/fundings/:funding_id/approve",
            post(fundings::approve_funding),
        )
        .route(
            "/v1/ops/fundings/:funding_id/reject",
            post(fundings::reject_funding),
        )
        .route("/v1/ops/keys/rotate", post(keys::rotate_keys))
        .route("/v1/ops/limits", get(keys::limits))
}

/// An operator call's check: the role and a fresh second factor; a refusal is audited
/// (PCI DSS 10.2.1.4).
pub(super) async fn authorize(
    api: &Api,
    caller: &Caller,
    peer: Option<Peer>,
    role: Role,
    path: &str,
) -> Result<(), ApiError> {
    let now_s = crate::clock::now_ms() / 1_000;
    let checked =
        caller.require_operator(role, now_s, api.settings.operator.second_factor_max_age_s);
    if let Err(refused) = &checked {
        api.metrics.count_refusal(refused.code);
        let mut event = operator_event(
            caller,
            peer,
            EventType::AccessRefused,
            format!("http:{path}"),
            refused.message.clone(),
        );
        event.outcome = AuditOutcome::Failure;
        event.code = Some(refused.code.as_str().to_owned());
        api.audit.record(event).await.map_err(|_| {
            ApiError::new(
                ErrorCode::AuditUnavailable,
                "the refusal could not be audited; nothing was changed",
            )
        })?;
    }
    checked
}

pub(super) fn operator_event(
    caller: &Caller,
    peer: Option<Peer>,
    event_type: EventType,
    resource: String,
    what: String,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        crate::clock::now_ms(),
        event_type,
        caller.actor(),
        origin(peer.map(|p| p.0)),
        AuditOutcome::Success,
        "http",
        resource,
    );
    event.detail = Some(match &caller.token_id {
        Some(jti) => format!("{what} (token {jti})"),
        None => what,
    });
    event
}

pub(super) fn account_id(what: &str, text: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(text).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the {what} is not valid: {e}"),
        )
    })
}

/// A device id from a request.
pub(super) fn device_id(text: &str) -> Result<paygate_core::DeviceId, ApiError> {
    paygate_core::DeviceId::parse(text).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the device id is not valid: {e}"),
        )
    })
}

/// A device's signing key from a request: the algorithm's name and the base64 public key
/// (Ed25519 32 bytes, ES256 the 65-byte uncompressed point).
pub(super) fn signing_key(
    algorithm: &str,
    public_key: &str,
) -> Result<(paygate_core::envelope::SigningAlgorithm, Vec<u8>), ApiError> {
    use base64::Engine;
    use paygate_core::envelope::SigningAlgorithm;
    let algorithm = SigningAlgorithm::parse(algorithm).ok_or_else(|| {
        ApiError::new(
            ErrorCode::AlgorithmNotAllowed,
            "the algorithm is ed25519 or es256",
        )
    })?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(public_key)
        .ok()
        .filter(|key| match algorithm {
            SigningAlgorithm::Ed25519 => key.len() == 32,
            SigningAlgorithm::Es256 => key.len() == 65 && key[0] == 4,
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::MalformedRequest,
                "the public key is not base64 of a 32-byte Ed25519 key or a 65-byte uncompressed P-256 point",
            )
        })?;
    Ok((algorithm, key))
}

pub(super) fn currency(code: &str) -> Result<Currency, ApiError> {
    Currency::parse(code).ok_or_else(|| {
        ApiError::new(
            ErrorCode::CurrencyUnknown,
            "the currency is not an ISO 4217 code",
        )
    })
}
