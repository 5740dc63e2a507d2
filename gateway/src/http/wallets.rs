//! The wallet backend's calls: open a wallet with a KYC tier, change the tier, read a
//! wallet, its history a page at a time, and its reward points.
//!
//! Who may call: `wallets:write` opens wallets and changes tiers; `wallets:read` reads any
//! wallet; a holder's token (`wallet` scope, `sub` = the wallet id) reads its own wallet only.

use super::auth::{Caller, Scope};
use super::body::{Json, PathText};
use super::error::{ApiError, ErrorBody};
use super::idempotency::{self, Begun, IdempotencyKey};
use super::{origin, Api, Peer};
use crate::ledger::{self, AccountKind, KycTier, NewAccount};
use crate::store::Batch;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, put};
use axum::{Extension, Router};
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::{AccountId, ErrorCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<Arc<Api>> {
    Router::new()
        .route("/v1/wallets", axum::routing::post(open_wallet))
        .route("/v1/wallets/:wallet_id", get(wallet))
        .route("/v1/wallets/:wallet_id/kyc-tier", put(set_tier))
        .route("/v1/wallets/:wallet_id/transactions", get(history))
        .route("/v1/wallets/:wallet_id/points", get(points))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenWallet {
    /// 1 to 64 characters of `[A-Za-z0-9._-]`, starting with a letter or digit.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub wallet_id: String,
    /// ISO 4217, e.g. `INR`.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    pub kyc_tier: Tier,
}

/// `min` (minimum KYC: lower limits) or `full`.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Min,
    Full,
}

impl Tier {
    pub(super) fn kyc(self) -> KycTier {
        match self {
            Tier::Min => KycTier::Min,
            Tier::Full => KycTier::Full,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetTier {
    pub kyc_tier: Tier,
}

/// A wallet as the ledger holds it.
#[derive(Debug, Serialize, ToSchema)]
pub struct WalletView {
    pub wallet_id: String,
    pub currency: String,
    pub kyc_tier: String,
    /// `active`, or not (suspended or closed).
    pub active: bool,
    /// The balance in minor units of `currency`.
    pub balance_minor: i64,
}

fn wallet_id(text: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(text).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the wallet id is not valid: {e}"),
        )
    })
}

fn unknown_wallet() -> ApiError {
    ApiError::new(ErrorCode::UnknownWallet, "no wallet has this id")
}

pub(super) async fn view(batch: &mut Batch<'_>, id: &AccountId) -> Result<WalletView, ApiError> {
    let account = ledger::account(batch, id)
        .await?
        .filter(|a| a.kind == AccountKind::Wallet)
        .ok_or_else(unknown_wallet)?;
    let balance = ledger::balance(batch, id).await?.unwrap_or(0);
    Ok(WalletView {
        wallet_id: id.as_str().to_owned(),
        currency: account.unit,
        kyc_tier: account.kyc_tier.map_or("full", KycTier::as_str).to_owned(),
        active: account.active,
        balance_minor: balance,
    })
}

fn admin_event(
    caller: &Caller,
    peer: Option<Peer>,
    wallet: &AccountId,
    what: String,
) -> AuditEvent {
    let mut event = AuditEvent::new(
        crate::clock::now_ms(),
        EventType::AdminAction,
        caller.actor(),
        origin(peer.map(|p| p.0)),
        AuditOutcome::Success,
        "http",
        format!("account:{wallet}"),
    );
    event.wallet_id = Some(wallet.as_str().to_owned());
    event.detail = Some(what);
    event
}

/// Opens a wallet.
#[utoipa::path(post, path = "/v1/wallets", request_body = OpenWallet,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "the same key and request get the first answer again")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "opened", body = WalletView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn open_wallet(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<OpenWallet>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let (mut batch, write) =
        match idempotency::begin(&api, &caller, &key, "POST", "/v1/wallets", &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let asked = &body.value;
    let answer = async {
        let id = wallet_id(&asked.wallet_id)?;
        let kyc_tier = asked.kyc_tier.kyc();
        let currency = paygate_core::money::Currency::parse(&asked.currency).ok_or_else(|| {
            ApiError::new(
                ErrorCode::CurrencyUnknown,
                "the currency is not an ISO 4217 code",
            )
        })?;
        if ledger::account(&mut batch, &id).await?.is_some() {
            return Err(ApiError::new(
                ErrorCode::AccountExists,
                "an account with this id exists already",
            ));
        }
        let account = NewAccount {
            account_id: id.clone(),
            kind: AccountKind::Wallet,
            unit: currency.code().to_owned(),
            kyc_tier: Some(kyc_tier),
            category: None,
            owner: None,
        };
        ledger::open_account(&mut batch, &account, crate::clock::now_ms()).await?;
        let view = view(&mut batch, &id).await?;
        let event = admin_event(
            &caller,
            peer.as_deref().copied(),
            &id,
            format!(
                "opened wallet {id} ({}, {} KYC)",
                view.currency, view.kyc_tier
            ),
        );
        Ok((
            (
                StatusCode::CREATED,
                serde_json::to_string(&view).map_err(ApiError::internal)?,
            ),
            event,
        ))
    }
    .await;
    let (answer, events) = match answer {
        Ok((answer, event)) => (Ok(answer), vec![event]),
        Err(refused) => (Err(refused), Vec::new()),
    };
    idempotency::finish(&api, batch, write, answer, events).await
}

/// Changes a wallet's KYC tier.
#[utoipa::path(put, path = "/v1/wallets/{wallet_id}/kyc-tier", request_body = SetTier,
    params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$", description = "the same key and request get the first answer again")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "changed", body = WalletView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn set_tier(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<SetTier>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(Scope::WalletsWrite)?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let path = format!("/v1/wallets/{wallet}/kyc-tier");
    let (mut batch, write) =
        match idempotency::begin(&api, &caller, &key, "PUT", &path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let answer = async {
        let id = wallet_id(&wallet)?;
        let kyc_tier = body.value.kyc_tier.kyc();
        ledger::set_kyc_tier(&mut batch, &id, kyc_tier).await?;
        let view = view(&mut batch, &id).await?;
        let event = admin_event(
            &caller,
            peer.as_deref().copied(),
            &id,
            format!("set wallet {id} to {} KYC", kyc_tier.as_str()),
        );
        Ok((
            (
                StatusCode::OK,
                serde_json::to_string(&view).map_err(ApiError::internal)?,
            ),
            event,
        ))
    }
    .await;
    let (answer, events) = match answer {
        Ok((answer, event)) => (Ok(answer), vec![event]),
        Err(refused) => (Err(refused), Vec::new()),
    };
    idempotency::finish(&api, batch, write, answer, events).await
}

/// A wallet: currency, tier, status and balance.
#[utoipa::path(get, path = "/v1/wallets/{wallet_id}", params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    security(("bearer" = [])),
    responses((status = 200, description = "the wallet", body = WalletView), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn wallet(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
) -> Result<axum::Json<WalletView>, ApiError> {
    caller.may_read_wallet(&wallet)?;
    let id = wallet_id(&wallet)?;
    let mut batch = api.store.begin_snapshot().await?;
    Ok(axum::Json(view(&mut batch, &id).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Entries per page, 1 to `http.page_entries_max` (default 50).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before; absent for the newest entries.
    #[param(pattern = "^[1-9][0-9]{0,18}$")]
    pub cursor: Option<String>,
}

/// One posting on the wallet: what moved, in which transfer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Entry {
    pub tx_id: String,
    /// The transfer's kind: `payment`, `p2p`, `cash_in`, `refund`, ...
    pub kind: String,
    /// Minor units; negative: money left the wallet.
    pub amount_minor: i64,
    pub currency: String,
    /// RFC 3339, UTC.
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct History {
    /// Newest first.
    pub entries: Vec<Entry>,
    /// Pass as `cursor` for the next (older) page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A wallet's postings, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/wallets/{wallet_id}/transactions", params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), Page),
    security(("bearer" = [])),
    responses((status = 200, description = "a page", body = History), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn history(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<History>, ApiError> {
    caller.may_read_wallet(&wallet)?;
    let id = wallet_id(&wallet)?;
    let Query(page) = page.map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedRequest,
            format!("the query is not valid: {e}"),
        )
    })?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=api.settings.page_entries_max).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            format!("limit is 1 to {}", api.settings.page_entries_max),
        ));
    }
    let before = match &page.cursor {
        None => i64::MAX,
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|c| *c > 0)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::MalformedRequest,
                    "the cursor is not one this API gave",
                )
            })?,
    };
    let mut batch = api.store.begin_snapshot().await?;
    view(&mut batch, &id).await?;
    let rows = sqlx::query(
        "SELECT p.posting_id, p.tx_id, p.amount_minor, p.currency, t.kind, t.created_at_ms
         FROM postings p JOIN transfers t ON t.tx_id = p.tx_id
         WHERE p.account_id = $1 AND p.posting_id < $2
         ORDER BY p.posting_id DESC LIMIT $3",
    )
    .bind(id.as_str())
    .bind(before)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *batch)
    .await
    .map_err(ApiError::internal)?;
    let mut entries = Vec::with_capacity(rows.len());
    let mut last_id = None;
    for row in rows.iter().take(limit as usize) {
        let created: i64 = row.try_get("created_at_ms").map_err(ApiError::internal)?;
        last_id = Some(
            row.try_get::<i64, _>("posting_id")
                .map_err(ApiError::internal)?,
        );
        entries.push(Entry {
            tx_id: row.try_get("tx_id").map_err(ApiError::internal)?,
            kind: row.try_get("kind").map_err(ApiError::internal)?,
            amount_minor: row.try_get("amount_minor").map_err(ApiError::internal)?,
            currency: row.try_get("currency").map_err(ApiError::internal)?,
            created_at: paygate_core::audit::rfc3339_ms(u64::try_from(created).unwrap_or(0)),
        });
    }
    let next_cursor = if rows.len() > limit as usize {
        last_id.map(|id| id.to_string())
    } else {
        None
    };
    Ok(axum::Json(History {
        entries,
        next_cursor,
    }))
}

