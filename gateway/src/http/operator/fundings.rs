//! Wallet funding, with a second finance operator above the threshold (four eyes).

use super::{account_id, authorize, currency, operator_event};
use crate::http::auth::{Caller, Role};
use crate::http::body::{Json, PathText};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::idempotency::{self, Begun, IdempotencyKey, Written};
use crate::http::{Api, Peer};
use crate::ledger::{self, AccountKind};
use crate::store::Batch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use paygate_core::audit::{AuditEvent, AuditOutcome, EventType};
use paygate_core::money::Money;
use paygate_core::ErrorCode;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::sync::Arc;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestFunding {
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub wallet_id: String,
    /// Minor units of `currency`, more than zero.
    #[schema(minimum = 1)]
    pub amount_minor: i64,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

/// A funding, as asked and as decided.
#[derive(Debug, Serialize, ToSchema)]
pub struct FundingView {
    pub funding_id: String,
    /// `awaiting_approval`, `done` (posted: `tx_id`), `rejected` or `refused` (`code`).
    pub state: String,
    pub wallet_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The operator who asked (`sub`).
    pub requested_by: String,
    /// The operator who approved or rejected, or the requester when none was needed.
    pub decided_by: Option<String>,
    pub tx_id: Option<String>,
    /// Why the ledger refused it (e.g. `LIMIT_EXCEEDED`), when `refused`.
    pub code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FundingAsk {
    wallet_id: String,
    amount_minor: i64,
    currency: String,
}

async fn load_funding(batch: &mut Batch<'_>, id: &str) -> Result<FundingView, ApiError> {
    let row = sqlx::query(
        "SELECT request_json, requested_by, state, decided_by, tx_id, code
         FROM operator_approvals WHERE approval_id = $1 AND action = 'funding'",
    )
    .bind(id)
    .fetch_optional(&mut **batch)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "no funding has this id"))?;
    let ask: FundingAsk = serde_json::from_str(
        &row.try_get::<String, _>("request_json")
            .map_err(ApiError::internal)?,
    )
    .map_err(ApiError::internal)?;
    Ok(FundingView {
        funding_id: id.to_owned(),
        state: row.try_get("state").map_err(ApiError::internal)?,
        wallet_id: ask.wallet_id,
        amount_minor: ask.amount_minor,
        currency: ask.currency,
        requested_by: row.try_get("requested_by").map_err(ApiError::internal)?,
        decided_by: row.try_get("decided_by").map_err(ApiError::internal)?,
        tx_id: row.try_get("tx_id").map_err(ApiError::internal)?,
        code: row.try_get("code").map_err(ApiError::internal)?,
    })
}

/// Minor units of `currency` that `operator` asked for and posted without a second approver in
/// the last 24 hours.
async fn funded_alone(
    batch: &mut Batch<'_>,
    operator: &str,
    currency: &str,
) -> Result<i64, ApiError> {
    let since = crate::clock::now_ms().saturating_sub(24 * 3_600 * 1_000);
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT request_json FROM operator_approvals
         WHERE action = 'funding' AND state = 'done' AND requested_by = $1 AND decided_by = $1
           AND requested_at_ms >= $2",
    )
    .bind(operator)
    .bind(i64::try_from(since).unwrap_or(0))
    .fetch_all(&mut **batch)
    .await
    .map_err(ApiError::internal)?;
    let mut total: i64 = 0;
    for json in rows {
        let ask: FundingAsk = serde_json::from_str(&json).map_err(ApiError::internal)?;
        if ask.currency == currency {
            total = total.saturating_add(ask.amount_minor);
        }
    }
    Ok(total)
}

