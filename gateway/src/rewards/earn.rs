//! Earning: the points a purchase earns, posted as a `points_earn` transfer and held in a lot,
//! one payment at a time ([`earn`]) or for a batch's payments together ([`open_earned_lots`]);
//! points earned by a wallet that owes points repay the debt first.

use super::{ensure_accounts, liability, ms, points_account};
use crate::config::RewardsSettings;
use crate::ledger::{self, AccountKind, Leg, NewTransfer, POINTS};
use crate::store::{new_tx_id, Batch, StoreError};
use paygate_core::{AccountId, Money, TxId};
use sqlx::Row;

/// Points a purchase earns: the first rule covering the merchant's category, per whole
/// currency unit paid in money, capped per transaction.
pub fn points_for(settings: &RewardsSettings, category: Option<&str>, money: Money) -> i64 {
    if !settings.enabled || money.currency.code() != settings.currency {
        return 0;
    }
    let category = category.unwrap_or("");
    let Some(rule) = settings
        .rules
        .iter()
        .find(|r| r.categories.is_empty() || r.categories.iter().any(|c| c == category))
    else {
        return 0;
    };
    let scale = 10_i64.pow(money.currency.minor_unit_digits());
    let units = money.minor_signed() / scale;
    units
        .saturating_mul(rule.points_per_unit)
        .min(rule.cap_per_transaction)
        .max(0)
}

/// Earns points for a posted payment: a `points_earn` transfer and a pending lot (active at
/// once when `pending_ms` is zero). Returns the points earned.
pub async fn earn(
    batch: &mut Batch<'_>,
    settings: &RewardsSettings,
    wallet: &AccountId,
    category: Option<&str>,
    payment_tx: &TxId,
    money_paid: Money,
    now_ms: u64,
) -> Result<i64, StoreError> {
    let points = points_for(settings, category, money_paid);
    if points == 0 {
        return Ok(0);
    }
    ensure_accounts(batch, wallet, money_paid.currency.code(), now_ms).await?;
    let earn_tx = new_tx_id();
    let account = points_account(wallet);
    ledger::post(
        batch,
        &NewTransfer {
            tx_id: &earn_tx,
            kind: "points_earn",
            origin: None,
            related: Some(payment_tx),
            legs: vec![
                Leg::debit(&liability(), AccountKind::PointsLiability, POINTS, points),
                Leg::credit(&account, AccountKind::Points, POINTS, points),
            ],
            now_ms,
        },
    )
    .await?;
    let lot = NewLot::earned(settings, wallet, &earn_tx, payment_tx, points, now_ms);
    insert_lots(batch, &[lot], now_ms).await?;
    recover_debt(batch, wallet, &earn_tx, points, now_ms).await?;
    Ok(points)
}

/// Points a payment decided in a batch earned, posted and opened with the batch.
pub struct BatchEarn<'a> {
    pub wallet: &'a AccountId,
    pub earn_tx: &'a TxId,
    pub payment_tx: &'a TxId,
    pub points: i64,
}

impl BatchEarn<'_> {
    /// The `points_earn` transfer, as [`earn`] posts it.
    pub fn legs(&self) -> Vec<Leg> {
        vec![
            Leg::debit(
                &liability(),
                AccountKind::PointsLiability,
                POINTS,
                self.points,
            ),
            Leg::credit(
                &points_account(self.wallet),
                AccountKind::Points,
                POINTS,
                self.points,
            ),
        ]
    }
}

/// Opens the lots of points earned by a batch's payments, as [`earn`] opens one, in
/// multi-row inserts. The caller has posted their transfers and made sure none of the
/// wallets owes points (a wallet that owes has its points earned alone, where they repay it).
pub async fn open_earned_lots(
    batch: &mut Batch<'_>,
    settings: &RewardsSettings,
    earned: &[BatchEarn<'_>],
    now_ms: u64,
) -> Result<(), StoreError> {
    let lots: Vec<NewLot<'_>> = earned
        .iter()
        .map(|e| {
            NewLot::earned(
                settings,
                e.wallet,
                e.earn_tx,
                e.payment_tx,
                e.points,
                now_ms,
            )
        })
        .collect();
    insert_lots(batch, &lots, now_ms).await
}

/// The wallets among `wallets` that owe points.
pub async fn owing(
    batch: &mut Batch<'_>,
    wallets: &[&AccountId],
) -> Result<std::collections::HashSet<AccountId>, StoreError> {
    let mut found = std::collections::HashSet::new();
    for chunk in wallets.chunks(crate::store::rows_per_statement(batch, 1)) {
        let sql = format!(
            "SELECT wallet_account_id FROM points_debts
             WHERE points_owed > 0 AND wallet_account_id IN ({})",
            crate::store::placeholders(chunk.len(), 1, 1).replace(['(', ')'], "")
        );
        let mut query = sqlx::query(&sql);
        for wallet in chunk {
            query = query.bind(wallet.as_str());
        }
        for row in query.fetch_all(&mut **batch).await? {
            found.insert(ledger::parse_account(&row.try_get::<String, _>(0)?)?);
        }
    }
    Ok(found)
}

fn lot_id(earn_tx: &TxId) -> String {
    format!("lot-{}", earn_tx.as_str().trim_start_matches("tx-"))
}

/// A lot to open: points earned by a payment, or tender points a refund gave back.
pub(super) struct NewLot<'a> {
    pub wallet: &'a AccountId,
    pub earn_tx: &'a TxId,
    pub payment_tx: &'a TxId,
    pub points: i64,
    pub state: &'a str,
    pub active_at_ms: u64,
    pub expires_at_ms: u64,
}

