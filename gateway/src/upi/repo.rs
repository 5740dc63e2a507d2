//! All of the pipeline's UPI SQL: payments recorded as initiated, looked up for
//! deduplication, read back once answered, and marked settled.

use crate::store::{Batch, SealedPayer, StoreError};
use paygate_core::{AccountId, DeviceId, ErrorCode, IdempotencyKey, Money};
use sqlx::Row;

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A payment as the pipeline records it when it hands it to the worker.
pub struct Initiated<'a> {
    pub payment_id: &'a str,
    pub device: &'a DeviceId,
    pub key: &'a IdempotencyKey,
    pub counter: u64,
    pub body_sha256: &'a [u8],
    pub merchant: &'a AccountId,
    pub merchant_vpa: &'a str,
    pub amount: Money,
    pub payer: &'a SealedPayer,
    pub receipt: &'a [u8],
    pub collect: bool,
    pub now_ms: u64,
}

pub async fn insert_initiated(tx: &mut Batch<'_>, p: &Initiated<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO upi_payments (payment_id, device_id, idempotency_key, counter, body_sha256,
            merchant_id, merchant_vpa, amount_minor, currency, payer_ct, payer_bidx, payer_masked,
            state, receipt, created_at_ms, direction)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'initiated', $13, $14, $15)",
    )
    .bind(p.payment_id)
    .bind(p.device.as_str())
    .bind(p.key.as_str())
    .bind(ms(p.counter))
    .bind(p.body_sha256)
    .bind(p.merchant.as_str())
    .bind(p.merchant_vpa)
    .bind(p.amount.minor_signed())
    .bind(p.amount.currency.code())
    .bind(&p.payer.value_ct)
    .bind(p.payer.value_bidx.to_vec())
    .bind(p.payer.masked.as_str())
    .bind(p.receipt)
    .bind(ms(p.now_ms))
    .bind(if p.collect { "collect" } else { "pay" })
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The merchant behind a public UPI address.
pub async fn merchant_of_vpa(tx: &mut Batch<'_>, vpa: &str) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT merchant_account_id FROM merchant_vpas WHERE vpa = $1")
            .bind(vpa)
            .fetch_optional(&mut **tx)
            .await?,
    )
}

/// A merchant's registered UPI address (the first, if it has several).
pub async fn vpa_of_merchant(
    tx: &mut Batch<'_>,
    merchant: &AccountId,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT vpa FROM merchant_vpas WHERE merchant_account_id = $1 ORDER BY vpa LIMIT 1",
    )
    .bind(merchant.as_str())
    .fetch_optional(&mut **tx)
    .await?)
}

/// Whether any payment is answered and waiting to be settled (a read without the write lock).
pub async fn any_answered(pool: &sqlx::AnyPool) -> Result<bool, StoreError> {
    let answered: Option<String> =
        sqlx::query_scalar("SELECT payment_id FROM upi_payments WHERE state = 'answered' LIMIT 1")
            .fetch_optional(pool)
            .await?;
    Ok(answered.is_some())
}

/// A payment the network has answered.
pub struct Answered {
    pub payment_id: String,
    pub device: DeviceId,
    pub key: IdempotencyKey,
    pub counter: u64,
    pub body_sha256: Vec<u8>,
    pub merchant: AccountId,
    pub merchant_vpa: String,
    pub amount: Money,
    pub payer_masked: String,
    pub result: String,
    pub npci_code: Option<String>,
    /// The network's retrieval reference number (12 digits), once it answered.
    pub rrn: Option<String>,
    /// Why a success could not be posted, when the payment was reversed for it.
    pub unpostable: Option<ErrorCode>,
}

/// Answered payments, oldest first, at most `limit`.
pub async fn answered(tx: &mut Batch<'_>, limit: u32) -> Result<Vec<Answered>, StoreError> {
    let rows = sqlx::query(
        "SELECT payment_id, device_id, idempotency_key, counter, body_sha256, merchant_id,
                merchant_vpa, amount_minor, currency, payer_masked, result, npci_code,
                unpostable_code, rrn
         FROM upi_payments WHERE state = 'answered' ORDER BY created_at_ms LIMIT $1",
    )
    .bind(i64::from(limit))
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(answered_from_row).collect()
}

fn answered_from_row(row: &sqlx::any::AnyRow) -> Result<Answered, StoreError> {
    let bad = |what: &str| StoreError::Invariant(format!("upi_payments row: bad {what}"));
    let currency = paygate_core::Currency::parse(&row.try_get::<String, _>("currency")?)
        .ok_or_else(|| bad("currency"))?;
    let minor: i64 = row.try_get("amount_minor")?;
    Ok(Answered {
        payment_id: row.try_get("payment_id")?,
        device: DeviceId::parse(&row.try_get::<String, _>("device_id")?)
            .map_err(|_| bad("device"))?,
        key: IdempotencyKey::parse(&row.try_get::<String, _>("idempotency_key")?)
            .map_err(|_| bad("key"))?,
        counter: u64::try_from(row.try_get::<i64, _>("counter")?).map_err(|_| bad("counter"))?,
        body_sha256: row.try_get("body_sha256")?,
        merchant: AccountId::parse(&row.try_get::<String, _>("merchant_id")?)
            .map_err(|_| bad("merchant"))?,
        merchant_vpa: row.try_get("merchant_vpa")?,
        amount: Money::new(u64::try_from(minor).map_err(|_| bad("amount"))?, currency)
            .map_err(|_| bad("amount"))?,
        payer_masked: row.try_get("payer_masked")?,
        result: row.try_get("result")?,
        npci_code: row.try_get("npci_code")?,
        rrn: row.try_get("rrn")?,
        unpostable: row
            .try_get::<Option<String>, _>("unpostable_code")?
            .map(|code| ErrorCode::parse(&code).ok_or_else(|| bad("unpostable_code")))
            .transpose()?,
    })
}