/// Posts the funding; a ledger refusal (a load limit) is its outcome, not an error.
async fn execute_funding(
    api: &Api,
    batch: &mut Batch<'_>,
    ask: &FundingAsk,
) -> Result<Result<String, ErrorCode>, ApiError> {
    let wallet = account_id("wallet id", &ask.wallet_id)?;
    let amount = u64::try_from(ask.amount_minor)
        .ok()
        .and_then(|minor| Money::new(minor, currency(&ask.currency).ok()?).ok())
        .ok_or_else(|| ApiError::new(ErrorCode::AmountInvalid, "the amount is not valid"))?;
    match crate::products::wallet::fund_in(
        batch,
        &api.gateway_settings.wallet,
        &wallet,
        amount,
        crate::clock::now_ms(),
    )
    .await
    {
        Ok(tx_id) => Ok(Ok(tx_id.to_string())),
        Err(crate::store::StoreError::Refused(code)) => Ok(Err(code)),
        Err(other) => Err(other.into()),
    }
}

async fn decide_funding(
    batch: &mut Batch<'_>,
    id: &str,
    from: &str,
    state: &str,
    by: &str,
    tx_id: Option<&str>,
    code: Option<ErrorCode>,
) -> Result<bool, ApiError> {
    let changed = sqlx::query(
        "UPDATE operator_approvals SET state = $1, decided_by = $2, decided_at_ms = $3, tx_id = $4, code = $5
         WHERE approval_id = $6 AND state = $7",
    )
    .bind(state)
    .bind(by)
    .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
    .bind(tx_id)
    .bind(code.map(ErrorCode::as_str))
    .bind(id)
    .bind(from)
    .execute(&mut **batch)
    .await
    .map_err(ApiError::internal)?
    .rows_affected();
    Ok(changed == 1)
}

fn funding_event(
    caller: &Caller,
    peer: Option<Peer>,
    view: &FundingView,
    what: String,
) -> AuditEvent {
    let mut event = operator_event(
        caller,
        peer,
        EventType::AdminAction,
        format!("account:{}", view.wallet_id),
        what,
    );
    event.wallet_id = Some(view.wallet_id.clone());
    event.tx_id = view.tx_id.clone();
    if let Some(code) = &view.code {
        event.outcome = AuditOutcome::Failure;
        event.code = Some(code.clone());
    }
    event
}

/// A funding's answer: the funding (posted 200/201, waiting 202), or, when the ledger refused
/// it, that refusal in the one error shape (its code's status), the funding kept as `refused`.
fn funding_answer(
    view: &FundingView,
    posted: StatusCode,
    event: AuditEvent,
) -> Result<Written, ApiError> {
    let code = view.code.as_deref().and_then(ErrorCode::parse);
    match (view.state.as_str(), code) {
        ("awaiting_approval", _) => Written::new(StatusCode::ACCEPTED, view, vec![event]),
        (_, Some(code)) => {
            let refused = ApiError::new(
                code,
                format!(
                    "{}; funding {} is kept as refused",
                    code.description(),
                    view.funding_id
                ),
            );
            Ok(Written {
                status: StatusCode::from_u16(code.http_status())
                    .unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
                json: refused.body_json()?,
                events: vec![event],
            })
        }
        _ => Written::new(posted, view, vec![event]),
    }
}

