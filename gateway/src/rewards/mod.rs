//! Reward points: earned on purchases, pending then active, redeemed as tender first in first
//! out, expired by lot, clawed back on refunds, and reported as the programme's liability.
//!
//! Points are ledger money of their own unit (`PTS`): earning moves points from the
//! programme's liability account (negative: what it owes) to the customer's points account;
//! redeeming, expiring and clawing back move them back. Points redeemed as tender are paid to
//! the merchant in money by the rewards funding account. The lots (`points_lots`) say which of
//! a customer's points are pending or active and when each expires; a customer's points
//! balance always equals the remaining points of their pending and active lots.

mod earn;

use earn::{add_debt, insert_lots, NewLot};
pub use earn::{earn, open_earned_lots, owing, points_for, points_owed, BatchEarn};

use crate::config::RewardsSettings;
use crate::ledger::{self, AccountKind, Leg, NewAccount, NewTransfer, POINTS};
use crate::store::{new_tx_id, Batch, Store, StoreError};
use paygate_core::{AccountId, ErrorCode, Money, TxId};
use sha2::{Digest, Sha256};
use sqlx::Row;

/// The programme's outstanding points (negative balance: points owed to customers).
pub const LIABILITY: &str = "points-liability";

/// A wallet's points account: `pts-` and a digest of the wallet id (ids are at most 64).
pub fn points_account(wallet: &AccountId) -> AccountId {
    let digest = hex::encode(&Sha256::digest(wallet.as_str().as_bytes())[..12]);
    // "pts-" and 24 hex digits is always a valid id
    AccountId::parse(&format!("pts-{digest}")).unwrap_or_else(|_| wallet.clone())
}

/// The money account that pays merchants for points redeemed as tender.
pub fn funding_account(currency: &str) -> AccountId {
    AccountId::parse(&format!("rewards-funding-{}", currency.to_lowercase()))
        .unwrap_or_else(|_| liability())
}

/// The programme's points liability account.
pub fn liability() -> AccountId {
    // a constant valid id
    AccountId::parse(LIABILITY).unwrap_or_else(|e| unreachable_id(&e.to_string()))
}

#[allow(clippy::panic)]
fn unreachable_id(why: &str) -> AccountId {
    panic!("constant account id refused: {why}")
}

async fn ensure_accounts(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    currency: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    for account in [
        NewAccount {
            account_id: liability(),
            kind: AccountKind::PointsLiability,
            unit: POINTS.into(),
            kyc_tier: None,
            category: None,
            owner: None,
        },
        NewAccount {
            account_id: points_account(wallet),
            kind: AccountKind::Points,
            unit: POINTS.into(),
            kyc_tier: None,
            category: None,
            owner: Some(wallet.clone()),
        },
        NewAccount {
            account_id: funding_account(currency),
            kind: AccountKind::RewardsFunding,
            unit: currency.into(),
            kyc_tier: None,
            category: None,
            owner: None,
        },
    ] {
        ledger::open_account(batch, &account, now_ms).await?;
    }
    Ok(())
}

/// Tender points a refund gives back: credited to the customer's points account by the
/// refund's own legs, and held in a new active lot (earned, for expiry, when returned).
pub async fn return_points(
    batch: &mut Batch<'_>,
    settings: &RewardsSettings,
    wallet: &AccountId,
    refund_tx: &TxId,
    points: i64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let lot = NewLot {
        wallet,
        earn_tx: refund_tx,
        payment_tx: refund_tx,
        points,
        state: "active",
        active_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(settings.expiry_ms),
    };
    insert_lots(batch, &[lot], now_ms).await
}

/// A wallet's redeemable points: active lots (the job activates them) not yet expired.
pub async fn active_points(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    now_ms: u64,
) -> Result<i64, StoreError> {
    let rows = sqlx::query(
        "SELECT points_remaining FROM points_lots
         WHERE wallet_account_id = $1 AND state = 'active' AND expires_at_ms > $2",
    )
    .bind(wallet.as_str())
    .bind(ms(now_ms))
    .fetch_all(&mut **batch)
    .await?;
    let mut sum: i64 = 0;
    for row in rows {
        sum = sum.saturating_add(row.try_get::<i64, _>("points_remaining")?);
    }
    Ok(sum)
}

