//! Merchant and agent accounts, and wallets' KYC tiers.

use super::{account_id, authorize, currency, operator_event};
use crate::http::auth::{Caller, Role};
use crate::http::body::{Json, PathText};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::idempotency::{self, Begun, IdempotencyKey, Written};
use crate::http::{Api, Peer};
use crate::ledger::{self, AccountKind, KycTier, NewAccount};
use crate::store::Batch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use paygate_core::audit::EventType;
use paygate_core::ErrorCode;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// An account as opened.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    pub account_id: String,
    /// `merchant` or `agent`.
    pub kind: String,
    pub currency: String,
    pub category: Option<String>,
    pub vpa: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenMerchant {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub merchant_id: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// The category reward rules match on, e.g. `grocery`.
    #[schema(pattern = "^[a-z0-9_-]{1,32}$")]
    pub category: Option<String>,
    /// The merchant's public UPI address, e.g. `coffee@bank`.
    #[schema(max_length = 255)]
    pub vpa: Option<String>,
}

/// Opens a merchant account (role `operator`).
#[utoipa::path(post, path = "/v1/ops/merchants", request_body = OpenMerchant,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "opened", body = AccountView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn open_merchant(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<OpenMerchant>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/merchants";
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
        let id = account_id("merchant id", &asked.merchant_id)?;
        let currency = currency(&asked.currency)?;
        if let Some(category) = &asked.category {
            let plain = (1..=32).contains(&category.len())
                && category
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
            if !plain {
                return Err(ApiError::new(
                    ErrorCode::MalformedRequest,
                    "the category is 1 to 32 of [a-z0-9_-]",
                ));
            }
        }
        let vpa = match &asked.vpa {
            None => None,
            Some(text) => Some(paygate_core::payer::Vpa::parse(text).map_err(|e| {
                ApiError::new(
                    ErrorCode::PayerInvalid,
                    format!("the vpa is not valid: {e}"),
                )
            })?),
        };
        open_new(
            batch,
            &NewAccount {
                account_id: id.clone(),
                kind: AccountKind::Merchant,
                unit: currency.code().to_owned(),
                kyc_tier: None,
                category: asked.category.clone(),
                owner: None,
            },
        )
        .await?;
        if let Some(vpa) = &vpa {
            let added = sqlx::query(
                "INSERT INTO merchant_vpas (vpa, merchant_account_id) VALUES ($1, $2)
                 ON CONFLICT (vpa) DO NOTHING",
            )
            .bind(vpa.expose())
            .bind(id.as_str())
            .execute(&mut **batch)
            .await
            .map_err(ApiError::internal)?
            .rows_affected();
            if added == 0 {
                return Err(ApiError::new(
                    ErrorCode::AccountExists,
                    "another merchant has this vpa",
                ));
            }
        }
        let view = AccountView {
            account_id: id.as_str().to_owned(),
            kind: "merchant".to_owned(),
            currency: currency.code().to_owned(),
            category: asked.category.clone(),
            vpa: vpa.as_ref().map(|v| v.expose().to_owned()),
        };
        let event = operator_event(
            &caller,
            peer,
            EventType::AdminAction,
            format!("account:{id}"),
            format!(
                "merchant account opened in {currency}, category {}, vpa {}",
                view.category.as_deref().unwrap_or("-"),
                view.vpa.as_deref().unwrap_or("-")
            ),
        );
        Written::new(StatusCode::CREATED, &view, vec![event])
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenAgent {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub agent_id: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

/// Opens a cash-in/cash-out agent's float account (role `operator`).
#[utoipa::path(post, path = "/v1/ops/agents", request_body = OpenAgent,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "opened", body = AccountView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn open_agent(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<OpenAgent>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/agents";
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
        let id = account_id("agent id", &asked.agent_id)?;
        let currency = currency(&asked.currency)?;
        open_new(
            batch,
            &NewAccount {
                account_id: id.clone(),
                kind: AccountKind::Agent,
                unit: currency.code().to_owned(),
                kyc_tier: None,
                category: None,
                owner: None,
            },
        )
        .await?;
        let event = operator_event(
            &caller,
            peer,
            EventType::AdminAction,
            format!("account:{id}"),
            format!("agent float account opened in {currency}"),
        );
        let view = AccountView {
            account_id: id.as_str().to_owned(),
            kind: "agent".to_owned(),
            currency: currency.code().to_owned(),
            category: None,
            vpa: None,
        };
        Written::new(StatusCode::CREATED, &view, vec![event])
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

/// Sets a wallet's KYC tier (role `operator`).
#[utoipa::path(put, path = "/v1/ops/wallets/{wallet_id}/kyc-tier", request_body = crate::http::wallets::SetTier,
    params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "changed", body = crate::http::wallets::WalletView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn set_tier(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<crate::http::wallets::SetTier>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = format!("/v1/ops/wallets/{wallet}/kyc-tier");
    authorize(&api, &caller, peer, Role::Operator, &path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let tier: KycTier = body.value.kyc_tier.kyc();
    let (mut owned, write) =
        match idempotency::begin(&api, &caller, &key, "PUT", &path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let batch = &mut owned;
    let written = async {
        let id = account_id("wallet id", &wallet)?;
        ledger::set_kyc_tier(batch, &id, tier).await?;
        let view = crate::http::wallets::view(batch, &id).await?;
        let mut event = operator_event(
            &caller,
            peer,
            EventType::AdminAction,
            format!("account:{id}"),
            format!("KYC tier set to {}", tier.as_str()),
        );
        event.wallet_id = Some(id.as_str().to_owned());
        Written::new(StatusCode::OK, &view, vec![event])
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

async fn open_new(batch: &mut Batch<'_>, account: &NewAccount) -> Result<(), ApiError> {
    if ledger::account(batch, &account.account_id).await?.is_some() {
        return Err(ApiError::new(
            ErrorCode::AccountExists,
            "an account with this id exists already",
        ));
    }
    ledger::open_account(batch, account, crate::clock::now_ms()).await?;
    Ok(())
}
