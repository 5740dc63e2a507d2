//! A wallet's reward points history: each lot earned, what is left of it, and its state
//! (pending, active, spent, expired), newest first, a page at a time.

use super::auth::Caller;
use super::body::PathText;
use super::error::{ApiError, ErrorBody};
use super::Api;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use paygate_core::{AccountId, ErrorCode};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

pub fn routes() -> Router<Arc<Api>> {
    Router::new().route("/v1/wallets/:wallet_id/points/lots", get(lots))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LotPage {
    /// Lots per page, 1 to `http.page_entries_max` (default 50).
    #[param(minimum = 1)]
    pub limit: Option<u32>,
    /// `next_cursor` of the page before.
    #[param(pattern = "^[0-9]{1,19}:[A-Za-z0-9_-]{1,64}$")]
    pub cursor: Option<String>,
}

/// Points earned by one payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct Lot {
    pub lot_id: String,
    /// The payment that earned them.
    pub payment_tx_id: String,
    pub points_earned: i64,
    pub points_remaining: i64,
    /// `pending` (inside the return window), `active`, `spent` or `expired`.
    pub state: String,
    /// RFC 3339, UTC.
    pub earned_at: String,
    pub active_at: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Lots {
    pub lots: Vec<Lot>,
    pub next_cursor: Option<String>,
}

fn at(ms: i64) -> String {
    paygate_core::audit::rfc3339_ms(u64::try_from(ms).unwrap_or(0))
}

/// A wallet's points lots, newest first (`wallets:read`, or its holder).
#[utoipa::path(get, path = "/v1/wallets/{wallet_id}/points/lots", params(("wallet_id" = String, Path, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"), LotPage),
    security(("bearer" = [])),
    responses((status = 200, description = "a page", body = Lots), (status = "4XX", description = "refused", body = ErrorBody), (status = "5XX", description = "failed or overloaded; retry", body = ErrorBody)))]
pub async fn lots(
    State(api): State<Arc<Api>>,
    caller: Caller,
    PathText(wallet): PathText,
    page: Result<Query<LotPage>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Lots>, ApiError> {
    caller.may_read_wallet(&wallet)?;
    let malformed = |what: &str| ApiError::new(ErrorCode::MalformedRequest, what.to_owned());
    let id = AccountId::parse(&wallet).map_err(|_| malformed("the wallet id is not valid"))?;
    let Query(page) = page.map_err(|e| malformed(&format!("the query is not valid: {e}")))?;
    let limit = page.limit.unwrap_or(50);
    if !(1..=api.settings.page_entries_max).contains(&limit) {
        return Err(malformed(&format!(
            "limit is 1 to {}",
            api.settings.page_entries_max
        )));
    }
    let (before_ms, before_lot) = match &page.cursor {
        None => (0, String::new()),
        Some(cursor) => cursor
            .split_once(':')
            .and_then(|(ms, lot)| Some((ms.parse::<i64>().ok()?, lot.to_owned())))
            .ok_or_else(|| malformed("the cursor is not one this API gave"))?,
    };
    let mut batch = api.store.begin_snapshot().await?;
    super::wallets::view(&mut batch, &id).await?;
    let rows = sqlx::query(
        "SELECT lot_id, payment_tx_id, points_earned, points_remaining, state, created_at_ms,
                active_at_ms, expires_at_ms
         FROM points_lots
         WHERE wallet_account_id = $1
           AND ($2 = 1 OR created_at_ms < $3 OR (created_at_ms = $3 AND lot_id < $4))
         ORDER BY created_at_ms DESC, lot_id DESC LIMIT $5",
    )
    .bind(id.as_str())
    .bind(i64::from(page.cursor.is_none()))
    .bind(before_ms)
    .bind(before_lot)
    .bind(i64::from(limit) + 1)
    .fetch_all(&mut *batch)
    .await
    .map_err(ApiError::internal)?;
    let mut lots = Vec::with_capacity(rows.len());
    for row in rows.iter().take(limit as usize) {
        let get_i = |name: &str| row.try_get::<i64, _>(name).map_err(ApiError::internal);
        let get_s = |name: &str| row.try_get::<String, _>(name).map_err(ApiError::internal);
        lots.push(Lot {
            lot_id: get_s("lot_id")?,
            payment_tx_id: get_s("payment_tx_id")?,
            points_earned: get_i("points_earned")?,
            points_remaining: get_i("points_remaining")?,
            state: get_s("state")?,
            earned_at: at(get_i("created_at_ms")?),
            active_at: at(get_i("active_at_ms")?),
            expires_at: at(get_i("expires_at_ms")?),
        });
    }
    let next_cursor = if rows.len() > limit as usize {
        rows.get(limit as usize - 1).and_then(|row| {
            let ms: i64 = row.try_get("created_at_ms").ok()?;
            let lot: String = row.try_get("lot_id").ok()?;
            Some(format!("{ms}:{lot}"))
        })
    } else {
        None
    };
    Ok(axum::Json(Lots { lots, next_cursor }))
}