/// The legs that pay `amount` to a merchant with `points` as part of the tender: the wallet
/// pays the rest in money, the rewards funding account pays the points' value, and the points
/// go back to the programme. Declines: points worth more than the amount (`AMOUNT_INVALID`),
/// more points than the wallet's active points (`POINTS_INSUFFICIENT`).
pub async fn tender_legs(
    batch: &mut Batch<'_>,
    settings: &RewardsSettings,
    wallet: &AccountId,
    merchant: &AccountId,
    amount: Money,
    points: i64,
    now_ms: u64,
) -> Result<Result<(Vec<Leg>, i64), (ErrorCode, String)>, StoreError> {
    let unit = amount.currency.code();
    if !settings.enabled || unit != settings.currency {
        return Ok(Err((
            ErrorCode::PointsInsufficient,
            format!("points are redeemable only in {}", settings.currency),
        )));
    }
    let value = i128::from(points) * i128::from(settings.point_value_minor);
    let total = i128::from(amount.minor_signed());
    if value > total {
        return Ok(Err((
            ErrorCode::AmountInvalid,
            format!("{points} points are worth more than the amount"),
        )));
    }
    let active = active_points(batch, wallet, now_ms).await?;
    if points > active {
        return Ok(Err((
            ErrorCode::PointsInsufficient,
            format!("{points} points asked, {active} active points held"),
        )));
    }
    ensure_accounts(batch, wallet, unit, now_ms).await?;
    // value <= total <= i64::MAX here
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    let money = amount.minor_signed() - value;
    let mut legs = Vec::with_capacity(5);
    if money > 0 {
        legs.push(Leg::debit(wallet, AccountKind::Wallet, unit, money));
    }
    legs.push(Leg::debit(
        &funding_account(unit),
        AccountKind::RewardsFunding,
        unit,
        value,
    ));
    legs.push(Leg::credit(
        merchant,
        AccountKind::Merchant,
        unit,
        amount.minor_signed(),
    ));
    legs.push(Leg::debit(
        &points_account(wallet),
        AccountKind::Points,
        POINTS,
        points,
    ));
    legs.push(Leg::credit(
        &liability(),
        AccountKind::PointsLiability,
        POINTS,
        points,
    ));
    Ok(Ok((legs, money)))
}

/// Takes `points` from a wallet's lots, oldest expiry first. `states` says which lots may
/// give (redemption: active only; clawback: active, then pending). Returns what was taken.
async fn take_from_lots(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    points: i64,
    only_lot_of_payment: Option<&TxId>,
    states: &[&str],
    now_ms: u64,
) -> Result<i64, StoreError> {
    let mut left = points;
    for state in states {
        if left == 0 {
            break;
        }
        let rows = sqlx::query(
            "SELECT lot_id, points_remaining, payment_tx_id FROM points_lots
             WHERE wallet_account_id = $1 AND state = $2 AND points_remaining > 0 AND expires_at_ms > $3
             ORDER BY expires_at_ms, lot_id",
        )
        .bind(wallet.as_str())
        .bind(*state)
        .bind(ms(now_ms))
        .fetch_all(&mut **batch)
        .await?;
        for row in rows {
            if left == 0 {
                break;
            }
            let lot: String = row.try_get("lot_id")?;
            let payment: String = row.try_get("payment_tx_id")?;
            if only_lot_of_payment.is_some_and(|p| p.as_str() != payment) {
                continue;
            }
            let remaining: i64 = row.try_get("points_remaining")?;
            let take = remaining.min(left);
            sqlx::query(
                "UPDATE points_lots SET points_remaining = points_remaining - $1,
                    state = CASE WHEN points_remaining - $1 = 0 THEN 'spent' ELSE state END
                 WHERE lot_id = $2",
            )
            .bind(take)
            .bind(lot.as_str())
            .execute(&mut **batch)
            .await?;
            left -= take;
        }
    }
    Ok(points - left)
}