/// A wallet's reward points.
#[derive(Debug, Serialize, ToSchema)]
pub struct Points {
    /// Redeemable now: active lots not yet expired.
    pub active_points: i64,
    /// Earned, waiting for the return window to pass.
    pub pending_points: i64,
}

/// A wallet's reward points: redeemable now, and pending.
#[utoipa::path(get, path = "/v1/wallets/{wallet_id}/points", params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")),
    security(("bearer" = [])),
    responses((status = 200, description = "the points", body = Points), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn points(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
) -> Result<axum::Json<Points>, ApiError> {
    caller.may_read_wallet(&wallet)?;
    let id = wallet_id(&wallet)?;
    let mut batch = api.store.begin_snapshot().await?;
    view(&mut batch, &id).await?;
    let now = crate::clock::now_ms();
    let active_points = crate::rewards::active_points(&mut batch, &id, now).await?;
    let pending: Option<i64> = sqlx::query_scalar(
        "SELECT CAST(SUM(points_remaining) AS BIGINT) FROM points_lots
         WHERE wallet_account_id = $1 AND state = 'pending'",
    )
    .bind(id.as_str())
    .fetch_one(&mut *batch)
    .await
    .map_err(ApiError::internal)?;
    Ok(axum::Json(Points {
        active_points,
        pending_points: pending.unwrap_or(0),
    }))
}
