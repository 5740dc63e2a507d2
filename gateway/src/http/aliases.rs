//! Wallet holders' aliases: the backend links a holder's name, phone and VPA to a wallet
//! (encrypted field by field, found by keyed blind index), and finds the wallet an alias names.
//! One alias names one wallet (`ALIAS_TAKEN`): a P2P transfer to a phone or VPA reaches exactly
//! the wallet it was linked to. The alias is never in a URL (the lookup is a POST).

use super::auth::{Caller, Scope};
use super::body::{Json, PathText};
use super::error::{ApiError, ErrorBody};
use super::idempotency::{self, Begun, IdempotencyKey};
use super::{origin, Api};
use crate::profiles::{self, ProfileError, WalletProfile};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::{AccountId, ErrorCode};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/wallets/:wallet_id/profile", put(link))
        .route("/v1/aliases/lookup", post(lookup))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The holder's name, 1 to 200 printable characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// E.164, e.g. `+919800000001` (spaces and dashes are dropped).
    #[schema(max_length = 32)]
    pub phone: String,
    /// A UPI address `handle@psp`: ASCII letters, digits, `.`, `_`, `-`.
    #[schema(max_length = 330)]
    pub vpa: String,
}

/// A profile as stored, shown masked.
#[derive(Debug, Serialize, ToSchema)]
pub struct MaskedProfile {
    pub wallet_id: String,
    pub name: String,
    pub phone: String,
    pub vpa: String,
}

fn refusal(error: ProfileError) -> ApiError {
    match error {
        ProfileError::Invalid { field, why } => ApiError::new(
            ErrorCode::PayerInvalid,
            format!("the {field} is not valid: {why}"),
        ),
        ProfileError::Taken { field } => ApiError::new(
            ErrorCode::AliasTaken,
            format!("the {field} is linked to another wallet"),
        ),
        ProfileError::Key(error) => {
            tracing::error!(%error, "a wallet profile could not be encrypted");
            ApiError::new(
                ErrorCode::KeyUnavailable,
                "the key that protects holders' data is unavailable; nothing was stored; retry with the same Idempotency-Key",
            )
        }
        ProfileError::Database(error) => ApiError::internal(error),
    }
}

fn event(caller: &Caller, event_type: EventType, resource: String, what: &str) -> AuditEvent {
    let mut event = AuditEvent::new(
        crate::clock::now_ms(),
        event_type,
        caller.actor(),
        origin(super::error::current_peer()),
        AuditOutcome::Success,
        "http",
        resource,
    );
    event.detail = Some(what.to_owned());
    event
}

/// Links a holder's name, phone and VPA to a wallet, replacing what was linked before
/// (`wallets:write`).
#[utoipa::path(put, path = "/v1/wallets/{wallet_id}/profile", request_body = Profile,
    params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "linked", body = MaskedProfile),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn link(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<Profile>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    let (key, body) = (key?, body?);
    let path = format!("/v1/wallets/{wallet}/profile");
    // profiles are written through the pool (its encryption may call the key provider), so
    // outside the write's transaction: a retry under the key finds the first answer
    let (batch, write) =
        match idempotency::begin(&api, &caller, &key, "PUT", &path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    batch.rollback().await.map_err(ApiError::internal)?;
    let linked = async {
        let id = AccountId::parse(&wallet).map_err(|e| {
            ApiError::new(
                ErrorCode::MalformedRequest,
                format!("the wallet id is not valid: {e}"),
            )
        })?;
        let mut read = api.store.begin_snapshot().await?;
        super::wallets::view(&mut read, &id).await?;
        read.rollback().await.map_err(ApiError::internal)?;
        let asked = &body.value;
        let profile = WalletProfile {
            name: asked.name.clone(),
            phone: asked.phone.clone(),
            vpa: asked.vpa.clone(),
        };
        profiles::save(&api.cipher, api.store.pool(), &id, &profile, None)
            .await
            .map_err(refusal)?;
        let shown = profiles::show(&api.cipher, api.store.pool(), &id)
            .await
            .map_err(refusal)?
            .ok_or_else(|| ApiError::internal("a profile just stored is not found"))?;
        let mut linked = event(
            &caller,
            EventType::AdminAction,
            format!("account:{id}"),
            "wallet profile stored (encrypted): name, phone and VPA aliases",
        );
        linked.wallet_id = Some(id.as_str().to_owned());
        let view = MaskedProfile {
            wallet_id: shown.wallet,
            name: shown.name,
            phone: shown.phone,
            vpa: shown.vpa,
        };
        Ok::<_, ApiError>((
            serde_json::to_string(&view).map_err(ApiError::internal)?,
            linked,
        ))
    }
    .await;
    let batch = api.store.begin_batch().await?;
    match linked {
        Ok((json, linked)) => {
            idempotency::finish(&api, batch, write, Ok((StatusCode::OK, json)), vec![linked]).await
        }
        Err(refused) => idempotency::finish(&api, batch, write, Err(refused), Vec::new()).await,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Lookup {
    /// One of `phone` and `vpa`.
    #[schema(max_length = 32)]
    pub phone: Option<String>,
    #[schema(max_length = 330)]
    pub vpa: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Found {
    pub wallet_id: String,
}

/// The wallet a phone or VPA names (`wallets:read`); each lookup is audited (a read of
/// holders' data, PCI DSS 10.2.1.1).
#[utoipa::path(post, path = "/v1/aliases/lookup", request_body = Lookup,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the wallet", body = Found),
        (status = "4XX", description = "refused; UNKNOWN_WALLET when no wallet has it", body = ErrorBody),
        (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody),
    ))]
pub async fn lookup(
    State(api): State<Arc<Api>>,
    caller: Caller,
    body: Result<Json<Lookup>, ApiError>,
) -> Result<axum::Json<Found>, ApiError> {
    caller.require(Scope::WalletsRead)?;
    let body = body?;
    let (phone, vpa) = match (&body.value.phone, &body.value.vpa) {
        (Some(phone), None) => (Some(phone.as_str()), None),
        (None, Some(vpa)) => (None, Some(vpa.as_str())),
        _ => {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                "give exactly one of phone and vpa",
            ))
        }
    };
    let found = profiles::find(&api.cipher, api.store.pool(), phone, vpa)
        .await
        .map_err(refusal)?;
    // the record says what was asked (masked), and what was found: a probe for who has a
    // number shows in the trail
    let asked = match (phone, vpa) {
        (Some(phone), _) => format!("phone {}", paygate_core::redact::mask_phone(phone)),
        (_, Some(vpa)) => format!("vpa {}", paygate_core::redact::mask_vpa(vpa)),
        _ => String::new(),
    };
    let mut read = event(
        &caller,
        EventType::DataAccessed,
        "wallet_profiles".to_owned(),
        &format!("wallet looked up by {asked} (blind index)"),
    );
    read.wallet_id = found.clone();
    if found.is_none() {
        read.outcome = AuditOutcome::Failure;
        read.code = Some(ErrorCode::UnknownWallet.as_str().to_owned());
    }
    api.audit.record(read).await.map_err(|_| {
        ApiError::new(
            ErrorCode::AuditUnavailable,
            "the lookup could not be audited; its answer is withheld",
        )
    })?;
    match found {
        Some(wallet_id) => Ok(axum::Json(Found { wallet_id })),
        None => Err(ApiError::new(
            ErrorCode::UnknownWallet,
            "no wallet has this phone or VPA",
        )),
    }
}