/// Funds a wallet from the issuance account (role `finance`). At or above
/// `http.operator.funding_approval_min_minor` it waits (202, `awaiting_approval`) for another
/// finance operator to approve it; below, it is posted at once (201). A funding the ledger
/// refuses (a load limit) is kept as `refused` with its code, and answered with that code's
/// status.
#[utoipa::path(post, path = "/v1/ops/fundings", request_body = RequestFunding,
    params(("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "posted", body = FundingView),
        (status = 202, description = "waiting for a second approver", body = FundingView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn request_funding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<RequestFunding>, ApiError>,
) -> Result<Response, ApiError> {
    let peer = peer.as_deref().copied();
    let path = "/v1/ops/fundings";
    authorize(&api, &caller, peer, Role::Finance, path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let asked = &body.value;
    let api_ref = &api;
    let (mut owned, write) =
        match idempotency::begin(&api, &caller, &key, "POST", path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let batch = &mut owned;
    let written = async {
        let wallet = account_id("wallet id", &asked.wallet_id)?;
        let currency = currency(&asked.currency)?;
        if asked.amount_minor <= 0 {
            return Err(ApiError::new(ErrorCode::AmountInvalid, "the amount is more than zero"));
        }
        let account = ledger::account(batch, &wallet)
            .await?
            .filter(|a| a.kind == AccountKind::Wallet)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownWallet, "no wallet has this id"))?;
        if account.unit != currency.code() {
            return Err(ApiError::new(ErrorCode::CurrencyMismatch, "the wallet holds another currency"));
        }
        let ask = FundingAsk {
            wallet_id: wallet.as_str().to_owned(),
            amount_minor: asked.amount_minor,
            currency: currency.code().to_owned(),
        };
        let id = format!("fund-{}", uuid::Uuid::new_v4());
        // the threshold counts what this operator funded alone in the last 24 hours too, so
        // splitting a funding into parts below it does not avoid the second approver
        if api_ref.store.backend() == crate::store::Backend::Postgres {
            // one funding request per operator at a time, so two at once cannot both read a
            // total below the threshold (SQLite's write transactions are serial already)
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS locked")
                .bind(format!("funding:{}", caller.subject))
                .execute(&mut **batch)
                .await
                .map_err(ApiError::internal)?;
        }
        let alone = funded_alone(batch, &caller.subject, currency.code()).await?;
        let needs_approval = asked.amount_minor.saturating_add(alone)
            >= api_ref.settings.operator.funding_approval_min_minor;
        sqlx::query(
            "INSERT INTO operator_approvals (approval_id, action, request_json, requested_by, requested_at_ms, state)
             VALUES ($1, 'funding', $2, $3, $4, 'awaiting_approval')",
        )
        .bind(&id)
        .bind(serde_json::to_string(&ask).map_err(ApiError::internal)?)
        .bind(&caller.subject)
        .bind(i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX))
        .execute(&mut **batch)
        .await
        .map_err(ApiError::internal)?;
        let what = if needs_approval {
            format!(
                "funding {id} of {} minor {} asked; it waits for a second finance operator",
                ask.amount_minor, ask.currency
            )
        } else {
            let (state, tx, code) = match execute_funding(api_ref, batch, &ask).await? {
                Ok(tx) => ("done", Some(tx), None),
                Err(code) => ("refused", None, Some(code)),
            };
            decide_funding(batch, &id, "awaiting_approval", state, &caller.subject, tx.as_deref(), code)
                .await?;
            format!(
                "funding {id} of {} minor {} {state} (below the second-approver threshold)",
                ask.amount_minor, ask.currency
            )
        };
        let view = load_funding(batch, &id).await?;
        let event = funding_event(&caller, peer, &view, what);
        funding_answer(&view, StatusCode::CREATED, event)
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

/// A funding and its state (role `finance`).
#[utoipa::path(get, path = "/v1/ops/fundings/{funding_id}",
    params(("funding_id" = String, Path, pattern = "^fund-[0-9a-f-]{36}$")),
    security(("bearer" = [])),
    responses((status = 200, description = "the funding", body = FundingView), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn funding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(id): PathText,
    peer: Option<Extension<Peer>>,
) -> Result<axum::Json<FundingView>, ApiError> {
    let peer = peer.as_deref().copied();
    authorize(
        &api,
        &caller,
        peer,
        Role::Finance,
        &format!("/v1/ops/fundings/{id}"),
    )
    .await?;
    let mut batch = api.store.begin_snapshot().await?;
    Ok(axum::Json(load_funding(&mut batch, &id).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// Why, for the audit trail.
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

async fn review(
    api: Arc<Api>,
    caller: Caller,
    id: String,
    peer: Option<Peer>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<Review>, ApiError>,
    approve: bool,
) -> Result<Response, ApiError> {
    let verb = if approve { "approve" } else { "reject" };
    let path = format!("/v1/ops/fundings/{id}/{verb}");
    authorize(&api, &caller, peer, Role::Finance, &path).await?;
    // the role or scope first: a caller without it learns nothing of the body's checks
    let (key, body) = (key?, body?);
    let reason = body.value.reason.clone().unwrap_or_default();
    if reason.chars().count() > 500 {
        return Err(ApiError::new(
            ErrorCode::MalformedRequest,
            "the reason is at most 500 characters",
        ));
    }
    let api_ref = &api;
    let (mut owned, write) =
        match idempotency::begin(&api, &caller, &key, "POST", &path, &body.bytes).await? {
            Begun::Replay(response) => return Ok(response),
            Begun::New(batch, write) => (batch, write),
        };
    let batch = &mut owned;
    let written = async {
        let before = load_funding(batch, &id).await?;
        if before.state != "awaiting_approval" {
            return Err(ApiError::new(
                ErrorCode::ApprovalNotPending,
                format!("the funding is {} already", before.state),
            ));
        }
        // four eyes: the requester may withdraw (reject) its own funding, never approve it
        if approve && before.requested_by == caller.subject {
            return Err(ApiError::new(
                ErrorCode::ApproverIsRequester,
                "a second finance operator approves; not the one who asked",
            ));
        }
        let (state, tx, code) = if approve {
            let ask = FundingAsk {
                wallet_id: before.wallet_id.clone(),
                amount_minor: before.amount_minor,
                currency: before.currency.clone(),
            };
            match execute_funding(api_ref, batch, &ask).await? {
                Ok(tx) => ("done", Some(tx), None),
                Err(code) => ("refused", None, Some(code)),
            }
        } else {
            ("rejected", None, None)
        };
        if !decide_funding(
            batch,
            &id,
            "awaiting_approval",
            state,
            &caller.subject,
            tx.as_deref(),
            code,
        )
        .await?
        {
            return Err(ApiError::new(
                ErrorCode::ApprovalNotPending,
                "the funding was decided meanwhile",
            ));
        }
        let view = load_funding(batch, &id).await?;
        let what =
            format!(
            "funding {id} of {} minor {} asked by operator:{} {verb}d by operator:{}: {state}{}",
            view.amount_minor,
            view.currency,
            view.requested_by,
            caller.subject,
            if reason.is_empty() { String::new() } else { format!(" ({reason})") }
        );
        let event = funding_event(&caller, peer, &view, what);
        funding_answer(&view, StatusCode::OK, event)
    }
    .await;
    idempotency::finish_written(&api, owned, write, written).await
}

/// Approves another operator's funding and posts it (role `finance`; not the requester).
#[utoipa::path(post, path = "/v1/ops/fundings/{funding_id}/approve", request_body = Review,
    params(("funding_id" = String, Path, pattern = "^fund-[0-9a-f-]{36}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "approved and posted", body = FundingView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn approve_funding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(id): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<Review>, ApiError>,
) -> Result<Response, ApiError> {
    review(api, caller, id, peer.as_deref().copied(), key, body, true).await
}

/// Rejects a funding waiting for approval (role `finance`; the requester may withdraw it).
#[utoipa::path(post, path = "/v1/ops/fundings/{funding_id}/reject", request_body = Review,
    params(("funding_id" = String, Path, pattern = "^fund-[0-9a-f-]{36}$"), ("Idempotency-Key" = String, Header, pattern = "^[A-Za-z0-9._:-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "rejected", body = FundingView),
        (status = "4XX", description = "refused", body = ErrorBody),
        (status = "5XX", description = "failed; retry with the same key", body = ErrorBody),
    ))]
pub async fn reject_funding(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(id): PathText,
    peer: Option<Extension<Peer>>,
    key: Result<IdempotencyKey, ApiError>,
    body: Result<Json<Review>, ApiError>,
) -> Result<Response, ApiError> {
    review(api, caller, id, peer.as_deref().copied(), key, body, false).await
}