/// After a payment with points tender is posted: the points leave the lots, oldest expiry
/// first.
pub async fn consume(
    batch: &mut Batch<'_>,
    wallet: &AccountId,
    points: i64,
    now_ms: u64,
) -> Result<(), StoreError> {
    let taken = take_from_lots(batch, wallet, points, None, &["active"], now_ms).await?;
    if taken != points {
        return Err(StoreError::Invariant(format!(
            "{wallet}: {points} points redeemed but the lots held {taken}"
        )));
    }
    Ok(())
}

/// What a refund's clawback will do, worked out before the refund posts (so a shortfall can
/// be kept back from the refund's money).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClawbackPlan {
    pub wallet: AccountId,
    /// Points due now: the payment's earned points in proportion to the money refunded so
    /// far, less earlier clawbacks. Points of the payment's lot that expired went back to the
    /// programme then and are never due again.
    pub due: i64,
    /// Of `due`, what the customer's lots hold (the payment's own lot first).
    pub covered: i64,
}

impl ClawbackPlan {
    /// Points due that the customer no longer holds (spent).
    pub fn shortfall(&self) -> i64 {
        self.due - self.covered
    }
}

/// The clawback a refund bringing the payment's refunds to `refunded_total_minor` of
/// `paid_minor` calls for; `None` when the payment earned nothing or nothing more is due.
/// `returning` tender points this refund gives back count as held.
pub async fn clawback_plan(
    batch: &mut Batch<'_>,
    payment_tx: &TxId,
    refunded_total_minor: i64,
    paid_minor: i64,
    returning: i64,
    now_ms: u64,
) -> Result<Option<ClawbackPlan>, StoreError> {
    let lot = sqlx::query(
        "SELECT wallet_account_id, points_earned, earn_tx_id, state, points_remaining, expires_at_ms
         FROM points_lots WHERE payment_tx_id = $1",
    )
    .bind(payment_tx.as_str())
    .fetch_optional(&mut **batch)
    .await?;
    let Some(lot) = lot else { return Ok(None) };
    let wallet: String = lot.try_get("wallet_account_id")?;
    let wallet = AccountId::parse(&wallet)
        .map_err(|e| StoreError::Invariant(format!("lot wallet {wallet}: {e}")))?;
    let earned: i64 = lot.try_get("points_earned")?;
    let earn_tx: String = lot.try_get("earn_tx_id")?;
    let expired = sum_of(
        batch,
        "SELECT amount_minor FROM transfers WHERE kind = 'points_expire' AND related_tx_id = $1",
        &earn_tx,
    )
    .await?;
    // points past their expiry the job has not expired yet are expired all the same
    let state: String = lot.try_get("state")?;
    let past_expiry = u64::try_from(lot.try_get::<i64, _>("expires_at_ms")?).unwrap_or(0) <= now_ms
        && matches!(state.as_str(), "pending" | "active");
    let expiring: i64 = if past_expiry {
        lot.try_get("points_remaining")?
    } else {
        0
    };
    let claimable = earned
        .saturating_sub(expired)
        .saturating_sub(expiring)
        .max(0);
    let target =
        i128::from(claimable) * i128::from(refunded_total_minor) / i128::from(paid_minor.max(1));
    let target = i64::try_from(target.min(i128::from(claimable))).unwrap_or(claimable);
    // what earlier refunds' clawbacks called for: taken, owed or kept back
    let clawed: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(points_due), 0) AS BIGINT) FROM points_clawbacks
         WHERE payment_tx_id = $1",
    )
    .bind(payment_tx.as_str())
    .fetch_one(&mut **batch)
    .await?;
    let due = target.saturating_sub(clawed);
    if due <= 0 {
        return Ok(None);
    }
    let held: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(points_remaining), 0) AS BIGINT) FROM points_lots
         WHERE wallet_account_id = $1 AND state IN ('pending', 'active') AND expires_at_ms > $2",
    )
    .bind(wallet.as_str())
    .bind(ms(now_ms))
    .fetch_one(&mut **batch)
    .await?;
    let covered = due.min(held.saturating_add(returning));
    Ok(Some(ClawbackPlan {
        wallet,
        due,
        covered,
    }))
}

