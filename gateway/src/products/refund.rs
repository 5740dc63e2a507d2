//! Refunds: the merchant's terminal gives back all or part of one of its payments.

use super::limits::show;
use super::wallet::post;
use super::{declined, Decided, Origin};
use crate::ledger::{self, AccountKind, Leg};
use crate::store::{Batch, StoreError};
use paygate_core::{AccountId, ErrorCode, Money, TxId};
use sqlx::Row;

/// Refund: the merchant's terminal gives back all or part of one of its payments to the
/// wallet that paid; refunds of one payment never add up to more than it.
pub async fn refund(
    batch: &mut Batch<'_>,
    origin: &Origin<'_>,
    merchant: &AccountId,
    original: &TxId,
    amount: Money,
) -> Result<Decided, StoreError> {
    let is_merchant = ledger::account(batch, merchant)
        .await?
        .is_some_and(|a| a.active && a.kind == AccountKind::Merchant);
    if !is_merchant {
        return declined(
            ErrorCode::OperationNotAllowed,
            "only a merchant's terminal can refund",
        );
    }
    let Some(payment) = original_payment(batch, merchant, original).await? else {
        return declined(
            ErrorCode::OriginalUnknown,
            format!("{original} is not a payment to {merchant}"),
        );
    };
    let OriginalPayment {
        currency,
        paid,
        customer,
        refunded,
    } = payment;
    if currency != amount.currency.code() {
        return declined(
            ErrorCode::CurrencyMismatch,
            format!("the payment was in {currency}"),
        );
    }
    let minor = amount.minor_signed();
    if refunded.saturating_add(minor) > paid {
        return declined(
            ErrorCode::RefundExceedsOriginal,
            format!(
                "the payment was {}, of which {} is refunded already",
                show(paid, &currency),
                show(refunded, &currency)
            ),
        );
    }
    let decided = post(
        batch,
        origin,
        "refund",
        Some(original),
        vec![
            Leg::debit(merchant, AccountKind::Merchant, &currency, minor),
            Leg::credit(&customer, AccountKind::Wallet, &currency, minor),
        ],
        format!("wallet {customer}"),
        String::new,
    )
    .await?;
    if let Decided::Posted { tx_id, .. } = &decided {
        let (clawed, shortfall) = crate::rewards::clawback(
            batch,
            original,
            tx_id,
            refunded.saturating_add(minor),
            paid,
            origin.now_ms,
        )
        .await?;
        if clawed > 0 || shortfall > 0 {
            tracing::info!(%original, clawed, shortfall, "points clawed back for a refund");
        }
    }
    Ok(decided)
}

/// A merchant payment as a refund sees it.
struct OriginalPayment {
    currency: String,
    /// What the wallet paid in money (points tendered stay spent).
    paid: i64,
    customer: AccountId,
    /// What earlier refunds of it gave back.
    refunded: i64,
}

/// The merchant payment `original` to `merchant`, if it is one (locked on PostgreSQL, so two
/// refunds of it are decided one after the other).
async fn original_payment(
    batch: &mut Batch<'_>,
    merchant: &AccountId,
    original: &TxId,
) -> Result<Option<OriginalPayment>, StoreError> {
    let lock = if batch.backend_name() == "PostgreSQL" {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1 FOR UPDATE"
    } else {
        "SELECT kind, currency FROM transfers WHERE tx_id = $1"
    };
    let row = sqlx::query(lock)
        .bind(original.as_str())
        .fetch_optional(&mut **batch)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let kind: String = row.try_get("kind")?;
    let currency: String = row.try_get("currency")?;
    if kind != "merchant_payment" {
        return Ok(None);
    }
    let legs = sqlx::query("SELECT account_id, amount_minor FROM postings WHERE tx_id = $1")
        .bind(original.as_str())
        .fetch_all(&mut **batch)
        .await?;
    let mut to_merchant = false;
    let mut paid_by: Option<(i64, AccountId)> = None;
    for leg in legs {
        let account: String = leg.try_get("account_id")?;
        let minor: i64 = leg.try_get("amount_minor")?;
        if account == merchant.as_str() && minor > 0 {
            to_merchant = true;
        } else if minor < 0 {
            let id = AccountId::parse(&account)
                .map_err(|e| StoreError::Invariant(format!("posting account {account}: {e}")))?;
            let is_wallet = ledger::account(batch, &id)
                .await?
                .is_some_and(|a| a.kind == AccountKind::Wallet);
            if is_wallet {
                paid_by = Some((minor.saturating_neg(), id));
            }
        }
    }
    let (true, Some((paid, customer))) = (to_merchant, paid_by) else {
        return Ok(None);
    };
    let earlier = sqlx::query(
        "SELECT amount_minor FROM transfers WHERE related_tx_id = $1 AND kind = 'refund'",
    )
    .bind(original.as_str())
    .fetch_all(&mut **batch)
    .await?;
    let mut refunded: i64 = 0;
    for row in earlier {
        refunded = refunded.saturating_add(row.try_get::<i64, _>("amount_minor")?);
    }
    Ok(Some(OriginalPayment {
        currency,
        paid,
        customer,
        refunded,
    }))
}