impl<'a> NewLot<'a> {
    /// The lot of points a payment earned: pending for `pending_ms` (active at once when that
    /// is zero), expiring after `expiry_ms`.
    fn earned(
        settings: &RewardsSettings,
        wallet: &'a AccountId,
        earn_tx: &'a TxId,
        payment_tx: &'a TxId,
        points: i64,
        now_ms: u64,
    ) -> NewLot<'a> {
        NewLot {
            wallet,
            earn_tx,
            payment_tx,
            points,
            state: if settings.pending_ms == 0 {
                "active"
            } else {
                "pending"
            },
            active_at_ms: now_ms.saturating_add(settings.pending_ms),
            expires_at_ms: now_ms.saturating_add(settings.expiry_ms),
        }
    }
}

/// Opens lots, in multi-row inserts.
pub(super) async fn insert_lots(
    batch: &mut Batch<'_>,
    lots: &[NewLot<'_>],
    now_ms: u64,
) -> Result<(), StoreError> {
    for chunk in lots.chunks(crate::store::rows_per_statement(batch, 11)) {
        let sql = format!(
            "INSERT INTO points_lots (lot_id, wallet_account_id, points_account_id, earn_tx_id,
                payment_tx_id, points_earned, points_remaining, state, active_at_ms,
                expires_at_ms, created_at_ms) VALUES {}",
            crate::store::placeholders(chunk.len(), 11, 1)
        );
        let mut query = sqlx::query(&sql);
        for lot in chunk {
            query = query
                .bind(lot_id(lot.earn_tx))
                .bind(lot.wallet.as_str())
                .bind(points_account(lot.wallet).to_string())
                .bind(lot.earn_tx.as_str())
                .bind(lot.payment_tx.as_str())
                .bind(lot.points)
                .bind(lot.points)
                .bind(lot.state)
                .bind(ms(lot.active_at_ms))
                .bind(ms(lot.expires_at_ms))
                .bind(ms(now_ms));
        }
        query.execute(&mut **batch).await?;
    }
    Ok(())
}

/// Points the wallet owes from clawbacks it could not cover.
pub async fn points_owed(batch: &mut Batch<'_>, wallet: &AccountId) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT points_owed FROM points_debts WHERE wallet_account_id = $1",
    )
    .bind(wallet.as_str())
    .fetch_optional(&mut **batch)
    .await?
    .unwrap_or(0))
}

pub(super) async fn add_debt(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    points: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO points_debts (wallet_account_id, points_owed) VALUES ($1, $2)
         ON CONFLICT (wallet_account_id) DO UPDATE
         SET points_owed = points_debts.points_owed + excluded.points_owed",
    )
    .bind(wallet.as_str())
    .bind(points)
    .execute(&mut **batch)
    .await?;
    Ok(())
}

/// Newly earned points pay what the wallet owes first: taken from the new lot (earned by
/// `earn_tx`) as a `points_debt_recovery` transfer back to the programme.
async fn recover_debt(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    earn_tx: &TxId,
    earned: i64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let owed = points_owed(batch, wallet).await?;
    let take = owed.min(earned);
    if take <= 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE points_lots SET points_remaining = points_remaining - $1,
            state = CASE WHEN points_remaining - $1 = 0 THEN 'spent' ELSE state END
         WHERE earn_tx_id = $2",
    )
    .bind(take)
    .bind(earn_tx.as_str())
    .execute(&mut **batch)
    .await?;
    sqlx::query(
        "UPDATE points_debts SET points_owed = points_owed - $1 WHERE wallet_account_id = $2",
    )
    .bind(take)
    .bind(wallet.as_str())
    .execute(&mut **batch)
    .await?;
    ledger::post(
        batch,
        &NewTransfer {
            tx_id: &new_tx_id(),
            kind: "points_debt_recovery",
            origin: None,
            related: Some(earn_tx),
            legs: vec![
                Leg::debit(&points_account(wallet), AccountKind::Points, POINTS, take),
                Leg::credit(&liability(), AccountKind::PointsLiability, POINTS, take),
            ],
            now_ms,
        },
    )
    .await
}