/// A success the ledger refused: back to the worker, which reverses the customer's debit
/// through the switch (`reversal_due`) and answers the payment `reversed`.
pub async fn require_reversal(
    tx: &mut Batch<'_>,
    payment_id: &str,
    refused: ErrorCode,
    now_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE upi_payments SET state = 'pending', reversal_due = 1, unpostable_code = $1,
                next_check_at_ms = $2
         WHERE payment_id = $3 AND state = 'answered'",
    )
    .bind(refused.as_str())
    .bind(ms(now_ms))
    .bind(payment_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A refund of a UPI payment, posted, for the worker to send.
pub struct NewRefund<'a> {
    pub refund_txn_id: &'a str,
    pub payment_id: &'a str,
    pub tx_id: &'a paygate_core::TxId,
    pub amount: Money,
    pub now_ms: u64,
}

pub async fn insert_refund(tx: &mut Batch<'_>, r: &NewRefund<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO upi_refunds (refund_txn_id, payment_id, tx_id, amount_minor, currency, state,
                                  next_attempt_at_ms, created_at_ms)
         VALUES ($1, $2, $3, $4, $5, 'initiated', $6, $6)",
    )
    .bind(r.refund_txn_id)
    .bind(r.payment_id)
    .bind(r.tx_id.as_str())
    .bind(r.amount.minor_signed())
    .bind(r.amount.currency.code())
    .bind(ms(r.now_ms))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The payment is settled: its row keeps the final receipt (for deduplication).
pub async fn mark_settled(
    tx: &mut Batch<'_>,
    payment_id: &str,
    receipt: &[u8],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE upi_payments SET state = 'settled', receipt = $1 WHERE payment_id = $2")
        .bind(receipt)
        .bind(payment_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Reversals and refunds through the UPI network, and those not confirmed by T+1 (the end of
/// the business day after they were asked for; RBI's turnaround for failed debits).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpiReport {
    pub reversals_requested: i64,
    pub reversals_confirmed: i64,
    /// Payment ids whose reversal is past T+1 and not confirmed.
    pub reversals_overdue: Vec<String>,
    pub refunds_initiated: i64,
    pub refunds_confirmed: i64,
    /// Refund transaction ids past T+1 and not confirmed.
    pub refunds_overdue: Vec<String>,
    /// Payments whose pay call answered after the gateway decided otherwise: (payment id,
    /// the late answer, what the gateway recorded), to reconcile with the network.
    pub late_answers_disagreeing: Vec<(String, String, String)>,
}

pub async fn report(store: &crate::store::Store, now_ms: u64) -> Result<UpiReport, StoreError> {
    let calendar = crate::clock::business_calendar();
    // asked for before the start of yesterday: T+1 ended with yesterday
    let (today_start, _) = calendar.day_and_month_start(now_ms);
    let due_before = ms(today_start.saturating_sub(86_400_000));
    let mut batch = store.begin_snapshot().await?;
    let counts: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(reversal_requested_at_ms), COUNT(reversal_confirmed_at_ms) FROM upi_payments",
    )
    .fetch_one(&mut *batch)
    .await?;
    let reversals_overdue: Vec<String> = sqlx::query_scalar(
        "SELECT payment_id FROM upi_payments WHERE reversal_requested_at_ms < $1
           AND reversal_confirmed_at_ms IS NULL ORDER BY reversal_requested_at_ms",
    )
    .bind(due_before)
    .fetch_all(&mut *batch)
    .await?;
    let refunds: (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COUNT(confirmed_at_ms) FROM upi_refunds")
            .fetch_one(&mut *batch)
            .await?;
    let refunds_overdue: Vec<String> = sqlx::query_scalar(
        "SELECT refund_txn_id FROM upi_refunds WHERE created_at_ms < $1 AND state = 'initiated'
         ORDER BY created_at_ms",
    )
    .bind(due_before)
    .fetch_all(&mut *batch)
    .await?;
    let late_answers_disagreeing: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT payment_id, late_answer, recorded_result FROM upi_late_answers ORDER BY at_ms",
    )
    .fetch_all(&mut *batch)
    .await?;
    batch.rollback().await?;
    Ok(UpiReport {
        late_answers_disagreeing,
        reversals_requested: counts.0,
        reversals_confirmed: counts.1,
        reversals_overdue,
        refunds_initiated: refunds.0,
        refunds_confirmed: refunds.1,
        refunds_overdue,
    })
}