/// The sum of the `amount_minor` column of a query's rows (one text argument).
async fn sum_of(batch: &mut Batch<'_>, sql: &str, arg: &str) -> Result<i64, StoreError> {
    let mut sum: i64 = 0;
    for row in sqlx::query(sql).bind(arg).fetch_all(&mut **batch).await? {
        sum = sum.saturating_add(row.try_get::<i64, _>("amount_minor")?);
    }
    Ok(sum)
}

/// Carries out a clawback plan after its refund (`refund_tx`) posted: the covered points leave
/// the customer's lots (the payment's own lot first, then the others: active, then pending) as
/// a `points_clawback` transfer; `owed` points (the shortfall not kept back from the refund)
/// become the wallet's points debt. Returns the points taken.
pub async fn apply_clawback(
    batch: &mut Batch<'_>,
    plan: &ClawbackPlan,
    payment_tx: &TxId,
    refund_tx: &TxId,
    owed: i64,
    now_ms: u64,
) -> Result<i64, StoreError> {
    let wallet = &plan.wallet;
    sqlx::query(
        "INSERT INTO points_clawbacks (refund_tx_id, payment_tx_id, points_due) VALUES ($1, $2, $3)",
    )
    .bind(refund_tx.as_str())
    .bind(payment_tx.as_str())
    .bind(plan.due)
    .execute(&mut **batch)
    .await?;
    let mut taken = take_from_lots(
        batch,
        wallet,
        plan.covered,
        Some(payment_tx),
        &["pending", "active"],
        now_ms,
    )
    .await?;
    taken += take_from_lots(
        batch,
        wallet,
        plan.covered - taken,
        None,
        &["active", "pending"],
        now_ms,
    )
    .await?;
    if taken != plan.covered {
        return Err(StoreError::Invariant(format!(
            "{wallet}: clawback planned {} points, the lots gave {taken}",
            plan.covered
        )));
    }
    if taken > 0 {
        ledger::post(
            batch,
            &NewTransfer {
                tx_id: &new_tx_id(),
                kind: "points_clawback",
                origin: None,
                related: Some(refund_tx),
                legs: vec![
                    Leg::debit(&points_account(wallet), AccountKind::Points, POINTS, taken),
                    Leg::credit(&liability(), AccountKind::PointsLiability, POINTS, taken),
                ],
                now_ms,
            },
        )
        .await?;
    }
    if owed > 0 {
        add_debt(batch, wallet, owed).await?;
    }
    Ok(taken)
}

/// What the activation and expiry job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobRun {
    pub lots_activated: u64,
    pub lots_expired: u64,
    pub points_expired: i64,
}

/// Activates pending lots whose time has come and expires lots past their date, each expiry a
/// `points_expire` transfer of the lot's remaining points back to the programme. One
/// transaction; safe to run again (and from several gateways: each lot expires once).
pub async fn run_jobs(store: &Store, now_ms: u64) -> Result<JobRun, StoreError> {
    let mut batch = store.begin_batch().await?;
    let mut run = JobRun {
        lots_activated: sqlx::query(
            "UPDATE points_lots SET state = 'active' WHERE state = 'pending' AND active_at_ms <= $1",
        )
        .bind(ms(now_ms))
        .execute(&mut *batch)
        .await?
        .rows_affected(),
        ..JobRun::default()
    };
    let due = sqlx::query(
        "SELECT lot_id, wallet_account_id, points_remaining, earn_tx_id FROM points_lots
         WHERE state IN ('pending', 'active') AND expires_at_ms <= $1 ORDER BY expires_at_ms, lot_id",
    )
    .bind(ms(now_ms))
    .fetch_all(&mut *batch)
    .await?;
    for row in due {
        let lot: String = row.try_get("lot_id")?;
        let wallet: String = row.try_get("wallet_account_id")?;
        let remaining: i64 = row.try_get("points_remaining")?;
        let earn_tx: String = row.try_get("earn_tx_id")?;
        // only the transaction that flips the state posts the expiry
        let flipped = sqlx::query(
            "UPDATE points_lots SET state = 'expired', points_remaining = 0
             WHERE lot_id = $1 AND state IN ('pending', 'active')",
        )
        .bind(lot.as_str())
        .execute(&mut *batch)
        .await?
        .rows_affected();
        if flipped == 0 || remaining == 0 {
            continue;
        }
        let wallet = AccountId::parse(&wallet)
            .map_err(|e| StoreError::Invariant(format!("lot wallet {wallet}: {e}")))?;
        let earn_tx = TxId::parse(&earn_tx)
            .map_err(|e| StoreError::Invariant(format!("lot tx {earn_tx}: {e}")))?;
        ledger::post(
            &mut batch,
            &NewTransfer {
                tx_id: &new_tx_id(),
                kind: "points_expire",
                origin: None,
                related: Some(&earn_tx),
                legs: vec![
                    Leg::debit(
                        &points_account(&wallet),
                        AccountKind::Points,
                        POINTS,
                        remaining,
                    ),
                    Leg::credit(
                        &liability(),
                        AccountKind::PointsLiability,
                        POINTS,
                        remaining,
                    ),
                ],
                now_ms,
            },
        )
        .await?;
        run.lots_expired += 1;
        run.points_expired += remaining;
    }
    batch.commit().await?;
    Ok(run)
}

/// The outstanding points liability, for finance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Liability {
    pub pending_points: i64,
    pub active_points: i64,
    /// All outstanding points as the programme's ledger account says (must equal the lots).
    pub ledger_points: i64,
    /// What the outstanding points are worth as tender, in minor units of `currency`.
    pub value_minor: i64,
    pub currency: String,
    pub wallets: i64,
    /// Points customers owe from clawbacks they could not cover (spent points), and how many
    /// wallets owe them: recovered from the next points each earns.
    pub points_owed: i64,
    pub wallets_owing: i64,
}

pub async fn liability_report(
    store: &Store,
    settings: &RewardsSettings,
) -> Result<Liability, StoreError> {
    let mut batch = store.begin_snapshot().await?;
    let rows = sqlx::query(
        "SELECT wallet_account_id, state, points_remaining FROM points_lots
         WHERE state IN ('pending', 'active') AND points_remaining > 0",
    )
    .fetch_all(&mut *batch)
    .await?;
    let mut report = Liability {
        pending_points: 0,
        active_points: 0,
        ledger_points: 0,
        value_minor: 0,
        currency: settings.currency.clone(),
        wallets: 0,
        points_owed: 0,
        wallets_owing: 0,
    };
    let mut wallets = std::collections::BTreeSet::new();
    for row in rows {
        let state: String = row.try_get("state")?;
        let points: i64 = row.try_get("points_remaining")?;
        wallets.insert(row.try_get::<String, _>("wallet_account_id")?);
        if state == "pending" {
            report.pending_points += points;
        } else {
            report.active_points += points;
        }
    }
    report.wallets = i64::try_from(wallets.len()).unwrap_or(i64::MAX);
    let (owed, owing): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(points_owed), 0) AS BIGINT), CAST(COUNT(*) AS BIGINT)
         FROM points_debts WHERE points_owed > 0",
    )
    .fetch_one(&mut *batch)
    .await?;
    report.points_owed = owed;
    report.wallets_owing = owing;
    report.ledger_points = ledger::balance(&mut batch, &liability())
        .await?
        .unwrap_or(0)
        .saturating_neg();
    report.value_minor =
        (report.pending_points + report.active_points).saturating_mul(settings.point_value_minor);
    batch.rollback().await?;
    Ok(report)
}

fn ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
